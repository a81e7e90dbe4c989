"""The records a measurement produces: per-part statistics, and what folding a norm gain needs.

Torch-free, so that stored and synthetic models are described with the same types as scanned ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lineage_scanner.measure.kernels.stats import Moments
from lineage_scanner.measure.sketch import SketchPart


@dataclass(frozen=True)
class LayerStat:
    """Moments of one role in one layer; ``std_se`` is the relative standard error of a sampled std,
    ``kurtosis_se`` the standard error of its kurtosis (both 0 for an exact read).

    ``folded_std`` and ``folded_kurtosis`` (Q/K/V) are those the matrix would have with the layer's
    input-norm gain folded into its input columns, W·diag(γ): a model published with the gain folded in
    has the same values."""

    layer: int
    role: str
    moments: Moments
    std_se: float = 0.0
    folded_std: float | None = None
    folded_kurtosis: float | None = None
    kurtosis_se: float = 0.0


@dataclass(frozen=True)
class ColumnSums:
    """Per input column of a Q/K/V part: the sums of x, x², x³, x⁴ over its outputs (``powers``, [4, inputs]),
    from which the moments of W·diag(γ) follow for any gain γ without reading W again."""

    layer: int
    role: str
    powers: np.ndarray
    count: int

    def folded(self, gain: np.ndarray) -> tuple[float, float] | None:
        """(unbiased std, Pearson kurtosis) of W·diag(``gain``); None if the gain does not fit."""
        if gain.shape != self.powers.shape[1:] or self.count < 2:
            return None
        e1, e2, e3, e4 = (float((gain**k) @ self.powers[k - 1]) / self.count for k in range(1, 5))
        var = max(e2 - e1 * e1, 0.0)
        fourth = e4 - 4 * e1 * e3 + 6 * e1 * e1 * e2 - 3 * e1**4
        kurtosis = fourth / (var * var) if var > 0 else math.nan
        return math.sqrt(var * self.count / (self.count - 1)), kurtosis

    @classmethod
    def of_matrix(cls, layer: int, role: str, weight: np.ndarray) -> ColumnSums:
        """Column sums of an in-memory [out, in] matrix, in float64 (the synthetic null's models)."""
        x = np.asarray(weight, dtype=np.float64)
        return cls(layer, role, np.stack([(x**k).sum(axis=0) for k in range(1, 5)]), x.size)


@dataclass(frozen=True)
class Measurement:
    stats: tuple[LayerStat, ...]
    dtype: str
    sampled: bool = False
    sketch: tuple[SketchPart, ...] = ()
    #: SHA-256 over every attention value read, where the key asked for it and every part was read whole
    attention_digest: str | None = None
