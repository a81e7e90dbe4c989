"""GGUF files (llama.cpp): header checked, tensors memory-mapped and dequantized a block of rows at a time.

The ``gguf`` package parses the header. Before handing the file to it, the fixed part of the header is
checked here (magic, version, counts bounded by the file size), so a lying count cannot make the parser
loop or allocate without bound; anything the parser still rejects becomes a :class:`HeaderError` naming
the file. Tensor data is read from this reader's own memory map: F32, F16 and BF16 as views in their
stored dtype (the moments kernels read them natively), the common quantizations through the compiled
decoders of :mod:`lineage_scanner.readers.ggml_quants`, the rest through the ``gguf`` package's numpy
dequantizer. Large tensors are handed to the measurement as blocks of rows (:meth:`GgufFile.read_blocks`),
so a quantized matrix is never held whole in float32.
"""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np

from lineage_scanner.errors import HeaderError
from lineage_scanner.readers import ggml_quants
from lineage_scanner.readers.arrays import DTYPES, take_runs
from lineage_scanner.readers.base import TensorInfo, content_digest
from lineage_scanner.readers.gguf_header import NeedMore, header_end
from lineage_scanner.readers.local import close_map, drop_pages, map_file

MAGIC = b"GGUF"
VERSIONS = (2, 3)
#: Smallest possible encoding of one metadata pair / tensor record; bounds counts by the file size.
MIN_KV_BYTES = 8 + 1 + 4 + 1
MIN_TENSOR_BYTES = 8 + 1 + 4 + 8 + 4 + 8
#: Stored types read as views, in the dtype the moments kernels decode natively.
NATIVE = {name: DTYPES[name] for name in ("F32", "F16", "BF16")}
#: Tensors whose stored bytes exceed this are measured by blocks of rows ...
STREAM_BYTES = 4 << 20
#: ... of at most this many bytes once decoded to float32 (smaller, cache-sized blocks measured slower:
#: the per-block work outweighs the cache; bench/RESULTS.md).
BLOCK_BYTES = 8 << 20


def check_prefix(prefix: bytes, file_size: int, path: str) -> tuple[int, int]:
    """Validate magic, version and the tensor / metadata counts; returns (n_tensors, n_kv)."""
    if len(prefix) < 24:
        raise HeaderError(path, f"truncated: {file_size} bytes, too short for a GGUF header")
    if prefix[:4] != MAGIC:
        raise HeaderError(path, f"bad magic {prefix[:4]!r}, not a GGUF file")
    (version,) = struct.unpack("<I", prefix[4:8])
    if version not in VERSIONS:
        raise HeaderError(path, f"GGUF version {version} is not supported (expected 2 or 3)")
    n_tensors, n_kv = struct.unpack("<QQ", prefix[8:24])
    if n_tensors * MIN_TENSOR_BYTES + n_kv * MIN_KV_BYTES > file_size:
        raise HeaderError(path, f"header claims {n_tensors} tensors and {n_kv} metadata keys, "
                                f"more than a {file_size}-byte file can hold")
    return n_tensors, n_kv


def walk_header(f, size: int, path: str) -> int:
    """Walk the whole header with every count bounded by the bytes left (see gguf_header), reading more
    of the file only as the walk needs it; returns where tensor data starts."""
    data = b""
    want = min(size, 1 << 16)
    while True:
        f.seek(len(data))
        data += f.read(want - len(data))
        try:
            return header_end(data, size)
        except NeedMore as more:
            if more.at_least > size:
                raise HeaderError(path, "header runs past the end of the file") from None
            want = min(size, more.at_least)
        except (ValueError, KeyError, struct.error) as exc:
            raise HeaderError(path, f"malformed GGUF header ({exc})") from None


class GgufFile:
    """A ``.gguf`` checkpoint. ``metadata`` holds the scalar and string keys (architecture, sizes)."""

    format = "gguf"

    def __init__(self, path: str | os.PathLike):
        from gguf import GGUFReader

        self.path = str(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            check_prefix(f.read(24), size, self.path)
            walk_header(f, size, self.path)
        try:
            self._reader = GGUFReader(self.path)
            self.metadata = _scalar_fields(self._reader)
            self._by_name = {t.name: t for t in self._reader.tensors}
            self._tensors = {
                t.name: TensorInfo(t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape.tolist())),
                                   self.path, int(t.data_offset), int(t.data_offset) + int(t.n_bytes))
                for t in self._reader.tensors
            }
        except HeaderError:
            raise
        except Exception as exc:  # the parser raises many kinds on malformed input; all mean one thing
            raise HeaderError(self.path, f"malformed GGUF ({exc.__class__.__name__}: {exc})") from None
        self.bytes_read = min(self._tensors.values(), key=lambda t: t.start).start if self._tensors else size
        data_end = max((t.end for t in self._tensors.values()), default=0)
        if data_end > size:
            raise HeaderError(self.path, f"tensor data ends at byte {data_end}, past the end of the "
                                         f"{size}-byte file (truncated)")
        self._mmap = map_file(self.path, size)

    def tensors(self) -> dict[str, TensorInfo]:
        return self._tensors

    def prefetch(self, names: list[str]) -> None:
        """Nothing ahead of time: the parser's memmap pages in what each read touches."""

    @property
    def stream_over(self) -> int:
        """Tensors stored in more bytes than this are measured block by block (:meth:`read_blocks`)."""
        return STREAM_BYTES

    def read(self, name: str) -> np.ndarray:
        info = self._tensors[name]
        self.bytes_read += info.nbytes
        return self._rows(name, 0, info.shape[0] if info.shape else 1).reshape(info.shape)

    def read_blocks(self, name: str):
        """The matrix as consecutive blocks of whole rows, at most ``BLOCK_BYTES`` each in float32: yields
        (first row, block)."""
        info = self._tensors[name]
        rows, cols = info.shape
        per = max(1, BLOCK_BYTES // (4 * max(cols, 1)))
        self.bytes_read += info.nbytes
        for first in range(0, rows, per):
            yield first, self._rows(name, first, min(rows, first + per)).reshape(-1, cols)

    def _rows(self, name: str, first: int, last: int) -> np.ndarray:
        """Rows [first, last) of a tensor (its leading dimension), flat, as floats."""
        info = self._tensors[name]
        inner = info.numel // max(info.shape[0], 1) if info.shape else 1
        count = (last - first) * inner
        row_bytes = info.nbytes // max(info.shape[0], 1) if info.shape else info.nbytes
        start = info.start + first * row_bytes
        if count == 0:
            return np.empty(0, dtype=NATIVE.get(info.dtype, np.float32))
        try:
            if info.dtype in NATIVE:
                return np.frombuffer(self._mmap, dtype=NATIVE[info.dtype], count=count, offset=start)
            raw = np.frombuffer(self._mmap, np.uint8, (last - first) * row_bytes, start)
            if info.dtype in ggml_quants.DECODED:
                return ggml_quants.dequantize(raw, info.dtype, count)
            return self._reference_dequantize(name, raw, count)
        except (ValueError, IndexError) as exc:  # the table's shape and type disagree with the bytes
            raise HeaderError(self.path, f"tensor {name!r}: data does not fit {info.dtype} {info.shape} ({exc})"
                              ) from None

    def _reference_dequantize(self, name: str, raw: np.ndarray, count: int) -> np.ndarray:
        """Types without a compiled decoder, through the gguf package (numpy, slower)."""
        from gguf.quants import dequantize

        qtype = self._by_name[name].tensor_type
        try:
            values = dequantize(raw, qtype)
        except NotImplementedError:
            raise HeaderError(self.path, f"tensor {name!r}: no dequantizer for {qtype.name}") from None
        return np.ascontiguousarray(values, dtype=np.float32).reshape(-1)[:count]

    def read_runs(self, name: str, starts: np.ndarray, run: int) -> np.ndarray:
        """Quantized blocks must be decoded whole, so a sample costs a full read here."""
        return take_runs(self.read(name), starts, run)

    def release(self, name: str) -> None:
        drop_pages(self._mmap, self._tensors[name])

    def fingerprint(self) -> bytes:
        h = hashlib.sha256()
        for key in sorted(self.metadata):
            h.update(f"{key}={self.metadata[key]}\0".encode())
        for info in self._tensors.values():
            h.update(f"{info.name}:{info.dtype}:{info.shape}:{info.start}\0".encode())
        starts = [t.start for t in self._tensors.values()]
        if starts:
            h.update(content_digest(self.path, min(starts), max(t.end for t in self._tensors.values())))
        return h.digest()

    def close(self) -> None:
        self._by_name = {}
        self._reader = None
        close_map(self._mmap)
        self._mmap = None


def _scalar_fields(reader) -> dict[str, object]:
    """Scalar and string metadata (arrays such as the tokenizer vocabulary are skipped)."""
    out: dict[str, object] = {}
    for name, field in reader.fields.items():
        if len(field.types) != 1:
            continue
        value = field.contents()
        if isinstance(value, (str, int, float, bool)):
            out[name] = value
    return out
