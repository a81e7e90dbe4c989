"""The store's files: where they live (a directory, or any URI pyarrow has a filesystem for), how they are
listed, and how one appears: whole or not at all.

A table is a folder of Parquet files, each written once under a unique name and never changed. A file is
written under a hidden temporary name (``.<stem>.parquet.tmp``, never listed) and moved into place, so a
reader never sees half a file; the temporary file is removed on every error path. On an object store
(``s3://bucket/prefix``) a move is a server-side copy, which makes the object appear whole: the file is
made in memory, uploaded to its temporary key, checked there for its full length, and only then copied
to its name, so not even an upload cut short (whose multipart upload the client might still complete)
can appear under a data file's name. Credentials come from the standard places (the AWS environment
variables, profiles, an instance's role), never from the URI or this package.
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
        self._base = None if self.remote else os.path.abspath(self.root)
        self._fs = None

    @property
    def fs(self):
        """The pyarrow filesystem of a remote store (a local one is read by DuckDB and ``os`` alone)."""
        if self._fs is None:
            import pyarrow.fs as pafs

            if self.remote:
                self._fs, self._base = pafs.FileSystem.from_uri(self.root)
            else:
                self._fs = pafs.LocalFileSystem()
        return self._fs

    @property
    def base(self) -> str:
        """The store's path: a local directory, or a remote one as its filesystem names it (bucket/prefix)."""
        if self._base is None:
            self.fs  # noqa: B018 (resolving the URI names the path)
        return self._base

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

    def path(self, table: str, stem: str) -> str:
        return f"{self.base}/{table}/{stem}.parquet"

    def exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path).type == pafs.FileType.File

    def write(self, table: str, stem: str, data) -> str:
        """Write the Arrow table ``data`` as ``<table>/<stem>.parquet``, atomically; its path."""
        self.stage(table, stem, data)
        try:
            return self.publish(table, stem)
        except BaseException:
            self.discard(table, stem)
            raise

    def staged(self, table: str, stem: str) -> str:
        """The hidden temporary name a file is staged under."""
        return f"{self.base}/{table}/.{stem}.parquet.tmp"

    def stage(self, table: str, stem: str, data) -> None:
        """Write ``data`` under the hidden temporary name of ``<table>/<stem>.parquet``, checked whole; on
        any failure (an interrupt too) nothing is left behind."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = self.staged(table, stem)
        try:
            self.fs.create_dir(f"{self.base}/{table}", recursive=True)
            if self.remote:
                body = pa.BufferOutputStream()
                pq.write_table(data, body, compression="zstd")
                body = body.getvalue()
                with self.fs.open_output_stream(tmp) as out:
                    out.write(body)
                if self.fs.get_file_info(tmp).size != body.size:
                    raise OSError(f"{tmp} holds {self.fs.get_file_info(tmp).size} bytes of {body.size}")
            else:
                pq.write_table(data, tmp, compression="zstd", filesystem=self.fs)
        except BaseException as exc:
            self.discard(table, stem)
            if isinstance(exc, OSError):
                raise StoreError(self.root, f"cannot write {table} ({exc.strerror or exc})") from None
            raise

    def publish(self, table: str, stem: str) -> str:
        """Move a staged file to its name (on an object store a server-side copy: it appears whole); one
        that another process already published (finishing the same commit) is left as it is."""
        tmp, final = self.staged(table, stem), self.path(table, stem)
        try:
            self.fs.move(tmp, final)
        except OSError as exc:
            if not self.exists(final) or self.exists(tmp):
                raise StoreError(self.root, f"cannot write {table} ({exc.strerror or exc})") from None
        return final

    def discard(self, table: str, stem: str) -> None:
        """Remove a staged file, if there is one."""
        with contextlib.suppress(OSError):
            self.fs.delete_file(self.staged(table, stem))

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
