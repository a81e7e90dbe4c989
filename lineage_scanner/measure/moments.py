"""Statistics of every attention part of a checkpoint, through a backend from :mod:`lineage_scanner.measure.kernels`.

Tensors are split into their parts (a fused QKV tensor's row ranges, per head where the packing
interleaves heads) and measured by the backend, then merged per part. A per-tensor backend (CPU) gets
one tensor at a time, released before the next is read, so memory stays near the largest tensor; a
batched backend (Triton) gets a whole model's segments in one call, so one launch covers the model.
With a :class:`SamplePlan`, large 2-D tensors are estimated from spread runs instead (see sampling.py).
Either way each Q/K/V/O matrix also yields its positional sketch (see sketch.py).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from lineage_scanner.errors import NonFiniteError
from lineage_scanner.layouts.resolve import Layout, Part
from lineage_scanner.measure.circuits import CIRCUIT_ROLES, CircuitAccumulator, RowSink
from lineage_scanner.measure.kernels import MomentsBackend
from lineage_scanner.measure.kernels.stats import Moments
from lineage_scanner.measure.records import ColumnSums, LayerStat, Measurement
from lineage_scanner.measure.sampling import (
    ROUNDS,
    SURVEY_SE,
    SamplePlan,
    fraction_for,
    next_fraction,
    placed,
    pooled,
    required_se,
    run_length,
)
from lineage_scanner.measure.sketch import (
    SKETCHED_ROLES,
    SketchKey,
    SketchPart,
    anchor_rows,
    anchors,
    bands,
    positions,
    rope_row,
)
from lineage_scanner.readers.arrays import floats
from lineage_scanner.readers.base import Reader, TensorInfo

#: Tensors smaller than this are always read whole: a sample would save nothing worth a request.
MIN_SAMPLED = 1 << 14


def _narrow(array: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    return array[(slice(None),) * axis + (slice(start, stop),)]


def segments(tensor: np.ndarray, part: Part) -> list[np.ndarray]:
    if not part.ranges:
        return [tensor]
    axis = part.axis if tensor.ndim > 1 else 0
    return [_narrow(tensor, axis, start, stop) for start, stop in part.ranges]


def head_views(tensor: np.ndarray, head_dim: int, axis: int = 0) -> list[np.ndarray]:
    """One view per attention head: rows of Q/K/V (axis 0), columns of O (axis 1)."""
    return [_narrow(tensor, axis, i, i + head_dim) for i in range(0, tensor.shape[axis], head_dim)]


def flat_spans(part: Part, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """The part as (start, length) runs of the flattened tensor; None when it is strided (column split)."""
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if not part.ranges:
        return [(0, int(np.prod(shape)))]
    if part.axis != 0 and len(shape) > 1:
        return None
    return [(a * cols, (b - a) * cols) for a, b in part.ranges]


@dataclass
class Sketching:
    """What a measurement gathers for the lineage tests besides moments: each matrix's value sketch as read
    (``raw``), at positions of ``key``, and the circuit sketches (``circuits``, from whole matrices)."""

    key: SketchKey
    layout: Layout
    raw: list[RawSketch] = field(default_factory=list)
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
            whole = whole[_stored_rows(part, self.layout, whole.shape[0], np.arange(whole.shape[0]))]
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
        sink = self.sink(part, whole.shape)
        if sink is not None:
            sink.take(0, whole)
            sink.close()

    def sink(self, part: Part, shape: tuple[int, int]) -> RowSink | None:
        """Where a Q/K/V/O part ([out, in]) goes for the circuit sketches, block of rows by block of rows."""
        if part.role not in CIRCUIT_ROLES or not self.layout.head_dim:
            return None
        if self.circuits is None:
            width = shape[0] if part.role == "o" else shape[1]
            self.circuits = CircuitAccumulator(width, self.layout.head_dim, self.key, self.layout.n_layers)
        return self.circuits.begin(part.layer, part.role, shape)

    def gain(self, layer: int, gain: np.ndarray) -> None:
        if self.circuits is None:
            self.circuits = CircuitAccumulator(gain.size, self.layout.head_dim or 1, self.key, self.layout.n_layers)
        self.circuits.gain(layer, gain)

    def parts(self, gains: dict[int, np.ndarray]) -> tuple[SketchPart, ...]:
        values = [r.folded(gains.get(r.part.layer)) for r in self.raw]
        circuits = self.circuits.parts() if self.circuits is not None else ()
        return tuple(sorted([*values, *circuits], key=lambda p: (p.layer, p.role, p.kind)))


def measure(reader: Reader, layout: Layout, backend: MomentsBackend, sample: SamplePlan | None = None,
            key: SketchKey | None = None) -> Measurement:
    """Every attention part's moments, and the sketches the lineage tests read (at ``key``'s positions:
    a store's secret, else this process's own)."""
    infos = reader.tensors()
    by_tensor: dict[str, list[Part]] = defaultdict(list)
    for part in layout.parts:
        by_tensor[part.tensor].append(part)
    # norms first: a layer's gain is folded into the circuits of its matrices as they pass
    names = sorted(by_tensor, key=lambda n: not any(p.role == "attn_norm" for p in by_tensor[n]))
    sampled = {n for n in names if sample and _samplable(infos[n], by_tensor[n], layout)}
    streamed = [n for n in names if n not in sampled and _streamable(reader, infos[n], by_tensor[n], layout)]
    exact = [n for n in names if n not in sampled and n not in streamed]
    reader.prefetch(exact)
    batches = [exact] if backend.batched else [[name] for name in exact]
    stats: list[LayerStat] = []
    sums: list[ColumnSums] = []
    gains: dict[int, np.ndarray] = {}
    sketches = Sketching(key or SketchKey.of_process(), layout)
    for batch in batches:
        stats.extend(_exact(reader, batch, by_tensor, backend, layout, sums, gains, sketches))
    sketches.partial = bool(streamed or sampled)
    for name in streamed:
        stats.extend(_streamed(reader, name, by_tensor[name], backend, layout, sums, sketches))
    if sampled:
        stats.extend(_sampled(reader, [n for n in names if n in sampled], by_tensor, backend, sample, stats,
                              layout, sums, sketches))
    stats = _fold(stats, sums, gains)
    dtypes: dict[str, int] = defaultdict(int)
    for name in names:
        dtypes[infos[name].dtype] += infos[name].nbytes
    dtype = max(dtypes, key=dtypes.get) if dtypes else "unknown"
    return Measurement(tuple(sorted(stats, key=lambda s: (s.layer, s.role))), dtype, any(s.std_se for s in stats),
                       sketches.parts(gains), sketches.attention_digest())


def _fold(stats: list[LayerStat], sums: list[ColumnSums], gains: dict[int, np.ndarray]) -> list[LayerStat]:
    """Attach each Q/K/V part's folded std and kurtosis, from its column sums and its layer's norm gain."""
    folded = {(c.layer, c.role): c.folded(gains[c.layer]) for c in sums if c.layer in gains}
    return [LayerStat(s.layer, s.role, s.moments, s.std_se, *(folded.get((s.layer, s.role)) or (None, None)),
                      s.kurtosis_se) for s in stats]


@dataclass(frozen=True)
class RawSketch:
    """A matrix's sketch as read, before its layer's norm gain is known: the runs' values (``part``) and
    their positions in the matrix (``flat``)."""

    part: SketchPart
    flat: np.ndarray

    def folded(self, gain: np.ndarray | None) -> SketchPart:
        """The sketch of W·diag(γ) for Q/K/V (of W itself for O, or when the gain does not fit)."""
        p = self.part
        fits = gain is not None and gain.size == p.cols
        values = p.values * gain[self.flat % p.cols] if fits and p.role != "o" else p.values
        return SketchPart(p.layer, p.role, p.rows, p.cols, values.astype(np.float32))


def _sketch_of(part: Part, group: list[np.ndarray], layout: Layout, key: SketchKey) -> RawSketch:
    """The sketches of a part's matrix (its segments laid end to end along the part's axis), taken as
    ``nn.Linear`` holds it ([out, in], rows in the order of the original checkpoint), whatever the format
    stored, so that an export to another format has the same sketch."""
    axis = part.axis
    if layout.spec.transposed:  # GPT-2's Conv1D stores [in, out]
        group, axis = [g.T for g in group], 1 - axis
    sizes = [g.shape[axis] for g in group]
    rows, cols = (sum(sizes), group[0].shape[1]) if axis == 0 else (group[0].shape[0], sum(sizes))
    edges = np.cumsum([0, *sizes])

    def stored_row(r: np.ndarray) -> np.ndarray:
        return _stored_rows(part, layout, rows, r)

    def take(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        if len(group) == 1:
            return floats(group[0][r, c])
        segment = np.searchsorted(edges, r if axis == 0 else c, side="right") - 1
        values = np.empty(r.shape, np.float32)
        for k, g in enumerate(group):
            sel = segment == k
            if sel.any():
                rr, cc = (r[sel] - edges[k], c[sel]) if axis == 0 else (r[sel], c[sel] - edges[k])
                values[sel] = floats(g[rr, cc])
        return values

    flat = positions(rows, cols, key)
    r, c = np.divmod(flat, cols)
    values = take(stored_row(r), c)
    return RawSketch(SketchPart(part.layer, part.role, rows, cols, values), flat)


def _sketched(part: Part, group: list[np.ndarray]) -> bool:
    return part.role in SKETCHED_ROLES and group[0].ndim == 2 and all(g.size for g in group)


def _checked(info: TensorInfo, part: Part, total: Moments, se: float = 0.0, kurtosis_se: float = 0.0
             ) -> LayerStat:
    if total.nonfinite:
        raise NonFiniteError(info.file, f"tensor {info.name!r} holds {total.nonfinite} NaN/Inf values")
    return LayerStat(part.layer, part.role, total, se, kurtosis_se=kurtosis_se)


FOLDED_ROLES = ("q", "k", "v")


def _column_sums(layer: int, role: str, group: list[np.ndarray], powers: list[np.ndarray]) -> ColumnSums:
    """A part's column sums from those of its segments (added up over the segments' output rows)."""
    return ColumnSums(layer, role, sum(powers), sum(g.size for g in group))


def _exact(reader: Reader, batch: list[str], by_tensor: dict[str, list[Part]], backend: MomentsBackend,
           layout: Layout, sums: list[ColumnSums], gains: dict[int, np.ndarray] | None,
           sketches: Sketching) -> list[LayerStat]:
    """Whole tensors through the backend, with what folding the norm needs (``sums``, ``gains``) and each
    matrix's sketches (with ``gains`` None, a sampled part read whole: its value sketch only). A Q/K/V
    part's moments and column sums come from one read of it (one pass on the CPU; on the GPU, one launch
    for all of a model's Q/K/V segments and one for the rest)."""
    infos = reader.tensors()
    tensors = {name: reader.read(name) for name in batch}
    pieces = [(name, part, segments(tensors[name], part)) for name in batch for part in by_tensor[name]]
    input_axis = 0 if layout.spec.transposed else 1

    def folds(part: Part, group: list[np.ndarray]) -> bool:
        return part.role in FOLDED_ROLES and group[0].ndim == 2

    plain = iter(backend.partials([s for _, part, group in pieces if not folds(part, group) for s in group]))
    folded = iter(backend.partials_with_columns([s for _, part, group in pieces if folds(part, group)
                                                 for s in group], input_axis))
    out = []
    for name, part, group in pieces:
        if folds(part, group):
            rows = [next(folded) for _ in group]
            partials = [r[0] for r in rows]
            sums.append(_column_sums(part.layer, part.role, group, [r[1] for r in rows]))
        else:
            partials = [next(plain) for _ in group]
        total = Moments()
        for partial in partials:
            total = total + Moments.from_partial(partial)
        out.append(_checked(infos[name], part, total))
        sketches.record(part, group)
        if _sketched(part, group):
            sketches.raw.append(_sketch_of(part, group, layout, sketches.key))
            if gains is not None:
                sketches.matrix(part, group)
        if gains is not None and part.role == "attn_norm" and layout.spec.pre_norm:
            gains[part.layer] = floats(tensors[name], np.float64).reshape(-1) + layout.spec.norm_offset
            sketches.gain(part.layer, gains[part.layer])
    del tensors, pieces
    for name in batch:
        reader.release(name)
    return out


def _streamable(reader: Reader, info: TensorInfo, parts: list[Part], layout: Layout) -> bool:
    """Whether a tensor is too large for the reader to hold and can be measured block by block of rows: a
    matrix stored as ``nn.Linear`` holds it, whose parts are row ranges."""
    limit = getattr(reader, "stream_over", None)
    return (limit is not None and info.nbytes > limit and len(info.shape) == 2 and not layout.spec.transposed
            and all(p.axis == 0 or not p.ranges for p in parts))


def _streamed(reader: Reader, name: str, parts: list[Part], backend: MomentsBackend, layout: Layout,
              sums: list[ColumnSums], sketches: Sketching) -> list[LayerStat]:
    """A tensor larger than the reader holds, measured as its blocks of rows pass: each part's moments and
    column sums merge over the blocks (both are sums), and the rows its sketch needs are kept on the way."""
    info = reader.tensors()[name]
    rows, cols = info.shape
    spans = {p: list(p.ranges) or [(0, rows)] for p in parts}
    totals = {p: Moments() for p in parts}
    powers = {p: np.zeros((4, cols)) for p in parts if p.role in FOLDED_ROLES}
    wanted = {p: _sketch_rows(p, spans[p], cols, layout, sketches.key) for p in parts if p.role in SKETCHED_ROLES}
    sinks = {p: sketches.sink(p, (sum(b - a for a, b in spans[p]), cols)) for p in parts}
    kept: dict[int, np.ndarray] = {}
    for first, block in reader.read_blocks(name):
        last = first + block.shape[0]
        for part in parts:
            offset = 0  # rows of the part's matrix before this span
            for a, b in spans[part]:
                lo, hi = max(a, first), min(b, last)
                offset += b - a
                if lo >= hi:
                    continue
                segment = block[lo - first : hi - first]
                if sinks[part] is not None:
                    sinks[part].take(offset - (b - a) + lo - a, segment)
                if part in powers:
                    ((partial, power),) = backend.partials_with_columns([segment], 1)
                else:
                    (partial,), power = backend.partials([segment]), None
                totals[part] = totals[part] + Moments.from_partial(partial)
                if power is not None:
                    powers[part] += power
        for row in {r for where in wanted.values() for r in where.values() if first <= r < last}:
            kept[row] = floats(block[row - first])
        del block
    out = []
    for part in parts:
        if sinks[part] is not None:
            sinks[part].close()
        out.append(_checked(info, part, totals[part]))
        size = sum(b - a for a, b in spans[part]) * cols
        if part in powers:
            sums.append(ColumnSums(part.layer, part.role, powers[part], size))
        if part in wanted:
            sketches.raw.append(_sketch_from_rows(part, sum(b - a for a, b in spans[part]), cols, wanted[part], kept,
                                                  sketches.key))
    reader.release(name)
    return out


def _stored_rows(part: Part, layout: Layout, rows: int, logical: np.ndarray) -> np.ndarray:
    """Where rows of a part's matrix (as ``nn.Linear`` holds them) lie in the stored tensor: moved by the
    GGUF converter's rotary interleave within each head, when the matrix is whole heads (a header whose
    head size does not divide the rows cannot describe such a permutation, so rows stay in place)."""
    head = layout.head_dim
    if part.role in layout.spec.rope_rows and head and head % 2 == 0 and rows % head == 0:
        return rope_row(logical, head)
    return logical


def _sketch_rows(part: Part, spans: list[tuple[int, int]], cols: int, layout: Layout, key: SketchKey
                 ) -> dict[int, int]:
    """Each anchor row of a part's matrix (rows as ``nn.Linear`` holds them) -> the stored tensor's row."""
    rows = sum(b - a for a, b in spans)
    logical = anchor_rows(rows, cols, key)
    stored = _stored_rows(part, layout, rows, logical)
    starts = np.cumsum([0, *(b - a for a, b in spans)])
    span = np.searchsorted(starts, stored, side="right") - 1
    return {int(v): int(spans[k][0] + s - starts[k]) for v, s, k in zip(logical, stored, span)}


def _sketch_from_rows(part: Part, rows: int, cols: int, where: dict[int, int], kept: dict[int, np.ndarray],
                      key: SketchKey) -> RawSketch:
    """The sketch of a part whose anchor rows were kept while it streamed (as :func:`_sketch_of` takes it)."""
    flat = positions(rows, cols, key)
    r, c = np.divmod(flat, cols)
    values = np.array([kept[where[int(i)]][j] for i, j in zip(r, c)], dtype=np.float32)
    return RawSketch(SketchPart(part.layer, part.role, rows, cols, values), flat)


def _samplable(info: TensorInfo, parts: list[Part], layout: Layout) -> bool:
    """Whether a tensor can be read as runs. Not when its sketch's runs would be strided in storage (a
    transposed tensor, rows a GGUF converter reordered): those are few and small, and read whole."""
    return (len(info.shape) == 2 and info.numel >= MIN_SAMPLED and not layout.spec.transposed
            and all(flat_spans(p, info.shape) is not None and p.role not in layout.spec.rope_rows for p in parts))


def _sampled(reader: Reader, names: list[str], by_tensor: dict[str, list[Part]], backend: MomentsBackend,
             plan: SamplePlan, exact: list[LayerStat], layout: Layout, sums: list[ColumnSums],
             sketches: Sketching) -> list[LayerStat]:
    """Sample every part. With a target error, a cheap survey first measures how much each role's curve
    moves between layers, then each part is estimated to the error its role needs (the target, or less for
    a flat curve: see :func:`lineage_scanner.measure.sampling.required_se`): lineage, not one std, sets the precision.
    Q/K/V parts also add the column sums of their final sample to ``sums``, so the norm gain folds in, and
    every matrix its sketch (read by the final sample's runs) to ``sketches``."""
    parts = [(name, part) for name in names for part in by_tensor[name]]
    survey = None if plan.target_se is None else max(plan.target_se, SURVEY_SE)
    out = {(n, p): _estimate(reader, n, p, backend, plan, survey, layout, sketches.key) for n, p in parts}
    if plan.target_se is not None:
        curves: dict[str, dict[int, float]] = defaultdict(dict)
        for stat in [*exact, *(stat for stat, _, _ in out.values())]:
            curves[stat.role][stat.layer] = stat.moments.std
        needed = {role: required_se(list(c.values()), plan.target_se) for role, c in curves.items()}
        for name, part in parts:  # always anew: the survey's own error estimate rests on too few elements
            out[(name, part)] = _estimate(reader, name, part, backend, plan, needed[part.role], layout, sketches.key)
    sums.extend(c for _, c, _ in out.values() if c is not None)
    sketches.raw.extend(k for _, _, k in out.values() if k is not None)
    return [stat for stat, _, _ in out.values()]


def _estimate(reader: Reader, name: str, part: Part, backend: MomentsBackend, plan: SamplePlan,
              target: float | None, layout: Layout, key: SketchKey
              ) -> tuple[LayerStat, ColumnSums | None, RawSketch | None]:
    """One part from stratified runs, at larger fractions until ``target`` is met; else read whole."""
    info = reader.tensors()[name]
    spans = flat_spans(part, info.shape)
    fraction = plan.fraction if target is None else fraction_for(target, sum(n for _, n in spans))
    for round_ in range(ROUNDS):
        starts = _run_starts(spans, info.shape[1], fraction, key)
        if starts is None:
            break
        runs = reader.read_runs(name, starts.storage, starts.run)
        total, se, kurtosis_se = pooled([Moments.from_partial(p) for p in backend.partials(list(runs))])
        if target is None or se <= target or round_ == ROUNDS - 1:
            sums = _sampled_column_sums(runs, starts, info.shape, part, layout.spec.transposed)
            return _checked(info, part, total, se, kurtosis_se), sums, _sampled_sketch(part, runs, starts, key)
        fraction = next_fraction(fraction, se, target)
    sums: list[ColumnSums] = []
    sketches = Sketching(key, layout)
    stat = _exact(reader, [name], {name: [part]}, backend, layout, sums, None, sketches)[0]
    return stat, (sums[0] if sums else None), (sketches.raw[0] if sketches.raw else None)


@dataclass(frozen=True)
class Runs:
    """Where a sample's runs lie: ``storage`` starts in the flattened tensor, ``virtual`` ones in the part's
    matrix (``rows`` x ``cols``: its spans laid end to end), each ``run`` long and covering the sketch's run
    at ``anchors``."""

    storage: np.ndarray
    virtual: np.ndarray
    run: int
    anchors: np.ndarray
    anchor_run: int
    rows: int
    cols: int


def _sampled_column_sums(runs: np.ndarray, starts: Runs, shape: tuple[int, ...], part: Part,
                         transposed: bool) -> ColumnSums | None:
    """Per input column, the power sums of the sampled elements. Every element of a part is
    equally likely to be sampled (one run per equal stratum), so these stand for the whole matrix's column
    sums scaled by the sampled share, and :meth:`ColumnSums.folded_std` needs nothing more."""
    if part.role not in FOLDED_ROLES or len(shape) != 2:
        return None
    flat = (starts.storage[:, None] + np.arange(starts.run)).reshape(-1)
    column = flat // shape[1] if transposed else flat % shape[1]
    values = floats(runs.reshape(-1), np.float64)
    width = shape[0] if transposed else shape[1]
    squares = values * values  # products, not ** (numpy's pow on floats is 3x slower than the bincounts)
    powers = np.stack([np.bincount(column, w, width) for w in (values, squares, squares * values, squares * squares)])
    return ColumnSums(part.layer, part.role, powers, values.size)


def _sampled_sketch(part: Part, runs: np.ndarray, starts: Runs, key: SketchKey) -> RawSketch | None:
    """The sketch, cut out of the runs that cover it (each run covers its anchor run)."""
    if part.role not in SKETCHED_ROLES:
        return None
    table = floats(runs)
    index = np.arange(len(starts.anchors))[:, None]
    values = table[index, (starts.anchors - starts.virtual)[:, None] + np.arange(starts.anchor_run)].reshape(-1)
    flat = positions(starts.rows, starts.cols, key)
    return RawSketch(SketchPart(part.layer, part.role, starts.rows, starts.cols, values), flat)


def _run_starts(spans: list[tuple[int, int]], cols: int, fraction: float, key: SketchKey) -> Runs | None:
    """One run per band of the part's rows, over the band's sketch run, kept inside the span (row range of
    the stored tensor) that holds it; None means read the part whole."""
    lengths = np.array([n for _, n in spans], dtype=np.int64)
    rows = int(lengths.sum()) // cols
    anchor, anchor_run = anchors(rows, cols, key)
    run = run_length(rows * cols, fraction, len(anchor), anchor_run)
    if run is None:
        return None
    cum = np.concatenate([[0], np.cumsum(lengths)])
    k = np.searchsorted(cum, anchor, side="right") - 1  # the span of each anchor
    low, high = bands(rows, cols, key)
    virtual = placed(anchor, anchor_run, np.maximum(low, cum[k]), np.minimum(high, cum[k + 1]), run)
    if virtual is None:
        return None
    storage = np.array([s for s, _ in spans], dtype=np.int64)[k] + (virtual - cum[k])
    return Runs(storage, virtual, run, anchor, anchor_run, rows, cols)
