"""Estimating a tensor's moments from a sample: short runs spread over it, not blocks of rows.

Rows and heads of real Q/K projections differ in scale, so a few contiguous row blocks misjudge a
matrix's std by 8-17%; runs spread evenly over it do far better. A matrix is cut into the sketch's
equal bands of rows and one run is read in each (stratified, so every head and row band is represented),
placed over the sketch's run in that band (:mod:`lineage_scanner.measure.sketch`): the sketch costs no
request of its own, and two sampled scans of related models read the same elements. The number of runs is
fixed because over HTTP each run is one range request; their length grows with the fraction instead. The
estimate pools the runs' moments exactly; its standard errors come from the spread of the runs' moments,
and ``--sample-error`` raises the fraction until it is met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lineage_scanner.measure.kernels.stats import Moments

#: A sample this large reads the segment whole: the exact answer costs about as much.
FULL_READ = 0.5
ROUNDS = 3


@dataclass(frozen=True)
class SamplePlan:
    """``fraction`` of each tensor to read, or ``target_se``: the relative standard error of std to reach."""

    fraction: float | None = None
    target_se: float | None = None


def fraction_for(target_se: float, length: int) -> float:
    """The fraction to start from for ``target_se``: enough elements if the values were independent with the
    kurtosis of trained weights (about 9), n = (kurtosis - 1) / (4 E²), times a design effect of 2 for runs
    taken in clusters from rows of unequal scale."""
    return min(1.0, 4.0 / (target_se**2 * length))


def run_length(length: int, fraction: float, runs: int, at_least: int) -> int | None:
    """How long each of ``runs`` runs must be to read ``fraction`` of ``length`` elements (never shorter than
    ``at_least``, the sketch's run); None means read it whole."""
    want = math.ceil(fraction * length)
    if fraction >= FULL_READ or want >= length:
        return None
    return max(at_least, math.ceil(want / runs))


def placed(anchors: np.ndarray, anchor_run: int, lows: np.ndarray, highs: np.ndarray, run: int) -> np.ndarray | None:
    """Run starts, each run ``run`` long, inside [lows[k], highs[k]) and covering the anchored run
    [anchors[k], anchors[k] + anchor_run); None when a run does not fit (read the segment whole instead)."""
    if run > int((highs - lows).min()):
        return None
    return np.maximum(lows, np.minimum(anchors, highs - run))


def pooled(runs: list[Moments]) -> tuple[Moments, float, float]:
    """The runs' merged moments, the relative standard error of their std and the standard error of their
    kurtosis.

    ``runs`` come in stratum order. Both errors use the collapsed-strata estimator: neighbouring strata are
    paired and only the differences within pairs count, so scale differences between heads (which the
    stratified design balances out) do not inflate them. The kurtosis is a ratio of the 4th and 2nd central
    powers, so its error comes from each run's linearised contribution to that ratio (the delta method)."""
    total = Moments()
    for m in runs:
        total = total + m
    if len(runs) < 2 or total.count < 2 or total.var == 0:
        return total, math.inf, math.inf
    n = np.array([m.count for m in runs], dtype=np.float64)
    d = np.array([m.mean for m in runs]) - total.mean
    m2, m3, m4 = (np.array([getattr(m, k) for m in runs]) for k in ("m2", "m3", "m4"))
    second = (m2 + n * d**2) / n  # each run's mean 2nd and 4th power around the pooled mean
    fourth = (m4 + 4 * d * m3 + 6 * d**2 * m2 + n * d**4) / n
    b, a = total.m2 / total.count, total.m4 / total.count
    linear = fourth / b**2 - 2 * a * second / b**3  # each run's share of a change in a / b²

    def se_of_mean(x: np.ndarray) -> float:
        pairs = len(x) // 2
        diffs = x[0 : 2 * pairs : 2] - x[1 : 2 * pairs : 2]
        return math.sqrt(float((diffs**2).sum())) / (2 * pairs)

    return total, float(se_of_mean(second) / (2.0 * b)), float(se_of_mean(linear))


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
