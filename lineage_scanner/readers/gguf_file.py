"""GGUF files (llama.cpp): header checked, tensors memory-mapped and dequantized one at a time.

The ``gguf`` package parses and dequantizes every type it knows (F32/F16/BF16, Q4_0 … Q8_0, the K-quants,
the IQ types). Before handing the file to it, the fixed part of the header is checked here (magic,
version, counts bounded by the file size), so a lying count cannot make the parser loop or allocate
without bound; anything the parser still rejects becomes a :class:`HeaderError` naming the file.
"""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
import torch

from lineage_scanner.errors import HeaderError
from lineage_scanner.readers.base import TensorInfo, content_digest, take_runs
from lineage_scanner.readers.gguf_header import NeedMore, header_end

MAGIC = b"GGUF"
VERSIONS = (2, 3)
#: Smallest possible encoding of one metadata pair / tensor record; bounds counts by the file size.
MIN_KV_BYTES = 8 + 1 + 4 + 1
MIN_TENSOR_BYTES = 8 + 1 + 4 + 8 + 4 + 8


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

    def tensors(self) -> dict[str, TensorInfo]:
        return self._tensors

    def prefetch(self, names: list[str]) -> None:
        """Nothing ahead of time: the parser's memmap pages in what each read touches."""

    def read(self, name: str) -> torch.Tensor:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        t = self._by_name[name]
        info = self._tensors[name]
        self.bytes_read += info.nbytes
        try:
            if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                values = np.array(t.data)  # an own, writable copy of the memmap
            else:
                values = np.ascontiguousarray(dequantize(np.asarray(t.data), t.tensor_type), dtype=np.float32)
            return torch.from_numpy(values.reshape(info.shape))
        except NotImplementedError:
            raise HeaderError(self.path, f"tensor {name!r}: no dequantizer for {t.tensor_type.name}") from None
        except (ValueError, IndexError) as exc:  # the table's shape and type disagree with the bytes
            raise HeaderError(self.path, f"tensor {name!r}: data does not fit {info.dtype} {info.shape} ({exc})"
                              ) from None

    def read_runs(self, name: str, starts: np.ndarray, run: int) -> torch.Tensor:
        """Quantized blocks must be decoded whole, so a sample costs a full read here."""
        return take_runs(self.read(name), starts, run)

    def release(self, name: str) -> None:
        """Nothing to drop: the parser's memmap pages are clean and reclaimable by the OS."""

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
