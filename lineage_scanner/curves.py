"""Curves over depth: z-scoring, resampling and correlating them, written once for every stage.

Features (the SQL embedding), the seed score, the feature score and its permutation test all compare
per-layer curves; they share these three functions so that a curve means the same thing everywhere.
Arrays are layers × curves (a 1-D array is one curve); each column is handled on its own.
"""

from __future__ import annotations

import numpy as np


def zscore(curves: np.ndarray) -> np.ndarray | None:
    """(x - mean) / std per column over the finite layers (NaN layers dropped from a 1-D curve).

    None for an empty or flat curve (or any flat column), which carries no shape."""
    x = np.asarray(curves, dtype=np.float64)
    if x.ndim == 1:
        x = x[np.isfinite(x)]
    if len(x) < 2:
        return None
    spread = x.std(axis=0)
    if np.any(spread == 0.0) or not np.all(np.isfinite(spread)):
        return None
    return (x - x.mean(axis=0)) / spread


def resample(curve: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of a curve over relative depth [0, 1] onto ``n`` evenly spaced points."""
    return np.interp(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, len(curve)), curve)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Pearson's r of ``a`` and ``b`` per column (a float for 1-D input); NaN where a column is flat."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    u, v = a - a.mean(axis=0), b - b.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (u * v).sum(axis=0) / np.sqrt((u * u).sum(axis=0) * (v * v).sum(axis=0))
    return float(r) if np.ndim(r) == 0 else r
