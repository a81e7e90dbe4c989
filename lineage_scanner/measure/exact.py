"""Whole tensors through the backend: the exact moments, what folding the norm needs, and each matrix's
sketch. A per-tensor backend (CPU) gets one tensor at a time; a batched one (Triton) a whole model's."""

from __future__ import annotations

import numpy as np

from lineage_scanner.layouts.resolve import Layout, Part
from lineage_scanner.measure.kernels.stats import Moments
from lineage_scanner.measure.parts import segments
from lineage_scanner.measure.records import ColumnSums
from lineage_scanner.measure.sketch import SKETCHED_ROLES, SketchKey, SketchPart, positions
from lineage_scanner.measure.tally import FOLDED_ROLES, RawSketch, Subject, Tally, checked, stored_rows
from lineage_scanner.readers.arrays import floats


def exact(subject: Subject, batch: list[str], gains: bool = True) -> Tally:
    """Whole tensors through the backend, with what folding the norm needs (column sums, and with ``gains``
    the layers' norm gains, the circuit sketches and the digest of every value) and each matrix's value
    sketch (without ``gains``: a part a sample could not cover, its value sketch only). A Q/K/V part's
    moments and column sums come from one read of it (one pass on the CPU; on the GPU, one launch for all of
    a model's Q/K/V segments and one for the rest)."""
    reader, layout, backend = subject.reader, subject.layout, subject.backend
    tensors = {name: reader.read(name) for name in batch}
    pieces = [(name, part, segments(tensors[name], part)) for name in batch for part in subject.parts[name]]
    input_axis = 0 if layout.spec.transposed else 1

    def folds(part: Part, group: list[np.ndarray]) -> bool:
        return part.role in FOLDED_ROLES and group[0].ndim == 2

    plain = iter(backend.partials([s for _, part, group in pieces if not folds(part, group) for s in group]))
    folded = iter(backend.partials_with_columns([s for _, part, group in pieces if folds(part, group)
                                                 for s in group], input_axis))
    stats, sums, sketches, norm_gains = [], [], [], {}
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
        stats.append(checked(subject.info(name), part, total))
        if gains:
            subject.sketching.record(part, group)
        if _sketched(part, group):
            sketches.append(_sketch_of(part, group, layout, subject.sketching.key))
            if gains:
                subject.sketching.matrix(part, group)
        if gains and part.role == "attn_norm" and layout.spec.pre_norm:
            norm_gains[part.layer] = floats(tensors[name], np.float64).reshape(-1) + layout.spec.norm_offset
            subject.sketching.gain(part.layer, norm_gains[part.layer])
    del tensors, pieces
    for name in batch:
        reader.release(name)
    return Tally(tuple(stats), tuple(sums), norm_gains, tuple(sketches))


def _column_sums(layer: int, role: str, group: list[np.ndarray], powers: list[np.ndarray]) -> ColumnSums:
    """A part's column sums from those of its segments (added up over the segments' output rows)."""
    return ColumnSums(layer, role, sum(powers), sum(g.size for g in group))


def _sketched(part: Part, group: list[np.ndarray]) -> bool:
    return part.role in SKETCHED_ROLES and group[0].ndim == 2 and all(g.size for g in group)


def _sketch_of(part: Part, group: list[np.ndarray], layout: Layout, key: SketchKey) -> RawSketch:
    """The value sketch of a part's matrix (its segments laid end to end along the part's axis), taken as
    ``nn.Linear`` holds it ([out, in], rows in the order of the original checkpoint), whatever the format
    stored, so that an export to another format has the same sketch."""
    axis = part.axis
    if layout.spec.transposed:  # GPT-2's Conv1D stores [in, out]
        group, axis = [g.T for g in group], 1 - axis
    sizes = [g.shape[axis] for g in group]
    rows, cols = (sum(sizes), group[0].shape[1]) if axis == 0 else (group[0].shape[0], sum(sizes))
    edges = np.cumsum([0, *sizes])

    def stored_row(r: np.ndarray) -> np.ndarray:
        return stored_rows(part, layout, rows, r)

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
