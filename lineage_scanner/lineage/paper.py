"""``paper_score``: the seed method, reproduced exactly as the baseline.

The unbiased std of each whole Q/K/V/O matrix per layer gives one curve per role; each curve is z-scored;
the shorter curve is linearly interpolated to the longer one's depth; Pearson's r is taken per role and
averaged over the roles both models have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lineage_scanner.curves import pearson, resample, zscore
from lineage_scanner.layouts.families import CURVE_ROLES


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
