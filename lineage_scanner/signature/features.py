"""Feature curves a signature carries for the lineage engine, computed by one function for every model.

Per layer, each feature chosen to survive an evasion the seed method falls for:

- ``qk`` = log std(Q·diag γ) + log std(K·diag γ): scaling Q by a and K by 1/a changes no output and no
  product; folding the input-norm gain γ into Q/K/V changes neither (γ is folded in before measuring).
- ``vo`` = log std(V·diag γ) + log std(O): the same for V·b, O/b.
- ``kurt_*``: the kurtosis of each projection as stored, blind to any rescaling; ``fkurt_q/k/v``: the
  kurtosis of Q/K/V with γ folded in, which norm folding leaves alone. Both are kept: folding moves the
  first, while continued training that moves the gains moves the second, so together neither edit
  costs more than half of the kurtosis evidence.

Scanned checkpoints and the synthetic null's generated models both go through :func:`invariants`, so a
null is made of exactly the numbers a scan stores. The embedding is the fixed-length vector the SQL
pre-filter of ``match`` ranks by inner product.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from lineage_scanner.curves import resample, zscore
from lineage_scanner.layouts.families import CURVE_ROLES
from lineage_scanner.signature.record import EMBED_FEATURES, EMBED_POINTS


def curves_from(stats: Iterable, n_layers: int) -> dict[str, list[float]]:
    """Per-role std over layers 0..n_layers-1 (the seed method's curves); NaN where a layer lacks the role."""
    curves = {role: [math.nan] * n_layers for role in CURVE_ROLES}
    for s in stats:
        if s.role in curves:
            curves[s.role][s.layer] = s.moments.std
    return {role: values for role, values in curves.items() if not all(math.isnan(v) for v in values)}


def invariants(stats: Iterable, n_layers: int) -> dict[str, list[float]]:
    """Feature curves from per-layer statistics (:class:`lineage_scanner.measure.records.LayerStat`)."""
    by = {(s.layer, s.role): s for s in stats}

    def log_std(layer: int, role: str, folded: bool) -> float:
        s = by.get((layer, role))
        if s is None:
            return math.nan
        value = s.folded_std if folded and s.folded_std is not None else s.moments.std
        return math.log(value) if value and value > 0 else math.nan

    def kurtosis(layer: int, role: str, folded: bool) -> float:
        s = by.get((layer, role))
        if s is None:
            return math.nan
        return s.folded_kurtosis if folded and s.folded_kurtosis is not None else s.moments.kurtosis

    layers = range(n_layers)
    out: dict[str, list[float]] = {
        "qk": [log_std(i, "q", True) + log_std(i, "k", True) for i in layers],
        "vo": [log_std(i, "v", True) + log_std(i, "o", False) for i in layers],
    }
    for role in "qkvo":
        out[f"kurt_{role}"] = [kurtosis(i, role, False) for i in layers]
    for role in "qkv":
        out[f"fkurt_{role}"] = [kurtosis(i, role, True) for i in layers]
    return out


def invariant_errors(stats: Iterable, n_layers: int) -> dict[str, list[float]]:
    """The standard error of every point of :func:`invariants`.

    A sampled statistic's error comes from its sample (:func:`lineage_scanner.measure.sampling.pooled`).
    Every statistic also has a floor: the amount by which a matrix's std and kurtosis wander from those of
    the distribution its n elements were drawn from, sqrt(1/(2n)) relative and sqrt(24/n) for a Gaussian.
    Wiggles of a curve below that floor are noise, not a shape: a rotated residual stream makes every
    projection's kurtosis Gaussian, and its curve then carries no evidence either way. A log std's error is
    the std's relative error; a folded kurtosis is taken to be as precise as the kurtosis of the same
    sample."""
    by = {(s.layer, s.role): s for s in stats}

    def se(layer: int, role: str, kind: str) -> float:
        s = by.get((layer, role))
        if s is None or s.moments.count < 2:
            return math.nan
        n = s.moments.count
        if kind == "std":
            return max(float(s.std_se), math.sqrt(1.0 / (2 * n)))
        return max(float(s.kurtosis_se), math.sqrt(24.0 / n))

    layers = range(n_layers)
    out: dict[str, list[float]] = {
        "qk": [math.hypot(se(i, "q", "std"), se(i, "k", "std")) for i in layers],
        "vo": [math.hypot(se(i, "v", "std"), se(i, "o", "std")) for i in layers],
    }
    for role in "qkvo":
        out[f"kurt_{role}"] = [se(i, role, "kurtosis") for i in layers]
    for role in "qkv":
        out[f"fkurt_{role}"] = [se(i, role, "kurtosis") for i in layers]
    return out


def embedding(features: dict[str, list[float]]) -> list[float] | None:
    """z-scored feature curves resampled to EMBED_POINTS each, concatenated, centred and unit-normalised.

    The inner product of two embeddings then behaves like a correlation, which SQL can rank cheaply.
    """
    parts = []
    for name in EMBED_FEATURES:
        z = zscore(features[name]) if name in features else None
        parts.append(np.zeros(EMBED_POINTS) if z is None else resample(z, EMBED_POINTS))
    vec = np.concatenate(parts)
    vec -= vec.mean()
    norm = np.linalg.norm(vec)
    return None if norm == 0 else (vec / norm).astype(np.float32).tolist()
