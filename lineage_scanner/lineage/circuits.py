"""The circuit tests: lineage that survives every map keeping a model's outputs.

Two models' circuit sketches (:mod:`lineage_scanner.measure.circuits`) are compared in two ways:

- **Entries** (exact null). Entry (i, j) of every layer's OV and QK circuit, and entry (j, i), change sign
  together when residual coordinate i or j is flipped, a symmetry of training; the store's key matches
  coordinates in disjoint pairs, so for two models trained apart each pair k carries one fair coin ε_k for
  all its entries in all layers. So, layers paired, S_k = Σ over layers and entries of a_k·b_k is ε_k times
  something fixed, and T = Σ_k S_k / √(Σ_k S_k²) is a Rademacher sum with the tail bound of
  :func:`lineage_scanner.lineage.positional.log_tail`. Per-head maps, RoPE-commuting maps, head permutations,
  rescaling and folding leave every entry as it was, so a copy disguised by any of them is as plain as an
  undisguised one. The robust form gives a forger his due twice: per pair k the (layer, circuit) terms a
  forger could afford to copy whole (ADVERSARY_SHARE of the attention values, priced by the matrices each
  circuit needs) are dropped where they favour lineage most, then the TRIM share of pairs that favour it
  most; the rest is no larger than the honest terms' own sum, bounded as before (each pair's weight taken
  as the sum of its terms' magnitudes, which bounds any honest part of it).
- **Gram** (calibrated null). The cosines between a model's circuits are unchanged by a rotation of the
  residual stream too. For models trained apart the two Gram sketches are unrelated draws, and their
  correlation is judged as a correlation of CALIBRATED_SHARE of their entries' number of independent values
  (Fisher's z): the Gram's entries are not independent, and how dependent they are was measured on models
  trained apart here (bench/adversarial.py), not derived, so this p-value is calibrated, not exact, and it
  decides only where the entries cannot (a rotated residual stream).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lineage_scanner.lineage.positional import (
    LOG10,
    TRIM,
    log_normal_sf,
    log_tail,
    pair_layers,
    scaled,
    self_normalised,
)
from lineage_scanner.measure.sketch import SketchPart

CIRCUIT_ROLES = ("ov", "qk")
#: The share of a model's attention values a forger is assumed to copy at most (the goal is 5%; the margin
#: covers partial copies of matrices).
ADVERSARY_SHARE = 0.075
#: Above this r on every paired layer, two models' circuits are equal (rounding aside): the same function.
SAME_FUNCTION_R = 0.9999
#: The Gram sketch's entries are treated as this share of independent values (measured on models trained
#: apart; see the module docstring), and need at least MIN_GRAM of them.
CALIBRATED_SHARE = 0.25
MIN_GRAM = 12


@dataclass(frozen=True)
class CircuitEvidence:
    """What two models' circuits say. ``pairing``: the layers compared (of a, of b). ``log10_p``: the plain
    exact test of the entries (scrub-proof), ``robust_log10_p`` its forgery-proof form; ``score``: the median
    over paired layers of the entries' Pearson r; ``gram_r`` and ``gram_log10_p``: the rotation-invariant
    Gram sketches' correlation and its calibrated p-value (None where either model lacks one)."""

    pairing: tuple[tuple[int, int], ...]
    log10_p: float
    robust_log10_p: float
    score: float
    #: the smallest Pearson r of the entries over the paired layers
    weakest: float
    gram_r: float | None = None
    gram_log10_p: float | None = None

    @property
    def same_function(self) -> bool:
        """The circuits agree to rounding in every paired layer: the same function, whatever the weights."""
        return self.weakest >= SAME_FUNCTION_R

    @property
    def same_function_rotated(self) -> bool:
        """The Gram sketches agree to rounding: the same circuits in another residual basis."""
        return self.gram_r is not None and self.gram_r >= SAME_FUNCTION_R


def circuit_evidence(a: tuple[SketchPart, ...], b: tuple[SketchPart, ...],
                     pairing: tuple[tuple[int, int], ...] | None = None,
                     costs: dict[str, float] | None = None) -> CircuitEvidence | None:
    """The circuit tests of two models' sketches; None when neither applies (no circuit sketch of one width
    in both). ``pairing``: layers known to correspond (the value sketch's firm pairing); else layers pair in
    order when the depths agree, or by the entries themselves (paid for). ``costs``: each circuit's share
    of the attention values (what a forger pays to copy it whole), equal shares if not given."""
    ea, eb = _entries(a), _entries(b)
    gram = _gram(a, b)
    if not ea or not eb or _width(a) != _width(b):
        if gram is None:
            return None
        return CircuitEvidence((), 0.0, 0.0, math.nan, math.nan, *gram)
    layers_a, layers_b = sorted(ea), sorted(eb)
    search = 0.0
    if pairing is None and layers_a == layers_b:
        pairing = tuple((i, i) for i in layers_a)
    elif pairing is None:
        pairing, search = _pair_by_entries(ea, eb, layers_a, layers_b)
    pairing = tuple((i, j) for i, j in pairing if i in ea and j in eb)
    if not pairing:
        return None if gram is None else CircuitEvidence((), 0.0, 0.0, math.nan, math.nan, *gram)
    terms = np.stack([ea[i] * eb[j] for i, j in pairing])  # [layer pairs, roles, 2, pairs k]
    terms = terms.sum(axis=2)  # (i, j) and (j, i) share their coin
    units = terms.reshape(-1, terms.shape[-1])  # [(layer pair, role), k]
    plain = _plain(units)
    robust = _robust(units, _affordable(len(pairing), costs))
    r = [_raw_r(a, b, i, j) for i, j in pairing]
    return CircuitEvidence(pairing, min(0.0, plain + search) / LOG10, min(0.0, robust + search) / LOG10,
                           float(np.median(r)), float(np.min(r)), *(gram or (None, None)))


def _plain(units: np.ndarray) -> float:
    """log p of the aggregated exact test, two-sided."""
    s = np.nansum(units, axis=0)
    norm = math.sqrt(float(np.sum(s * s)))
    if norm == 0.0:
        return 0.0
    return min(0.0, math.log(2.0) + log_tail(abs(float(s.sum())) / norm))


def _robust(units: np.ndarray, affordable: int) -> float:
    """log p of the forgery-proof form (module docstring), two-sided."""
    units = np.nan_to_num(units)
    weight = np.abs(units).sum(axis=0)
    norm = math.sqrt(float(np.sum(weight * weight)))
    if norm == 0.0:
        return 0.0
    give_away = math.ceil(TRIM * units.shape[1])
    best = -math.inf
    for signed in (units, -units):
        kept = signed.sum(axis=0) - _largest_positive(signed, affordable, axis=0)
        total = float(kept.sum()) - float(_largest_positive(kept, give_away, axis=0))
        best = max(best, total / norm)
    return min(0.0, math.log(2.0) + log_tail(best))


def _largest_positive(x: np.ndarray, count: int, axis: int) -> np.ndarray | float:
    """The sum of the ``count`` largest positive values along ``axis``."""
    count = min(count, x.shape[axis])
    if count <= 0:
        return np.zeros(np.delete(x.shape, axis)) if x.ndim > 1 else 0.0
    top = -np.sort(-x, axis=axis).take(range(count), axis=axis)
    return np.maximum(top, 0.0).sum(axis=axis)


def _affordable(pairs: int, costs: dict[str, float] | None) -> int:
    """How many whole (layer, circuit) units a forger with ADVERSARY_SHARE of the values can copy."""
    cheapest = min(costs.values()) if costs else 1.0 / (2 * pairs)
    return int(ADVERSARY_SHARE / cheapest) if cheapest > 0 else 2 * pairs


def _pair_by_entries(ea: dict, eb: dict, layers_a: list[int], layers_b: list[int]
                     ) -> tuple[tuple[tuple[int, int], ...], float]:
    """Layers of different depths paired by their own entries (each layer's best match, as the value
    sketch pairs them), and the log of how many pairings the search could have chosen (its price)."""
    xa = np.stack([ea[i].sum(axis=1).reshape(-1) for i in layers_a])
    xb = np.stack([eb[j].sum(axis=1).reshape(-1) for j in layers_b])
    t = self_normalised(xa, xb)
    paired = pair_layers(np.nan_to_num(t * t), np.isfinite(t).astype(float))
    if paired is None:
        return (), 0.0
    every = paired[2]
    sources = len({i for i, _ in every}) if len(layers_a) <= len(layers_b) else len({j for _, j in every})
    return tuple((layers_a[i], layers_b[j]) for i, j in every), sources * math.log(max(len(layers_a), len(layers_b)))


def _entries(parts: tuple[SketchPart, ...]) -> dict[int, np.ndarray]:
    """Per layer holding both circuits: [roles, 2, pairs], each role's entries on their own robust scale."""
    by: dict[int, dict[str, np.ndarray]] = {}
    for p in parts:
        if p.kind == "circuit" and p.role in CIRCUIT_ROLES and p.values.size % 2 == 0:
            by.setdefault(p.layer, {})[p.role] = p.values
    out = {}
    for layer, roles in by.items():
        if len(roles) == len(CIRCUIT_ROLES) and len({v.size for v in roles.values()}) == 1:
            out[layer] = np.stack([scaled(roles[r][None, :]).reshape(2, -1) for r in CIRCUIT_ROLES])
    return out


def _width(parts: tuple[SketchPart, ...]) -> int | None:
    return next((p.rows for p in parts if p.kind == "circuit"), None)


def _raw_r(a: tuple[SketchPart, ...], b: tuple[SketchPart, ...], i: int, j: int) -> float:
    """The smaller over the two circuits of the Pearson r of two layers' entries as measured (not scaled):
    1 for the same function, whatever scale a map left on each circuit."""
    rs = []
    for role in CIRCUIT_ROLES:
        va = next((p.values for p in a if p.kind == "circuit" and p.layer == i and p.role == role), None)
        vb = next((p.values for p in b if p.kind == "circuit" and p.layer == j and p.role == role), None)
        if va is None or vb is None or va.size != vb.size or va.std() == 0 or vb.std() == 0:
            return math.nan
        rs.append(float(np.corrcoef(va, vb)[0, 1]))
    return min(rs)


def _gram(a: tuple[SketchPart, ...], b: tuple[SketchPart, ...]) -> tuple[float, float] | None:
    """(r, log10 p) of the rotation-invariant Gram sketches, calibrated (module docstring)."""
    ga = next((p.values for p in a if p.kind == "circuit_gram"), None)
    gb = next((p.values for p in b if p.kind == "circuit_gram"), None)
    if ga is None or gb is None or ga.size != gb.size or ga.size < MIN_GRAM:
        return None
    if ga.std() == 0 or gb.std() == 0:
        return None
    r = float(np.corrcoef(ga, gb)[0, 1])
    effective = CALIBRATED_SHARE * ga.size
    z = math.atanh(min(r, 1 - 1e-12)) * math.sqrt(max(effective - 3.0, 1.0))
    return r, (math.log(2.0) + log_normal_sf(z)) / LOG10 if z > 0 else 0.0
