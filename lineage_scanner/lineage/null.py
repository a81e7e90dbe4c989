"""Nulls: how high unrelated models score by chance, to turn a lineage score into a p-value.

The store's own null (:func:`null_for`): scores between stored models of different declared families
(no shared ancestor through their cards' ``base_model``), matched on architecture (family and hidden
size) and depth (within ±20% of each side's depth). Its pairs must span at least MIN_STORE_FAMILIES
declared families: pairs among a handful of families are many scores but few independent facts. Real
models of one era share depth trends a generator lacks, so this is the null to trust once a store has
enough such pairs. Undeclared relatives would inflate it (that lineage is what the tool exists to
find), so pairs scoring as robust outliers (Fisher z beyond the median plus five robust standard
deviations) are left out and counted.

The built-in synthetic null (:func:`synthetic`), for a small store: each synthetic model is a fresh
draw of :mod:`lineage_scanner.lineage.generator` (smooth random depth profiles, heavy-tailed weights, heads and rows
of unequal scale, random norm gains) at the depth being compared, its features computed as a scan's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from pathlib import Path

import numpy as np

from lineage_scanner import __version__
from lineage_scanner.lineage.generator import base_model
from lineage_scanner.lineage.score import evidence
from lineage_scanner.signature.features import invariants
from lineage_scanner.store.index import cache_dir

PAIRS = 60
HIDDEN = 64
#: Part of the synthetic null's disk-cache key, beside the package version: bump it whenever the
#: generator, the features or the score change what the null's pairs score.
SYNTHETIC_VERSION = 2
#: Store pairs, and distinct declared families among them (at least half as many on each side), needed
#: before the store's null replaces the synthetic one; at most MAX_STORE_PAIRS are scored.
MIN_STORE_PAIRS = 50
MIN_STORE_FAMILIES = 8
MAX_STORE_PAIRS = 400
#: Stored models sampled on each side of a pair, and how far their depth may differ (relative).
PEERS = 42
DEPTH_TOLERANCE = 0.2
#: Declared ancestry is followed this many generations up.
MAX_GENERATIONS = 8
OUTLIER_Z = 5.0


@dataclass(frozen=True)
class Null:
    """Scores of unrelated pairs that a verdict is calibrated against, and where they came from."""

    scores: tuple[float, ...]
    source: str  # "store": the store's own unrelated pairs | "synthetic": the built-in null
    #: store pairs left out as outliers, likely relatives no card declares
    excluded: int = 0

    def __len__(self) -> int:
        return len(self.scores)

    def p_value(self, score: float) -> float | None:
        """Chance that an unrelated pair scores this high. Empirical while some null score reaches it;
        beyond the null's range, a normal tail fitted to its Fisher-z transformed scores (a finite null
        cannot show a p-value below 1/(n+1) otherwise)."""
        if len(self.scores) < 10 or not math.isfinite(score):
            return None
        higher = sum(s >= score for s in self.scores)
        if higher:
            return (1 + higher) / (1 + len(self.scores))
        z = np.arctanh(np.clip(np.asarray(self.scores), -0.999999, 0.999999))
        mu, sigma = float(z.mean()), float(z.std(ddof=1)) or 1e-6
        tail = 0.5 * math.erfc((math.atanh(min(score, 0.999999)) - mu) / (sigma * math.sqrt(2)))
        return max(tail, 1e-12)


@lru_cache(maxsize=512)
def synthetic_features(depth: int, seed: int) -> dict[str, list[float]]:
    """The feature curves of one generated model, measured as a scan measures a checkpoint."""
    from lineage_scanner.measure.kernels.stats import Moments
    from lineage_scanner.measure.records import ColumnSums, LayerStat

    model = base_model("null", "llama", 10_000 + seed, depth, hidden=HIDDEN, mlp=False)
    stats = []
    for i, layer in enumerate(model.layers):
        for role in "qkvo":
            weight = layer[role]
            folded = ColumnSums.of_matrix(i, role, weight).folded(layer["attn_norm"]) if role != "o" else None
            stats.append(LayerStat(i, role, Moments.of_array(weight), 0.0, *(folded or (None, None))))
    return invariants(stats, depth)


@lru_cache(maxsize=64)
def synthetic(depth_a: int, depth_b: int, pairs: int = PAIRS) -> Null:
    """Scores of ``pairs`` independent synthetic pairs at these depths. They never change for a given
    version of the code, so they are kept in memory and on disk (see :func:`_cache_file`): a one-shot
    ``lineage compare`` need not regenerate 120 models."""
    path = _cache_file(depth_a, depth_b, pairs)
    with contextlib.suppress(OSError, ValueError):
        return Null(tuple(json.loads(path.read_text())), "synthetic")
    scores = (evidence(synthetic_features(depth_a, 2 * i), synthetic_features(depth_b, 2 * i + 1),
                       surrogate=False).score for i in range(pairs))
    null = Null(tuple(s for s in scores if math.isfinite(s)), "synthetic")
    with contextlib.suppress(OSError):  # a read-only or full cache just means no disk cache
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(null.scores))
            tmp.replace(path)
        finally:  # a full disk: the partial file goes too
            tmp.unlink(missing_ok=True)
    return null


def _cache_file(depth_a: int, depth_b: int, pairs: int) -> Path:
    """``<cache>/null/<version>-<depths>.json`` in the cache directory (``--cache``, else the XDG cache)."""
    name = f"{__version__}-{SYNTHETIC_VERSION}-{depth_a}-{depth_b}-{pairs}.json"
    return Path(cache_dir()) / "null" / name


def null_for(store, a, b) -> Null:
    """The null to judge ``a`` against ``b``: the store's own unrelated pairs where it has enough of them
    at these architectures and depths (pairs involving ``a`` or ``b`` left out), else the synthetic null."""
    if not (a.family and b.family and a.n_layers and b.n_layers):
        return synthetic(a.n_layers or 0, b.n_layers or 0)
    scored = _store_pairs(store, store.index_path(), (a.family, a.hidden_size, a.n_layers),
                          (b.family, b.hidden_size, b.n_layers))
    usable = [(s, rx, ry) for x, y, s, rx, ry in scored if not {x, y} & {a.model, b.model}]
    kept = _without_outliers([s for s, _, _ in usable])
    side_a, side_b = {rx for _, rx, _ in usable}, {ry for _, _, ry in usable}
    if len(kept) < MIN_STORE_PAIRS or len(side_a | side_b) < MIN_STORE_FAMILIES or \
            min(len(side_a), len(side_b)) < MIN_STORE_FAMILIES // 2:
        return synthetic(a.n_layers, b.n_layers)
    return Null(tuple(kept), "store", len(usable) - len(kept))


@lru_cache(maxsize=256)
def _store_pairs(store, index: str, like_a: tuple, like_b: tuple) -> tuple[tuple[str, str, float, str, str], ...]:
    """Scored pairs (model, model, score, root, root) of stored models unrelated by declaration, one side
    like ``a``, the other like ``b`` (family, hidden size, depth). Cached per store state (``index`` names
    the signature files it was built from) and architecture, so a ``match`` over many candidates scores
    them once."""
    side_a = _peers(store, *like_a)
    side_b = side_a if like_a == like_b else _peers(store, *like_b)
    lineage, roots = ancestry(store, [*side_a, *side_b])
    pairs = [(x, y) for x, y in product(side_a, side_b)
             if (x.model < y.model or (x.model != y.model and side_a is not side_b))
             and not lineage[x.model] & lineage[y.model]]
    chosen = sorted(np.random.default_rng(0).permutation(len(pairs))[:MAX_STORE_PAIRS])
    scored = ((pairs[i][0].model, pairs[i][1].model,
               evidence(pairs[i][0].invariants, pairs[i][1].invariants, surrogate=False).score)
              for i in chosen)
    return tuple((x, y, s, roots[x], roots[y]) for x, y, s in scored if math.isfinite(s))


def _peers(store, family: str, hidden: int | None, depth: int) -> list:
    low, high = math.floor(depth * (1 - DEPTH_TOLERANCE)), math.ceil(depth * (1 + DEPTH_TOLERANCE))
    return sorted(store.peers(family, hidden, (low, high), PEERS), key=lambda s: (s.model, s.revision))


def ancestry(store, sigs) -> tuple[dict[str, frozenset[str]], dict[str, str]]:
    """Each model with every ancestor its card (and its ancestors' cards) declares, as far as the store
    knows them (two models share a declared family when these sets meet), and each model's root: the
    first of its ancestors that declares none."""
    declared = {s.model: list(s.declared_base) for s in sigs}
    frontier = {base for bases in declared.values() for base in bases} - declared.keys()
    for _ in range(MAX_GENERATIONS):
        if not frontier:
            break
        found = store.declared(frontier)
        declared.update({m: found.get(m, []) for m in frontier})
        frontier = {base for m in frontier for base in declared[m]} - declared.keys()
    out, roots = {}, {}
    for s in sigs:
        seen, todo = {s.model}, list(declared.get(s.model, []))
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(declared.get(m, []))
        out[s.model] = frozenset(seen)
        tops = [m for m in seen if not declared.get(m)]
        roots[s.model] = min(tops or seen)  # a cycle of declarations has no top: any member stands for it
    return out, roots


def _without_outliers(scores: list[float]) -> list[float]:
    """Drops scores whose Fisher z lies beyond the median plus OUTLIER_Z robust standard deviations (MAD)."""
    if len(scores) < MIN_STORE_PAIRS:
        return scores
    z = np.arctanh(np.clip(scores, -0.999999, 0.999999))
    median = float(np.median(z))
    spread = 1.4826 * float(np.median(np.abs(z - median)))
    if spread == 0:
        return scores
    return [s for s, zi in zip(scores, z) if zi <= median + OUTLIER_Z * spread]
