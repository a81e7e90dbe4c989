"""Moments backends. Each returns one partial row (see :mod:`lineage_scanner.measure.kernels.stats`) per input tensor.

``cpu`` (numba) is always available. ``triton`` runs the fused kernel of :mod:`lineage_scanner.measure.kernels.triton`
on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (tests). ``auto`` picks ``triton`` when CUDA and
Triton are present, else ``cpu``. Triton is imported only when chosen, so ``import lineage_scanner`` works on a
machine without a GPU or without the ``gpu`` extra.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch is imported where tensors are handled: a command that scans nothing never pays for it
    import torch


class MomentsBackend(Protocol):
    name: str
    #: True when a whole model's segments should be handed over in one call (one launch)
    batched: bool

    def partials(self, tensors: list[torch.Tensor]) -> list[tuple[float, ...]]:
        """One float64 partial row (``stats.FIELDS``) per tensor, in input order."""
        ...


BACKENDS = ("auto", "cpu", "triton")


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here (no GPU, or Triton not installed)."""


def get_backend(name: str = "auto") -> MomentsBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    import torch

    if name == "auto":
        name = "triton" if torch.cuda.is_available() and _has_triton() else "cpu"
    if name == "triton":
        if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
            raise BackendUnavailable("the triton backend needs a CUDA GPU (or TRITON_INTERPRET=1 to emulate one)")
        if not _has_triton():
            raise BackendUnavailable("the triton backend needs Triton: pip install 'lineage-scanner[gpu]'")
        from lineage_scanner.measure.kernels.triton import TritonBackend

        return TritonBackend()
    from lineage_scanner.measure.kernels.cpu import CpuBackend

    return CpuBackend()


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
