"""The same-shape test: two models' value sketches compared position by position, layers paired by them.

Every attention matrix whose shape is the same in both models is compared at the positions its store's key
chose (:mod:`lineage_scanner.measure.sketch`), with the exact null and the two statistics of
:mod:`lineage_scanner.lineage.positional`: the plain one, which scrubbing a few percent of a copy cannot
silence (only it may call a pair uncorrelated), and the robust one, which copying a few percent of a famous
model into an unrelated one cannot raise (only it may call a pair derived). Per layer pair, t² summed over
the Q/K/V/O channels is chi-squared under the null; layers pair by it (see :func:`pair_layers`). Only t²
counts for the pairing and the plain test, so rescaling and sign flips change nothing, and Q/K/V are
sketched with the norm gain folded in, so folding changes nothing either. If the bulk of a pair's plain
statistics is still clearly wider than N(0, 1), the null widens by that spread.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from lineage_scanner.lineage.positional import (
    LOG10,
    LOG_FIRM_P,
    TRIM,
    log_tail,
    pair_layers,
    scaled,
    self_normalised,
    trimmed,
    weighted_majority,
)
from lineage_scanner.measure.sketch import SketchPart

#: Correlations a pair must offer before their spread is trusted to widen the null.
MIN_SPREAD_ENTRIES = 16
#: Above this |r| on every paired matrix, two models hold the same weights at every sketched position.
IDENTICAL_R = 0.9999


@dataclass(frozen=True)
class SketchEvidence:
    """What the value sketches of two models say: the channels tested (roles whose shape is equal in both),
    the layer pairing (layer of a, layer of b: the firm pairs, or every best match when none is firm) with
    each pair's mean |r| over those channels, and both tests' p-values as base-10 logarithms (they underflow
    a float for any real derivation): the plain one (``log10_p``) and the robust one (``robust_log10_p``),
    with the share of compared values whose matrices the robust test finds firm."""

    roles: tuple[str, ...]
    pairing: tuple[tuple[int, int], ...]
    r: tuple[float, ...]
    log10_p: float
    robust_log10_p: float = 0.0
    firm_share: float = 0.0
    #: how much wider the pair's bulk of statistics is than independence predicts (1: not at all)
    spread: float = 1.0
    #: per channel, the median |r| over the paired layers
    per_channel: dict[str, float] | None = None
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
        """Equal at every sketched position (rounding aside). Not proof of identical weights: a few percent
        of positions read say nothing of the rest (see :mod:`lineage_scanner.run.verify`)."""
        return bool(self.r) and min(self.r) >= IDENTICAL_R

    @property
    def in_order(self) -> bool:
        """Every layer paired with the layer of the same index (no layer dropped, moved or repeated)."""
        return all(i == j for i, j in self.pairing)


def sketch_evidence(a: tuple[SketchPart, ...], b: tuple[SketchPart, ...]) -> SketchEvidence | None:
    """The exact same-shape test; None when no value sketch has the same matrix shape in both models."""
    a = tuple(p for p in a if p.kind == "values")
    b = tuple(p for p in b if p.kind == "values")
    roles = sorted(c for c in {p.channel for p in a} & {p.channel for p in b}
                   if _shape(a, c) is not None and _shape(a, c) == _shape(b, c))
    if not roles:
        return None
    layers_a = sorted({p.layer for p in a if p.channel in roles})
    layers_b = sorted({p.layer for p in b if p.channel in roles})
    chi = np.zeros((len(layers_a), len(layers_b)))
    dof = np.zeros_like(chi)
    spreads, abs_r, xs = [], {}, {}
    for channel in roles:
        xa, xb = _matrix(a, channel, layers_a), _matrix(b, channel, layers_b)
        xs[channel] = (xa, xb)
        abs_r[channel] = np.abs(_pearson(xa, xb))
        t = self_normalised(xa, xb)
        finite = np.isfinite(t)
        spread, entries = 1.0, int(finite.sum())
        if entries >= MIN_SPREAD_ENTRIES:  # widen only when the widening is clearly more than the estimate's noise
            found = float(np.median(np.abs(t[finite]))) / 0.6745
            spread = found if found > 1.0 + 3.0 / math.sqrt(entries) else 1.0
        spreads.append(spread)
        chi += np.where(finite, (t / spread) ** 2, 0.0)
        dof += finite
    paired = pair_layers(chi, dof)
    if paired is None:
        return None
    log_p, pairing, every = paired
    robust, firm_share = _robust(xs, every, _weights(a, roles), len(layers_a), len(layers_b))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():  # a pair no channel covers has no mean
        warnings.simplefilter("ignore", RuntimeWarning)
        grid = np.nanmean(np.stack([abs_r[c] for c in roles]), axis=0)
        mean_r = tuple(float(grid[i, j]) for i, j in pairing)
        per_channel = {c: float(np.nanmedian([abs_r[c][i, j] for i, j in pairing])) for c in roles}
    return SketchEvidence(tuple(roles), tuple((layers_a[i], layers_b[j]) for i, j in pairing), mean_r,
                          log_p / LOG10, robust / LOG10, firm_share, max(spreads), per_channel,
                          (tuple(layers_a), tuple(layers_b)), grid)


def _robust(xs: dict[str, tuple[np.ndarray, np.ndarray]], pairs: list[tuple[int, int]],
            weights: dict[str, float], n_a: int, n_b: int) -> tuple[float, float]:
    """The forgery-proof test over the paired layers (:mod:`lineage_scanner.lineage.positional`): each
    matrix pair's trimmed statistic, its p-value paid for the pairing's choice among the other model's
    layers, then the majority of compared values. Returns (natural log p, share of values firm)."""
    log_ps, ws = [], []
    for channel, (xa, xb) in xs.items():
        for i, j in pairs:
            products = xa[i] * xb[j]
            if not np.isfinite(products).any():
                continue
            n = int(np.isfinite(products).sum())
            z = trimmed(products, math.ceil(TRIM * n))
            candidates = n_b if n_a <= n_b else n_a
            log_ps.append(min(0.0, log_tail(z) + math.log(2.0 * candidates)))
            ws.append(weights[channel])
    log_p, w = np.array(log_ps), np.array(ws)
    if not log_ps:
        return 0.0, 0.0
    return weighted_majority(log_p, w), float(w[log_p < LOG_FIRM_P].sum() / w.sum())


def _weights(parts: tuple[SketchPart, ...], roles: list[str]) -> dict[str, float]:
    """Each channel's matrix size: a forger pays for values, so the majority is counted in values."""
    return {c: float(next(p.rows * p.cols for p in parts if p.channel == c)) for c in roles}


def _shape(parts: tuple[SketchPart, ...], channel: str) -> tuple[int, int, int] | None:
    """The channel's one matrix shape (and sketch size) across layers; None if absent or not one shape."""
    shapes = {(p.rows, p.cols, p.values.size) for p in parts if p.channel == channel}
    return shapes.pop() if len(shapes) == 1 else None


def _matrix(parts: tuple[SketchPart, ...], channel: str, layers: list[int]) -> np.ndarray:
    """Layers × sketch values of one channel, each row on its own robust scale (:func:`scaled`); NaN rows
    where a layer lacks it or its sketch is constant."""
    by = {p.layer: p.values for p in parts if p.channel == channel}
    size = next(iter(by.values())).size
    out = np.full((len(layers), size), np.nan)
    for k, layer in enumerate(layers):
        if layer in by:
            out[k] = by[layer]
    return scaled(out)


def _pearson(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Pearson's r of every layer of one model with every layer of the other."""
    ca = xa - np.nanmean(xa, axis=1, keepdims=True)
    cb = xb - np.nanmean(xb, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ca @ cb.T) / np.outer(np.linalg.norm(ca, axis=1), np.linalg.norm(cb, axis=1))
