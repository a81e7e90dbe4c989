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
  residual stream too. But models of one recipe share much of their Gram (0.73 between two llamas trained
  apart here), so first each model's common trend is removed (per kind of pair, a quadratic in the layers'
  depth and distance: :func:`_trend`); what is left still agrees up to 0.41 between models trained apart,
  against 0.88 for a continued-training child and 0.997 for a fine-tuned copy. So the null is a composite
  one, honestly calibrated rather than exact: a correlation of at most SHARED_R between the residuals, judged
  with Fisher's z as if CALIBRATED_SHARE of the entries were independent, and no verdict below
  GRAM_DERIVED_R. It decides only where the exact tests cannot see (a rotated residual stream, and small
  models whose few residual pairs cap the exact test's power). Where the sketch holds every head's own
  circuits (shallow models), heads are matched first, as a permutation may have reordered them, and each
  entry is taken less its block's mean (:func:`_head_residuals`): models trained apart then agree up to
  0.21 (trained here) and 0.16 (generated), a fine-tuned copy disguised by every map 0.996.
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
#: Above this r on every paired layer, two models' circuits are equal to the rounding of their storage (bf16
#: rounds each weight by up to 0.4%): the same function. A light fine-tune stays below it (0.997 here).
SAME_FUNCTION_R = 0.999
#: The Gram's calibration (module docstring): its entries count as this share of independent values, and
#: models trained apart may share up to SHARED_R of what is left of them once their common trend is removed
#: (measured: up to 0.41 between llamas trained apart here, 0.10 between generated ones). It needs at least
#: MIN_GRAM entries (three layers), and decides only from GRAM_DERIVED_R up: a rotated copy, or one lightly
#: trained after its rotation; heavier training after a disguise is for deep verification.
CALIBRATED_SHARE = 0.25
#: A cosine between two of a model's circuits at least this high is one circuit held twice (see _distinct).
REPEATED = 0.999
SHARED_R = 0.6
MIN_GRAM = 15
GRAM_DERIVED_R = 0.98


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
    r = _raw_r(a, b, pairing)
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
    complete = sorted(layer for layer, roles in by.items()
                      if len(roles) == len(CIRCUIT_ROLES) and len({v.size for v in roles.values()}) == 1)
    if not complete or len({by[layer]["ov"].size for layer in complete}) != 1:
        return {}
    rows = scaled(np.stack([by[layer][r] for layer in complete for r in CIRCUIT_ROLES]))
    return {layer: rows[k * len(CIRCUIT_ROLES) : (k + 1) * len(CIRCUIT_ROLES)].reshape(len(CIRCUIT_ROLES), 2, -1)
            for k, layer in enumerate(complete)}


def _width(parts: tuple[SketchPart, ...]) -> int | None:
    return next((p.rows for p in parts if p.kind == "circuit"), None)


def _raw_r(a: tuple[SketchPart, ...], b: tuple[SketchPart, ...], pairing) -> list[float]:
    """Per layer pair, the smaller over the two circuits of the Pearson r of their entries as measured (not
    scaled): 1 for the same function, whatever scale a map left on each circuit."""
    raw_a = {(p.layer, p.role): p.values for p in a if p.kind == "circuit"}
    raw_b = {(p.layer, p.role): p.values for p in b if p.kind == "circuit"}
    out = []
    for i, j in pairing:
        x = np.stack([raw_a[(i, r)] for r in CIRCUIT_ROLES]).astype(np.float64)
        y = np.stack([raw_b[(j, r)] for r in CIRCUIT_ROLES]).astype(np.float64)
        x -= x.mean(axis=1, keepdims=True)
        y -= y.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        out.append(float(np.min((x * y).sum(axis=1) / norm)) if np.all(norm > 0) else math.nan)
    return out


def _gram(a: tuple[SketchPart, ...], b: tuple[SketchPart, ...]) -> tuple[float, float] | None:
    """(r, log10 p) of the rotation-invariant Gram sketches, their shared structure removed (module
    docstring)."""
    ga = next((p for p in a if p.kind == "circuit_gram"), None)
    gb = next((p for p in b if p.kind == "circuit_gram"), None)
    if ga is None or gb is None or (ga.role, ga.rows, ga.cols) != (gb.role, gb.rows, gb.cols) \
            or ga.values.size != gb.values.size or ga.values.size < MIN_GRAM:
        return None
    if ga.role == "heads":
        ra, rb = _head_residuals(ga, gb)
    else:
        keep = _distinct(ga.values, gb.values)
        design = _trend(ga.rows)[keep]
        ra, rb = (_residual(g.values[keep], design) for g in (ga, gb))
    if ra.size < MIN_GRAM or ra.std() == 0 or rb.std() == 0:
        return None
    r = float(np.corrcoef(ra, rb)[0, 1])
    effective = CALIBRATED_SHARE * ra.size
    z = (math.atanh(min(r, 1 - 1e-12)) - math.atanh(SHARED_R)) * math.sqrt(max(effective - 3.0, 1.0))
    return r, (log_normal_sf(z) / LOG10 if z > 0 else 0.0)


def _trend(units: int) -> np.ndarray:
    """What models of one recipe share in their Gram: per kind of pair (OV-OV, QK-QK, OV-QK) a quadratic in
    the two layers' mean depth and distance, and whether they are one layer's two circuits. Rows follow the
    Gram sketch's upper triangle over units [OV, QK] of each layer, in depth order."""
    depth = np.repeat(np.arange(units // 2), 2) / max(units // 2, 1)
    kind = np.tile([0, 1], units // 2)
    u, v = np.triu_indices(units, 1)
    x, y = (depth[u] + depth[v]) / 2, np.abs(depth[u] - depth[v])
    same = (depth[u] == depth[v]).astype(float)
    pair = kind[u] + kind[v]  # 0: OV-OV, 1: OV-QK, 2: QK-QK
    base = np.stack([np.ones_like(x), x, y, x * x, y * y, x * y, same], axis=1)
    return np.concatenate([base * (pair == k)[:, None] for k in range(3)], axis=1)


def _residual(values: np.ndarray, design: np.ndarray) -> np.ndarray:
    g = values.astype(np.float64)
    beta, *_ = np.linalg.lstsq(design, g, rcond=None)
    return g - design @ beta


def _head_residuals(ga: SketchPart, gb: SketchPart) -> tuple[np.ndarray, np.ndarray]:
    """Two per-head Gram sketches, ``b``'s heads matched to ``a``'s and each entry less the mean of its block.

    Units come in blocks of H (a layer's OV heads, then its QK heads; or its KV groups, which a permutation
    reorders alike). A head permutation reorders a layer's
    heads, OV and QK alike, so each head is described by what no permutation moves: its cosines summed over
    every block. Heads are matched per layer by those descriptors (least squares, Hungarian). What models of
    one recipe share sits in the blocks' levels (depth trends, how alike a layer's heads are), so each
    entry is taken less its block pair's mean; what is left is which heads resemble which, a model's own.
    Matching picks the best of H! orders, which lifts r between models trained apart (up to 0.21 measured,
    against 0.41 for the layer sums): the calibration's margin (SHARED_R) covers it."""
    from scipy.optimize import linear_sum_assignment

    n, heads = ga.rows, ga.cols // 2
    block = np.arange(n) // heads
    onehot = np.eye(n // heads)[block]
    full = []
    for g in (ga, gb):
        m = np.eye(n)
        m[np.triu_indices(n, 1)] = g.values
        m = np.triu(m, 1) + np.triu(m, 1).T + np.eye(n)
        full.append(m)
    describe = [m @ onehot for m in full]  # [units, blocks]: cosines summed per block
    order = np.arange(n)
    for first in range(0, n, 2 * heads):
        ov, qk = np.arange(first, first + heads), np.arange(first + heads, first + 2 * heads)
        fa, fb = (np.concatenate([d[ov], d[qk]], axis=1) for d in describe)
        _, match = linear_sum_assignment(((fa[:, None, :] - fb[None, :, :]) ** 2).sum(axis=2))
        order[ov], order[qk] = ov[match], qk[match]
    full[1] = full[1][np.ix_(order, order)]
    u, v = np.triu_indices(n, 1)
    keep = _distinct(full[0][u, v], full[1][u, v])
    u, v = u[keep], v[keep]
    pair = block[u] * (n // heads) + block[v]
    out = []
    for m in full:
        x = m[u, v]
        means = np.bincount(pair, x) / np.maximum(np.bincount(pair), 1)
        out.append(x - means[pair])
    return out[0], out[1]


def _distinct(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Gram entries between units that neither model repeats: a cosine near 1 is a circuit a model holds
    twice (a layer duplicated by depth up-scaling, a head copied), which every model made the same way
    shares whatever its lineage (two unrelated models up-scaled alike agreed at r 0.99 through them)."""
    return (a < REPEATED) & (b < REPEATED)
