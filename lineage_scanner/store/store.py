"""The signature store: an append-only Parquet dataset, read through DuckDB views.

``--db`` is a directory or any URI pyarrow has a filesystem for (``s3://bucket/lineage``, ``gs://…``).
Layout: ``signatures/*.parquet`` (one row per scan of a model, errors included), ``layers/*.parquet``
(long form: one row per scan × layer × role) and ``catalog/*.parquet`` (Hub listings). Each file is
written under a hidden temporary name and moved into place, so readers never see half a file. A batch's
layers land before its signatures, and a scan counts as done only once its signature row exists.
DuckDB reads a local store's files in place (a remote one's through pyarrow datasets) under the current
schema: columns an older file lacks read as NULL (:mod:`lineage_scanner.store.schema`).

Re-scans append; the views keep the newest row per (model, revision), so ``--force`` never rewrites.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from lineage_scanner.errors import SourceError, StoreError
from lineage_scanner.signature.record import EMBED_DIM, Signature
from lineage_scanner.store.schema import (
    REQUIRED,
    SCHEMA_VERSION,
    TABLES,
    arrow_schema,
    columns,
    compatible,
    duckdb_type,
)

if TYPE_CHECKING:  # writing signatures needs no DuckDB: it is imported by what queries
    import duckdb

VIEWS = {
    "scans": "SELECT * REPLACE (embedding::FLOAT[{dim}] AS embedding) FROM signatures_files",
    "latest": "SELECT * FROM scans "
              "QUALIFY row_number() OVER (PARTITION BY model, revision ORDER BY scanned_at DESC, scan_id) = 1",
    "signatures": "SELECT * EXCLUDE (error) FROM latest WHERE status = 'ok'",
    "errors": "SELECT model, revision, source, status, error, scanned_at FROM latest WHERE status <> 'ok'",
    "layers": "SELECT l.* FROM layers_files l SEMI JOIN signatures s ON l.scan_id = s.scan_id",
    # newest listing per model: the commit a nightly scan should have
    "catalog": "SELECT * FROM catalog_files QUALIFY row_number() OVER (PARTITION BY model ORDER BY listed_at DESC) = 1",
    # listed commits without a signature yet (gated repos are left out: they cannot be read)
    "todo": "SELECT c.* FROM catalog c ANTI JOIN signatures s ON c.model = s.model AND c.sha = s.revision "
            "WHERE NOT c.gated",
    # the newest detection run (lineage graph): pairs of models judged derived
    "edges": "SELECT * FROM edges_files WHERE computed_at = (SELECT max(computed_at) FROM edges_files)",
    # where model cards and weights disagree: a declared base the weights do not support (both scanned), or
    # lineage the weights show that no card declares
    "disagreements": """
        WITH RECURSIVE declared AS (SELECT model, unnest(declared_base) AS base FROM signatures),
             chain(model, ancestor) AS (
                 SELECT model, model FROM signatures
                 UNION SELECT c.model, d.base FROM chain c JOIN declared d ON d.model = c.ancestor),
             undirected AS (SELECT a, b FROM edges UNION ALL SELECT b, a FROM edges)
        SELECT d.model, d.base AS other, 'declared base not supported by the weights' AS problem, NULL AS score
        FROM declared d
        WHERE d.base IN (SELECT model FROM signatures)
          AND NOT EXISTS (SELECT 1 FROM undirected u WHERE u.a = d.model AND u.b = d.base)
        UNION ALL
        SELECT e.a, e.b, 'lineage the weights show but no card declares', e.score
        FROM edges e
        WHERE NOT EXISTS (SELECT 1 FROM chain x JOIN chain y ON x.ancestor = y.ancestor
                          WHERE x.model = e.a AND y.model = e.b)
    """,
}

#: What each view reads, so that a query can have only the views it names (and theirs) defined.
DEPENDS = {"scans": ("signatures_files",), "latest": ("scans",), "signatures": ("latest",), "errors": ("latest",),
           "layers": ("layers_files", "signatures"), "catalog": ("catalog_files",),
           "todo": ("catalog", "signatures"), "edges": ("edges_files",), "disagreements": ("signatures", "edges")}


def _needed(names: set[str]) -> set[str]:
    """``names`` with every view and files table they read, transitively."""
    out, todo = set(), [n.lower() for n in names]
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(DEPENDS.get(name, ()))
    return out


#: What scoring reads of a stored signature (not its layers, provenance or errors).
SCORED = ("model", "revision", "source", "n_layers", "hidden_size", "family", "format", "dtype", "curves",
          "invariants", "invariant_se", "declared_base", "embedding", "sketch", "sketch_key", "weights_digest")
_STORED = [f.name for f in dataclasses.fields(Signature) if f.metadata.get("column", "") is not None]
#: What :meth:`Store.load` reads: every stored column the ``signatures`` view keeps (an ok scan has no error).
_PROVENANCE = [name for name in _STORED if name != "error"]


def _signature_rows(sigs: list[Signature]):
    import pyarrow as pa

    rows = [{**{name: getattr(s, name) for name in _STORED}, "schema_version": SCHEMA_VERSION} for s in sigs]
    for row in rows:
        for nested in ("curves", "invariants", "invariant_se"):
            row[nested] = row[nested] or None
        row["sketch"] = [{"layer": p.layer, "role": p.role, "kind": p.kind, "rows": p.rows, "cols": p.cols,
                          **dict(zip(("scale", "codes"), p.codes()))} for p in row["sketch"]] or None
    return pa.Table.from_pylist(rows, schema=arrow_schema("signatures"))


def _layer_rows(sigs: list[Signature]):
    import pyarrow as pa

    rows = []
    for s in sigs:
        for stat in s.layers:
            m = stat.moments
            rows.append({
                "scan_id": s.scan_id, "model": s.model, "revision": s.revision, "layer": stat.layer,
                "role": stat.role, "numel": m.count, "mean": m.mean, "std": m.std, "min": m.min,
                "max": m.max, "absmax": m.absmax, "skew": m.skew, "kurtosis": m.kurtosis,
                "std_se": stat.std_se, "folded_std": stat.folded_std, "folded_kurtosis": stat.folded_kurtosis,
                "kurtosis_se": stat.kurtosis_se,
            })
    return pa.Table.from_pylist(rows, schema=arrow_schema("layers"))


def _signatures(names: list[str], rows) -> list[Signature]:
    """Signatures (no layers) from rows whose columns are ``names``; absent nested values dropped."""
    out = []
    for row in rows:
        values = dict(zip(names, row))
        for nested in ("curves", "invariants", "invariant_se"):
            if nested in values:
                values[nested] = {k: v for k, v in (values[nested] or {}).items() if v is not None}
        if values.get("sketch"):
            from lineage_scanner.measure.sketch import SketchPart  # numpy: only once a sketch is read

            values["sketch"] = tuple(SketchPart.from_codes(**p) for p in values["sketch"])
        elif "sketch" in values:
            values["sketch"] = ()
        for listed in ("declared_base", "files"):
            if listed in values:
                values[listed] = list(values[listed] or [])
        for counted in ("bytes_read", "sampled"):  # NULL in files older than the column: the field's default
            if counted in values and values[counted] is None:
                del values[counted]
        if values.get("embedding") is not None:
            values["embedding"] = list(values["embedding"])
        out.append(Signature(**values))
    return out


#: Damaged files already reported by this process (a warning once, not on every connection).
_REPORTED: set[str] = set()


#: Each data file's columns, read once per process: a file is written once under a unique name and never
#: changed (a batch opens the store many times; re-reading hundreds of footers each time cost seconds).
_COLUMNS: dict[str, dict[str, str]] = {}


def _file_columns(con: duckdb.DuckDBPyConnection, files: list[str]) -> dict[str, dict[str, str]]:
    """Each file's top-level columns and their DuckDB types, from the Parquet footers."""
    for f in files:
        if f not in _COLUMNS:
            rel = con.read_parquet([f])
            _COLUMNS[f] = dict(zip(rel.columns, (str(t) for t in rel.types)))
    return {f: _COLUMNS[f] for f in files}


def _stem() -> str:
    return f"part-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


class Store:
    """A Parquet dataset (``--db``: a directory or a filesystem URI) with DuckDB views over it."""

    def __init__(self, root: str | os.PathLike):
        self.root = str(root)
        self.remote = "://" in self.root
        self.base = self.root if self.remote else os.path.abspath(self.root)
        self._fs = None
        self._index: tuple[str, duckdb.DuckDBPyConnection] | None = None

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

    def files(self, table: str) -> list[str]:
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

    def write(self, sigs: Iterable[Signature]) -> int:
        """Append signatures (and their layers) as new files; returns how many rows were written."""
        sigs = list(sigs)
        if not sigs:
            return 0
        stem = _stem()
        layers = _layer_rows(sigs)
        if layers.num_rows:
            self._write_atomic("layers", stem, layers)
        self._write_atomic("signatures", stem, _signature_rows(sigs))
        return len(sigs)

    def _write_atomic(self, table: str, stem: str, data) -> str:
        import pyarrow.parquet as pq

        folder = f"{self.base}/{table}"
        tmp, final = f"{folder}/.{stem}.parquet.tmp", f"{folder}/{stem}.parquet"
        try:
            self.fs.create_dir(folder, recursive=True)
            pq.write_table(data, tmp, compression="zstd", filesystem=self.fs)
            self.fs.move(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            raise StoreError(self.root, f"cannot write {table} ({exc.strerror or exc})") from None
        return final

    def compact(self, table: str) -> tuple[int, int]:
        """Merge a table's files into one (the new file lands before the old ones go); (before, after)."""
        import pyarrow.dataset as pads

        files = self.files(table)
        if len(files) < 2:
            return len(files), len(files)
        merged = pads.dataset(files, schema=arrow_schema(table), format="parquet", filesystem=self.fs).to_table()
        self._write_atomic(table, _stem(), merged)
        for f in files:
            self.fs.delete_file(f)
        return len(files), 1

    def _append(self, table: str, rows: list[dict], keep_empty: bool = False) -> int:
        import pyarrow as pa

        if rows or keep_empty:
            self._write_atomic(table, _stem(), pa.Table.from_pylist(rows, schema=arrow_schema(table)))
        return len(rows)

    def write_edges(self, edges) -> int:
        """Append one detection run's edges (see :mod:`lineage_scanner.lineage.graph`); the ``edges`` view
        shows the newest run."""
        now = datetime.now(timezone.utc)
        return self._append("edges", [{"a": e.a, "b": e.b, "score": e.score, "p_value": e.p_value,
                                       "kind": e.kind, "computed_at": now} for e in edges], keep_empty=True)

    def write_catalog(self, entries) -> int:
        """Append a catalog listing (see :mod:`lineage_scanner.sources.catalog`) as one new file."""
        return self._append("catalog", [{name: getattr(e, name) for name in columns("catalog")} for e in entries])

    def todo(self, limit: int | None = None) -> list[str]:
        """``hf://model@sha`` sources listed in the catalog and not yet scanned: those deferred by a spent Hub
        budget first, then the most downloaded."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT t.model, t.sha FROM todo t LEFT JOIN (SELECT model, revision FROM errors "
                "WHERE status = 'deferred') d ON d.model = t.model AND d.revision = t.sha "
                "ORDER BY d.model IS NULL, t.downloads DESC NULLS LAST, t.model LIMIT ?",
                [limit if limit is not None else 1 << 62]).fetchall()
        return [f"hf://{model}@{sha}" for model, sha in rows]

    def connect(self, database: str = ":memory:", sandbox: bool = False, for_query: str | None = None
                ) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the store's views defined (as temporary views: ``database`` may be a
        file that is being filled, and never keeps them); only those ``for_query`` names (and what they
        read), if given. ``sandbox``: then locked so that only the store's data files can be read and
        nothing written (see :mod:`lineage_scanner.store.sql`)."""
        import duckdb

        con = duckdb.connect(database, config={"autoinstall_known_extensions": False,
                                               "autoload_known_extensions": False})
        wanted = {*VIEWS, *(f"{t}_files" for t in TABLES)}
        if for_query is not None:
            with contextlib.suppress(duckdb.Error):  # a query DuckDB cannot parse gets every view (and its error)
                wanted = _needed(set(con.get_table_names(for_query)))
        files = [f for table in TABLES if f"{table}_files" in wanted
                 for f in self._define_files_view(con, table)]
        for name, body in VIEWS.items():
            if name in wanted:
                con.execute(f"CREATE TEMP VIEW {name} AS {body.format(dim=EMBED_DIM)}")
        if sandbox:
            con.execute("SET allowed_paths = ?", [files if not self.remote else []])
            con.execute("SET allowed_directories = ?", [[]])
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        return con

    def _define_files_view(self, con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
        """``<table>_files``: every file of the table under the current schema; columns that older files
        lack read as NULL. Paths reach DuckDB as values of its relational API, never as SQL text."""
        files = self.files(table)
        raw = f"{table}_raw"
        present: set[str] = set()
        if files and self.remote:
            import pyarrow.dataset as pads

            con.register(raw, pads.dataset(files, schema=arrow_schema(table), format="parquet",
                                           filesystem=self.fs))
            present = set(columns(table))
        elif files:
            files = self._sound(con, table, files)
            if files:
                con.read_parquet(files, union_by_name=True).create_view(raw, replace=True)
                present = {row[0] for row in con.execute(f"DESCRIBE {raw}").fetchall()}
        select = ", ".join(f'"{c}"' if c in present else f'NULL::{duckdb_type(table, c)} AS "{c}"'
                           for c in columns(table))
        source = f"FROM {raw}" if present else "WHERE false"
        con.execute(f"CREATE TEMP VIEW {table}_files AS SELECT {select} {source}")
        return files

    def _sound(self, con: duckdb.DuckDBPyConnection, table: str, files: list[str]) -> list[str]:
        """``files`` less those that are damaged or foreign, each reported once (on stderr) and left out."""
        damaged = dict(self._damage(con, table, files))
        for path, problem in damaged.items():
            if path not in _REPORTED:
                _REPORTED.add(path)
                print(f"warning: {path}: {problem}; left out (`lineage store repair` moves it aside)",
                      file=sys.stderr)
        return [f for f in files if f not in damaged]

    @staticmethod
    def _damage(con: duckdb.DuckDBPyConnection, table: str, files: list[str]) -> list[tuple[str, str]]:
        """(file, problem) for every file of ``table`` that is not a readable Parquet file of its schema.
        One pass over the footers; files are probed one by one only when that pass fails."""
        import duckdb

        try:
            found = _file_columns(con, files)
        except duckdb.Error:
            found, problems = {}, []
            for f in files:
                try:
                    found.update(_file_columns(con, [f]))
                except duckdb.Error as exc:
                    problems.append((f, f"not a readable Parquet file ({str(exc).splitlines()[0][:200]})"))
            return problems + Store._damage(con, table, [f for f in files if f in found])
        problems = []
        for f in files:
            got = found.get(f, {})
            missing = [c for c in REQUIRED[table] if c not in got]
            wrong = [f"{c} is {got[c]}" for c in got if c in dict(TABLES[table]) and not
                     compatible(got[c], duckdb_type(table, c))]
            if missing or wrong:
                problems.append((f, f"not a {table} file of this store ("
                                    + "; ".join([*(f"no column {c}" for c in missing), *wrong]) + ")"))
        return problems

    def check(self) -> list[tuple[str, str]]:
        """(file, problem) for every damaged or foreign data file in the store."""
        import duckdb

        with duckdb.connect() as con:
            return [p for table in TABLES for p in self._damage(con, table, self.files(table))]

    def repair(self) -> list[tuple[str, str]]:
        """Move every damaged or foreign data file to ``<store>/quarantine/<table>/``; what was moved, where."""
        moved = []
        for path, _ in self.check():
            table = os.path.basename(os.path.dirname(path))
            target = os.path.join(self.base, "quarantine", table, os.path.basename(path))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(path, target)
            moved.append((path, target))
        return moved

    def done(self) -> set[tuple[str, str]]:
        """(model, revision) pairs already scanned successfully: a re-run skips these."""
        if not self.files("signatures"):
            return set()  # a new store: no need to start DuckDB
        with self.connect() as con:
            return {tuple(r) for r in con.execute("SELECT model, revision FROM signatures").fetchall()}

    def digests(self) -> dict[str, tuple[str, str]]:
        """Digest -> (model, revision) of each original signature (copies are not originals), for weights
        digests and, prefixed ``content:``, content digests: a Hub commit that matches one needs none of
        its attention bytes read."""
        if not self.files("signatures"):
            return {}
        with self.connect() as con:
            rows = con.execute(
                "SELECT d, arg_min(model, scanned_at), arg_min(revision, scanned_at) FROM ("
                "SELECT weights_digest AS d, * FROM signatures UNION ALL "
                "SELECT 'content:' || content_digest AS d, * FROM signatures) "
                "WHERE d IS NOT NULL AND identical_to IS NULL GROUP BY d").fetchall()
        return {digest: (model, revision) for digest, model, revision in rows}

    def load(self, model: str, revision: str | None = None) -> Signature:
        """A stored signature by model id (newest revision unless one is named), with its provenance (files,
        bytes read, scanner version, when), which a report shows, not only what scoring reads."""
        query = (f"SELECT {', '.join(_PROVENANCE)} FROM signatures WHERE model = ? AND (? IS NULL OR revision = ?) "
                 "ORDER BY scanned_at DESC LIMIT 1")
        with self.connect() as con:
            rows = con.execute(query, [model, revision, revision]).fetchall()
        if not rows:
            raise SourceError(model, f"not in the store at {self.root}")
        return _signatures(_PROVENANCE, rows)[0]

    def signatures(self, model: str | None = None, revision: str | None = None, limit: int | None = None
                   ) -> list[Signature]:
        """Stored signatures with their curves and features (not their layers), newest first; only those of
        ``model`` (and ``revision``) when given."""
        query = (f"SELECT {', '.join(SCORED)} FROM signatures WHERE (? IS NULL OR model = ?) "
                 "AND (? IS NULL OR revision = ?) ORDER BY scanned_at DESC, model LIMIT ?")
        with self.connect() as con:
            rows = con.execute(query, [model, model, revision, revision,
                                       limit if limit is not None else 1 << 62]).fetchall()
        return _signatures(list(SCORED), rows)

    def nearest(self, vector: list[float], exclude: tuple[str, str], limit: int = 100) -> list[Signature]:
        """The pre-filter of ``match``: the ``limit`` stored signatures (in no particular order) whose
        embeddings have the largest inner product with ``vector`` (they are centred and unit-normalised,
        so it is a correlation). In SQL, on the store's match index (see :meth:`index_path`)."""
        con = self._index_connection()
        # rank on the embedding alone (a top-k aggregate), then fetch the few winners' whole rows
        (ids,) = con.execute(
            f"SELECT max_by(rowid, array_inner_product(embedding, ?::FLOAT[{EMBED_DIM}]), ?) FROM signatures "
            f"WHERE embedding IS NOT NULL AND NOT (model = ? AND revision = ?)",
            [vector, limit, *exclude]).fetchone()
        return self._rows(con, ids or [])

    def peers(self, family: str, hidden: int | None, depths: tuple[int, int], limit: int) -> list[Signature]:
        """Up to ``limit`` stored signatures of one architecture (``family`` and ``hidden`` size) with depth
        in ``depths`` (inclusive): the same sample on every call for the same store, so an empirical null
        drawn from it is reproducible."""
        con = self._index_connection()
        ids = [i for (i,) in con.execute(
            "SELECT rowid FROM signatures WHERE family = ? AND hidden_size IS NOT DISTINCT FROM ? "
            "AND n_layers BETWEEN ? AND ? AND invariants IS NOT NULL ORDER BY hash(model, revision) LIMIT ?",
            [family, hidden, *depths, limit]).fetchall()]
        return self._rows(con, ids)

    def declared(self, models: Iterable[str]) -> dict[str, list[str]]:
        """The ``declared_base`` of each of ``models`` the store holds (newest revision wins)."""
        con = self._index_connection()
        rows = con.execute("SELECT model, arg_max(declared_base, rowid) FROM signatures "
                           "WHERE list_contains(?, model) GROUP BY model", [sorted(models)]).fetchall()
        return {model: list(base or []) for model, base in rows}

    def _index_connection(self) -> duckdb.DuckDBPyConnection:
        import duckdb

        path = self.index_path()
        if self._index is None or self._index[0] != path:  # keep it open: its pages stay in DuckDB's cache
            self._index = (path, duckdb.connect(path, read_only=True))
        return self._index[1]

    @staticmethod
    def _rows(con: duckdb.DuckDBPyConnection, ids: list[int]) -> list[Signature]:
        if not ids:
            return []
        rows = con.execute(f"SELECT {', '.join(SCORED)} FROM signatures "
                           "WHERE rowid IN (SELECT unnest(?::BIGINT[]))", [ids]).fetchall()
        return _signatures(list(SCORED), rows)

    def index_path(self) -> str:
        """A DuckDB file holding the newest successful signatures natively (a scan of 1M embeddings there
        takes ~0.1 s; of the Parquet files, several times more). Rebuilt when the signature files change;
        beside a local store, in the user's cache for a remote one. Replaced atomically."""
        files = self.files("signatures")
        stamp = hashlib.sha256("\n".join([*SCORED, *files]).encode()).hexdigest()[:16]
        if self.remote:
            folder = os.path.join(os.path.expanduser("~/.cache/lineage-scanner"),
                                  hashlib.sha256(self.root.encode()).hexdigest()[:16])
        else:
            folder = self.base
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"match-index-{stamp}.duckdb")
        if not os.path.exists(path):
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with self.connect(tmp) as con:
                con.execute(f"CREATE TABLE main.signatures AS SELECT {', '.join(SCORED)} FROM temp.signatures")
            os.replace(tmp, path)
            for old in os.listdir(folder):  # earlier stamps are stale
                if old.startswith("match-index-") and old.endswith(".duckdb") and old != os.path.basename(path):
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(folder, old))
        return path
