"""Mergeable moments: the one record every backend produces and every stage combines.

A tensor's statistics are built from pieces (kernel blocks, row ranges of a fused QKV matrix, shards,
heads). Central moments merge exactly with the pairwise formulas of Chan et al. and Pébay, so
``Moments.of(a) + Moments.of(b) == Moments.of(a ∪ b)`` up to rounding, in any grouping. Partials are
kept as float64 rows of ``FIELDS`` so that compiled kernels can produce and merge them without Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

#: Order of the float64 partial row shared by all backends.
FIELDS = ("count", "mean", "m2", "m3", "m4", "min", "max", "nonfinite")


@numba.njit(cache=True, nogil=True)
def merge_partials(a, b):
    """Pébay's pairwise update of (count, mean, M2, M3, M4) plus min, max and the non-finite count."""
    na, nb = a[0], b[0]
    n = na + nb
    if na == 0.0:
        return (b[0], b[1], b[2], b[3], b[4], min(a[5], b[5]), max(a[6], b[6]), a[7] + b[7])
    if nb == 0.0:
        return (a[0], a[1], a[2], a[3], a[4], min(a[5], b[5]), max(a[6], b[6]), a[7] + b[7])
    delta = b[1] - a[1]
    dn = delta / n
    mean = a[1] + dn * nb
    m2 = a[2] + b[2] + delta * dn * na * nb
    m3 = (
        a[3] + b[3]
        + delta * dn * dn * na * nb * (na - nb)
        + 3.0 * dn * (na * b[2] - nb * a[2])
    )
    m4 = (
        a[4] + b[4]
        + delta * dn * dn * dn * na * nb * (na * na - na * nb + nb * nb)
        + 6.0 * dn * dn * (na * na * b[2] + nb * nb * a[2])
        + 4.0 * dn * (na * b[3] - nb * a[3])
    )
    return (n, mean, m2, m3, m4, min(a[5], b[5]), max(a[6], b[6]), a[7] + b[7])


@numba.njit(cache=True, nogil=True)
def reduce_partials(rows):
    """Merge a (k, 8) array of partials in row order: deterministic, so equal inputs give equal bits."""
    acc = (0.0, 0.0, 0.0, 0.0, 0.0, np.inf, -np.inf, 0.0)
    for i in range(rows.shape[0]):
        r = rows[i]
        acc = merge_partials(acc, (r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]))
    return acc


def central(raw: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Rows of power sums around a shift -> partial rows (``FIELDS``) of central moments, in float64.

    ``raw`` is [k, 8]: count, shift, and S1..S4 (the sums of d, d², d³, d⁴ with d = x - shift), then min
    and max; ``bad`` the non-finite count of each row. This is how both compiled backends accumulate
    (power sums vectorize; a shift near the mean keeps their digits) and how they hand over."""
    n, c, s1, s2, s3, s4, lo, hi = (raw[:, i].astype(np.float64) for i in range(8))
    a = s1 / np.maximum(n, 1.0)
    m2 = s2 - s1 * a
    m3 = s3 - 3.0 * a * s2 + 2.0 * a * a * s1
    m4 = s4 - 4.0 * a * s3 + 6.0 * a * a * s2 - 3.0 * a * a * a * s1
    # sums of squares and fourth powers cannot be negative: only rounding makes them so
    return np.stack([n, c + a, np.maximum(m2, 0.0), m3, np.maximum(m4, 0.0), lo, hi,
                     np.asarray(bad, dtype=np.float64)], axis=1)


@dataclass(frozen=True)
class Moments:
    """Moments of the finite values of one tensor (or segment); ``nonfinite`` counts NaN/Inf skipped."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    nonfinite: int = 0

    @classmethod
    def of_value(cls, x: float) -> Moments:
        if x != x or abs(x) == math.inf:
            return cls(nonfinite=1)
        return cls(1, x, 0.0, 0.0, 0.0, x, x, 0)

    @classmethod
    def of_array(cls, x) -> Moments:
        """Exact float64 moments of an in-memory array's finite values (synthetic models, references)."""
        d = np.asarray(x, dtype=np.float64).ravel()
        finite = d[np.isfinite(d)]
        if finite.size == 0:
            return cls(nonfinite=d.size)
        mean = float(finite.mean())
        c = finite - mean
        c2 = c * c
        return cls(finite.size, mean, float(c2.sum()), float((c2 * c).sum()), float((c2 * c2).sum()),
                   float(finite.min()), float(finite.max()), d.size - finite.size)

    @classmethod
    def from_partial(cls, row) -> Moments:
        n, mean, m2, m3, m4, lo, hi, bad = (float(v) for v in row)
        return cls(int(n), mean, m2, m3, m4, lo, hi, int(bad))

    def as_partial(self) -> tuple[float, ...]:
        return (float(self.count), self.mean, self.m2, self.m3, self.m4, self.min, self.max,
                float(self.nonfinite))

    def __add__(self, other: Moments) -> Moments:
        return Moments.from_partial(merge_partials(self.as_partial(), other.as_partial()))

    @property
    def var(self) -> float:
        """Unbiased (n-1) variance, as torch.std and the seed method use."""
        return self.m2 / (self.count - 1) if self.count > 1 else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.count > 1 else math.nan

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else math.nan

    @property
    def skew(self) -> float:
        if self.count < 2 or self.m2 == 0.0:
            return math.nan
        return math.sqrt(self.count) * self.m3 / self.m2**1.5

    @property
    def kurtosis(self) -> float:
        """Plain (Pearson) kurtosis: 3 for a Gaussian."""
        if self.count < 2 or self.m2 == 0.0:
            return math.nan
        return self.count * self.m4 / (self.m2 * self.m2)
