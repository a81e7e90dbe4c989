"""Repos the Hub stand-in serves: a directory of files, or files generated on request from a key.

A repo knows what the Hub says of it (commit SHA, files, sizes, LFS SHA-256s, card, the config fields
the Hub extracts, parameter count, last modification) and serves byte ranges of its files. A new commit
(:meth:`Repo.commit`) changes its SHA and its last modification, as a push to the Hub does.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

#: Files the Hub keeps in LFS: ``/resolve/`` redirects them to the file host (small git files it serves).
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
#: What the Hub extracts from a repo's config.json into model info and listings (never the head counts).
LISTED_CONFIG = ("model_type", "architectures", "quantization_config")
EPOCH = datetime(2026, 11, 1, tzinfo=timezone.utc)


@dataclass
class Repo:
    """A repo served from a directory of files."""

    repo_id: str
    path: Path
    gated: bool = False
    card: dict = field(default_factory=dict)
    downloads: int = 0
    #: listed, but gone by the time it is scanned (model info and resolve answer 404)
    deleted: bool = False
    last_modified: datetime = EPOCH
    #: pushes since the repo was made (each one a new commit SHA)
    pushes: int = 0
    #: the id the repo was made under: its commits keep their SHAs when it is renamed
    origin: str = ""

    def __post_init__(self):
        self.origin = self.origin or self.repo_id

    @property
    def sha(self) -> str:
        """The commit SHA: the repo's first id, its pushes and each file's name and first 4 KB (cheap, and
        changed by any edit a test makes to a header)."""
        h = hashlib.sha1(f"{self.origin}\0{self.pushes}".encode())
        for f in sorted(self.files()):
            h.update(f.encode() + self.head(f))
        return h.hexdigest()

    def commit(self, when: datetime | None = None) -> None:
        """A push: a new commit SHA and last modification (the files are what the directory now holds)."""
        self.pushes += 1
        self.last_modified = when or datetime.now(timezone.utc)

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file())

    def has(self, filename: str) -> bool:
        return (self.path / filename).is_file()

    def size(self, filename: str) -> int:
        return (self.path / filename).stat().st_size

    def read(self, filename: str, start: int, end: int) -> bytes:
        """Bytes [start, end] (inclusive) of a file."""
        with open(self.path / filename, "rb") as f:
            f.seek(start)
            return f.read(end - start + 1)

    def head(self, filename: str) -> bytes:
        return self.read(filename, 0, 4095)

    def sha256(self, filename: str) -> str:
        """A file's SHA-256 (the LFS oid), computed once per file version."""
        st = (self.path / filename).stat()
        key = (str(self.path / filename), st.st_mtime, st.st_size)
        if key not in _SHA256:
            h = hashlib.sha256()
            with open(self.path / filename, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            _SHA256[key] = h.hexdigest()
        return _SHA256[key]

    def params(self) -> int:
        """Parameter count from the safetensors headers, as the Hub's listing reports it."""
        total = 0
        for f in self.files():
            if f.endswith(".safetensors"):
                length = int.from_bytes(self.read(f, 0, 7), "little")
                header = json.loads(self.read(f, 8, 7 + length))
                total += sum(math.prod(e["shape"]) for name, e in header.items() if name != "__metadata__")
        return total

    def config(self) -> dict:
        """The whole config.json (what a GET of it returns)."""
        return json.loads(self.read("config.json", 0, self.size("config.json") - 1)) if self.has("config.json") else {}

    def listed_config(self) -> dict:
        """The config fields the Hub shows in model info and listings: the family, never the sizes."""
        config = self.config()
        return {k: config[k] for k in LISTED_CONFIG if k in config}


#: file version -> SHA-256: a repo directory shared by several tests is hashed once
_SHA256: dict[tuple[str, float, int], str] = {}


class GeneratedRepo(Repo):
    """A repo whose files are made on request by ``make(key)`` (``{name: bytes}``) and kept while the shared
    ``cache`` holds them (the oldest 512 file sets are dropped): a catalog of thousands of repos drawn from
    a few hundred weight sets costs no disk, and repos that share a key (exact re-uploads) share bytes. A
    push (:meth:`commit`) may give the repo another key: other weights."""

    def __init__(self, repo_id: str, key, make, cache: dict, names: list[str], config: dict | None = None,
                 params: int = 0, **options):
        super().__init__(repo_id, Path("/nonexistent"), **options)
        self.key, self._make, self._cache = key, make, cache
        # what a listing shows, without making the files
        self._names, self._config, self._params = sorted(names), config or {}, params

    @property
    def sha(self) -> str:
        return hashlib.sha1(f"{self.origin}\0{self.key!r}\0{self.pushes}".encode()).hexdigest()

    def commit(self, when: datetime | None = None, key=None) -> None:
        super().commit(when)
        if key is not None:
            self.key = key

    def config(self) -> dict:
        return self._config

    def params(self) -> int:
        return self._params

    def _files(self) -> dict[str, bytes]:
        if self.key not in self._cache:
            if len(self._cache) >= 512:
                self._cache.pop(next(iter(self._cache)))
            files = self._make(self.key)
            self._cache[self.key] = (files, {n: hashlib.sha256(b).hexdigest() for n, b in files.items()})
        return self._cache[self.key][0]

    def files(self) -> list[str]:
        return self._names

    def has(self, filename: str) -> bool:
        return filename in self._names

    def size(self, filename: str) -> int:
        return len(self._files()[filename])

    def read(self, filename: str, start: int, end: int) -> bytes:
        return self._files()[filename][start : end + 1]

    def sha256(self, filename: str) -> str:
        self._files()
        return self._cache[self.key][1][filename]
