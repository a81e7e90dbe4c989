"""Estimating a tensor's moments from a sample: short runs spread over it, not blocks of rows.

Rows and heads of real Q/K projections differ in scale, so a few contiguous row blocks misjudge a
matrix's std by 8-17%; runs spread evenly over it do far better. A segment of S elements is cut into R
equal strata and one run of L elements is read from a random offset in each (stratified, so every head
and row band is represented). R is capped (``max_runs``) because over HTTP each run is one range request;
L grows with the fraction instead. The estimate pools the runs' moments exactly; its standard error comes
from the spread of the runs' variances, and ``--sample-error`` raises the fraction until it is met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lineage_scanner.measure.kernels.stats import Moments

RUN = 64
#: Runs (so range requests) per tensor part: stratification improves with more, the request budget
#: (about 5,000 file calls per 5 minutes on a free Hub account) with fewer.
MAX_RUNS = 16
#: A sample this large reads the segment whole: the exact answer costs about as much.
FULL_READ = 0.5
ROUNDS = 3


@dataclass(frozen=True)
class SamplePlan:
    """``fraction`` of each tensor to read, or ``target_se``: the relative standard error of std to reach."""

    fraction: float | None = None
    target_se: float | None = None
    seed: int = 0
    max_runs: int = MAX_RUNS


def fraction_for(target_se: float, length: int) -> float:
    """The fraction to start from for ``target_se``: enough elements if the values were independent with the
    kurtosis of trained weights (about 9), n = (kurtosis - 1) / (4 E²), times a design effect of 2 for runs
    taken in clusters from rows of unequal scale."""
    return min(1.0, 4.0 / (target_se**2 * length))


def runs_for(rng: np.random.Generator, length: int, fraction: float, max_runs: int = MAX_RUNS
             ) -> tuple[np.ndarray, int] | None:
    """Run starts (within [0, length)) and run length for one segment; None means read it whole."""
    want = math.ceil(fraction * length)
    if fraction >= FULL_READ or want >= length:
        return None
    count = max(1, min(max_runs, math.ceil(want / RUN)))
    run = math.ceil(want / count)
    stratum = length / count
    if run >= stratum:
        return None
    base = (np.arange(count) * stratum).astype(np.int64)
    offsets = rng.integers(0, int(stratum) - run + 1, size=count)
    return base + offsets, run


def pooled(runs: list[Moments]) -> tuple[Moments, float]:
    """The runs' merged moments and the relative standard error of their std estimate.

    ``runs`` come in stratum order. The error uses the collapsed-strata estimator: neighbouring strata are
    paired and only the differences within pairs count, so scale differences between heads (which the
    stratified design balances out) do not inflate it."""
    total = Moments()
    for m in runs:
        total = total + m
    if len(runs) < 2 or total.count < 2 or total.var == 0:
        return total, math.inf
    n = np.array([m.count for m in runs], dtype=np.float64)
    means = np.array([m.mean for m in runs])
    m2 = np.array([m.m2 for m in runs])
    per_run_var = (m2 + n * (means - total.mean) ** 2) / n  # each run's variance around the pooled mean
    pairs = len(runs) // 2
    diffs = per_run_var[0 : 2 * pairs : 2] - per_run_var[1 : 2 * pairs : 2]
    se_var = math.sqrt(float((diffs**2).sum())) / (2 * pairs)
    return total, float(se_var / (2.0 * total.var))


def next_fraction(fraction: float, se: float, target: float) -> float:
    """Sample size scales with 1/SE²: aim a little past the target, at most 16× per round."""
    return min(1.0, fraction * min(16.0, 1.2 * (se / target) ** 2))


#: The coarse first pass of ``--sample-error``: enough to see how much each role's curve moves.
SURVEY_SE = 0.05
#: A curve point's standard error, as a share of how much the curve moves between layers, that keeps
#: Pearson's r (and so every lineage score) within about 0.01 of its exact value.
CURVE_NOISE = 0.05


def required_se(curve: list[float], target: float) -> float:
    """The relative standard error a role's points need: ``target``, or less for a flat curve, whose
    shape a small error would already distort."""
    values = np.asarray([v for v in curve if v > 0 and math.isfinite(v)])
    if values.size < 3:
        return target
    return min(target, CURVE_NOISE * float(np.log(values).std()))
