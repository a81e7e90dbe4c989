"""Statistics of every attention part of a checkpoint, through a backend from :mod:`lineage_scanner.measure.kernels`.

Tensors are split into their parts (a fused QKV tensor's row ranges, per head where the packing
interleaves heads) and measured by the backend, then merged per part. A per-tensor backend (CPU) gets
one tensor at a time, released before the next is read, so memory stays near the largest tensor; a
batched backend (Triton) gets a whole model's segments in one call, so one launch covers the model.
With a :class:`SamplePlan`, large 2-D tensors are estimated from spread runs instead (see sampling.py).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from lineage_scanner.errors import NonFiniteError
from lineage_scanner.layouts.resolve import Layout, Part
from lineage_scanner.measure.kernels import MomentsBackend
from lineage_scanner.measure.kernels.cpu import column_sums as kernel_column_sums
from lineage_scanner.measure.kernels.stats import Moments
from lineage_scanner.measure.records import ColumnSums, LayerStat, Measurement
from lineage_scanner.measure.sampling import (
    ROUNDS,
    SURVEY_SE,
    SamplePlan,
    fraction_for,
    next_fraction,
    pooled,
    required_se,
    runs_for,
)
from lineage_scanner.readers.base import Reader, TensorInfo

#: Tensors smaller than this are always read whole: a sample would save nothing worth a request.
MIN_SAMPLED = 1 << 14


def segments(tensor: torch.Tensor, part: Part) -> list[torch.Tensor]:
    if not part.ranges:
        return [tensor]
    axis = part.axis if tensor.dim() > 1 else 0
    return [tensor.narrow(axis, start, stop - start) for start, stop in part.ranges]


def head_views(tensor: torch.Tensor, head_dim: int, axis: int = 0) -> list[torch.Tensor]:
    """One view per attention head: rows of Q/K/V (axis 0), columns of O (axis 1)."""
    return list(tensor.split(head_dim, dim=axis))


def flat_spans(part: Part, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """The part as (start, length) runs of the flattened tensor; None when it is strided (column split)."""
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if not part.ranges:
        return [(0, int(np.prod(shape)))]
    if part.axis != 0 and len(shape) > 1:
        return None
    return [(a * cols, (b - a) * cols) for a, b in part.ranges]


def measure(reader: Reader, layout: Layout, backend: MomentsBackend, sample: SamplePlan | None = None
            ) -> Measurement:
    infos = reader.tensors()
    by_tensor: dict[str, list[Part]] = defaultdict(list)
    for part in layout.parts:
        by_tensor[part.tensor].append(part)
    names = list(by_tensor)
    sampled = {n for n in names if sample and _samplable(infos[n], by_tensor[n])}
    exact = [n for n in names if n not in sampled]
    reader.prefetch(exact)
    batches = [exact] if backend.batched else [[name] for name in exact]
    stats: list[LayerStat] = []
    sums: list[ColumnSums] = []
    gains: dict[int, np.ndarray] = {}
    for batch in batches:
        stats.extend(_exact(reader, batch, by_tensor, backend, layout, sums, gains))
    if sampled:
        stats.extend(_sampled(reader, [n for n in names if n in sampled], by_tensor, backend, sample, stats,
                              layout, sums))
    stats = _fold(stats, sums, gains)
    dtypes: dict[str, int] = defaultdict(int)
    for name in names:
        dtypes[infos[name].dtype] += infos[name].nbytes
    dtype = max(dtypes, key=dtypes.get) if dtypes else "unknown"
    return Measurement(tuple(sorted(stats, key=lambda s: (s.layer, s.role))), dtype, any(s.std_se for s in stats))


def _fold(stats: list[LayerStat], sums: list[ColumnSums], gains: dict[int, np.ndarray]) -> list[LayerStat]:
    """Attach each Q/K/V part's folded std and kurtosis, from its column sums and its layer's norm gain."""
    folded = {(c.layer, c.role): c.folded(gains[c.layer]) for c in sums if c.layer in gains}
    return [LayerStat(s.layer, s.role, s.moments, s.std_se, *(folded.get((s.layer, s.role)) or (None, None)))
            for s in stats]


def _checked(info: TensorInfo, part: Part, total: Moments, se: float = 0.0) -> LayerStat:
    if total.nonfinite:
        raise NonFiniteError(info.file, f"tensor {info.name!r} holds {total.nonfinite} NaN/Inf values")
    return LayerStat(part.layer, part.role, total, se)


FOLDED_ROLES = ("q", "k", "v")


def _column_sums(layer: int, role: str, group: list[torch.Tensor], powers: list[np.ndarray]) -> ColumnSums:
    """A part's column sums from those of its segments (added up over the segments' output rows)."""
    return ColumnSums(layer, role, sum(powers), sum(g.numel() for g in group))


def _exact(reader: Reader, batch: list[str], by_tensor: dict[str, list[Part]], backend: MomentsBackend,
           layout: Layout | None = None, sums: list[ColumnSums] | None = None,
           gains: dict[int, np.ndarray] | None = None) -> list[LayerStat]:
    """Whole tensors through the backend; with ``sums``/``gains``, also what folding the norm needs. A
    backend that can (CPU) takes a Q/K/V part's moments and column sums in one read."""
    infos = reader.tensors()
    tensors = {name: reader.read(name) for name in batch}
    pieces = [(name, part, segments(tensors[name], part)) for name in batch for part in by_tensor[name]]
    input_axis = 0 if layout and layout.spec.transposed else 1
    fused = getattr(backend, "partials_with_columns", None)

    def folds(part: Part, group: list[torch.Tensor]) -> bool:
        return sums is not None and part.role in FOLDED_ROLES and group[0].dim() == 2

    plain = iter(backend.partials([s for _, part, group in pieces if not (fused and folds(part, group))
                                   for s in group]))
    out = []
    for name, part, group in pieces:
        if fused and folds(part, group):
            rows = fused(group, input_axis)
            partials = [r[0] for r in rows]
            sums.append(_column_sums(part.layer, part.role, group, [r[1] for r in rows]))
        else:
            partials = [next(plain) for _ in group]
            if folds(part, group):
                sums.append(_column_sums(part.layer, part.role, group,
                                         [kernel_column_sums(g, input_axis) for g in group]))
        total = Moments()
        for partial in partials:
            total = total + Moments.from_partial(partial)
        out.append(_checked(infos[name], part, total))
        if gains is not None and part.role == "attn_norm" and layout and layout.spec.pre_norm:
            gains[part.layer] = tensors[name].to(torch.float64).reshape(-1).numpy() + layout.spec.norm_offset
    del tensors, pieces
    for name in batch:
        reader.release(name)
    return out


def _samplable(info: TensorInfo, parts: list[Part]) -> bool:
    return len(info.shape) == 2 and info.numel >= MIN_SAMPLED and all(
        flat_spans(p, info.shape) is not None for p in parts)


def _sampled(reader: Reader, names: list[str], by_tensor: dict[str, list[Part]], backend: MomentsBackend,
             plan: SamplePlan, exact: list[LayerStat], layout: Layout, sums: list[ColumnSums]) -> list[LayerStat]:
    """Sample every part. With a target error, a cheap survey first measures how much each role's curve
    moves between layers, then each part is estimated to the error its role needs (the target, or less for
    a flat curve: see :func:`lineage_scanner.measure.sampling.required_se`): lineage, not one std, sets the precision.
    Q/K/V parts also add the column sums of their final sample to ``sums``, so the norm gain folds in."""
    rng = np.random.default_rng(plan.seed)
    parts = [(name, part) for name in names for part in by_tensor[name]]
    survey = None if plan.target_se is None else max(plan.target_se, SURVEY_SE)
    out = {(n, p): _estimate(reader, n, p, backend, plan, survey, rng, layout) for n, p in parts}
    if plan.target_se is not None:
        curves: dict[str, dict[int, float]] = defaultdict(dict)
        for stat in [*exact, *(stat for stat, _ in out.values())]:
            curves[stat.role][stat.layer] = stat.moments.std
        needed = {role: required_se(list(c.values()), plan.target_se) for role, c in curves.items()}
        for name, part in parts:  # always anew: the survey's own error estimate rests on too few elements
            out[(name, part)] = _estimate(reader, name, part, backend, plan, needed[part.role], rng, layout)
    sums.extend(c for _, c in out.values() if c is not None)
    return [stat for stat, _ in out.values()]


def _estimate(reader: Reader, name: str, part: Part, backend: MomentsBackend, plan: SamplePlan,
              target: float | None, rng: np.random.Generator, layout: Layout
              ) -> tuple[LayerStat, ColumnSums | None]:
    """One part from stratified runs, at larger fractions until ``target`` is met; else read whole."""
    info = reader.tensors()[name]
    spans = flat_spans(part, info.shape)
    fraction = plan.fraction if target is None else fraction_for(target, sum(n for _, n in spans))
    for round_ in range(ROUNDS):
        starts = _run_starts(rng, spans, fraction, plan.max_runs)
        if starts is None:
            break
        runs = reader.read_runs(name, *starts)
        total, se = pooled([Moments.from_partial(p) for p in backend.partials(list(runs))])
        if target is None or se <= target or round_ == ROUNDS - 1:
            sums = _sampled_column_sums(runs, starts, info.shape, part, layout.spec.transposed)
            return _checked(info, part, total, se), sums
        fraction = next_fraction(fraction, se, target)
    sums: list[ColumnSums] = []
    stat = _exact(reader, [name], {name: [part]}, backend, layout, sums)[0]
    return stat, (sums[0] if sums else None)


def _sampled_column_sums(runs: torch.Tensor, starts: tuple[np.ndarray, int], shape: tuple[int, ...], part: Part,
                         transposed: bool) -> ColumnSums | None:
    """Per input column, the power sums of the sampled elements. Every element of a part is
    equally likely to be sampled (one run per equal stratum), so these stand for the whole matrix's column
    sums scaled by the sampled share, and :meth:`ColumnSums.folded_std` needs nothing more."""
    if part.role not in FOLDED_ROLES or len(shape) != 2:
        return None
    first, run = starts
    flat = (first[:, None] + np.arange(run)).reshape(-1)
    column = flat // shape[1] if transposed else flat % shape[1]
    values = runs.reshape(-1).to(torch.float64).numpy()
    width = shape[0] if transposed else shape[1]
    powers = np.stack([np.bincount(column, values**k, width) for k in range(1, 5)])
    return ColumnSums(part.layer, part.role, powers, values.size)


def _run_starts(rng: np.random.Generator, spans: list[tuple[int, int]], fraction: float, max_runs: int
                ) -> tuple[np.ndarray, int] | None:
    """Runs over the spans laid end to end; a run is kept inside the span it starts in."""
    lengths = np.array([n for _, n in spans], dtype=np.int64)
    plan = runs_for(rng, int(lengths.sum()), fraction, max_runs)
    if plan is None:
        return None
    virtual, run = plan
    if run > lengths.min():
        return None
    cum = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    k = np.searchsorted(cum, virtual, side="right") - 1
    offset = np.minimum(virtual - cum[k], lengths[k] - run)
    return np.array([s for s, _ in spans], dtype=np.int64)[k] + offset, run
