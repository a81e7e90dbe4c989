"""The signature store: an append-only Parquet dataset, read through DuckDB views.

``--db`` is a directory or any URI pyarrow has a filesystem for (``s3://bucket/lineage``, ``gs://…``).
Layout: ``signatures/*.parquet`` (one row per scan of a model, errors included), ``layers/*.parquet``
(long form: one row per scan × layer × role), ``catalog/*.parquet`` (Hub listings) and ``edges/*.parquet``
(lineage graph runs). A batch's layers land before its signatures, and a scan counts as done only once
its signature row exists.

:class:`Store` is what the rest of the package uses; its rooms are :mod:`~lineage_scanner.store.files`
(where files live and how one appears atomically), :mod:`~lineage_scanner.store.views` (the DuckDB views),
:mod:`~lineage_scanner.store.health` (damaged files), :mod:`~lineage_scanner.store.index` (the match
index) and :mod:`~lineage_scanner.store.rows` (records to rows and back).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from lineage_scanner.errors import SourceError, StoreError
from lineage_scanner.signature.record import Signature
from lineage_scanner.store.files import Files, new_stem
from lineage_scanner.store.health import Health
from lineage_scanner.store.index import MatchIndex
from lineage_scanner.store.rows import PROVENANCE, SCORED, STORED, layer_table, signature_table, signatures_from
from lineage_scanner.store.schema import TABLES, arrow_schema, columns
from lineage_scanner.store.views import connect, open_views

if TYPE_CHECKING:  # writing signatures needs no DuckDB: it is imported by what queries
    import duckdb


#: Error statuses that no retry of the same commit changes: ``todo`` leaves such commits out until they are
#: listed again (a deleted repo's, say, which the Hub's listing no longer shows).
PERMANENT = ("not_found", "unsafe_format", "bad_header", "non_finite", "bad_identity")


def edge_rows(edges) -> list[dict]:
    """Rows of the ``edges`` table for one detection run (one time for all of them)."""
    now = datetime.now(timezone.utc)
    return [{"a": e.parent, "b": e.child, "score": e.closeness, "p_value": e.p_value, "kind": e.kind,
             "computed_at": now, "direction": e.direction, "note": e.note, "evidence": e.evidence,
             "log10_p": e.log10_p, "declared": e.declared, "family": e.family, "runner_up": e.runner_up,
             "runner_up_score": e.runner_up_closeness} for e in edges]


class Store:
    """A Parquet dataset (``--db``: a directory or a filesystem URI) with DuckDB views over it; ``cache``:
    where its match index goes (see :func:`lineage_scanner.store.index.cache_dir`)."""

    def __init__(self, root: str | os.PathLike, cache: str | os.PathLike | None = None):
        self.data = Files(root)
        self.health = Health(self.data)
        self.index = MatchIndex(self.data, lambda database: self.connect(database), cache)

    @property
    def root(self) -> str:
        return self.data.root

    @property
    def remote(self) -> bool:
        return self.data.remote

    def files(self, table: str) -> list[str]:
        """Finished data files of ``table``."""
        return self.data.list(table)

    # ---- writing --------------------------------------------------------------------------------------

    def write(self, sigs: Iterable[Signature], stem: str | None = None, commit: Callable[[], bool] | None = None
              ) -> int:
        """Append signatures (and their layers) as new files, named ``stem`` (default: a new unique name);
        returns how many rows were written. ``commit``: asked once both files are staged, whether they may
        appear (a worker asks its job, so that a worker the driver gave up on never adds a unit that was
        scanned again elsewhere); if not, nothing is written."""
        sigs = list(sigs)
        if not sigs:
            return 0
        stem = stem or new_stem()
        layers = layer_table(sigs)
        tables = [t for t in ("layers", "signatures") if t == "signatures" or layers.num_rows]
        try:
            for table in tables:
                self.data.stage(table, stem, layers if table == "layers" else signature_table(sigs))
            if commit is not None and not commit():
                return 0
            for table in tables:  # layers first: a scan counts as done once its signature row is there
                self.data.publish(table, stem)
        finally:
            for table in tables:
                self.data.discard(table, stem)
        return len(sigs)

    def publish(self, stem: str) -> None:
        """Finish the commit of a unit staged under ``stem`` by a worker that was lost after its job let it
        commit: what it staged appears (what it published already stays as it is)."""
        for table in ("layers", "signatures"):  # a unit without layers staged none: nothing to move
            with contextlib.suppress(StoreError):
                self.data.publish(table, stem)

    def written(self, stem: str) -> list[Signature] | None:
        """The signatures of the file named ``stem`` (see :meth:`write`), or None if it is not there."""
        import pyarrow.parquet as pq

        path = self.data.path("signatures", stem)
        if not self.data.exists(path):
            return None
        rows = pq.read_table(path, filesystem=self.data.fs).select(STORED).to_pylist()
        return signatures_from(STORED, [[r[c] for c in STORED] for r in rows])

    def compact(self, table: str) -> tuple[int, int]:
        """Merge a table's files into one (the new file lands before the old ones go); (before, after)."""
        import pyarrow.dataset as pads

        files = self.data.list(table)
        if len(files) < 2:
            return len(files), len(files)
        merged = pads.dataset(files, schema=arrow_schema(table), format="parquet",
                              filesystem=self.data.fs).to_table()
        self.data.write(table, new_stem(), merged)
        for f in files:
            self.data.delete(f)
        return len(files), 1

    def _append(self, table: str, rows: list[dict], keep_empty: bool = False) -> int:
        import pyarrow as pa

        if rows or keep_empty:
            self.data.write(table, new_stem(), pa.Table.from_pylist(rows, schema=arrow_schema(table)))
        return len(rows)

    def write_edges(self, edges) -> int:
        """Append one detection run's derivations (:class:`lineage_scanner.lineage.tree.TreeEdge`); the
        ``edges`` view shows the newest run."""
        return self._append("edges", edge_rows(edges), keep_empty=True)

    def keep(self, sigs: Iterable[Signature] = (), edges=None) -> bool:
        """Write what a read command found on its way (a path it scanned to compare, a graph's edges) where
        the store takes writes; a read-only or full store gets a note on stderr instead, and the command
        goes on. Whether it was written."""
        try:
            self.write(sigs)
            if edges is not None:
                self.write_edges(edges)
            return True
        except StoreError as exc:
            print(f"note: {exc}; the result is not stored", file=sys.stderr)
            return False

    def write_catalog(self, entries) -> int:
        """Append a catalog listing (:class:`lineage_scanner.sources.hub.HubCommit` records) as one new file."""
        return self._append("catalog", [{name: getattr(e, name) for name in columns("catalog")} for e in entries])

    def write_listing(self, query: str, high_water: datetime | None, models: int) -> None:
        """Record a complete Hub listing of ``query``: the next one stops at ``high_water``."""
        self._append("listings", [{"query": query, "high_water": high_water, "models": models,
                                   "listed_at": datetime.now(timezone.utc)}])

    def high_water(self, query: str) -> datetime | None:
        """The newest last modification a complete listing of ``query`` saw (None: never listed)."""
        if not self.files("listings"):
            return None
        with self.connect() as con:
            return con.execute("SELECT max(high_water) FROM listings_files WHERE query = ?", [query]).fetchone()[0]

    # ---- reading --------------------------------------------------------------------------------------

    def connect(self, database: str = ":memory:", sandbox: bool = False, for_query: str | None = None,
                edges=None, memory_limit: int | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the store's views (see :func:`lineage_scanner.store.views.open_views`);
        ``edges``: a graph run not stored (a read-only store) that the ``edges`` view shows instead."""
        return open_views(self.data, self.health, database, sandbox, for_query,
                          None if edges is None else edge_rows(edges), memory_limit)

    def todo(self, limit: int | None = None) -> list[str]:
        """``hf://model@sha`` sources listed in the catalog and not yet scanned: those deferred by a spent Hub
        budget first, then the most downloaded. Each carries what its listing said of the commit
        (:class:`lineage_scanner.sources.hub.ListedSource`), so its scan needs no model-info call. Left out:
        a commit read under the name it was listed by (a renamed repo's signature is under its new name),
        and one whose last scan since it was listed met an error no retry of that commit changes
        (PERMANENT: a repo deleted since, pickled weights, a lying header)."""
        import json

        from lineage_scanner.sources.hub import HubCommit, ListedSource

        with self.connect() as con:
            rows = con.execute(
                "SELECT t.model, t.sha, t.files, t.config_json, t.declared_base, t.declared_relation, t.gated, "
                "t.last_modified, t.params, t.downloads FROM todo t LEFT JOIN errors e "
                "ON e.model = t.model AND e.revision = t.sha "
                "WHERE NOT (coalesce(list_contains(?, e.status), false) AND e.scanned_at >= t.listed_at) "
                "AND 'hf://' || t.model || '@' || t.sha NOT IN (SELECT source FROM signatures WHERE source NOT NULL) "
                "ORDER BY e.status IS DISTINCT FROM 'deferred', t.downloads DESC NULLS LAST, t.model LIMIT ?",
                [list(PERMANENT), limit if limit is not None else 1 << 62]).fetchall()
        return [f"hf://{model}@{sha}" if files is None else ListedSource(HubCommit(
                    model, sha, tuple(files), json.loads(config or "{}"), list(base or []), relation, bool(gated),
                    modified, params, downloads))
                for model, sha, files, config, base, relation, gated, modified, params, downloads in rows]

    def done(self) -> set[tuple[str, str]]:
        """(model, revision) pairs already scanned successfully: a re-run skips these."""
        if not self.data.list("signatures"):
            return set()  # a new store: no need to start DuckDB
        with self.connect() as con:
            return {tuple(r) for r in con.execute("SELECT model, revision FROM signatures").fetchall()}

    def digests(self) -> dict[str, tuple[str, str]]:
        """Digest -> (model, revision) of each original signature (copies are not originals), for weights
        digests and, prefixed ``content:``, content digests: a Hub commit that matches one needs none of
        its attention bytes read."""
        if not self.data.list("signatures"):
            return {}
        with self.connect() as con:
            rows = con.execute(
                "SELECT d, arg_min(model, scanned_at), arg_min(revision, scanned_at) FROM ("
                "SELECT weights_digest AS d, * FROM signatures UNION ALL "
                "SELECT 'content:' || content_digest AS d, * FROM signatures) "
                "WHERE d IS NOT NULL AND identical_to IS NULL GROUP BY d").fetchall()
        return {digest: (model, revision) for digest, model, revision in rows}

    def load(self, model: str, revision: str | None = None, con: duckdb.DuckDBPyConnection | None = None
             ) -> Signature:
        """A stored signature by model id (newest revision unless one is named), with its provenance (files,
        bytes read, scanner version, when), which a report shows, not only what scoring reads. ``con``: a
        connection of :meth:`connect` to ask (it sees the files there were when it was made), for many
        lookups in a row."""
        query = (f"SELECT {', '.join(PROVENANCE)} FROM signatures WHERE model = ? AND (? IS NULL OR revision = ?) "
                 "ORDER BY scanned_at DESC LIMIT 1")
        with contextlib.nullcontext(con) if con is not None else self.connect(for_query=query) as asked:
            rows = asked.execute(query, [model, revision, revision]).fetchall()
        if not rows:
            raise SourceError(model, f"not in the store at {self.root}")
        return signatures_from(PROVENANCE, rows)[0]

    def signatures(self, model: str | None = None, revision: str | None = None, limit: int | None = None
                   ) -> list[Signature]:
        """Stored signatures with their curves and features (not their layers), newest first; only those of
        ``model`` (and ``revision``) when given."""
        query = (f"SELECT {', '.join(SCORED)} FROM signatures WHERE (? IS NULL OR model = ?) "
                 "AND (? IS NULL OR revision = ?) ORDER BY scanned_at DESC, model LIMIT ?")
        with self.connect() as con:
            rows = con.execute(query, [model, model, revision, revision,
                                       limit if limit is not None else 1 << 62]).fetchall()
        return signatures_from(list(SCORED), rows)

    # ---- the match index ------------------------------------------------------------------------------

    def nearest(self, vector: list[float], exclude: tuple[str, str], limit: int = 100) -> list[Signature]:
        """The pre-filter of ``match`` (see :meth:`MatchIndex.nearest`)."""
        return self.index.nearest(vector, exclude, limit)

    def peers(self, family: str, hidden: int | None, depths: tuple[int, int], limit: int) -> list[Signature]:
        """Signatures like a pair's sides, for a store null (see :meth:`MatchIndex.peers`)."""
        return self.index.peers(family, hidden, depths, limit)

    def declared(self, models: Iterable[str]) -> dict[str, list[str]]:
        """The ``declared_base`` of each of ``models`` the store holds (newest revision wins)."""
        return self.index.declared(models)

    def index_path(self) -> str:
        """The match index for the store as it is now, built if need be: its file, or ``memory:<stamp>``
        where the cache cannot hold one (either changes whenever the store does)."""
        return self.index.path()

    # ---- health ---------------------------------------------------------------------------------------

    def check(self) -> list[tuple[str, str]]:
        """(file, problem) for every damaged or foreign data file in the store, and every file holding rows
        out of bounds (see :data:`lineage_scanner.store.health.BOUNDS`)."""
        problems = []
        with connect() as con:
            for table in TABLES:
                files = self.data.list(table)
                damaged = self.health.damage(con, table, files)
                sound = [f for f in files if f not in dict(damaged)]
                problems += damaged + self.health.out_of_bounds(con, table, sound)
        return problems

    def repair(self) -> list[tuple[str, str]]:
        """Move every damaged or foreign data file to ``<store>/quarantine/<table>/``; what was moved, where."""
        return [(path, self.data.quarantine(path)) for path, _ in self.check()]
