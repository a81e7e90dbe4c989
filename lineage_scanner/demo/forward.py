"""A float64 forward pass of a llama-style :class:`ToyModel`: the referee that says whether a disguise kept
the model's function.

A disguise of :mod:`lineage_scanner.demo.attacks` claims the disguised model computes what the original did;
the only honest check is to run both. This is the model as ``ToyModel`` holds it: token embedding; per layer
RMSNorm with the ``attn_norm`` gain, causal attention with grouped KV heads and rotary position embeddings
(plus Q/K/V biases where the model has them, as Qwen2 does), RMSNorm with the ``mlp_norm`` gain, a SwiGLU
MLP (gate, up, down); a final RMSNorm without gain and logits against the tied embedding (``ToyModel`` has
no separate head, and the writers store a final norm of ones).

Rotary pairs come in two conventions, and a map of Q/K that commutes with one need not commute with the
other: ``"interleaved"`` rotates dimensions (2i, 2i+1) of a head (as ``bench/tiny_train.py`` trains) and
``"half"`` rotates (i, i + d/2) (Hugging Face llama's ``rotate_half``). Pair i turns by position × θ^(-2i/d)
in both.

Everything is float64, so a function-preserving map shows as agreement to ~1e-12, far from the 1e-3 of
bf16 rounding that a failed map would hide behind in float32.
"""

from __future__ import annotations

import numpy as np

from lineage_scanner.lineage.generator import ToyModel

ROPE_CONVENTIONS = ("interleaved", "half")
ROPE_THETA = 10000.0
NORM_EPS = 1e-6


def rope_pairs(head_dim: int, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (within a head) of each rotary pair's first and second dimension, pair i turning at
    frequency θ^(-2i/d): the real and imaginary part of one complex coordinate."""
    if convention not in ROPE_CONVENTIONS:
        raise ValueError(f"unknown RoPE convention {convention!r}; choose one of {', '.join(ROPE_CONVENTIONS)}")
    half = np.arange(head_dim // 2)
    return (2 * half, 2 * half + 1) if convention == "interleaved" else (half, half + head_dim // 2)


def rope(x: np.ndarray, convention: str) -> np.ndarray:
    """Rotary position embedding of ``x`` [time, heads, head_dim], position t turning pair i by t·θ^(-2i/d)."""
    t, d = x.shape[0], x.shape[-1]
    first, second = rope_pairs(d, convention)
    angle = np.arange(t)[:, None] * ROPE_THETA ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    out = np.empty_like(x)
    a, b = x[..., first], x[..., second]
    out[..., first] = a * cos - b * sin
    out[..., second] = a * sin + b * cos
    return out


def rms_norm(x: np.ndarray, gain: np.ndarray | None = None) -> np.ndarray:
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + NORM_EPS)
    return y if gain is None else y * gain


def _project(layer: dict[str, np.ndarray], role: str, h: np.ndarray) -> np.ndarray:
    out = h @ np.asarray(layer[role], np.float64).T
    bias = layer.get(f"{role}_bias")
    return out if bias is None else out + np.asarray(bias, np.float64)


def attention(model: ToyModel, layer: dict[str, np.ndarray], h: np.ndarray, convention: str) -> np.ndarray:
    """Causal grouped-query attention of normed inputs ``h`` [time, hidden]; returns O's output."""
    t, hd = h.shape[0], model.head_dim
    q = rope(_project(layer, "q", h).reshape(t, model.n_heads, hd), convention)
    k = rope(_project(layer, "k", h).reshape(t, model.n_kv_heads, hd), convention)
    v = _project(layer, "v", h).reshape(t, model.n_kv_heads, hd)
    group = model.n_heads // model.n_kv_heads
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # query head h reads KV head h // group
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
    scores = np.where(np.tril(np.ones((t, t), bool))[None], scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    heads = np.einsum("hts,shd->thd", weights, v).reshape(t, model.n_heads * hd)
    return heads @ np.asarray(layer["o"], np.float64).T


def mlp(layer: dict[str, np.ndarray], h: np.ndarray) -> np.ndarray:
    gate, up = _project(layer, "gate", h), _project(layer, "up", h)
    return (gate / (1.0 + np.exp(-gate)) * up) @ np.asarray(layer["down"], np.float64).T


def logits(model: ToyModel, tokens: np.ndarray, rope_convention: str = "half") -> np.ndarray:
    """Next-token logits [time, vocab] of ``model`` on ``tokens``, in float64 (causal: position t sees 0..t)."""
    if model.style == "gpt2":
        raise ValueError(f"{model.name}: the forward pass covers llama-style models (RMSNorm, RoPE), not gpt2")
    embed = np.asarray(model.embed, np.float64)
    x = embed[np.asarray(tokens)]
    for layer in model.layers:
        x = x + attention(model, layer, rms_norm(x, np.asarray(layer["attn_norm"], np.float64)), rope_convention)
        if "gate" in layer:  # a base_model(mlp=False) has attention and norms only
            x = x + mlp(layer, rms_norm(x, np.asarray(layer["mlp_norm"], np.float64)))
    return rms_norm(x) @ embed.T


def probe_tokens(model: ToyModel, length: int = 24, seed: int = 0) -> np.ndarray:
    """A fixed token sequence to compare two models on."""
    return np.random.default_rng(seed).integers(0, model.vocab, size=length)


def function_gap(original: ToyModel, disguised: ToyModel, rope_convention: str = "half",
                 tokens: np.ndarray | None = None) -> float:
    """How far ``disguised``'s logits are from ``original``'s on a fixed sequence, relative to their size
    (Frobenius norm of the difference over the original's): ~1e-13 for a function-preserving map."""
    tokens = probe_tokens(original) if tokens is None else tokens
    want = logits(original, tokens, rope_convention)
    got = logits(disguised, tokens, rope_convention)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))
