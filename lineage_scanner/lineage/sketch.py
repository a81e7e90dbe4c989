"""The same-shape test: two models' weight sketches correlated position by position, layers paired by them.

Two models trained apart have independent weights, so the Pearson r of their values at the same n
positions is, after Fisher's transform, normal with variance 1/(n - 3) whatever the weights look like: an
exact null that needs no calibration set and no era of models to compare with. A derived model (fine-tune,
continued training, quantized copy, merge, MoE upcycle) keeps r far from 0. Only |r| counts (z², summed
over the channels of a layer pair, a role's values and its Gram sketch: chi-squared under the null), so
a sign flip or a rescaling changes nothing, Q/K/V are sketched with the norm gain folded in, so folding
changes nothing either, and the Gram sketch ignores a rotation of the residual stream.

Layers are paired by the sketch itself: each layer of one model with its best match in the other, both
ways round, and the direction that pairs more layers firmly is reported (only its firm pairs), so that a
pruned child pairs each of its layers with the parent layer it came from and a depth-up-scaled child its
repeated layers with their source. The search is paid for: each layer's best
of m candidates is Šidák-corrected, the layers' p-values are combined by Fisher's method, and the better
direction is Bonferroni-corrected for having been chosen. If weights share structure that independence
does not explain (the same scale pattern at the same positions), the bulk of the pair's correlations
shows it: their robust spread (median absolute z), when clearly above the theoretical one, widens the null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lineage_scanner.measure.sketch import SketchPart

#: Correlations a pair must offer before their spread is trusted to widen the null.
MIN_SPREAD_ENTRIES = 16
#: Above this |r| on every paired matrix, two models hold the same weights (rounding aside).
IDENTICAL_R = 0.9999
LOG10 = math.log(10.0)
#: A layer pair counts in the reported pairing when its own (corrected) p-value is below this.
LOG_FIRM_P = math.log(1e-3)
#: A rotated copy: Gram sketches at least this close, value sketches no closer than this.
ROTATED_GRAM_R = 0.5
ROTATED_VALUES_R = 0.2


@dataclass(frozen=True)
class SketchEvidence:
    """What the sketches of two models say: the channels compared (a role's values or Gram sketch, where
    its shape is equal in both), the layer pairing (layer of a, layer of b: the firm pairs, or every best
    match when none is firm) with each pair's mean |r| over channels, and the p-value of the exact test as
    a base-10 logarithm (it underflows a float for any real derivation)."""

    roles: tuple[str, ...]
    pairing: tuple[tuple[int, int], ...]
    r: tuple[float, ...]
    log10_p: float
    #: how much wider the pair's bulk of correlations is than independence predicts (1: not at all)
    spread: float = 1.0
    #: per channel, the median |r| over the paired layers
    per_channel: dict[str, float] | None = None

    @property
    def p_value(self) -> float:
        return 10.0**self.log10_p

    @property
    def score(self) -> float:
        """The median over paired layers of their mean |r|: 0 for models trained apart, 1 for a copy."""
        return float(np.median(self.r)) if self.r else math.nan

    @property
    def identical(self) -> bool:
        return bool(self.r) and min(self.r) >= IDENTICAL_R

    @property
    def rotated(self) -> bool:
        """The Gram sketches correlate while the values do not: the same weights in another basis."""
        ch = self.per_channel or {}
        grams = [r for c, r in ch.items() if c.endswith(":gram")]
        values = [r for c, r in ch.items() if ":" not in c]
        return bool(grams and values) and min(grams) > ROTATED_GRAM_R and max(values) < ROTATED_VALUES_R

    @property
    def in_order(self) -> bool:
        """Every layer paired with the layer of the same index (no layer dropped, moved or repeated)."""
        return all(i == j for i, j in self.pairing)


def sketch_evidence(a: tuple[SketchPart, ...], b: tuple[SketchPart, ...]) -> SketchEvidence | None:
    """The exact same-shape test; None when no role has the same matrix shape in both models."""
    channels = sorted({p.channel for p in a} & {p.channel for p in b})
    roles = [c for c in channels if _shape(a, c) is not None and _shape(a, c) == _shape(b, c)]
    if not roles:
        return None
    layers_a = sorted({p.layer for p in a if p.channel in roles})
    layers_b = sorted({p.layer for p in b if p.channel in roles})
    chi = np.zeros((len(layers_a), len(layers_b)))
    dof = np.zeros_like(chi)
    absr = np.zeros_like(chi)
    spreads, per_role_r = [], []
    for role in roles:
        r = _correlations(_matrix(a, role, layers_a), _matrix(b, role, layers_b))
        n = next(p.values.size for p in a if p.channel == role)
        z = np.arctanh(np.clip(r, -0.999999, 0.999999)) * math.sqrt(max(n - 3, 1))
        finite = np.isfinite(z)
        spread, entries = 1.0, int(finite.sum())
        if entries >= MIN_SPREAD_ENTRIES:  # widen only when the widening is clearly more than the estimate's noise
            found = float(np.median(np.abs(z[finite]))) / 0.6745
            spread = found if found > 1.0 + 3.0 / math.sqrt(entries) else 1.0
        spreads.append(spread)
        chi += np.where(finite, (z / spread) ** 2, 0.0)
        dof += finite
        absr += np.where(finite, np.abs(r), 0.0)
        per_role_r.append(np.abs(r))
    forward, backward = _direction(chi, dof), _direction(chi.T, dof.T)
    if forward is None or backward is None:
        return None
    # the direction that pairs more layers firmly (a pruned child's layers, or an up-scaled one's), else the
    # stronger one; either way the choice is paid for below
    flip = (backward[2].sum(), -backward[0]) > (forward[2].sum(), -forward[0])
    log_p, best, firm = backward if flip else forward
    rows = np.flatnonzero(best >= 0)
    if firm.any():
        rows = np.flatnonzero(firm)
    pairing = sorted((int(best[k]), int(k)) if flip else (int(k), int(best[k])) for k in rows)
    log_p = min(0.0, log_p + math.log(2.0))  # the better of two directions was chosen
    mean_r = tuple(float(absr[i, j] / dof[i, j]) for i, j in pairing)
    per_channel = {role: float(np.nanmedian([r[i, j] for i, j in pairing])) for role, r in zip(roles, per_role_r)}
    return SketchEvidence(tuple(roles), tuple((layers_a[i], layers_b[j]) for i, j in pairing), mean_r,
                          log_p / LOG10, max(spreads), per_channel)


def _shape(parts: tuple[SketchPart, ...], channel: str) -> tuple[int, int, int] | None:
    """The channel's one matrix shape (and sketch size) across layers; None if absent or not one shape."""
    shapes = {(p.rows, p.cols, p.values.size) for p in parts if p.channel == channel}
    return shapes.pop() if len(shapes) == 1 else None


def _matrix(parts: tuple[SketchPart, ...], channel: str, layers: list[int]) -> np.ndarray:
    """Layers × sketch values of one channel, each row centred and scaled to unit norm; NaN rows where a
    layer lacks it or its sketch is constant."""
    by = {p.layer: p.values for p in parts if p.channel == channel}
    size = next(iter(by.values())).size
    out = np.full((len(layers), size), np.nan)
    for k, layer in enumerate(layers):
        if layer in by:
            v = by[layer].astype(np.float64)
            v = v - v.mean()
            norm = np.linalg.norm(v)
            if norm > 0:
                out[k] = v / norm
    return out


def _correlations(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    return xa @ xb.T  # rows are centred unit vectors: inner products are Pearson's r (NaN rows stay NaN)


def _direction(chi: np.ndarray, dof: np.ndarray) -> tuple[float, np.ndarray, np.ndarray] | None:
    """Each row's best column, the natural log of the combined p-value of those choices, and which rows'
    choices are firm on their own (corrected p below FIRM_P)."""
    rows = np.flatnonzero((dof > 0).any(axis=1))
    if rows.size == 0:
        return None
    score = np.where(dof > 0, chi, -np.inf)
    best = np.full(len(chi), -1)
    best[rows] = np.argmax(score[rows], axis=1)
    firm = np.zeros(len(chi), dtype=bool)
    log_p = []
    for i in rows:
        j = best[i]
        log_p.append(_sidak(chi2_logsf(float(chi[i, j]), int(dof[i, j])), int((dof[i] > 0).sum())))
        firm[i] = log_p[-1] < LOG_FIRM_P
    fisher = -2.0 * float(np.sum(log_p))
    return chi2_logsf(fisher, 2 * len(log_p)), best, firm


def _sidak(log_p: float, tries: int) -> float:
    """log of 1 - (1 - p)^tries: the chance that the best of ``tries`` independent nulls does as well."""
    if log_p < -30.0:
        return log_p + math.log(tries)
    return math.log(-math.expm1(tries * math.log1p(-math.exp(log_p))))


def chi2_logsf(x: float, dof: int) -> float:
    """log P(X >= x) for X chi-squared with ``dof`` degrees of freedom, exact in the far tail where a
    p-value underflows: the finite series of the survival function for integer ``dof``, summed in logs
    (scipy.stats, which would do it too, costs two seconds to import)."""
    if x <= 0:
        return 0.0
    half = x / 2.0
    if dof % 2 == 0:  # e^(-x/2) sum_{i<k} (x/2)^i / i!
        terms = [-half + i * math.log(half) - math.lgamma(i + 1) for i in range(dof // 2)]
    else:  # erfc(sqrt(x/2)) + e^(-x/2) sum_{1<=i<=k} (x/2)^(i-1/2) / Gamma(i+1/2)
        terms = [_log_erfc(math.sqrt(half))]
        terms += [-half + (i - 0.5) * math.log(half) - math.lgamma(i + 0.5) for i in range(1, dof // 2 + 1)]
    top = max(terms)
    return min(0.0, top + math.log(sum(math.exp(t - top) for t in terms)))


def _log_erfc(y: float) -> float:
    if y < 26.0:
        return math.log(math.erfc(y))
    return -y * y - math.log(y * math.sqrt(math.pi)) + math.log1p(-0.5 / (y * y))
