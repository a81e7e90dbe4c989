"""Which of two related models came from the other, from what the weights show and what the cards declare.

A verdict says two models are related; it cannot say which was first, and a tree of derivations needs
that. Some derivations leave a mark that only runs one way:

- **quantized**: a quantized copy (GGUF, GPTQ, AWQ, fp8, bitsandbytes) is made from float weights, so
  of a float model and a quantized one, the float one came first.
- **experts**: an MoE upcycle copies a dense model's attention into a model with experts.
- **fewer layers** (pruned): the deeper model's layers that the shallower one lacks match nothing in it.
- **more layers** (depth up-scaled): every layer of the deeper model matches one of the shallower's, some
  of them the same one (a repeated block).
- **narrower**: with other widths only the curves tie the pair; pruning and distillation make models
  smaller, never larger.

Quantizing changes storage only: a quantized model and a float one of another shape (experts, depth,
width) are not parent and child either way (:data:`APART`), whatever else they share.

Then a model card's ``base_model`` names where a model came from. What the weights show is taken before
what a card declares (a card can be wrong; a quantized model cannot be the source of float weights), and
a card that says the opposite is noted. Anything else (a fine-tune and its base, both float, one shape)
is "direction unknown": the pair is related, and neither the weights nor a card say which came first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lineage_scanner.layouts.families import is_moe
from lineage_scanner.lineage.verdict import quantized

UNKNOWN = "unknown"
#: Neither came from the other directly: the marks run both ways (a quantized copy is made from float
#: weights of its own architecture, so a quantized dense model and a float MoE one are siblings at most).
APART = "apart"
#: The bases of a direction, strongest first: what the weights show, then the card.
WEIGHT_BASES = ("quantized", "experts", "fewer layers", "more layers", "narrower")
CARD = "card"
#: A layer of the deeper model counts as matched when its best |r| in the other is at least this share
#: of the pair's typical paired |r|; a dropped layer's best match is an unrelated layer (|r| near 0).
MATCHED_SHARE = 0.5


@dataclass(frozen=True)
class Direction:
    """``upstream``: the model the other came from (None: direction unknown); ``basis``: what says so
    (one of :data:`WEIGHT_BASES`, :data:`CARD`, or :data:`UNKNOWN`); ``note``: the same in words, and any
    card that disagrees."""

    upstream: str | None
    basis: str
    note: str

    def downstream(self, a: str, b: str) -> str | None:
        """Of the pair ``a``, ``b``, the model that came from the other (None when unknown)."""
        if self.upstream is None:
            return None
        return b if self.upstream == a else a


def direction(a, b, grid: np.ndarray | None = None, typical_r: float | None = None) -> Direction:
    """The direction of the related pair of signatures ``a`` and ``b`` (with ``model``, ``format``,
    ``dtype``, ``family``, ``n_layers``, ``hidden_size``, ``declared_base``), from their weight sketches'
    layer-pair correlations (``grid``, rows: ``a``'s layers; None where no shape is shared) and the |r|
    typical of their paired layers."""
    found = _from_weights(a, b, grid, typical_r)
    card = _from_cards(a, b)
    if found is None:
        return card or Direction(None, UNKNOWN, "neither the weights nor a card say which came first")
    if card is not None and card.upstream != found.upstream:
        return Direction(found.upstream, found.basis, f"{found.note}; the card of {card.downstream(a.model, b.model)} "
                                                      f"declares the opposite")
    return found


def _from_weights(a, b, grid: np.ndarray | None, typical_r: float | None) -> Direction | None:
    qa, qb = quantized(a), quantized(b)
    if qa != qb:
        up, down = (b, a) if qa else (a, b)
        if (is_moe(up.family), up.n_layers, up.hidden_size) != (is_moe(down.family), down.n_layers, down.hidden_size):
            return Direction(None, APART, f"{down.model} is stored quantized ({_storage(down)}) but is not shaped "
                                          f"as {up.model} ({down.family}, {down.n_layers} layers against "
                                          f"{up.family}, {up.n_layers}): quantizing changes neither")
        return Direction(up.model, "quantized", f"{down.model} is stored quantized ({_storage(down)}), "
                                                f"{up.model} in floats")
    ma, mb = is_moe(a.family), is_moe(b.family)
    if ma != mb:
        up, down = (b, a) if ma else (a, b)
        return Direction(up.model, "experts", f"{down.model} has experts ({down.family}), {up.model} is dense")
    if a.n_layers and b.n_layers and a.n_layers != b.n_layers:
        return _depth(a, b, grid, typical_r)
    if grid is None and a.hidden_size and b.hidden_size and a.hidden_size != b.hidden_size:
        up, down = (a, b) if a.hidden_size > b.hidden_size else (b, a)
        return Direction(up.model, "narrower", f"{down.model} is narrower ({down.hidden_size} wide, "
                                               f"{up.model} {up.hidden_size}): pruned or distilled")
    return None


def _depth(a, b, grid: np.ndarray | None, typical_r: float | None) -> Direction | None:
    """Pruned or depth up-scaled: which layers of the deeper model have a match in the shallower one."""
    deep, shallow = (a, b) if a.n_layers > b.n_layers else (b, a)
    if grid is None or not typical_r:
        return Direction(deep.model, "fewer layers", f"{shallow.model} has fewer layers ({shallow.n_layers} "
                                                     f"against {deep.n_layers}; the curves align them)")
    grid = np.nan_to_num(np.asarray(grid, dtype=np.float64))
    if deep is b:
        grid = grid.T  # rows: the deeper model's layers
    best = grid.max(axis=1)
    matched = best >= MATCHED_SHARE * typical_r
    if not matched.all():
        return Direction(deep.model, "fewer layers", f"{shallow.model} has fewer layers ({shallow.n_layers} "
                                                     f"against {deep.n_layers}), and {int((~matched).sum())} "
                                                     f"of {deep.model}'s match none of them")
    sources = np.argmax(grid, axis=1)
    if len(set(sources.tolist())) < len(sources):
        return Direction(shallow.model, "more layers", f"{deep.model} has more layers ({deep.n_layers} against "
                                                       f"{shallow.n_layers}), repeating some of {shallow.model}'s")
    return None


def _from_cards(a, b) -> Direction | None:
    a_says, b_says = b.model in (a.declared_base or []), a.model in (b.declared_base or [])
    if a_says == b_says:
        return None
    up, down = (b, a) if a_says else (a, b)
    return Direction(up.model, CARD, f"the card of {down.model} declares {up.model} as its base")


def _storage(sig) -> str:
    return sig.format if sig.format not in (None, "safetensors") else str(sig.dtype)
