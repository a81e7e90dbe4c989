"""The match index: the newest successful signatures of a store held natively in a DuckDB file, for what
``match`` and the store null ask many times over (a scan of 1M embeddings there takes ~0.1 s; of the
Parquet files, several times more).

The index is a cache, never part of the store: it lives in the cache directory (``--cache``, else
``$LINEAGE_CACHE``, else ``$XDG_CACHE_HOME/lineage-scanner``, else ``~/.cache/lineage-scanner``), one
folder per store, so read commands work on a read-only store and never write into a bucket. Its file is
named by a stamp of the signature files it was built from, so a store that changed gets a new one (older
stamps are removed); it is built under a temporary name, removed on every error path, and moved into
place. Where the cache cannot be written (read-only, full), the index is built in memory for the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from lineage_scanner.signature.record import EMBED_DIM, Signature
from lineage_scanner.store import views
from lineage_scanner.store.files import Files
from lineage_scanner.store.rows import SCORED, signatures_from

if TYPE_CHECKING:
    import duckdb

#: Where caches go unless ``--cache`` names a directory.
CACHE_ENV = "LINEAGE_CACHE"


def cache_dir(cache: str | os.PathLike | None = None) -> str:
    """The cache directory: ``cache``, else $LINEAGE_CACHE, else the XDG cache's ``lineage-scanner``."""
    if cache or os.environ.get(CACHE_ENV):
        return os.path.abspath(os.path.expanduser(str(cache or os.environ[CACHE_ENV])))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lineage-scanner")


class MatchIndex:
    """The match index of the store whose files are ``files``; ``connect(database)`` opens a connection
    with the store's views, into ``database``."""

    def __init__(self, files: Files, connect: Callable[[str], duckdb.DuckDBPyConnection],
                 cache: str | os.PathLike | None = None):
        self.files = files
        self._connect = connect
        self.cache = cache
        self._open: tuple[str, duckdb.DuckDBPyConnection] | None = None

    def stamp(self) -> str:
        """Changes whenever the store's signature files do (a file is never changed, only added or removed)."""
        return hashlib.sha256("\n".join([*SCORED, *self.files.list("signatures")]).encode()).hexdigest()[:16]

    def path(self) -> str:
        """The index file for the store as it is now, built if it is not there yet; ``memory:<stamp>``
        where the cache directory cannot hold it."""
        stamp = self.stamp()
        store = self.files.root if self.files.remote else self.files.base
        folder = os.path.join(cache_dir(self.cache), "match-index", hashlib.sha256(store.encode()).hexdigest()[:16])
        path = os.path.join(folder, f"{stamp}.duckdb")
        if os.path.exists(path):
            return path
        tmp, built = f"{path}.{uuid.uuid4().hex}.tmp", False
        try:
            os.makedirs(folder, exist_ok=True)
            with self._connect(tmp) as con:
                con.execute(f"CREATE TABLE main.signatures AS SELECT {', '.join(SCORED)} FROM temp.signatures")
            os.replace(tmp, path)
            built = True
        except Exception as exc:
            if not _unwritable(exc):
                raise
            return f"memory:{stamp}"
        finally:  # on every way out, an interrupt included, no temporary file is left behind
            for leftover in ([] if built else [tmp, f"{tmp}.wal"]):
                with contextlib.suppress(OSError):
                    os.remove(leftover)
        for old in os.listdir(folder):  # earlier stamps are stale
            if old.endswith(".duckdb") and old != os.path.basename(path):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, old))
        return path

    def connection(self) -> duckdb.DuckDBPyConnection:
        path = self.path()
        if self._open is None or self._open[0] != path:  # keep it open: its pages stay in DuckDB's cache
            if path.startswith("memory:"):
                con = views.connect()
                with self._connect(":memory:") as source:
                    rows = source.execute(f"SELECT {', '.join(SCORED)} FROM signatures").to_arrow_table()
                    con.register("incoming", rows)
                    con.execute("CREATE TABLE signatures AS SELECT * FROM incoming")
                    con.unregister("incoming")
            else:
                con = views.connect(path, read_only=True)
            self._open = (path, con)
        return self._open[1]

    def nearest(self, vector: list[float], exclude: tuple[str, str], limit: int = 100) -> list[Signature]:
        """The ``limit`` signatures (in no particular order) whose embeddings have the largest inner product
        with ``vector`` (they are centred and unit-normalised, so it is a correlation)."""
        con = self.connection()
        # rank on the embedding alone (a top-k aggregate), then fetch the few winners' whole rows
        (ids,) = con.execute(
            f"SELECT max_by(rowid, array_inner_product(embedding, ?::FLOAT[{EMBED_DIM}]), ?) FROM signatures "
            f"WHERE embedding IS NOT NULL AND NOT (model = ? AND revision = ?)",
            [vector, limit, *exclude]).fetchone()
        return self._rows(con, ids or [])

    def peers(self, family: str, hidden: int | None, depths: tuple[int, int], limit: int) -> list[Signature]:
        """Up to ``limit`` signatures of one architecture with depth in ``depths`` (inclusive), the same
        sample on every call for the same store."""
        con = self.connection()
        ids = [i for (i,) in con.execute(
            "SELECT rowid FROM signatures WHERE family = ? AND hidden_size IS NOT DISTINCT FROM ? "
            "AND n_layers BETWEEN ? AND ? AND invariants IS NOT NULL ORDER BY hash(model, revision) LIMIT ?",
            [family, hidden, *depths, limit]).fetchall()]
        return self._rows(con, ids)

    def declared(self, models: Iterable[str]) -> dict[str, list[str]]:
        """The ``declared_base`` of each of ``models`` the store holds (newest revision wins)."""
        rows = self.connection().execute(
            "SELECT model, arg_max(declared_base, rowid) FROM signatures WHERE list_contains(?, model) "
            "GROUP BY model", [sorted(models)]).fetchall()
        return {model: list(base or []) for model, base in rows}

    @staticmethod
    def _rows(con: duckdb.DuckDBPyConnection, ids: list[int]) -> list[Signature]:
        if not ids:
            return []
        rows = con.execute(f"SELECT {', '.join(SCORED)} FROM signatures "
                           "WHERE rowid IN (SELECT unnest(?::BIGINT[]))", [ids]).fetchall()
        return signatures_from(list(SCORED), rows)


def _unwritable(exc: Exception) -> bool:
    """Whether ``exc`` says the cache cannot be written (no permission, a full or read-only disk)."""
    import duckdb

    return isinstance(exc, (OSError, duckdb.IOException, duckdb.PermissionException))
