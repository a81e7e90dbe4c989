"""The store's files: where they live (a directory, or any URI pyarrow has a filesystem for), how they are
listed, and how one appears: whole or not at all.

A table is a folder of Parquet files, each written once under a unique name and never changed. A file is
written under a hidden temporary name (``.<stem>.parquet.tmp``, never listed) and moved into place, so a
reader never sees half a file; the temporary file is removed on every error path.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from datetime import datetime, timezone

from lineage_scanner.errors import StoreError


def new_stem() -> str:
    """A unique file name (without extension): time first, so names sort by when they were written."""
    return f"part-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


class Files:
    """The data files of a store at ``root`` (a directory or a filesystem URI such as ``s3://bucket/db``)."""

    def __init__(self, root: str | os.PathLike):
        self.root = str(root)
        self.remote = "://" in self.root
        self.base = self.root if self.remote else os.path.abspath(self.root)
        self._fs = None

    @property
    def fs(self):
        """The pyarrow filesystem of a remote store (a local one is read by DuckDB and ``os`` alone)."""
        if self._fs is None:
            import pyarrow.fs as pafs

            if self.remote:
                self._fs, self.base = pafs.FileSystem.from_uri(self.root)
            else:
                self._fs = pafs.LocalFileSystem()
        return self._fs

    def list(self, table: str) -> list[str]:
        """Finished data files of ``table`` (temporary files are hidden and never listed)."""
        if not self.remote:
            folder = os.path.join(self.base, table)
            try:
                names = os.listdir(folder)
            except (FileNotFoundError, NotADirectoryError):
                return []
            return sorted(f"{folder}/{n}" for n in names if n.endswith(".parquet") and not n.startswith(".")
                          and os.path.isfile(f"{folder}/{n}"))
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(f"{self.base}/{table}", allow_not_found=True)
        return sorted(i.path for i in self.fs.get_file_info(selector)
                      if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                      and not i.base_name.startswith("."))

    def write(self, table: str, stem: str, data) -> str:
        """Write the Arrow table ``data`` as ``<table>/<stem>.parquet``, atomically; its path."""
        import pyarrow.parquet as pq

        folder = f"{self.base}/{table}"
        tmp, final = f"{folder}/.{stem}.parquet.tmp", f"{folder}/{stem}.parquet"
        try:
            self.fs.create_dir(folder, recursive=True)
            pq.write_table(data, tmp, compression="zstd", filesystem=self.fs)
            self.fs.move(tmp, final)
        except BaseException as exc:  # an interrupt too: no temporary file is left behind
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            if isinstance(exc, OSError):
                raise StoreError(self.root, f"cannot write {table} ({exc.strerror or exc})") from None
            raise
        return final

    def delete(self, path: str) -> None:
        self.fs.delete_file(path)

    def quarantine(self, path: str) -> str:
        """Move a data file to ``<store>/quarantine/<table>/``; where it went."""
        table, name = path.rsplit("/", 2)[-2:]
        target = f"{self.base}/quarantine/{table}/{name}"
        try:
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            self.fs.move(path, target)
        except OSError as exc:
            raise StoreError(self.root, f"cannot move {path} aside ({exc.strerror or exc})") from None
        return target
