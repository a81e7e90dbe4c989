"""The curve score: invariant feature curves, aligned over depth, correlated, and judged against surrogates.

Each feature curve (see :mod:`lineage_scanner.signature.features`) is z-scored per model; features that
are flat, missing, or too noisy for their shape (a sampled scan's standard errors, see :func:`usable`)
are left out. Layers are aligned by dynamic programming (monotone, with a gap cost), so pruned,
truncated and depth-up-scaled models align with their parents layer by layer; the score is the mean
Pearson r of the features over aligned layers.

Models of one era share depth trends (stds that rise with depth, kurtosis that peaks early), so a high
score alone proves little. :func:`surrogate_p` asks how often curves with the same trends but unrelated
wiggles score as high: each model's curves are split into a smooth trend (a quadratic in relative
depth) and a residual, the residual's phases are randomised (keeping its spectrum, so its smoothness),
and the surrogate pairs are aligned and scored exactly as the judged pair was, gaps and all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lineage_scanner.curves import zscore
from lineage_scanner.signature.record import FEATURES

GAP = 0.6
#: A feature whose curve moves less than this (std of its values over layers) carries no shape.
FLAT = 0.01
#: A sampled feature is kept while its points' error (RMS) is at most this share of how much the curve
#: moves: Pearson's r then loses at most ~1% to the noise.
NOISE_SHARE = 0.15
#: Surrogate pairs per test: p resolves down to 1 / (SURROGATES + 1) = 0.0005.
SURROGATES = 1999
#: Degree of the depth trend each model keeps in its surrogates.
TREND_DEGREE = 2
#: Cells of alignment traceback held at once (one byte each): the batch of surrogate pairs aligned together
#: shrinks with depth, so 4,096 layers align in the memory 80 do.
CELLS = 1 << 24
#: Surrogate pairs made at once (each [depth, features] floats, on both sides), fewer at great depth.
SURROGATE_CHUNK = 500


def usable(features: dict[str, list[float]], errors: dict[str, list[float]] | None = None
           ) -> tuple[np.ndarray, list[str]]:
    """Layers × usable features, each z-scored; features that are flat, missing or too noisy left out."""
    depth = len(next((v for v in features.values() if v is not None), []))
    names = [n for n in FEATURES if features.get(n) is not None and len(features[n]) == depth]
    if depth < 3 or not names:
        return np.empty((depth, 0)), []
    x = np.array([features[n] for n in names], dtype=np.float64).T
    with np.errstate(invalid="ignore"):
        spread = x.std(axis=0)
        keep = np.isfinite(x).all(axis=0) & (spread >= FLAT)
        if errors:
            noise = np.array([math.sqrt(np.nanmean(np.square(errors[n]))) if errors.get(n) else 0.0
                              for n in names])
            keep &= ~(noise > NOISE_SHARE * spread)
    kept = zscore(x[:, keep]) if keep.any() else None
    if kept is None:
        return np.empty((depth, 0)), []
    return kept, [n for n, k in zip(names, keep) if k]


def align(xa: np.ndarray, xb: np.ndarray, gap: float = GAP) -> np.ndarray:
    """Monotone alignments of pairs of layer sequences maximising similarity minus gap costs
    (Needleman-Wunsch), for a batch: ``xa`` [B, n, f] and ``xb`` [B, m, f] give the matched layers as
    [B, min(n, m), 2] pairs (a's layer, b's layer), in order, -1 after each alignment's last pair.

    Rows of the DP are whole vectors over the batch and one model's layers: a row's best "gap in a" run is
    a running maximum, so thousands of surrogate pairs align in the time of a few. Memory is bounded
    whatever the depth: the similarity is made a row at a time, and the batch is taken in chunks whose
    traceback (one byte per cell) holds at most CELLS cells. Ties prefer a match, then a gap in ``b``."""
    batch, n, m = len(xa), xa.shape[1], xb.shape[1]
    out = np.full((batch, min(n, m), 2), -1, dtype=np.int32)
    step = max(1, CELLS // ((n + 1) * (m + 1)))
    for lo in range(0, batch, step):
        out[lo : lo + step] = _align_chunk(xa[lo : lo + step], xb[lo : lo + step], gap)
    return out


def _align_chunk(xa: np.ndarray, xb: np.ndarray, gap: float) -> np.ndarray:
    batch, n, m = len(xa), xa.shape[1], xb.shape[1]
    steps = gap * np.arange(m + 1)
    prev = np.broadcast_to(-steps, (batch, m + 1))
    move = np.zeros((batch, n + 1, m + 1), dtype=np.int8)  # 0 match, 1 gap in b (up), 2 gap in a (left)
    for i in range(1, n + 1):
        sim = 1.0 - ((xa[:, i - 1, None, :] - xb) ** 2).mean(axis=2) / 2.0
        diag = prev[:, :-1] + sim
        up = prev[:, 1:] - gap
        row = np.empty((batch, m + 1))
        row[:, 0] = -gap * i
        row[:, 1:] = np.maximum(diag, up)
        # row[j] = max(best[j], row[j-1] - gap): a running maximum of row + steps, shifted back
        row = np.maximum.accumulate(row + steps, axis=1) - steps
        left = row[:, :-1] - gap
        move[:, i, 1:] = np.where((diag >= up) & (diag >= left), 0, np.where(up >= left, 1, 2))
        prev = row
    pairs = np.full((batch, min(n, m), 2), -1, dtype=np.int32)
    found = np.zeros(batch, dtype=np.int64)  # pairs found so far, from the end
    rows = np.arange(batch)
    i, j = np.full(batch, n), np.full(batch, m)
    while True:
        live = (i > 0) & (j > 0)
        if not live.any():
            break
        kind = np.where(live, move[rows, i, j], -1)
        hit = kind == 0
        pairs[rows[hit], found[hit]] = np.stack([i[hit] - 1, j[hit] - 1], axis=1)
        found += hit
        i = i - ((kind == 0) | (kind == 1))
        j = j - ((kind == 0) | (kind == 2))
    for b in range(batch):  # found from the end: put each path in order
        pairs[b, : found[b]] = pairs[b, found[b] - 1 :: -1] if found[b] else pairs[b, :0]
    return pairs


def correlations(xa: np.ndarray, xb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Pearson r per feature over each alignment's matched layers (``pairs`` as :func:`align` gives them):
    [B, f]; NaN under 3 matched layers."""
    w = (pairs[:, :, 0] >= 0).astype(np.float64)[:, :, None]
    rows = np.arange(len(pairs))[:, None]
    ga, gb = xa[rows, np.maximum(pairs[:, :, 0], 0)] * w, xb[rows, np.maximum(pairs[:, :, 1], 0)] * w
    count = w.sum(axis=1)
    sa, sb = ga.sum(axis=1), gb.sum(axis=1)
    saa, sbb, sab = (ga * ga).sum(axis=1), (gb * gb).sum(axis=1), (ga * gb).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (count * sab - sa * sb) / np.sqrt((count * saa - sa * sa) * (count * sbb - sb * sb))
    r[np.broadcast_to(count < 3, r.shape)] = np.nan
    return r


def surrogates(x: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``draws`` surrogates of a layers × features matrix: its depth trend plus its residual with randomised
    phases (the same phases for every feature, so features keep their cross-correlation), z-scored: [draws,
    n, f]."""
    n = len(x)
    t = np.linspace(-1.0, 1.0, n)
    basis = np.vander(t, TREND_DEGREE + 1)
    trend = basis @ np.linalg.lstsq(basis, x, rcond=None)[0]
    spectrum = np.fft.rfft(x - trend, axis=0)
    phases = rng.uniform(0, 2 * np.pi, (draws, spectrum.shape[0], 1))
    phases[:, 0] = 0.0  # the mean stays the mean
    if n % 2 == 0:  # the Nyquist term stays real
        phases[:, -1] = np.pi * rng.integers(0, 2, (draws, 1))
    residual = np.fft.irfft(spectrum[None] * np.exp(1j * phases), n=n, axis=1)
    out = trend[None] + residual
    spread = out.std(axis=1, keepdims=True)
    return (out - out.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)


def surrogate_p(xa: np.ndarray, xb: np.ndarray, observed: float, draws: int = SURROGATES, seed: int = 0) -> float:
    """Chance that two models with these depth trends but unrelated curves otherwise score ``observed`` or
    more, aligned as freely: (1 + hits) / (1 + draws)."""
    rng = np.random.default_rng(seed)
    done, hits = 0, 0
    chunk = max(1, min(SURROGATE_CHUNK, CELLS // ((len(xa) + 1) * (len(xb) + 1))))
    while done < draws:  # in chunks, to bound memory at long depths
        size = min(chunk, draws - done)
        sa, sb = surrogates(xa, size, rng), surrogates(xb, size, rng)
        r = correlations(sa, sb, align(sa, sb))
        finite = np.isfinite(r)
        scores = np.where(finite.any(axis=1), np.where(finite, r, 0.0).sum(axis=1) / np.maximum(finite.sum(axis=1), 1),
                          -np.inf)
        hits += int(np.sum(scores >= observed - 1e-12))
        done += size
    return (1 + hits) / (1 + draws)


@dataclass(frozen=True)
class Evidence:
    score: float
    per_feature: dict[str, float]
    alignment: list[tuple[int, int]]
    features: list[str]
    #: the surrogate test of the score (see :func:`surrogate_p`), where the score could be computed
    surrogate_p: float | None = None


def evidence(a: dict[str, list[float]], b: dict[str, list[float]], a_errors: dict | None = None,
             b_errors: dict | None = None, surrogate: bool = True) -> Evidence:
    """The curve evidence of two models (features and their errors, see :func:`usable`); without
    ``surrogate``, the score alone (what a null's own pairs need)."""
    ma, na = usable(a, a_errors)
    mb, nb = usable(b, b_errors)
    shared = [f for f in na if f in nb]
    if len(shared) == 0 or len(ma) < 3 or len(mb) < 3:
        return Evidence(math.nan, {}, [], shared)
    xa = ma[:, [na.index(f) for f in shared]]
    xb = mb[:, [nb.index(f) for f in shared]]
    path = align(xa[None], xb[None])
    pairs = [(int(i), int(j)) for i, j in path[0] if i >= 0]
    if len(pairs) < 3:
        return Evidence(math.nan, {}, pairs, shared)
    r = correlations(xa[None], xb[None], path)[0]
    per = {f: float(r[k]) if np.isfinite(r[k]) else math.nan for k, f in enumerate(shared)}
    finite = [v for v in per.values() if math.isfinite(v)]
    score = float(np.mean(finite)) if finite else math.nan
    p = surrogate_p(xa, xb, score) if surrogate and math.isfinite(score) else None
    return Evidence(score, per, pairs, shared, p)
