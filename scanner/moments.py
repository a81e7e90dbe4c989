"""Statistics of every attention part of a checkpoint, through a backend from :mod:`kernels`.

Tensors are read one at a time, split into their parts (a fused QKV tensor's row ranges, per head where
the packing interleaves heads), measured in one backend call per tensor, merged per part, and released
before the next tensor is read, so memory stays near the largest single tensor.
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
    bytes_read: int
    dtype: str


def segments(tensor: torch.Tensor, part: Part) -> list[torch.Tensor]:
    if not part.ranges:
        return [tensor]
    axis = part.axis if tensor.dim() > 1 else 0
    return [tensor.narrow(axis, start, stop - start) for start, stop in part.ranges]


def measure(reader: Reader, layout: Layout, backend: MomentsBackend) -> Measurement:
    infos = reader.tensors()
    by_tensor: dict[str, list[Part]] = defaultdict(list)
    for part in layout.parts:
        by_tensor[part.tensor].append(part)
    stats: list[LayerStat] = []
    bytes_read = 0
    dtypes: dict[str, int] = defaultdict(int)
    for name, parts in by_tensor.items():
        info = infos[name]
        tensor = reader.read(name)
        pieces = [segments(tensor, part) for part in parts]
        partials = iter(backend.partials([s for group in pieces for s in group]))
        for part, group in zip(parts, pieces):
            total = Moments()
            for _ in group:
                total = total + Moments.from_partial(next(partials))
            if total.nonfinite:
                raise NonFiniteError(info.file, f"tensor {name!r} holds {total.nonfinite} NaN/Inf values")
            stats.append(LayerStat(part.layer, part.role, total))
        del tensor, pieces
        reader.release(name)
        bytes_read += info.nbytes
        dtypes[info.dtype] += info.nbytes
    dtype = max(dtypes, key=dtypes.get) if dtypes else "unknown"
    return Measurement(tuple(sorted(stats, key=lambda s: (s.layer, s.role))), bytes_read, dtype)
