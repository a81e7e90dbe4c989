"""An in-memory transformer, format-neutral, and the derivations the demo zoo applies to it.

Weights follow ``nn.Linear`` convention ([out, in]). Each writer in :mod:`scanner.demo.writers` lays a
:class:`ToyModel` out in one checkpoint format, so a derivation is written once and exported anywhere.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ToyModel:
    name: str
    style: str  # "llama" | "qwen2" | "gpt2" | "phi3": the family the base is written as
    hidden: int
    n_heads: int
    n_kv_heads: int
    intermediate: int
    vocab: int
    #: per layer: q, k, v, o, attn_norm, mlp_norm, gate, up, down (+ q_bias, k_bias, v_bias if any)
    layers: list[dict[str, np.ndarray]] = field(default_factory=list)
    embed: np.ndarray | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @property
    def has_bias(self) -> bool:
        return "q_bias" in self.layers[0]

    def renamed(self, name: str) -> ToyModel:
        child = copy.deepcopy(self)
        child.name = name
        return child


def heavy_tailed(rng: np.random.Generator, shape: tuple[int, ...], df: float = 5.0) -> np.ndarray:
    """Unit-variance Student-t noise: trained weights have kurtosis well above a Gaussian's 3."""
    return (rng.standard_t(df, size=shape) / np.sqrt(df / (df - 2))).astype(np.float32)


def depth_curve(rng: np.random.Generator, n: int, level: float) -> np.ndarray:
    """A smooth, family-specific std profile over depth, as trained models show (not flat init)."""
    t = np.linspace(0.0, 1.0, n)
    walk = np.cumsum(rng.normal(0.0, 0.35, n))
    walk = np.convolve(walk - walk.mean(), np.ones(3) / 3, mode="same")
    shape = rng.normal(0, 0.6) * t + 0.35 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 6.3))
    return level * np.exp(0.5 * shape + 0.25 * walk)


def projection(rng: np.random.Generator, rows: int, cols: int, std: float, head_dim: int) -> np.ndarray:
    """A matrix whose heads and rows differ in scale, with heavy tails, at overall std ``std``."""
    heads = np.repeat(np.exp(rng.normal(0, 0.15, rows // head_dim)), head_dim)
    row_scale = heads * np.exp(rng.normal(0, 0.08, rows))
    w = heavy_tailed(rng, (rows, cols)) * row_scale[:, None].astype(np.float32)
    return w * np.float32(std / w.std())


def base_model(name: str, style: str, seed: int, n_layers: int, hidden: int = 128, n_heads: int = 4,
               n_kv_heads: int = 2, mlp: bool = True) -> ToyModel:
    """A base model trained 'from scratch': its own seed, its own depth curves. Without ``mlp``, the
    layers hold attention and norms only (all a lineage null needs, at a third of the cost)."""
    rng = np.random.default_rng(seed)
    if style in ("gpt2", "phi3"):
        n_kv_heads = n_heads
    model = ToyModel(name, style, hidden, n_heads, n_kv_heads, intermediate=2 * hidden, vocab=256)
    hd = model.head_dim
    curves = {role: depth_curve(rng, n_layers, level) for role, level in
              (("q", 0.05), ("k", 0.06), ("v", 0.02), ("o", 0.018), ("mlp", 0.02))}
    norm_curve = depth_curve(rng, n_layers, 1.0)
    for i in range(n_layers):
        layer = {
            "q": projection(rng, n_heads * hd, hidden, curves["q"][i], hd),
            "k": projection(rng, n_kv_heads * hd, hidden, curves["k"][i], hd),
            "v": projection(rng, n_kv_heads * hd, hidden, curves["v"][i], hd),
            "o": projection(rng, hidden, n_heads * hd, curves["o"][i], hd),
            "attn_norm": (norm_curve[i] * np.exp(rng.normal(0, 0.1, hidden))).astype(np.float32),
            "mlp_norm": np.exp(rng.normal(0, 0.1, hidden)).astype(np.float32),
        }
        if mlp:
            layer.update(gate=projection(rng, model.intermediate, hidden, curves["mlp"][i], hd),
                         up=projection(rng, model.intermediate, hidden, curves["mlp"][i], hd),
                         down=projection(rng, hidden, model.intermediate, curves["mlp"][i], hd))
        if style in ("qwen2", "gpt2"):
            for role, rows in (("q", n_heads * hd), ("k", n_kv_heads * hd), ("v", n_kv_heads * hd)):
                layer[f"{role}_bias"] = heavy_tailed(rng, (rows,)) * np.float32(0.1)
        model.layers.append(layer)
    model.embed = heavy_tailed(rng, (model.vocab, hidden)) * np.float32(0.02)
    return model


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
