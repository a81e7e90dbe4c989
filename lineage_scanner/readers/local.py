"""Local safetensors, single or sharded: memory-mapped, headers validated, pages dropped after use.

A private (copy-on-write) mapping gives torch a writable buffer without copying; nothing ever writes to
it. After a tensor's statistics are taken its pages are dropped from the process (``MADV_DONTNEED``),
so resident memory stays near one tensor however large the checkpoint; the OS page cache still holds
them for the next reader.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path

import numpy as np
import torch

from lineage_scanner.errors import HeaderError
from lineage_scanner.readers.base import TensorInfo, content_digest, take_runs
from lineage_scanner.readers.safetensors_header import header_length, numeric_dtype, parse_header


class SafetensorsFile:
    """One ``.safetensors`` file."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            n = header_length(f.read(8), size, self.path)
            self.header = f.read(n)
        self._tensors, self.metadata = parse_header(self.header, size, self.path)
        self._size = size
        self.bytes_read = 8 + n
        self._mmap = _map(self.path, size)

    def tensors(self) -> dict[str, TensorInfo]:
        return self._tensors

    def read(self, name: str) -> torch.Tensor:
        tensor = self._view(name)
        self.bytes_read += self._tensors[name].nbytes
        return tensor

    def read_runs(self, name: str, starts: np.ndarray, run: int) -> torch.Tensor:
        """Runs of ``run`` elements at flat ``starts``: only their pages are touched."""
        runs = take_runs(self._view(name), starts, run)
        self.bytes_read += runs.numel() * runs.element_size()
        return runs

    def _view(self, name: str) -> torch.Tensor:
        info = self._tensors[name]
        dtype = numeric_dtype(info, self.path)
        if info.numel == 0:
            return torch.empty(info.shape, dtype=dtype)
        page = mmap.PAGESIZE
        start = info.start - info.start % page
        # one large read-ahead of the whole span instead of a page fault per 128 KB window (cold cache)
        self._mmap.madvise(mmap.MADV_WILLNEED, start, info.end - start)
        return torch.frombuffer(self._mmap, dtype=dtype, count=info.numel, offset=info.start).view(info.shape)

    def release(self, name: str) -> None:
        info = self._tensors[name]
        page = mmap.PAGESIZE
        start = info.start - info.start % page
        if self._mmap is not None and info.end > start:
            self._mmap.madvise(mmap.MADV_DONTNEED, start, info.end - start)

    def fingerprint(self) -> bytes:
        return self.header + content_digest(self.path, 8 + len(self.header), self._size)

    def close(self) -> None:
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None


def _map(path: str, size: int) -> mmap.mmap | None:
    if size == 0:
        return None
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)


class ShardedSafetensors:
    """Several safetensors files read as one checkpoint (``model.safetensors.index.json`` or a glob)."""

    format = "safetensors"

    def __init__(self, files: list[Path], index: Path | None = None):
        self.path = str(index or files[0].parent)
        self._files: list[SafetensorsFile] = []
        try:
            for f in files:
                self._files.append(SafetensorsFile(f))
        except Exception:
            self.close()
            raise
        self._owner: dict[str, SafetensorsFile] = {}
        for f in self._files:
            for name in f.tensors():
                if name in self._owner:
                    raise HeaderError(f.path, f"tensor {name!r} also appears in {self._owner[name].path}")
                self._owner[name] = f

    @classmethod
    def from_index(cls, index: Path) -> ShardedSafetensors:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HeaderError(index, f"not a valid safetensors index ({exc.__class__.__name__}: {exc})") from None
        missing = [s for s in shards if not (index.parent / s).is_file()]
        if missing:
            raise HeaderError(index, f"names shard {missing[0]} which does not exist")
        return cls([index.parent / s for s in shards], index)

    def tensors(self) -> dict[str, TensorInfo]:
        return {name: f.tensors()[name] for name, f in self._owner.items()}

    def prefetch(self, names: list[str]) -> None:
        """Nothing ahead of time: each read asks the kernel to read its whole span ahead (MADV_WILLNEED)."""

    @property
    def bytes_read(self) -> int:
        return sum(f.bytes_read for f in self._files)

    def read(self, name: str) -> torch.Tensor:
        return self._owner[name].read(name)

    def read_runs(self, name: str, starts: np.ndarray, run: int) -> torch.Tensor:
        return self._owner[name].read_runs(name, starts, run)

    def release(self, name: str) -> None:
        self._owner[name].release(name)

    def fingerprint(self) -> bytes:
        h = hashlib.sha256()
        for f in self._files:
            h.update(Path(f.path).name.encode() + b"\0" + f.fingerprint())
        return h.digest()

    def close(self) -> None:
        for f in self._files:
            f.close()
