"""The feature score: invariant feature curves, aligned over depth, correlated.

Each feature curve (see :mod:`lineage_scanner.signature.features`) is z-scored per model; features that
are flat or missing are left out. Layers are aligned by dynamic programming (monotone, with a gap cost),
so pruned, truncated and depth-up-scaled models align with their parents layer by layer; the score is the
mean Pearson r of the features over aligned layers. Where two models have equal depth and align one to
one, an exact permutation test of layer order is run too (see :func:`permutation_p`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from lineage_scanner.curves import pearson, zscore
from lineage_scanner.signature.record import FEATURES

GAP = 0.6
#: A feature whose curve moves less than this (std of its log values over layers) carries no shape.
FLAT = 0.01
#: Permutations for the layer-order test; up to 6 layers (720 orders) every one is enumerated instead.
PERMUTATIONS = 2000


def _matrix(features: dict[str, list[float]]) -> tuple[np.ndarray, list[str]]:
    """Layers × usable features, each z-scored; features that are flat or missing are left out."""
    depth = len(next((v for v in features.values() if v is not None), []))
    names = [n for n in FEATURES if features.get(n) is not None and len(features[n]) == depth]
    if depth < 3 or not names:
        return np.empty((depth, 0)), []
    x = np.array([features[n] for n in names], dtype=np.float64).T
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(x).all(axis=0) & (x.std(axis=0) >= FLAT)
    kept = zscore(x[:, keep]) if keep.any() else None
    if kept is None:
        return np.empty((depth, 0)), []
    return kept, [n for n, k in zip(names, keep) if k]


def align(a: np.ndarray, b: np.ndarray, gap: float = GAP) -> list[tuple[int, int]]:
    """Monotone alignment of two layer sequences maximising similarity minus gap costs (Needleman-Wunsch).

    Rows of the DP are computed as whole vectors: a row's best "gap in a" run is a running maximum, so
    ``match`` re-scores hundreds of pairs without a compiler. Ties prefer a match, then a gap in ``b``."""
    sim = 1.0 - ((a[:, None, :] - b[None, :, :]) ** 2).mean(axis=2) / 2.0
    n, m = sim.shape
    steps = gap * np.arange(m + 1)
    score = np.empty((n + 1, m + 1))
    score[0] = -steps
    move = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 match, 1 gap in b (up), 2 gap in a (left)
    for i in range(1, n + 1):
        diag = score[i - 1, :-1] + sim[i - 1]
        up = score[i - 1, 1:] - gap
        best = np.maximum(diag, up)
        row = np.empty(m + 1)
        row[0] = -gap * i
        row[1:] = best
        # row[j] = max(best[j], row[j-1] - gap): a running maximum of row + steps, shifted back
        row = np.maximum.accumulate(row + steps) - steps
        left = row[:-1] - gap
        move[i, 1:] = np.where((diag >= up) & (diag >= left), 0, np.where(up >= left, 1, 2))
        score[i] = row
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if move[i, j] == 0:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif move[i, j] == 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def permutation_p(xa: np.ndarray, xb: np.ndarray, observed: float, rounds: int = PERMUTATIONS,
                  seed: int = 0) -> float:
    """Chance that shuffling the layers of ``b`` scores as high as ``observed``: exact over every
    permutation when there are at most ``rounds`` of them, else from ``rounds`` random ones.

    Columns are z-scored, so the score of a permutation is a mean of inner products. It tests layer
    correspondence against layers in random order; curves that share a depth trend are not exchangeable,
    which is why the verdict also needs the null of unrelated models."""
    n = len(xa)
    if math.factorial(n) <= rounds:
        orders = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        orders = np.argsort(rng.random((rounds, n)), axis=1)
    za, zb = zscore(xa), zscore(xb)
    scores = np.einsum("if,pif->p", za, zb[orders]) / (n * za.shape[1])
    hits = int((scores >= observed - 1e-12).sum())
    exact = len(orders) == math.factorial(n)
    return hits / len(orders) if exact else (1 + hits) / (1 + len(orders))


@dataclass(frozen=True)
class Evidence:
    score: float
    per_feature: dict[str, float]
    alignment: list[tuple[int, int]]
    features: list[str]
    #: the layer-order permutation test, where it applies (equal depths aligned one to one)
    permutation_p: float | None = None


def evidence(a: dict[str, list[float]], b: dict[str, list[float]]) -> Evidence:
    ma, na = _matrix(a)
    mb, nb = _matrix(b)
    shared = [f for f in na if f in nb]
    if len(shared) == 0 or len(ma) < 3 or len(mb) < 3:
        return Evidence(math.nan, {}, [], shared)
    xa = ma[:, [na.index(f) for f in shared]]
    xb = mb[:, [nb.index(f) for f in shared]]
    pairs = align(xa, xb)
    if len(pairs) < 3:
        return Evidence(math.nan, {}, pairs, shared)
    ia, ib = (list(t) for t in zip(*pairs))
    r = np.atleast_1d(pearson(xa[ia], xb[ib]))
    per = {f: float(r[k]) if np.isfinite(r[k]) else math.nan for k, f in enumerate(shared)}
    finite = [v for v in per.values() if math.isfinite(v)]
    score = float(np.mean(finite)) if finite else math.nan
    perm = None
    if math.isfinite(score) and len(xa) == len(xb) == len(pairs) and all(i == j for i, j in pairs):
        usable = [k for k, f in enumerate(shared) if math.isfinite(per[f])]
        perm = permutation_p(xa[:, usable], xb[:, usable], score)
    return Evidence(score, per, pairs, shared, perm)
