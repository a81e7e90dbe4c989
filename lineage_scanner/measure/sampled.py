"""Large 2-D tensors estimated from stratified runs (see :mod:`lineage_scanner.measure.sampling`), each run
over the value sketch's run in its band, so the sketch and the Q/K/V column sums come from the same runs. A
sampled scan has no circuit sketches (they need whole matrices) and no digest of every value."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from lineage_scanner.layouts.resolve import Layout, Part
from lineage_scanner.measure.exact import exact
from lineage_scanner.measure.kernels.stats import Moments
from lineage_scanner.measure.parts import flat_spans
from lineage_scanner.measure.records import ColumnSums, LayerStat
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
from lineage_scanner.measure.sketch import SKETCHED_ROLES, SketchKey, SketchPart, anchors, bands, positions
from lineage_scanner.measure.tally import FOLDED_ROLES, RawSketch, Subject, Tally, checked
from lineage_scanner.readers.arrays import floats
from lineage_scanner.readers.base import TensorInfo

#: Tensors smaller than this are always read whole: a sample would save nothing worth a request.
MIN_SAMPLED = 1 << 14


def samplable(info: TensorInfo, parts: list[Part], layout: Layout) -> bool:
    """Whether a tensor can be read as runs. Not when its sketch's runs would be strided in storage (a
    transposed tensor, rows a GGUF converter reordered): those are few and small, and read whole."""
    return (len(info.shape) == 2 and info.numel >= MIN_SAMPLED and not layout.spec.transposed
            and all(flat_spans(p, info.shape) is not None and p.role not in layout.spec.rope_rows for p in parts))


def sampled(subject: Subject, names: list[str], plan: SamplePlan, exact_stats: tuple[LayerStat, ...]) -> Tally:
    """Sample every part. With a target error, a cheap survey first measures how much each role's curve
    moves between layers (with ``exact_stats``, the parts read whole), then each part is estimated to the
    error its role needs (the target, or less for a flat curve: see
    :func:`lineage_scanner.measure.sampling.required_se`): lineage, not one std, sets the precision. Q/K/V
    parts also yield the column sums of their final sample, so the norm gain folds in, and every matrix its
    sketch (read by the final sample's runs)."""
    parts = [(name, part) for name in names for part in subject.parts[name]]
    survey = None if plan.target_se is None else max(plan.target_se, SURVEY_SE)
    out = {(n, p): _estimate(subject, n, p, plan, survey) for n, p in parts}
    if plan.target_se is not None:
        curves: dict[str, dict[int, float]] = defaultdict(dict)
        for stat in [*exact_stats, *(t.stats[0] for t in out.values())]:
            curves[stat.role][stat.layer] = stat.moments.std
        needed = {role: required_se(list(c.values()), plan.target_se) for role, c in curves.items()}
        for name, part in parts:  # always anew: the survey's own error estimate rests on too few elements
            out[(name, part)] = _estimate(subject, name, part, plan, needed[part.role])
    return sum(out.values(), Tally())


def _estimate(subject: Subject, name: str, part: Part, plan: SamplePlan, target: float | None) -> Tally:
    """One part from stratified runs, at larger fractions until ``target`` is met; else read whole."""
    info = subject.info(name)
    spans = flat_spans(part, info.shape)
    fraction = plan.fraction if target is None else fraction_for(target, sum(n for _, n in spans))
    key = subject.sketching.key
    for round_ in range(ROUNDS):
        starts = _run_starts(spans, info.shape[1], fraction, key)
        if starts is None:
            break
        runs = subject.reader.read_runs(name, starts.storage, starts.run)
        total, se, kurtosis_se = pooled([Moments.from_partial(p) for p in subject.backend.partials(list(runs))])
        if target is None or se <= target or round_ == ROUNDS - 1:
            sums = _sampled_column_sums(runs, starts, info.shape, part, subject.layout.spec.transposed)
            sketch = _sampled_sketch(part, runs, starts, key)
            return Tally((checked(info, part, total, se, kurtosis_se),), (sums,) if sums else (),
                         sketches=(sketch,) if sketch else ())
        fraction = next_fraction(fraction, se, target)
    return exact(dataclasses.replace(subject, parts={name: [part]}), [name], gains=False)


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
    """The value sketch, cut out of the runs that cover it (each run covers its anchor run)."""
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
