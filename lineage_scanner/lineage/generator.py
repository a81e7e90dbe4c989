"""Independently trained models, synthesised: the synthetic null's draws and the demo zoo's bases.

A :class:`ToyModel` is an in-memory transformer, format-neutral (weights in ``nn.Linear`` convention,
[out, in]). :func:`base_model` draws one as if trained from scratch: its own seed, its own smooth depth
profile of stds, heavy-tailed weights (kurtosis about 9), heads and rows of unequal scale, random norm
gains. Independent draws are what "unrelated" means to the synthetic null; the demo zoo derives its
children from such bases and writes them in every checkpoint format.
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
