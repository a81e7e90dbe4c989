"""What the three ways of measuring a tensor (exact, streamed, sampled) share: the checkpoint they measure
(:class:`Subject`) and the one record each of them returns (:class:`Tally`), merged with ``+``.

A tally holds what a measurement yields before a model's norm gains are all known: each part's moments, the
column sums of its Q/K/V parts, the layers' input-norm gains and each matrix's raw value sketch. Only when
every tally is in does :meth:`Tally.folded_stats` fold the gains into the Q/K/V statistics, and
:meth:`RawSketch.folded` into the sketches. What needs whole matrices as they pass (the circuit sketches,
the digest of every value) is gathered on the way by the subject's :class:`Sketching`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from lineage_scanner.errors import NonFiniteError
from lineage_scanner.layouts.resolve import Layout, Part
from lineage_scanner.measure.circuits import CIRCUIT_ROLES, CircuitAccumulator, RowSink
from lineage_scanner.measure.kernels import MomentsBackend
from lineage_scanner.measure.kernels.stats import Moments
from lineage_scanner.measure.records import ColumnSums, LayerStat
from lineage_scanner.measure.sketch import SketchKey, SketchPart, rope_row
from lineage_scanner.readers.arrays import floats
from lineage_scanner.readers.base import Reader, TensorInfo

#: Roles whose statistics are also taken with the layer's input-norm gain folded in (from column sums).
FOLDED_ROLES = ("q", "k", "v")


@dataclass
class Sketching:
    """What a measurement gathers for the lineage tests from whole matrices as they pass, at positions of
    ``key`` (a store's secret, else this process's own): the circuit sketches, and with ``key.digest`` a
    digest of every attention value. Mutable, one per measurement: the ways of measuring feed it in turn,
    norms first, so that a layer's gain is known when its matrices arrive."""

    key: SketchKey
    layout: Layout
    circuits: CircuitAccumulator | None = None
    #: with ``key.digest``: each part's SHA-256 over its values in float32, rows as ``nn.Linear`` holds them
    digests: dict[tuple[int, str], bytes] = field(default_factory=dict)
    #: a part was measured without being held whole (streamed or sampled): no digest of all values
    partial: bool = False

    def record(self, part: Part, group: list[np.ndarray]) -> None:
        """A part read whole: into the digest of every attention value, where the key asks for one."""
        if not self.key.digest:
            return
        axis = (part.axis if part.ranges else 0) if group[0].ndim == 2 else 0
        whole = floats(np.concatenate(group, axis=axis) if len(group) > 1 else group[0], np.float32)
        if whole.ndim == 2:
            if self.layout.spec.transposed:
                whole = whole.T
            whole = whole[stored_rows(part, self.layout, whole.shape[0], np.arange(whole.shape[0]))]
        self.digests[(part.layer, part.role)] = hashlib.sha256(np.ascontiguousarray(whole).tobytes()).digest()

    def attention_digest(self) -> str | None:
        """One digest of every attention value the scan read, None where some part was not read whole."""
        if not self.key.digest or self.partial:
            return None
        total = hashlib.sha256()
        for key in sorted(self.digests):
            total.update(repr(key).encode() + self.digests[key])
        return total.hexdigest()

    def matrix(self, part: Part, group: list[np.ndarray]) -> None:
        """A whole Q/K/V/O part as read (its segments along the part's axis): into the circuit sketches."""
        if part.role not in CIRCUIT_ROLES or group[0].ndim != 2 or not self.layout.head_dim:
            return
        axis = part.axis if part.ranges else 0
        if self.layout.spec.transposed:  # GPT-2's Conv1D stores [in, out]
            group, axis = [g.T for g in group], 1 - axis
        whole = np.concatenate(group, axis=axis) if len(group) > 1 else group[0]
        self._circuits(part.role, whole.shape).add(part.layer, part.role, whole)

    def sink(self, part: Part, shape: tuple[int, int]) -> RowSink | None:
        """Where a Q/K/V/O part ([out, in]) goes for the circuit sketches, block of rows by block of rows."""
        if part.role not in CIRCUIT_ROLES or not self.layout.head_dim:
            return None
        return self._circuits(part.role, shape).begin(part.layer, part.role, shape)

    def gain(self, layer: int, gain: np.ndarray) -> None:
        if self.layout.head_dim:  # without a head size there are no circuits to fold it into
            self._circuits("gain", (gain.size, gain.size)).gain(layer, gain)

    def _circuits(self, role: str, shape: tuple[int, int]) -> CircuitAccumulator:
        """The accumulator, made by the first matrix or gain to arrive (its width: O's rows, else columns)."""
        if self.circuits is None:
            width = shape[0] if role == "o" else shape[1]
            self.circuits = CircuitAccumulator(width, self.layout.head_dim, self.key, self.layout.n_layers)
        return self.circuits

    def parts(self) -> tuple[SketchPart, ...]:
        return self.circuits.parts() if self.circuits is not None else ()


@dataclass(frozen=True)
class Subject:
    """The checkpoint being measured: its reader, its layout, the backend, its parts by tensor name, and
    what gathers its circuit sketches."""

    reader: Reader
    layout: Layout
    backend: MomentsBackend
    parts: dict[str, list[Part]]
    sketching: Sketching

    def info(self, name: str) -> TensorInfo:
        return self.reader.tensors()[name]


@dataclass(frozen=True)
class RawSketch:
    """A matrix's value sketch as read, before its layer's norm gain is known: the runs' values (``part``)
    and their positions in the matrix (``flat``)."""

    part: SketchPart
    flat: np.ndarray

    def folded(self, gain: np.ndarray | None) -> SketchPart:
        """The sketch of W·diag(γ) for Q/K/V (of W itself for O, or when the gain does not fit)."""
        p = self.part
        fits = gain is not None and gain.size == p.cols
        values = p.values * gain[self.flat % p.cols] if fits and p.role != "o" else p.values
        return SketchPart(p.layer, p.role, p.rows, p.cols, values.astype(np.float32))


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

    def folded_sketch(self) -> list[SketchPart]:
        """Every matrix's value sketch, its layer's norm gain folded in."""
        return [r.folded(self.gains.get(r.part.layer)) for r in self.sketches]


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
