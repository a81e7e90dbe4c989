"""Local safetensors, single or sharded: headers validated, tensors read through positioned reads.

Every byte comes from ``pread`` into a private buffer (:class:`LocalFile`), never from a memory map: a
file truncated while it is mapped turns the next touch of a lost page into SIGBUS, which no Python code can
catch, and which killed the whole batch. A read that finds the file shorter than its header promised, or
the file changed since it was opened, is a :class:`~lineage_scanner.errors.ChangedError` for that model.

A checkpoint's revision names all of its bytes: a tree of SHA-256 digests over 16 MiB chunks of each file
(:meth:`LocalFile.digest`), hashed on every core, so that an edit of any byte, wherever it lies, gives a
new revision. Each read checks afterwards that the file is still the one hashed (its inode, size, mtime
and ctime: ctime moves on any write and cannot be set back by the file's owner), so a signature is always
measured from the bytes its revision names.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lineage_scanner.errors import ChangedError, ConfigError, HeaderError, SourceError
from lineage_scanner.readers.arrays import numeric_dtype
from lineage_scanner.readers.base import TensorInfo
from lineage_scanner.readers.jsonfile import MAX_JSON_BYTES, parse_object
from lineage_scanner.readers.safetensors_header import header_length, parse_header
from lineage_scanner.sources.names import check_relative_name

#: The chunks a file's digest is a tree of (each hashed on its own, so all cores hash at once).
CHUNK_BYTES = 16 << 20
#: A file written this recently (by its ctime) may still change within one tick of a coarse file clock
#: without its ctime moving: it is hashed only once it has been still for this long.
SETTLE_NS = 20_000_000
#: How many times a file still being written is waited for before it is an error.
SETTLE_TRIES = 50


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


class LocalFile:
    """One local file opened for positioned reads, with the identity it had when opened (:attr:`stamp`)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(path, f"cannot be read ({exc.strerror})") from None
        try:
            self.stamp = self._settled()
        except BaseException:
            self.close()
            raise
        self.size = self.stamp[2]

    def _settled(self) -> tuple[int, ...]:
        """The file's (device, inode, size, mtime, ctime) once it has not been written for SETTLE_NS: a write
        after that moves its ctime even on a file clock that ticks coarsely."""
        for _ in range(SETTLE_TRIES):
            stamp = self._stamp()
            young = SETTLE_NS - (time.time_ns() - stamp[4])
            if young <= 0:
                return stamp
            time.sleep(young / 1e9)
            if self._stamp() == stamp:
                return stamp
        raise ChangedError(self.path, "is still being written (its ctime keeps moving); scan it once it is still")

    def _stamp(self) -> tuple[int, ...]:
        st = os.fstat(self._fd)
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def read(self, start: int, n: int, what: str) -> np.ndarray:
        """Bytes [start, start + n) as a fresh uint8 array, checked to be the bytes the file held when opened."""
        out = np.empty(n, np.uint8)
        self.read_into(memoryview(out), start, what)
        return out

    def read_into(self, out: memoryview, start: int, what: str) -> None:
        got = 0
        while got < len(out):
            try:
                n = os.preadv(self._fd, [out[got:]], start + got)
            except OSError as exc:
                raise ChangedError(self.path, f"cannot be read at byte {start + got} ({exc.strerror})") from None
            if n == 0:
                raise ChangedError(self.path, f"ends at byte {start + got}, inside {what} (bytes {start}-"
                                              f"{start + len(out)}): the file shrank while it was scanned")
            got += n
        self.check(what)

    def check(self, what: str = "the scan") -> None:
        """Raise ChangedError if the file is not the one opened (written to, truncated, grown)."""
        now = self._stamp()
        if now != self.stamp:
            changed = "size" if now[2] != self.stamp[2] else "contents"
            raise ChangedError(self.path, f"{changed} changed while it was scanned (during {what}); scan it again")

    def digest(self) -> bytes:
        """SHA-256 over the SHA-256s of the file's CHUNK_BYTES chunks and its size: every byte counts, and
        the chunks are hashed on every core (hashlib lets go of the GIL), each read by pread."""
        starts = range(0, self.size, CHUNK_BYTES)

        def chunk(at: int) -> bytes:
            return hashlib.sha256(self.read(at, min(CHUNK_BYTES, self.size - at), "the file's digest")).digest()

        workers = min(len(starts), len(os.sched_getaffinity(0))) or 1
        with ThreadPoolExecutor(workers, thread_name_prefix="digest") as pool:
            chunks = list(pool.map(chunk, starts))
        return hashlib.sha256(b"".join([self.size.to_bytes(8, "little"), *chunks])).digest()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SafetensorsFile:
    """One ``.safetensors`` file."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._file = LocalFile(path)
        try:
            size = self._file.size
            n = header_length(bytes(self._file.read(0, min(8, size), "the header length")), size, self.path)
            self.header = bytes(self._file.read(8, n, "the header"))
            self._tensors, self.metadata = parse_header(self.header, size, self.path)
        except BaseException:
            self._file.close()
            raise
        self.bytes_read = 8 + n

    def tensors(self) -> dict[str, TensorInfo]:
        return self._tensors

    def read(self, name: str) -> np.ndarray:
        info = self._tensors[name]
        dtype = numeric_dtype(info, self.path)
        raw = self._file.read(info.start, info.nbytes, f"tensor {name!r}")
        self.bytes_read += info.nbytes
        return raw.view(dtype).reshape(info.shape)

    def read_runs(self, name: str, starts: np.ndarray, run: int) -> np.ndarray:
        """Runs of ``run`` elements at flat ``starts``: only their bytes are read."""
        info = self._tensors[name]
        dtype = numeric_dtype(info, self.path)
        out = np.empty((len(starts), run), dtype)
        rows = out.view(np.uint8)
        for k, at in enumerate(np.asarray(starts, np.int64)):
            self._file.read_into(memoryview(rows[k]), info.start + int(at) * dtype.itemsize, f"tensor {name!r}")
        self.bytes_read += out.nbytes
        return out

    def release(self, name: str) -> None:
        """Nothing held: each read's buffer is the caller's, freed with its last view."""

    def fingerprint(self) -> bytes:
        return self.header + self._file.digest()

    def close(self) -> None:
        self._file.close()


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
        """Nothing ahead of time: each read is one positioned read of the whole span (the kernel reads ahead)."""

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
