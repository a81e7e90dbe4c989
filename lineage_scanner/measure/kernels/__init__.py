"""Moments backends. Each returns one partial row (see :mod:`lineage_scanner.measure.kernels.stats`) per input tensor.

``cpu`` (numba) is always available. ``triton`` runs the fused kernel of :mod:`lineage_scanner.measure.kernels.triton`
on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (tests). ``auto`` picks ``triton`` when CUDA and
Triton are present, else ``cpu``. Torch and Triton are imported only when the GPU backend is chosen (a
machine without an NVIDIA device node never imports them), so a CPU scan does not pay their start-up.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Protocol

from lineage_scanner.errors import BackendUnavailable

if TYPE_CHECKING:
    import numpy as np


class MomentsBackend(Protocol):
    name: str
    #: True when a whole model's segments should be handed over in one call (one launch)
    batched: bool

    def partials(self, tensors: list[np.ndarray]) -> list[tuple[float, ...]]:
        """One float64 partial row (``stats.FIELDS``) per tensor, in input order."""
        ...

    def partials_with_columns(self, tensors: list[np.ndarray], input_axis: int
                              ) -> list[tuple[tuple[float, ...], np.ndarray]]:
        """Per 2-D tensor, its partial row and the float64 sums of x, x², x³, x⁴ per input column
        (``input_axis`` 1, nn.Linear's [out, in]) or per input row (0, Conv1D's [in, out]): [4, inputs],
        taken in the same read as the moments."""
        ...


BACKENDS = ("auto", "cpu", "triton")


def get_backend(name: str = "auto") -> MomentsBackend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = "triton" if _has_triton() and _cuda_available() else "cpu"
    if name == "triton":
        if not (os.environ.get("TRITON_INTERPRET") == "1" or _cuda_available()):
            raise BackendUnavailable("the triton backend needs a CUDA GPU (or TRITON_INTERPRET=1 to emulate one)")
        if not _has_triton():
            raise BackendUnavailable("the triton backend needs Triton: pip install 'lineage-scanner[gpu]'")
        from lineage_scanner.measure.kernels.triton import TritonBackend

        return TritonBackend()
    from lineage_scanner.measure.kernels.cpu import CpuBackend

    return CpuBackend()


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _cuda_available() -> bool:
    """CUDA as torch sees it, asked only where the NVIDIA driver's device node exists."""
    if not os.path.exists("/dev/nvidiactl"):
        return False
    import torch

    return torch.cuda.is_available()
