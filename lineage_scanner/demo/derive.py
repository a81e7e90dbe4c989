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
