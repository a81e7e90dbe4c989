"""A tensor larger than the reader holds (a Hub reader's read-ahead budget), measured block by block of
rows as they pass: moments and column sums merge exactly over the blocks, the rows of the value sketch's
runs are kept on the way, and the circuit sketches take each block as it comes."""

from __future__ import annotations

import numpy as np

from lineage_scanner.layouts.resolve import Layout, Part
from lineage_scanner.measure.kernels.stats import Moments
from lineage_scanner.measure.records import ColumnSums
from lineage_scanner.measure.sketch import SKETCHED_ROLES, SketchKey, SketchPart, anchor_rows, positions
from lineage_scanner.measure.tally import FOLDED_ROLES, RawSketch, Subject, Tally, checked, stored_rows
from lineage_scanner.readers.arrays import floats
from lineage_scanner.readers.base import Reader, TensorInfo


def streamable(reader: Reader, info: TensorInfo, parts: list[Part], layout: Layout) -> bool:
    """Whether a tensor is too large for the reader to hold and can be measured block by block of rows: a
    matrix stored as ``nn.Linear`` holds it, whose parts are row ranges."""
    limit = getattr(reader, "stream_over", None)
    return (limit is not None and info.nbytes > limit and len(info.shape) == 2 and not layout.spec.transposed
            and all(p.axis == 0 or not p.ranges for p in parts))


def streamed(subject: Subject, name: str) -> Tally:
    """A tensor larger than the reader holds, measured as its blocks of rows pass: each part's moments and
    column sums merge over the blocks (both are sums), and the rows its sketch needs are kept on the way."""
    reader, layout, backend, parts = subject.reader, subject.layout, subject.backend, subject.parts[name]
    info = subject.info(name)
    rows, cols = info.shape
    spans = {p: list(p.ranges) or [(0, rows)] for p in parts}
    totals = {p: Moments() for p in parts}
    powers = {p: np.zeros((4, cols)) for p in parts if p.role in FOLDED_ROLES}
    key = subject.sketching.key
    wanted = {p: _sketch_rows(p, spans[p], cols, layout, key) for p in parts if p.role in SKETCHED_ROLES}
    sinks = {p: subject.sketching.sink(p, (sum(b - a for a, b in spans[p]), cols)) for p in parts}
    kept: dict[int, np.ndarray] = {}
    for first, block in reader.read_blocks(name):
        last = first + block.shape[0]
        for part in parts:
            offset = 0  # rows of the part's matrix up to the end of this span
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
    stats, sums, sketches = [], [], []
    for part in parts:
        if sinks[part] is not None:
            sinks[part].close()
        stats.append(checked(info, part, totals[part]))
        size = sum(b - a for a, b in spans[part]) * cols
        if part in powers:
            sums.append(ColumnSums(part.layer, part.role, powers[part], size))
        if part in wanted:
            sketches.append(_sketch_from_rows(part, sum(b - a for a, b in spans[part]), cols, wanted[part], kept,
                                              key))
    reader.release(name)
    return Tally(tuple(stats), tuple(sums), sketches=tuple(sketches))


def _sketch_rows(part: Part, spans: list[tuple[int, int]], cols: int, layout: Layout, key: SketchKey
                 ) -> dict[int, int]:
    """Each anchor row of a part's matrix (rows as ``nn.Linear`` holds them) -> the stored tensor's row."""
    rows = sum(b - a for a, b in spans)
    logical = anchor_rows(rows, cols, key)
    stored = stored_rows(part, layout, rows, logical)
    starts = np.cumsum([0, *(b - a for a, b in spans)])
    span = np.searchsorted(starts, stored, side="right") - 1
    return {int(v): int(spans[k][0] + s - starts[k]) for v, s, k in zip(logical, stored, span)}


def _sketch_from_rows(part: Part, rows: int, cols: int, where: dict[int, int], kept: dict[int, np.ndarray],
                      key: SketchKey) -> RawSketch:
    """The value sketch of a part whose anchor rows were kept while it streamed (as the exact read takes it)."""
    flat = positions(rows, cols, key)
    r, c = np.divmod(flat, cols)
    values = np.array([kept[where[int(i)]][j] for i, j in zip(r, c)], dtype=np.float32)
    return RawSketch(SketchPart(part.layer, part.role, rows, cols, values), flat)
