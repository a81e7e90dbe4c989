"""What every reader offers: the tensor list from the header alone, and tensors read on demand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a header describes it. ``start``/``end`` are absolute byte offsets in ``file``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    start: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class Reader(Protocol):
    """A checkpoint opened for scanning. Only ``read`` touches tensor data."""

    path: str
    #: the storage format, the signature's ``format`` column: safetensors, gguf, or a quantization scheme
    #: (gptq, awq, fp8, int8, bnb, compressed-tensors) read through :mod:`lineage_scanner.readers.quantized`
    format: str
    #: bytes fetched from storage so far (headers and tensor data)
    bytes_read: int

    def tensors(self) -> dict[str, TensorInfo]: ...

    def prefetch(self, names: list[str]) -> None:
        """The tensors about to be read, in order, so a reader can start fetching them early."""
        ...

    def read(self, name: str) -> np.ndarray:
        """The tensor as floats (native 16/32-bit dtype, bf16 and fp8 through ml_dtypes, or float32 after
        dequantization), usually a view of the stored bytes."""
        ...

    def read_runs(self, name: str, starts, run: int) -> np.ndarray:
        """A sample: ``run`` consecutive elements from each flat index in ``starts``, as [len(starts), run]."""
        ...

    def release(self, name: str) -> None:
        """Drop the tensor's pages from this process's memory once its statistics are taken."""
        ...

    def fingerprint(self) -> bytes:
        """Bytes that identify the checkpoint's content: a local checkpoint's digest of every byte of its files
        (its revision is made from it); a Hub reader's, what its headers say (its commit is its revision)."""
        ...

    def close(self) -> None: ...
