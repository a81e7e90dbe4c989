"""A built-in null for small stores: lineage scores between independently generated models.

Each synthetic model is a fresh draw of the demo zoo's generator (smooth random depth profiles, heavy-
tailed weights, heads and rows of unequal scale, random norm gains) at the depth being compared; its
features are computed exactly as a scan's. Scores between independent pairs say how high unrelated
models score by chance. Real models of one era share depth trends this null lacks, so a store's own
unrelated pairs, where it has enough, are the better null (see README: calibration).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from scanner.demo.model import base_model
from scanner.evidence import evidence

PAIRS = 60
HIDDEN = 64


def _kurtosis(x: np.ndarray) -> float:
    d = x.astype(np.float64).ravel()
    d = d - d.mean()
    return float(d.size * (d**4).sum() / ((d**2).sum() ** 2))


def _log_std(x: np.ndarray) -> float:
    return math.log(float(x.astype(np.float64).std(ddof=1)))


@lru_cache(maxsize=512)
def synthetic_features(depth: int, seed: int) -> dict[str, list[float]]:
    model = base_model("null", "llama", 10_000 + seed, depth, hidden=HIDDEN)
    out: dict[str, list[float]] = {name: [] for name in ("qk", "vo", "kurt_q", "kurt_k", "kurt_v", "kurt_o")}
    for layer in model.layers:
        gain = layer["attn_norm"][None, :]
        q, k, v = (layer[r] * gain for r in "qkv")
        out["qk"].append(_log_std(q) + _log_std(k))
        out["vo"].append(_log_std(v) + _log_std(layer["o"]))
        for role in "qkvo":
            out[f"kurt_{role}"].append(_kurtosis(layer[role]))
    return out


@lru_cache(maxsize=64)
def synthetic_null(depth_a: int, depth_b: int, pairs: int = PAIRS) -> tuple[float, ...]:
    """Scores of ``pairs`` independent synthetic pairs at these depths (cached: they never change)."""
    scores = (evidence(synthetic_features(depth_a, 2 * i), synthetic_features(depth_b, 2 * i + 1)).score
              for i in range(pairs))
    return tuple(s for s in scores if math.isfinite(s))
