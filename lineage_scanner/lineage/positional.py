"""Two models' values compared position by position: an exact null, and a test no few percent can move.

**The null.** Training is equivariant under flipping the sign of a residual-stream coordinate (with its
column of Q/K/V, its row of O and every other weight that touches it), of a head dimension (a row of V with
the matching column of O), and random inits are symmetric under both. So at any position a model trained on
its own has a value whose sign is a fair coin given its magnitude, and for two models trained apart the
products a_i·b_i are positive or negative with equal chance, whatever magnitudes they share by position.
A self-normalised sum t = Σ a_i b_i / √(Σ a_i² b_i²) is then a Rademacher sum, whose tail is bounded
without any model of the weights: by exp(-t²/2) (Hoeffding) and by 2e³/9 · Φ̄(t) (Pinelis), the smaller
taken. Each model's values are first put on their own robust scale and clipped at ±CLIP (an odd map, so
the null holds), which keeps a heavy-tailed matrix's few largest weights from carrying the whole sum.

**Two questions, two statistics.** A verdict of ``derived`` must survive an adversary who copies a few
percent of a famous model's values into an unrelated one; a verdict of ``unrelated`` must survive one who
scrubs a few percent of a copy. No one statistic does both:

- *plain* (scrub-proof): t over every position. Replacing a few percent of a copy's values by noise leaves
  t nearly where it was, so only a plain t that finds nothing lets a pair be called unrelated.
- *robust* (forgery-proof): per matrix, the TRIM share of positions that most favour lineage are given
  away to the adversary before anything is counted. If at most that many positions are forged, what is
  left is no larger than the honest positions' own sum (dropping the largest positive products removes at
  least as much as any forged set could add), so the same tail bound holds. Then a verdict needs the
  robust test firm on matrices holding at least MAJORITY of the compared values; a forger who fills whole
  matrices instead must pay for half of all attention values. The robust p-value is the number of matrix
  pairs times the p-value at that majority (a union bound: some honest matrix would have to be that firm
  by chance, whatever the dependence between matrices).

A derivation keeps its weights correlated at every position, so both statistics see it; a forgery makes
the plain t large and the robust one nothing, and the two disagreeing is itself a finding.

**Pairing.** Layers are paired by the values themselves: each layer of one model with its best match in the
other, both ways round; the direction that pairs more layers firmly is kept (a pruned child pairs each of
its layers with the parent layer it came from, a depth-up-scaled one its repeated layers with their
source). The search is paid for: each layer's best of m candidates is Šidák-corrected, the layers combine by
Fisher's method, the chosen direction is Bonferroni-corrected.
"""

from __future__ import annotations

import math

import numpy as np

#: Values beyond this many robust standard deviations count as this many (a Huber-like clip).
CLIP = 1.5
#: The share of each matrix's positions the robust test gives away to a forger.
TRIM = 0.1
#: The share of compared values whose matrices must be firm for the robust test to speak.
MAJORITY = 0.5
#: A layer pair counts in the reported pairing when its own (corrected) p-value is below this.
LOG_FIRM_P = math.log(1e-3)
LOG10 = math.log(10.0)
_PINELIS = math.log(2 * math.e**3 / 9)


def scaled(x: np.ndarray) -> np.ndarray:
    """Each row on its own robust scale (median absolute value / 0.6745), clipped at ±CLIP; a row that is
    all zero (or NaN) comes back NaN: it says nothing."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        magnitude = np.abs(x)
        whole = np.isfinite(x).all(axis=-1, keepdims=True)  # rows are either whole or missing (NaN)
        scale = np.where(whole, np.median(np.where(whole, magnitude, 0.0), axis=-1, keepdims=True), np.nan) / 0.6745
        rms = np.sqrt(np.mean(x * x, axis=-1, keepdims=True))
        scale = np.where(scale > 0, scale, rms)  # a sparse row (mostly zeros) falls back on its RMS
        out = np.clip(x / scale, -CLIP, CLIP)
    return np.where(np.isfinite(scale) & (scale > 0), out, np.nan)


def self_normalised(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """t = Σ a·b / √(Σ a²·b²) for every row of ``xa`` against every row of ``xb`` (NaN where undefined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xa @ xb.T) / np.sqrt(np.square(xa) @ np.square(xb).T)


def trimmed(products: np.ndarray, give_away: int) -> float:
    """The robust statistic of one matrix pair: in the direction (sign) that favours lineage more, the sum
    of the products without the ``give_away`` largest of them, over √(Σ products²). Both directions are
    tried, so its p-value is twice the one-sided tail."""
    p = products[np.isfinite(products)]
    norm = math.sqrt(float(np.sum(p * p)))
    if norm == 0.0:
        return 0.0
    give_away = min(give_away, p.size)
    best = -math.inf
    for signed in (p, -p):
        top = np.partition(signed, signed.size - give_away)[signed.size - give_away :] if give_away else []
        best = max(best, (float(signed.sum()) - float(np.sum(np.maximum(top, 0.0)))) / norm)
    return best


def log_tail(z: float) -> float:
    """Natural log of a bound on P(S >= z·‖w‖) for any Rademacher sum S = Σ ε_i w_i: the smaller of
    Hoeffding's and Pinelis's."""
    if not z > 0:
        return 0.0
    return min(0.0, -0.5 * z * z, _PINELIS + log_normal_sf(z))


def log_normal_sf(z: float) -> float:
    """log P(N(0,1) >= z), finite far into the tail."""
    if z < 30.0:
        return math.log(0.5 * math.erfc(z / math.sqrt(2.0)))
    return -0.5 * z * z - math.log(z * math.sqrt(2.0 * math.pi)) + math.log1p(-1.0 / (z * z))


def weighted_majority(log_p: np.ndarray, weight: np.ndarray) -> float:
    """The smallest log p such that matrices at or below it hold at least MAJORITY of the weight, plus the
    log of how many there are (the union bound); 0 when nothing is compared."""
    if log_p.size == 0 or weight.sum() <= 0:
        return 0.0
    order = np.argsort(log_p)
    reached = np.cumsum(weight[order]) >= MAJORITY * weight.sum() - 1e-12
    quantile = float(log_p[order][int(np.argmax(reached))])
    return min(0.0, quantile + math.log(log_p.size))


def pair_layers(chi: np.ndarray, dof: np.ndarray) -> tuple[float, list[tuple[int, int]], list[tuple[int, int]]] | None:
    """Pair layers both ways round (chi-squared per layer pair); the direction that pairs more layers
    firmly (a pruned child's layers, or an up-scaled one's), else the stronger one. Returns the natural log
    of the combined p-value, paid for that choice, the reported pairs (the firm ones, or every best match if
    none is) and every best match of the chosen direction."""
    forward, backward = _direction(chi, dof), _direction(chi.T, dof.T)
    if forward is None or backward is None:
        return None
    flip = (backward[2].sum(), -backward[0]) > (forward[2].sum(), -forward[0])
    log_p, best, firm = backward if flip else forward

    def pairs(rows: np.ndarray) -> list[tuple[int, int]]:
        return sorted((int(best[k]), int(k)) if flip else (int(k), int(best[k])) for k in rows)

    every = np.flatnonzero(best >= 0)
    reported = pairs(np.flatnonzero(firm) if firm.any() else every)
    return min(0.0, log_p + math.log(2.0)), reported, pairs(every)


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
        log_p.append(sidak(chi2_logsf(float(chi[i, j]), int(dof[i, j])), int((dof[i] > 0).sum())))
        firm[i] = log_p[-1] < LOG_FIRM_P
    fisher = -2.0 * float(np.sum(log_p))
    return chi2_logsf(fisher, 2 * len(log_p)), best, firm


def sidak(log_p: float, tries: int) -> float:
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
