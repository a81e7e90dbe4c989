"""The same-shape test: two models' weight sketches compared position by position, layers paired by them.

Why it is exact. Training is equivariant under flipping the sign of a residual-stream coordinate (with its
column of Q/K/V and its row of O, and every other weight that touches it), and random inits are symmetric
under it, so at any fixed position a model trained on its own has a weight whose sign is a fair coin given
its magnitude. Two models trained apart therefore give products a_i·b_i of either sign with equal chance,
whatever magnitudes they share by position (rotary dimensions with larger rows, a layer whose scale is
set by the recipe): the self-normalised sum t = Σ a_i b_i / √(Σ a_i² b_i²) is then N(0, 1) (a Rademacher
sum; Hoeffding bounds its tail by exp(-t²/2)) with no assumption on the weights' distribution. Pearson's r
with Fisher's 1/(n - 3) would assume equal variance at every position, and models of one recipe share
exactly that structure, so it overstates the evidence for unrelated pairs; t does not. A derived model
(fine-tune, continued training, quantized copy, merge, MoE upcycle) keeps t far from 0.

Only t² counts (summed over a layer pair's value channels: chi-squared under the null), so a sign flip or
a rescaling changes nothing, and Q/K/V are sketched with the norm gain folded in, so folding changes
nothing either.

The Gram sketches (inner products of anchor rows, unchanged by a rotation of the residual stream) need a
symmetry of their own, since a residual coordinate's sign leaves them as they are. V has one: flipping a
row of V with the matching column of O keeps the function, the init and the optimiser's steps, so each
V row's sign is a fair coin and a Gram entry ⟨v_i, v_k⟩ is multiplied by s_i·s_k. The V Gram test is a
randomisation test over those signs (GRAM_DRAWS sign patterns of the 16 anchor rows, the same for every
pair), exact whatever structure the entries share. Q and K have no such symmetry under rotary embeddings
(one rotary row's sign is not free, and Adam breaks the rotation of a rotary pair), and models of one
recipe do share Q/K Gram structure (|r| up to 0.5 between CPU-trained llamas, bench/accuracy.py): their
Gram sketches are reported, never tested.

Layers are paired by the sketch itself: each layer of one model with its best match in the other, both
ways round, and the direction that pairs more layers firmly is reported (only its firm pairs), so that a
pruned child pairs each of its layers with the parent layer it came from and a depth-up-scaled child its
repeated layers with their source. The search is paid for: each layer's best
of m candidates is Šidák-corrected, the layers' p-values are combined by Fisher's method, and the better
direction is Bonferroni-corrected for having been chosen. If the bulk of a pair's statistics is still
wider than N(0, 1) (their robust spread, median |t|, clearly above the theoretical one), the null is
widened by it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from lineage_scanner.measure.sketch import POSITION_SEED, SKETCH_RUNS, SketchPart

#: Correlations a pair must offer before their spread is trusted to widen the null.
MIN_SPREAD_ENTRIES = 16
#: Above this |r| on every paired matrix, two models hold the same weights (rounding aside).
IDENTICAL_R = 0.9999
LOG10 = math.log(10.0)
#: A layer pair counts in the reported pairing when its own (corrected) p-value is below this.
LOG_FIRM_P = math.log(1e-3)
#: The Gram channel with an exact null (module docstring) and the number of sign patterns drawn for it: a
#: layer pair's p resolves to 1/(GRAM_DRAWS + 1).
TESTED_GRAM = "v:gram"
GRAM_DRAWS = 8191


@dataclass(frozen=True)
class SketchEvidence:
    """What the sketches of two models say: the value channels tested (roles whose shape is equal in both),
    the layer pairing (layer of a, layer of b: the firm pairs, or every best match when none is firm) with
    each pair's mean |r| over those channels, and the p-value of the exact test as a base-10 logarithm (it
    underflows a float for any real derivation)."""

    roles: tuple[str, ...]
    pairing: tuple[tuple[int, int], ...]
    r: tuple[float, ...]
    log10_p: float
    #: how much wider the pair's bulk of statistics is than independence predicts (1: not at all)
    spread: float = 1.0
    #: per channel, the median |r|: over the paired layers for the tested values, over each layer's best
    #: match for the Gram sketches
    per_channel: dict[str, float] | None = None
    #: the V Gram sketch's randomisation test (log10 p, its own pairing), where V has one shape in both
    gram_log10_p: float | None = None
    gram_pairing: tuple[tuple[int, int], ...] = ()
    #: the layers compared (of a, of b) and, for every pair of them, the mean |r| over the value channels:
    #: what a report draws
    layers: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    grid: np.ndarray | None = field(default=None, compare=False, repr=False)

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
    def best_log10_p(self) -> float:
        """The stronger of the two exact tests (values, V Gram)."""
        return min(self.log10_p, self.gram_log10_p if self.gram_log10_p is not None else 0.0)

    @property
    def rotated(self) -> bool:
        """The V Gram test speaks a thousand times more firmly than the values: the same weights in another
        basis (a rotated residual stream)."""
        return self.gram_log10_p is not None and self.gram_log10_p < self.log10_p - 3.0

    @property
    def in_order(self) -> bool:
        """Every layer paired with the layer of the same index (no layer dropped, moved or repeated)."""
        return all(i == j for i, j in self.pairing)


def sketch_evidence(a: tuple[SketchPart, ...], b: tuple[SketchPart, ...]) -> SketchEvidence | None:
    """The exact same-shape test; None when no value sketch has the same matrix shape in both models."""
    channels = sorted({p.channel for p in a} & {p.channel for p in b})
    shared = [c for c in channels if _shape(a, c) is not None and _shape(a, c) == _shape(b, c)]
    roles = [c for c in shared if ":" not in c]  # the value channels: the only ones with an exact null
    if not roles:
        return None
    layers_a = sorted({p.layer for p in a if p.channel in roles})
    layers_b = sorted({p.layer for p in b if p.channel in roles})
    chi = np.zeros((len(layers_a), len(layers_b)))
    dof = np.zeros_like(chi)
    spreads, abs_r = [], {}
    for channel in shared:
        xa, xb = _matrix(a, channel, layers_a), _matrix(b, channel, layers_b)
        abs_r[channel] = np.abs(_pearson(xa, xb))
        if channel not in roles:
            continue
        t = _self_normalised(xa, xb)
        finite = np.isfinite(t)
        spread, entries = 1.0, int(finite.sum())
        if entries >= MIN_SPREAD_ENTRIES:  # widen only when the widening is clearly more than the estimate's noise
            found = float(np.median(np.abs(t[finite]))) / 0.6745
            spread = found if found > 1.0 + 3.0 / math.sqrt(entries) else 1.0
        spreads.append(spread)
        chi += np.where(finite, (t / spread) ** 2, 0.0)
        dof += finite
    paired = _pair(chi, dof)
    if paired is None:
        return None
    log_p, pairing = paired
    with np.errstate(invalid="ignore"), warnings.catch_warnings():  # a pair no channel covers has no mean
        warnings.simplefilter("ignore", RuntimeWarning)
        grid = np.nanmean(np.stack([abs_r[c] for c in roles]), axis=0)
        mean_r = tuple(float(grid[i, j]) for i, j in pairing)
        per_channel = {c: float(np.nanmedian([r[i, j] for i, j in pairing])) for c in roles for r in [abs_r[c]]}
        # the values' pairing says nothing for a rotated copy: a Gram sketch counts at its own best match
        per_channel |= {c: float(np.nanmedian(np.nanmax(r, axis=1))) for c, r in abs_r.items() if c not in roles}
    gram = _gram_test(a, b) if TESTED_GRAM in shared else None
    return SketchEvidence(tuple(roles), tuple((layers_a[i], layers_b[j]) for i, j in pairing), mean_r,
                          log_p / LOG10, max(spreads), per_channel, *(gram or (None, ())),
                          (tuple(layers_a), tuple(layers_b)), grid)


def _pair(chi: np.ndarray, dof: np.ndarray) -> tuple[float, list[tuple[int, int]]] | None:
    """Pair layers both ways round (chi-squared per layer pair); the direction that pairs more layers firmly
    (a pruned child's layers, or an up-scaled one's), else the stronger one. Returns the natural log of the
    combined p-value, paid for that choice, and the pairs (firm ones, or every best match if none is)."""
    forward, backward = _direction(chi, dof), _direction(chi.T, dof.T)
    if forward is None or backward is None:
        return None
    flip = (backward[2].sum(), -backward[0]) > (forward[2].sum(), -forward[0])
    log_p, best, firm = backward if flip else forward
    rows = np.flatnonzero(firm) if firm.any() else np.flatnonzero(best >= 0)
    pairing = sorted((int(best[k]), int(k)) if flip else (int(k), int(best[k])) for k in rows)
    return min(0.0, log_p + math.log(2.0)), pairing  # the better of two directions was chosen


def _gram_test(a: tuple[SketchPart, ...], b: tuple[SketchPart, ...]
               ) -> tuple[float, tuple[tuple[int, int], ...]] | None:
    """The V Gram sketches' randomisation test over V's row signs: log10 p and the layer pairs it rests on.

    Each layer's candidate partner (both ways round) is the one with the largest self-normalised Gram
    statistic; only those pairs are randomised, and the Šidák correction still counts every candidate (the
    chosen pair's p is no smaller than the least of all m, so the union bound holds). Then layers are paired
    and combined as in the values' test (a pair's p as chi-squared on 2 dof)."""
    by_a = {p.layer: p.values.astype(np.float64) for p in a if p.channel == TESTED_GRAM}
    by_b = {p.layer: p.values.astype(np.float64) for p in b if p.channel == TESTED_GRAM}
    signs = _sign_products()
    if next(iter(by_a.values())).size != signs.shape[1]:
        return None  # fewer rows than anchors: some Gram entries are norms, which no sign flip moves
    layers_a, layers_b = sorted(by_a), sorted(by_b)
    ga, gb = np.stack([by_a[i] for i in layers_a]), np.stack([by_b[j] for j in layers_b])
    t = np.abs(_self_normalised(ga, gb))
    t[~np.isfinite(t)] = -1.0
    candidates = {(i, int(j)) for i, j in enumerate(t.argmax(axis=1))}
    candidates |= {(int(i), j) for j, i in enumerate(t.argmax(axis=0))}
    chi = np.zeros((len(layers_a), len(layers_b)))
    for i, j in candidates:
        products = ga[i] * gb[j]  # a's entries fixed, b's row signs drawn
        seen = abs(products.sum())
        beaten = int((np.abs(signs @ products) >= seen * (1 - 1e-9)).sum())
        chi[i, j] = -2.0 * math.log((1.0 + beaten) / (1.0 + len(signs)))
    log_p, pairing = _pair(chi, np.full_like(chi, 2.0))
    return log_p / LOG10, tuple((layers_a[i], layers_b[j]) for i, j in pairing)


@cache
def _sign_products() -> np.ndarray:
    """GRAM_DRAWS patterns of s_i·s_k over the anchor-row pairs of the Gram sketch's upper triangle."""
    signs = np.random.default_rng(POSITION_SEED).choice([-1.0, 1.0], size=(GRAM_DRAWS, SKETCH_RUNS))
    i, k = np.triu_indices(SKETCH_RUNS, 1)
    return signs[:, i] * signs[:, k]


def _shape(parts: tuple[SketchPart, ...], channel: str) -> tuple[int, int, int] | None:
    """The channel's one matrix shape (and sketch size) across layers; None if absent or not one shape."""
    shapes = {(p.rows, p.cols, p.values.size) for p in parts if p.channel == channel}
    return shapes.pop() if len(shapes) == 1 else None


def _matrix(parts: tuple[SketchPart, ...], channel: str, layers: list[int]) -> np.ndarray:
    """Layers × sketch values of one channel, each row centred; NaN rows where a layer lacks it or its
    sketch is constant."""
    by = {p.layer: p.values for p in parts if p.channel == channel}
    size = next(iter(by.values())).size
    out = np.full((len(layers), size), np.nan)
    for k, layer in enumerate(layers):
        if layer in by:
            v = by[layer].astype(np.float64)
            v = v - v.mean()
            if np.any(v):
                out[k] = v
    return out


def _pearson(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Pearson's r of every layer of one model with every layer of the other (rows are centred)."""
    na, nb = np.linalg.norm(xa, axis=1), np.linalg.norm(xb, axis=1)
    return (xa @ xb.T) / np.outer(na, nb)


def _self_normalised(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """t = Σ a·b / √(Σ a²·b²) for every layer pair: N(0, 1) under sign-symmetric independence (module
    docstring), whatever magnitudes the two models share position by position."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xa @ xb.T) / np.sqrt(np.square(xa) @ np.square(xb).T)


def _direction(chi: np.ndarray, dof: np.ndarray) -> tuple[float, np.ndarray, np.ndarray] | None:
    """Each row's best column, the natural log of the combined p-value of those choices, and which rows'
    choices are firm on their own (corrected p below LOG_FIRM_P)."""
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
