"""What the three ways of measuring a tensor (exact, streamed, sampled) share: the checkpoint they measure
(:class:`Subject`) and the one record each of them returns (:class:`Tally`), merged with ``+``.

A tally holds what a measurement yields before a model's norm gains are all known: each part's moments, the
column sums of its Q/K/V parts, the layers' input-norm gains and each matrix's raw sketch. Only when every
tally is in does :meth:`Tally.folded_stats` fold the gains into the Q/K/V statistics, and
:meth:`RawSketch.folded` into the sketches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lineage_scanner.errors import NonFiniteError
from lineage_scanner.layouts.resolve import Layout, Part
from lineage_scanner.measure.kernels import MomentsBackend
from lineage_scanner.measure.kernels.stats import Moments
from lineage_scanner.measure.records import ColumnSums, LayerStat
from lineage_scanner.measure.sketch import SketchPart, gram, rope_row
from lineage_scanner.readers.base import Reader, TensorInfo

#: Roles whose statistics are also taken with the layer's input-norm gain folded in (from column sums).
FOLDED_ROLES = ("q", "k", "v")


@dataclass(frozen=True)
class Subject:
    """The checkpoint being measured: its reader, its layout, the backend, and its parts by tensor name."""

    reader: Reader
    layout: Layout
    backend: MomentsBackend
    parts: dict[str, list[Part]]

    def info(self, name: str) -> TensorInfo:
        return self.reader.tensors()[name]


@dataclass(frozen=True)
class RawSketch:
    """A matrix's sketch as read, before its layer's norm gain is known: the runs' values (``part``), their
    positions in the matrix (``flat``) and, for Q/K/V, the anchor rows whole (``rows``) for the Gram sketch."""

    part: SketchPart
    flat: np.ndarray
    rows: np.ndarray | None = None

    def folded(self, gain: np.ndarray | None) -> list[SketchPart]:
        """The sketches of W·diag(γ) for Q/K/V (of W itself for O, or when the gain does not fit)."""
        p = self.part
        fits = gain is not None and gain.size == p.cols
        values = p.values * gain[self.flat % p.cols] if fits and p.role != "o" else p.values
        out = [SketchPart(p.layer, p.role, p.rows, p.cols, values.astype(np.float32))]
        if self.rows is not None:
            rows = self.rows * gain[None, :] if fits else self.rows
            out.append(SketchPart(p.layer, p.role, p.rows, p.cols, gram(rows), "gram"))
        return out


@dataclass(frozen=True)
class Tally:
    """What measuring some tensors yielded: per-part statistics, Q/K/V column sums, norm gains by layer,
    raw sketches. Tallies of disjoint tensors merge with ``+``."""

    stats: tuple[LayerStat, ...] = ()
    sums: tuple[ColumnSums, ...] = ()
    gains: dict[int, np.ndarray] = field(default_factory=dict)
    sketches: tuple[RawSketch, ...] = ()

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.stats + other.stats, self.sums + other.sums, {**self.gains, **other.gains},
                     self.sketches + other.sketches)

    def folded_stats(self) -> list[LayerStat]:
        """Each Q/K/V part's statistics with its folded std and kurtosis attached, from its column sums and
        its layer's norm gain."""
        folded = {(c.layer, c.role): c.folded(self.gains[c.layer]) for c in self.sums if c.layer in self.gains}
        return [LayerStat(s.layer, s.role, s.moments, s.std_se, *(folded.get((s.layer, s.role)) or (None, None)),
                          s.kurtosis_se) for s in self.stats]

    def folded_sketch(self) -> tuple[SketchPart, ...]:
        """Every matrix's sketch parts, its layer's norm gain folded in, in (layer, role, kind) order."""
        return tuple(sorted((p for r in self.sketches for p in r.folded(self.gains.get(r.part.layer))),
                            key=lambda p: (p.layer, p.role, p.kind)))


def checked(info: TensorInfo, part: Part, total: Moments, se: float = 0.0, kurtosis_se: float = 0.0) -> LayerStat:
    if total.nonfinite:
        raise NonFiniteError(info.file, f"tensor {info.name!r} holds {total.nonfinite} NaN/Inf values")
    return LayerStat(part.layer, part.role, total, se, kurtosis_se=kurtosis_se)


def stored_rows(part: Part, layout: Layout, rows: int, logical: np.ndarray) -> np.ndarray:
    """Where rows of a part's matrix (as ``nn.Linear`` holds them) lie in the stored tensor: moved by the
    GGUF converter's rotary interleave within each head, when the matrix is whole heads (a header whose
    head size does not divide the rows cannot describe such a permutation, so rows stay in place)."""
    head = layout.head_dim
    if part.role in layout.spec.rope_rows and head and head % 2 == 0 and rows % head == 0:
        return rope_row(logical, head)
    return logical
