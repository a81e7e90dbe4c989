"""Statistics of every attention part of a checkpoint, through a backend from :mod:`kernels`.

Tensors are split into their parts (a fused QKV tensor's row ranges, per head where the packing
interleaves heads) and measured by the backend, then merged per part. A per-tensor backend (CPU) gets
one tensor at a time, released before the next is read, so memory stays near the largest tensor; a
batched backend (Triton) gets a whole model's segments in one call, so one launch covers the model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from kernels import MomentsBackend
from kernels.stats import Moments
from scanner.errors import NonFiniteError
from scanner.layouts import Layout, Part
from scanner.readers.base import Reader


@dataclass(frozen=True)
class LayerStat:
    """Moments of one role in one layer."""

    layer: int
    role: str
    moments: Moments


@dataclass(frozen=True)
class Measurement:
    stats: tuple[LayerStat, ...]
    dtype: str


def segments(tensor: torch.Tensor, part: Part) -> list[torch.Tensor]:
    if not part.ranges:
        return [tensor]
    axis = part.axis if tensor.dim() > 1 else 0
    return [tensor.narrow(axis, start, stop - start) for start, stop in part.ranges]


def head_views(tensor: torch.Tensor, head_dim: int, axis: int = 0) -> list[torch.Tensor]:
    """One view per attention head: rows of Q/K/V (axis 0), columns of O (axis 1)."""
    return list(tensor.split(head_dim, dim=axis))


def measure(reader: Reader, layout: Layout, backend: MomentsBackend) -> Measurement:
    infos = reader.tensors()
    by_tensor: dict[str, list[Part]] = defaultdict(list)
    for part in layout.parts:
        by_tensor[part.tensor].append(part)
    names = list(by_tensor)
    reader.prefetch(names)
    batches = [names] if backend.batched else [[name] for name in names]
    stats: list[LayerStat] = []
    dtypes: dict[str, int] = defaultdict(int)
    for batch in batches:
        tensors = {name: reader.read(name) for name in batch}
        pieces = [(name, part, segments(tensors[name], part)) for name in batch for part in by_tensor[name]]
        partials = iter(backend.partials([s for _, _, group in pieces for s in group]))
        for name, part, group in pieces:
            total = Moments()
            for _ in group:
                total = total + Moments.from_partial(next(partials))
            if total.nonfinite:
                raise NonFiniteError(infos[name].file, f"tensor {name!r} holds {total.nonfinite} NaN/Inf values")
            stats.append(LayerStat(part.layer, part.role, total))
        del tensors, pieces
        for name in batch:
            reader.release(name)
            dtypes[infos[name].dtype] += infos[name].nbytes
    dtype = max(dtypes, key=dtypes.get) if dtypes else "unknown"
    return Measurement(tuple(sorted(stats, key=lambda s: (s.layer, s.role))), dtype)
