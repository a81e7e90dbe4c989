"""The derivations the demo zoo applies to a base model (see :mod:`lineage_scanner.lineage.generator`).

Each takes a :class:`ToyModel` and returns a child; each writer in :mod:`lineage_scanner.demo.writers`
lays a model out in one checkpoint format, so a derivation is written once and exported anywhere.
"""

from __future__ import annotations

import copy

import numpy as np

from lineage_scanner.lineage.generator import ToyModel, heavy_tailed


def drift(parent: ToyModel, name: str, seed: int, noise: float, layer_scale: float) -> ToyModel:
    """Further training: every matrix moves by ``noise`` of its std, and each layer's scale drifts."""
    rng = np.random.default_rng(seed)
    child = parent.renamed(name)
    for layer in child.layers:
        for key, w in layer.items():
            scale = np.float32(np.exp(rng.normal(0, layer_scale))) if w.ndim == 2 else np.float32(1.0)
            layer[key] = (w * scale + heavy_tailed(rng, w.shape) * np.float32(noise * w.std())).astype(np.float32)
    return child


def prune(parent: ToyModel, name: str, every: int = 3) -> ToyModel:
    """Layer pruning: drop every ``every``-th layer (counting from the second), as depth-pruned models do."""
    child = parent.renamed(name)
    child.layers = [layer for i, layer in enumerate(child.layers) if i % every != 1]
    return child


def upscale(parent: ToyModel, name: str) -> ToyModel:
    """Depth up-scaling: the middle half of the layers repeated (as SOLAR-style models are built)."""
    child = parent.renamed(name)
    n = len(child.layers)
    middle = copy.deepcopy(child.layers[n // 4 : 3 * n // 4])
    child.layers = child.layers[: 3 * n // 4] + middle + child.layers[3 * n // 4 :]
    return child


def rescale(parent: ToyModel, name: str, seed: int) -> ToyModel:
    """A function-preserving evasion: Q·a, K/a and V·b, O/b in every layer."""
    rng = np.random.default_rng(seed)
    child = parent.renamed(name)
    for layer in child.layers:
        a, b = rng.uniform(0.3, 3.0, size=2).astype(np.float32)
        layer["q"], layer["k"], layer["v"], layer["o"] = layer["q"] * a, layer["k"] / a, layer["v"] * b, layer["o"] / b
    return child


def fold_norms(parent: ToyModel, name: str) -> ToyModel:
    """Another function-preserving edit: each input-norm gain folded into Q/K/V, the gain set to 1."""
    child = parent.renamed(name)
    for layer in child.layers:
        gain = layer["attn_norm"][None, :]
        for role in "qkv":
            layer[role] = layer[role] * gain
        layer["attn_norm"] = np.ones_like(layer["attn_norm"])
    return child


def permute_heads(parent: ToyModel, name: str, seed: int) -> ToyModel:
    """An evasion that keeps the function: in every layer, the key/value heads (with their groups of query
    heads) and the query heads within each group reordered, no head left in place, and O's input columns
    reordered to match; the MLP's hidden units too. Every moment stays, every weight moves."""
    rng = np.random.default_rng(seed)
    child = parent.renamed(name)
    hd, groups = child.head_dim, child.n_kv_heads
    per_group = child.n_heads // groups
    for layer in child.layers:
        kv = _derangement(rng, groups)
        q_heads = np.concatenate([g * per_group + _derangement(rng, per_group) for g in kv])
        q_rows = (q_heads[:, None] * hd + np.arange(hd)).reshape(-1)
        kv_rows = (kv[:, None] * hd + np.arange(hd)).reshape(-1)
        layer["q"], layer["o"] = layer["q"][q_rows], layer["o"][:, q_rows]
        layer["k"], layer["v"] = layer["k"][kv_rows], layer["v"][kv_rows]
        for role, rows in (("q_bias", q_rows), ("k_bias", kv_rows), ("v_bias", kv_rows)):
            if role in layer:
                layer[role] = layer[role][rows]
        if "gate" in layer:
            units = _derangement(rng, layer["gate"].shape[0])
            layer["gate"], layer["up"] = layer["gate"][units], layer["up"][units]
            layer["down"] = layer["down"][:, units]
    return child


def rotate_residual(parent: ToyModel, name: str, seed: int) -> ToyModel:
    """An evasion that keeps the function of an RMSNorm model: norm gains folded into the matrices they
    feed, then the residual stream rotated by one random orthogonal matrix R (inputs W·Rᵀ, outputs R·W, the
    embedding E·Rᵀ), as SliceGPT-style rotations do. Stds survive a rotation; kurtosis and positions do not."""
    rng = np.random.default_rng(seed)
    child = fold_norms(parent, name)
    rotation, _ = np.linalg.qr(rng.standard_normal((child.hidden, child.hidden)))
    rotation = rotation.astype(np.float32)
    for layer in child.layers:
        if "gate" in layer:
            for role in ("gate", "up"):
                layer[role] = layer[role] * layer["mlp_norm"][None, :]
            layer["mlp_norm"] = np.ones_like(layer["mlp_norm"])
        for role in ("q", "k", "v", "gate", "up"):
            if role in layer:
                layer[role] = layer[role] @ rotation.T
        for role in ("o", "down"):
            if role in layer:
                layer[role] = rotation @ layer[role]
    child.embed = child.embed @ rotation.T
    return child


def _derangement(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random order of range(n) that leaves nothing in place (a cyclic shift of a shuffle, for n >= 2)."""
    if n < 2:
        return np.arange(n)
    order = rng.permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, 1)
    return out
