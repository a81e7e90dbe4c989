"""Moments backends. Each returns one partial row (see :mod:`kernels.stats`) per input tensor.

``cpu`` is always available; ``triton`` needs CUDA and the ``gpu`` extra. :func:`get_backend` picks the
GPU backend when CUDA is present, unless told otherwise.
"""

from __future__ import annotations

from typing import Protocol

import torch


class MomentsBackend(Protocol):
    name: str

    def partials(self, tensors: list[torch.Tensor]) -> list[tuple[float, ...]]:
        """One float64 partial row (``kernels.stats.FIELDS``) per tensor, in input order."""
        ...


BACKENDS = ("auto", "cpu")


def get_backend(name: str = "auto") -> MomentsBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    from kernels.moments_cpu import CpuBackend

    return CpuBackend()
