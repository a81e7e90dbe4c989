"""Views of the parts of a tensor (a fused QKV tensor's row ranges, one attention head), without copies."""

from __future__ import annotations

import numpy as np

from lineage_scanner.layouts.resolve import Part


def narrow(array: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    return array[(slice(None),) * axis + (slice(start, stop),)]


def segments(tensor: np.ndarray, part: Part) -> list[np.ndarray]:
    if not part.ranges:
        return [tensor]
    axis = part.axis if tensor.ndim > 1 else 0
    return [narrow(tensor, axis, start, stop) for start, stop in part.ranges]


def head_views(tensor: np.ndarray, head_dim: int, axis: int = 0) -> list[np.ndarray]:
    """One view per attention head: rows of Q/K/V (axis 0), columns of O (axis 1)."""
    return [narrow(tensor, axis, i, i + head_dim) for i in range(0, tensor.shape[axis], head_dim)]


def flat_spans(part: Part, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """The part as (start, length) runs of the flattened tensor; None when it is strided (column split)."""
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if not part.ranges:
        return [(0, int(np.prod(shape)))]
    if part.axis != 0 and len(shape) > 1:
        return None
    return [(a * cols, (b - a) * cols) for a, b in part.ranges]
