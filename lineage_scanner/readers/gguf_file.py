"""GGUF files (llama.cpp): the header parsed in one pass, tensors dequantized a block of rows at a time.

The header is this package's own one-pass parse (:mod:`lineage_scanner.readers.gguf_header`): the ``gguf``
package's ``GGUFReader`` builds numpy views of every metadata item (millions for a real vocabulary), which
cost a real checkpoint's scan seconds and hundreds of MB. Tensor bytes are read from the tensor table
found there: F32, F16 and BF16 as views in their stored dtype (the moments kernels read them natively),
the common quantizations through the compiled decoders of :mod:`lineage_scanner.readers.ggml_quants`, the
rest through the ``gguf`` package's numpy dequantizer on just those bytes. :class:`GgufTensors` does that
for any source of bytes: a local file's positioned reads here (:class:`lineage_scanner.readers.local.LocalFile`:
no memory map, so a file truncated under the scan is an error, not SIGBUS), range reads for the Hub
(:class:`lineage_scanner.readers.hub_gguf.HubGguf`). Large tensors are handed to the measurement as
blocks of rows (:meth:`GgufTensors.read_blocks`), so a quantized matrix is never held whole in float32.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import numpy as np

from lineage_scanner.errors import HeaderError
from lineage_scanner.readers import ggml_quants
from lineage_scanner.readers.arrays import DTYPES, take_runs
from lineage_scanner.readers.base import TensorInfo
from lineage_scanner.readers.gguf_header import BLOCKS, GgufHeader, parse_header
from lineage_scanner.readers.local import LocalFile

#: Stored types read as views, in the dtype the moments kernels decode natively.
NATIVE = {name: DTYPES[name] for name in ("F32", "F16", "BF16")}
#: Tensors whose stored bytes exceed this are measured by blocks of rows ...
STREAM_BYTES = 4 << 20
#: ... of at most this many bytes once decoded to float32 (and a local file is read in spans of at most this many
#: stored bytes) (smaller, cache-sized blocks measured slower:
#: the per-block work outweighs the cache; bench/RESULTS.md).
BLOCK_BYTES = 8 << 20


def units(info: TensorInfo) -> tuple[int, int]:
    """(units, weights per unit) a tensor is read by: rows of its leading dimension, or, for a vector, its
    quantization blocks (a row is always whole blocks in GGUF; part of a block cannot be decoded)."""
    if info.numel == 0:
        return 0, 0
    if len(info.shape) >= 2:
        return info.shape[0], info.numel // info.shape[0]
    block = BLOCKS[info.dtype][0]
    return info.numel // block, block


class GgufTensors:
    """The tensors of a parsed GGUF header, decoded span by span of whole units; where the bytes come from
    is the subclass's :meth:`_spans`."""

    format = "gguf"
    path: str
    header: GgufHeader

    @property
    def metadata(self) -> dict[str, object]:
        """Scalar and string metadata (architecture, sizes); arrays such as the vocabulary are not kept."""
        return self.header.metadata

    def tensors(self) -> dict[str, TensorInfo]:
        return self.header.tensors

    @property
    def stream_over(self) -> int:
        """Tensors stored in more bytes than this are measured block by block (:meth:`read_blocks`)."""
        return STREAM_BYTES

    def _spans(self, info: TensorInfo, unit_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
        """The tensor's bytes in order, as (first unit, uint8 array of whole units)."""
        raise NotImplementedError

    def _count(self, info: TensorInfo) -> None:
        """Account for a tensor read (readers that count bytes as they arrive do nothing)."""

    def _pieces(self, name: str, block_bytes: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first unit, flat decoded weights) over the tensor: each span whole, or in pieces of at most
        ``block_bytes`` as float32 (at least one unit)."""
        info = self.header.tensors[name]
        count, per_unit = units(info)
        if count == 0:
            return
        unit_bytes = info.nbytes // count
        self._count(info)
        for first, raw in self._spans(info, unit_bytes):
            held = raw.size // unit_bytes
            step = held if block_bytes is None else max(1, block_bytes // (4 * per_unit))
            for at in range(0, held, step):
                n = min(held, at + step) - at
                yield first + at, self._decode(info, raw[at * unit_bytes : (at + n) * unit_bytes], n * per_unit)

    def _decode(self, info: TensorInfo, raw: np.ndarray, count: int) -> np.ndarray:
        """``count`` weights from their stored bytes, as floats."""
        try:
            if info.dtype in NATIVE:
                return raw.view(NATIVE[info.dtype])[:count]
            if info.dtype in ggml_quants.DECODED:
                return ggml_quants.dequantize(raw, info.dtype, count)
            return self._reference_dequantize(info, raw, count)
        except (ValueError, IndexError) as exc:  # the table's shape and type disagree with the bytes
            raise HeaderError(self.path, f"tensor {info.name!r}: data does not fit {info.dtype} {info.shape} "
                                         f"({exc})") from None

    def _reference_dequantize(self, info: TensorInfo, raw: np.ndarray, count: int) -> np.ndarray:
        """Types without a compiled decoder, through the gguf package (numpy, slower)."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        try:
            values = dequantize(raw, GGMLQuantizationType[info.dtype])
        except NotImplementedError:
            raise HeaderError(self.path, f"tensor {info.name!r}: no dequantizer for {info.dtype}") from None
        return np.ascontiguousarray(values, dtype=np.float32).reshape(-1)[:count]

    def read(self, name: str) -> np.ndarray:
        info = self.header.tensors[name]
        pieces = [piece for _, piece in self._pieces(name)]
        if not pieces:
            return np.empty(info.shape, dtype=NATIVE.get(info.dtype, np.float32))
        return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces)).reshape(info.shape)

    def read_blocks(self, name: str) -> Iterator[tuple[int, np.ndarray]]:
        """The matrix as consecutive blocks of whole rows, at most ``BLOCK_BYTES`` each in float32: yields
        (first row, block)."""
        cols = self.header.tensors[name].shape[1]
        for first, piece in self._pieces(name, BLOCK_BYTES):
            yield first, piece.reshape(-1, cols)

    def read_runs(self, name: str, starts: np.ndarray, run: int) -> np.ndarray:
        """Quantized blocks must be decoded whole, so a sample costs a full read here."""
        return take_runs(self.read(name), starts, run)

    def header_digest(self) -> hashlib._Hash:
        """SHA-256 over the metadata kept and the tensor table: what the header says of the weights."""
        h = hashlib.sha256()
        for key in sorted(self.metadata):
            h.update(f"{key}={self.metadata[key]}\0".encode())
        for info in self.header.tensors.values():
            h.update(f"{info.name}:{info.dtype}:{info.shape}:{info.start}\0".encode())
        return h


class GgufFile(GgufTensors):
    """A local ``.gguf`` checkpoint: the header parsed from windows read as the walk reaches them, tensors
    decoded from positioned reads of at most BLOCK_BYTES of whole units."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._file = LocalFile(path)
        size = self._file.size

        def window(pos: int, n: int, hint: int) -> tuple[np.ndarray, int]:
            return self._file.read(pos, min(size - pos, max(n, min(hint, BLOCK_BYTES))), "the header"), pos

        try:
            self.header = parse_header(size, self.path, window(0, 0, BLOCK_BYTES), window)
        except BaseException:
            self._file.close()
            raise
        self.bytes_read = self.header.data_start if self.header.tensors else size

    def prefetch(self, names: list[str]) -> None:
        """Nothing ahead of time: each span is one positioned read (the kernel reads ahead)."""

    def _spans(self, info: TensorInfo, unit_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
        step = max(1, BLOCK_BYTES // unit_bytes) * unit_bytes
        for at in range(info.start, info.end, step):
            span = self._file.read(at, min(step, info.end - at), f"tensor {info.name!r}")
            yield (at - info.start) // unit_bytes, span

    def _count(self, info: TensorInfo) -> None:
        self.bytes_read += info.nbytes

    def release(self, name: str) -> None:
        """Nothing held: each span's buffer is freed with its last view."""

    def fingerprint(self) -> bytes:
        h = self.header_digest()
        h.update(self._file.digest())
        return h.digest()

    def close(self) -> None:
        self._file.close()
