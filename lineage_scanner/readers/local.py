"""Local safetensors, single or sharded: memory-mapped, headers validated, pages dropped after use.

Tensors are numpy views of a private (copy-on-write) mapping: writable arrays without a copy, while
nothing can ever write to the file. After a tensor's statistics are taken its pages are dropped from the
process (``MADV_DONTNEED``), so resident memory stays near one tensor however large the checkpoint; the
OS page cache still holds them for the next reader.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
from pathlib import Path

import numpy as np

from lineage_scanner.errors import ConfigError, HeaderError, SourceError
from lineage_scanner.readers.arrays import numeric_dtype, take_runs
from lineage_scanner.readers.base import TensorInfo, content_digest
from lineage_scanner.readers.jsonfile import MAX_JSON_BYTES, parse_object
from lineage_scanner.readers.safetensors_header import header_length, parse_header
from lineage_scanner.sources.names import check_relative_name


def allowed_roots(directory: Path) -> tuple[Path, ...]:
    """Where a model directory's files may lead: the directory, and for a Hugging Face cache snapshot
    (``…/snapshots/<sha>/``, whose files link to ``…/blobs/``) the cached repo's folder."""
    directory = directory.resolve()
    return (directory, directory.parent.parent) if directory.parent.name == "snapshots" else (directory,)


def inside(path: Path, directory: Path) -> Path:
    """``path`` resolved, if it is a regular file that stays within ``directory`` (see allowed_roots):
    a FIFO or device would hang or stream forever, a link out of the model could read any file."""
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in allowed_roots(directory)):
        raise SourceError(path, f"leads outside the model directory (to {resolved})")
    return regular(resolved)


def regular(path: Path) -> Path:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise SourceError(path, f"cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise SourceError(path, "not a regular file (a FIFO, device or directory)")
    return path


def read_capped(path: Path, directory: Path, cap: int = MAX_JSON_BYTES) -> bytes:
    """A small file of a model directory (config, index), refused past ``cap`` bytes."""
    path = inside(path, directory)
    if path.stat().st_size > cap:
        raise ConfigError(path, f"{path.stat().st_size} bytes, over the {cap >> 20} MiB cap for a JSON file")
    with open(path, "rb") as f:
        return f.read(cap + 1)


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
        self._mmap = map_file(self.path, size)

    def tensors(self) -> dict[str, TensorInfo]:
        return self._tensors

    def read(self, name: str) -> np.ndarray:
        tensor = self._view(name)
        self.bytes_read += self._tensors[name].nbytes
        return tensor

    def read_runs(self, name: str, starts: np.ndarray, run: int) -> np.ndarray:
        """Runs of ``run`` elements at flat ``starts``: only their pages are touched."""
        runs = take_runs(self._view(name), starts, run)
        self.bytes_read += runs.nbytes
        return runs

    def _view(self, name: str) -> np.ndarray:
        info = self._tensors[name]
        dtype = numeric_dtype(info, self.path)
        if info.numel == 0:
            return np.empty(info.shape, dtype=dtype)
        page = mmap.PAGESIZE
        start = info.start - info.start % page
        # one large read-ahead of the whole span instead of a page fault per 128 KB window (cold cache)
        self._mmap.madvise(mmap.MADV_WILLNEED, start, info.end - start)
        return np.frombuffer(self._mmap, dtype=dtype, count=info.numel, offset=info.start).reshape(info.shape)

    def release(self, name: str) -> None:
        drop_pages(self._mmap, self._tensors[name])

    def fingerprint(self) -> bytes:
        return self.header + content_digest(self.path, 8 + len(self.header), self._size)

    def close(self) -> None:
        close_map(self._mmap)
        self._mmap = None


def drop_pages(mapping: mmap.mmap | None, info: TensorInfo) -> None:
    """Drop a tensor's pages from this process's memory (they are clean: the OS reads them again if needed)."""
    start = info.start - info.start % mmap.PAGESIZE
    if mapping is not None and info.end > start:
        mapping.madvise(mmap.MADV_DONTNEED, start, info.end - start)


def close_map(mapping: mmap.mmap | None) -> None:
    """Close a map now, or, while arrays still view it (a caller's, or a traceback's frames), when the
    last of them goes: numpy views hold the map open, and closing under them would be an error."""
    if mapping is not None:
        try:
            mapping.close()
        except BufferError:
            pass


def map_file(path: str, size: int) -> mmap.mmap | None:
    """A private (copy-on-write) map of the file: arrays viewed from it are writable, while the file itself
    can never be written."""
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
        self._tensors: dict[str, TensorInfo] = {}
        for f in self._files:
            for name, info in f.tensors().items():
                if name in self._owner:
                    raise HeaderError(f.path, f"tensor {name!r} also appears in {self._owner[name].path}")
                self._owner[name] = f
                self._tensors[name] = info

    @classmethod
    def from_index(cls, index: Path) -> ShardedSafetensors:
        """The shards an index names: plain relative names, each a regular file inside its directory."""
        weight_map = parse_object(read_capped(index, index.parent), str(index), HeaderError).get("weight_map")
        if not isinstance(weight_map, dict):
            raise HeaderError(index, "not a valid safetensors index: no weight_map object")
        names = {check_relative_name(v, str(index)) for v in weight_map.values()}
        missing = [n for n in sorted(names) if not (index.parent / n).exists()]
        if missing:
            raise HeaderError(index, f"names shard {missing[0]} which does not exist")
        return cls([inside(index.parent / n, index.parent) for n in sorted(names)], index)

    def tensors(self) -> dict[str, TensorInfo]:
        return self._tensors

    def prefetch(self, names: list[str]) -> None:
        """Nothing ahead of time: each read asks the kernel to read its whole span ahead (MADV_WILLNEED)."""

    @property
    def bytes_read(self) -> int:
        return sum(f.bytes_read for f in self._files)

    def read(self, name: str) -> np.ndarray:
        return self._owner[name].read(name)

    def read_runs(self, name: str, starts: np.ndarray, run: int) -> np.ndarray:
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
