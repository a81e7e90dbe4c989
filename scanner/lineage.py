"""Scores between signatures. ``paper_score`` is the seed method, reproduced exactly as the baseline.

The seed method: the unbiased std of each whole Q/K/V/O matrix per layer gives one curve per role; each
curve is z-scored; the shorter curve is linearly interpolated to the longer one's depth; Pearson's r is
taken per role and averaged over the roles both models have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scanner.layouts import CURVE_ROLES

#: Points per feature in the fixed-length embedding used by SQL pre-filters, and its features: the two
#: rescaling-invariant products and two kurtosis curves (see scanner.evidence).
EMBED_POINTS = 32
EMBED_FEATURES = ("qk", "vo", "kurt_q", "kurt_k")
EMBED_DIM = EMBED_POINTS * len(EMBED_FEATURES)


def zscore(curve: np.ndarray) -> np.ndarray | None:
    """(x - mean) / std over the finite layers; None for a flat or empty curve, which carries no shape."""
    x = np.asarray(curve, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2 or np.std(x) == 0.0:
        return None
    return (x - x.mean()) / x.std()


def resample(curve: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of a curve over relative depth [0, 1] onto ``n`` evenly spaced points."""
    return np.interp(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, len(curve)), curve)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else math.nan


@dataclass(frozen=True)
class PaperScore:
    score: float
    per_role: dict[str, float]
    #: For each layer of the deeper model, its relative position mapped into the shallower one.
    alignment: list[tuple[int, float]] = field(default_factory=list)


def paper_score(a: dict[str, list[float]], b: dict[str, list[float]]) -> PaperScore:
    per_role: dict[str, float] = {}
    alignment: list[tuple[int, float]] = []
    for role in CURVE_ROLES:
        if role not in a or role not in b:
            continue
        za, zb = zscore(a[role]), zscore(b[role])
        if za is None or zb is None:
            per_role[role] = math.nan
            continue
        short, long_ = (za, zb) if len(za) <= len(zb) else (zb, za)
        per_role[role] = pearson(resample(short, len(long_)), long_)
        if not alignment:
            positions = np.linspace(0.0, len(short) - 1, len(long_))
            alignment = [(i, round(float(p), 4)) for i, p in enumerate(positions)]
    finite = [r for r in per_role.values() if math.isfinite(r)]
    return PaperScore(float(np.mean(finite)) if finite else math.nan, per_role, alignment)


def embedding(features: dict[str, list[float]]) -> list[float] | None:
    """z-scored feature curves resampled to EMBED_POINTS each, concatenated, centred and unit-normalised.

    The inner product of two embeddings then behaves like a correlation, which SQL can rank cheaply.
    """
    parts = []
    for name in EMBED_FEATURES:
        z = zscore(features[name]) if name in features else None
        parts.append(np.zeros(EMBED_POINTS) if z is None else resample(z, EMBED_POINTS))
    vec = np.concatenate(parts)
    vec -= vec.mean()
    norm = np.linalg.norm(vec)
    return None if norm == 0 else (vec / norm).astype(np.float32).tolist()
