"""How close two related models are: an effect size that orders relatives, where a p-value cannot.

A verdict's p-value says how sure it is that two models are related; for any real derivation it is
astronomically small (1e-600 against 1e-650) and ranks nothing. Which relative a model was made *from*
is a question of distance: a child is closer to its parent than to its siblings, which share the parent's
weights plus a change of their own. So each related pair gets a closeness from the evidence that tied
it, on the scale of that evidence:

- ``weights``: the weight sketches' mean |r| over every paired matrix and value channel. Each matrix's
  r is computed on its own (a layer's scale, which training moves, changes nothing) and the mean is over
  all of them, not a median of layer means: the parent of a continued-training child beats the child's
  sibling fine-tune by about 0.0012 in r, which a median over 12 layers barely resolves and a mean over
  48 matrices of 400 values resolves at about ten standard errors.
- ``circuits``: where the values do not tie the pair but the circuit sketches do (a copy reparametrised
  by a map that keeps its outputs), the circuits' median r over paired layers; the Gram sketches' r where
  only they do (a rotated residual stream).
- ``curves``: where only the feature curves do (other widths), the curve score.

The three scales are not comparable, so a distance carries its tier: any relative tied by the weights
is nearer than one tied only by circuits, which is nearer than one tied only by curves. Within a
tier the distance is -log r, which adds up along a chain of independent changes (r multiplies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lineage_scanner.lineage.circuits import CircuitEvidence
from lineage_scanner.lineage.sketch import SketchEvidence
from lineage_scanner.lineage.verdict import LOG10_DERIVED

#: Tiers of evidence, nearest first; a distance is the tier's offset plus -log r within it.
TIERS = ("weights", "circuits", "curves")
#: Far above any -log r a derivation leaves (a continued-training child: 0.05), so tiers never mix.
TIER_STEP = 10.0
#: Closeness is clipped here before its log: a pair whose evidence gives nothing usable sits at the far end.
FLOOR = 1e-6
#: Sketches tie two models (already known to be relatives) at this mean |r|: models trained apart sit
#: near 0.05 (0.14 for the most alike recipes), every derivation the weights keep above 0.9.
TIED_R = 0.5


@dataclass(frozen=True)
class Closeness:
    """The closeness of two related models: ``value`` (an |r| on the scale of ``evidence``, 1 for the
    same weights) and the evidence it was measured on (one of :data:`TIERS`)."""

    value: float
    evidence: str

    @property
    def distance(self) -> float:
        """Tier offset plus -log of the value: additive along a chain of derivations within a tier."""
        value = self.value if math.isfinite(self.value) else FLOOR
        return TIERS.index(self.evidence) * TIER_STEP - math.log(min(max(value, FLOOR), 1.0))


def closeness(a, b, sketch: SketchEvidence | None, curve_score: float,
              circuits: CircuitEvidence | None = None) -> Closeness:
    """The closeness of signatures ``a`` and ``b`` (each with its ``sketch`` parts) from their value sketch
    evidence (None where no shape is shared), their circuit evidence and their curve score."""
    if sketch is not None and sketch.log10_p <= LOG10_DERIVED:
        value = _mean_abs_r(a.sketch, b.sketch, sketch.pairing, sketch.roles)
        if math.isfinite(value):
            return Closeness(value, "weights")
    if circuits is not None:
        if circuits.log10_p <= LOG10_DERIVED and math.isfinite(circuits.score):
            return Closeness(abs(circuits.score), "circuits")
        if circuits.gram_r is not None and circuits.gram_log10_p is not None and circuits.gram_log10_p <= LOG10_DERIVED:
            return Closeness(abs(circuits.gram_r), "circuits")
    return Closeness(curve_score if math.isfinite(curve_score) else FLOOR, "curves")


@dataclass(frozen=True)
class Grid:
    """Mean |r| over ``channels`` for every pair of layers (rows: ``layers_a``), and the pairing it
    implies: each layer of the shallower model with its best match in the other."""

    grid: np.ndarray
    layers_a: tuple[int, ...]
    layers_b: tuple[int, ...]
    channels: tuple[str, ...] = ()

    @property
    def pairing(self) -> list[tuple[int, int]]:
        if len(self.layers_a) <= len(self.layers_b):
            return [(i, self.layers_b[k]) for i, k in zip(self.layers_a, np.argmax(self.grid, axis=1))]
        return [(self.layers_a[k], j) for j, k in zip(self.layers_b, np.argmax(self.grid, axis=0))]


def measured(a, b) -> tuple[Closeness, Grid] | None:
    """The weights' closeness of two signatures that were not judged, where their sketches tie them (mean
    |r| at least :data:`TIED_R` over the best-matching layers): relatives of one query, whose kinship that
    query's verdicts already proved. Correlations only, no exact test: they cost a few milliseconds where a
    verdict costs a second. None where no value channel has one shape in both, or the sketches do not tie."""
    values = [c for c in sorted({p.channel for p in a.sketch} & {p.channel for p in b.sketch}) if ":" not in c]
    found = channel_grid(a.sketch, b.sketch, values)
    if found is None:
        return None
    value = _mean_abs_r(a.sketch, b.sketch, found.pairing, found.channels)
    if not math.isfinite(value) or value < TIED_R:
        return None
    return Closeness(value, "weights"), found


def channel_grid(a_parts, b_parts, channels) -> Grid | None:
    """Mean |r| of every layer pair over those of ``channels`` that have one matrix shape in both sketches
    (values, or a circuit channel such as ``ov:circuit``); None where none has."""
    shared = [c for c in channels if len(_shapes(a_parts, c)) == 1 and _shapes(a_parts, c) == _shapes(b_parts, c)]
    if not shared:
        return None
    layers_a = sorted({p.layer for p in a_parts if p.channel in shared})
    layers_b = sorted({p.layer for p in b_parts if p.channel in shared})
    grids = np.stack([np.abs(_rows(a_parts, c, layers_a) @ _rows(b_parts, c, layers_b).T) for c in shared])
    present = grids > 0  # a layer without the channel has a zero row
    grid = np.where(present.any(axis=0), grids.sum(axis=0) / np.maximum(present.sum(axis=0), 1), 0.0)
    return Grid(grid, tuple(layers_a), tuple(layers_b), tuple(shared))


def _shapes(parts, channel: str) -> set[tuple[int, int, int]]:
    return {(p.rows, p.cols, p.values.size) for p in parts if p.channel == channel}


def _rows(parts, channel: str, layers: list[int]) -> np.ndarray:
    """Layers × sketch values of one channel, each row centred and of unit norm (zeros where absent)."""
    by = {p.layer: p.values for p in parts if p.channel == channel}
    size = next(iter(by.values())).size
    out = np.zeros((len(layers), size))
    for k, layer in enumerate(layers):
        if layer in by:
            v = by[layer].astype(np.float64) - by[layer].mean()
            norm = np.linalg.norm(v)
            out[k] = v / norm if norm > 0 else 0.0
    return out


def _mean_abs_r(a_parts, b_parts, pairing, channels) -> float:
    """Mean |Pearson r| over every (layer pair, channel) both sketches hold with the same size."""
    by_a = {(p.layer, p.channel): p.values for p in a_parts}
    by_b = {(p.layer, p.channel): p.values for p in b_parts}
    rs = []
    for i, j in pairing:
        for channel in channels:
            x, y = by_a.get((i, channel)), by_b.get((j, channel))
            if x is None or y is None or x.size != y.size or x.size < 3:
                continue
            x = x.astype(np.float64) - x.mean()
            y = y.astype(np.float64) - y.mean()
            norm = math.sqrt(float(x @ x) * float(y @ y))
            if norm > 0:
                rs.append(abs(float(x @ y)) / norm)
    return float(np.mean(rs)) if rs else math.nan
