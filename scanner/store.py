"""The signature store: an append-only Parquet dataset, read through DuckDB views.

``--db`` is a directory or any URI pyarrow has a filesystem for (``s3://bucket/lineage``, ``gs://…``).
Layout: ``signatures/*.parquet`` (one row per scan of a model, errors included), ``layers/*.parquet``
(long form: one row per scan × layer × role) and ``catalog/*.parquet`` (Hub listings). Each file is
written under a hidden temporary name and moved into place, so readers never see half a file. A batch's
layers land before its signatures, and a scan counts as done only once its signature row exists.
Files are read as pyarrow datasets under the current schema (columns an older file lacks read as NULL),
which DuckDB scans in place.

Re-scans append; the views keep the newest row per (model, revision), so ``--force`` never rewrites.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scanner.errors import SourceError
from scanner.evidence import FEATURES
from scanner.layouts import CURVE_ROLES
from scanner.lineage import EMBED_DIM
from scanner.signature import Signature

#: Bumped whenever a column is added; old files stay readable (views union by name).
#: 2: layers.std_se; 3: signatures.declared_relation; 4: invariants, layers.folded_std;
#: 5: layers.folded_kurtosis, invariants.fkurt_q/k/v (kurtosis of the gain-folded Q/K/V)
SCHEMA_VERSION = 5

SIGNATURES_SCHEMA = pa.schema([
    ("model", pa.string()), ("revision", pa.string()), ("source", pa.string()),
    ("status", pa.string()), ("error", pa.string()), ("format", pa.string()),
    ("family", pa.string()), ("architecture", pa.string()),
    ("n_layers", pa.int32()), ("hidden_size", pa.int32()), ("n_heads", pa.int32()),
    ("n_kv_heads", pa.int32()), ("head_dim", pa.int32()), ("dtype", pa.string()), ("params", pa.int64()),
    ("declared_base", pa.list_(pa.string())), ("declared_relation", pa.string()),
    ("curves", pa.struct([(role, pa.list_(pa.float64())) for role in CURVE_ROLES])),
    ("invariants", pa.struct([(name, pa.list_(pa.float64())) for name in FEATURES])),
    ("embedding", pa.list_(pa.float32(), EMBED_DIM)),
    ("bytes_read", pa.int64()), ("sampled", pa.bool_()), ("scanner_version", pa.string()),
    ("scanned_at", pa.timestamp("us", tz="UTC")), ("scan_id", pa.string()), ("schema_version", pa.int16()),
])

LAYERS_SCHEMA = pa.schema([
    ("scan_id", pa.string()), ("model", pa.string()), ("revision", pa.string()),
    ("layer", pa.int32()), ("role", pa.string()), ("numel", pa.int64()),
    ("mean", pa.float64()), ("std", pa.float64()), ("min", pa.float64()), ("max", pa.float64()),
    ("absmax", pa.float64()), ("skew", pa.float64()), ("kurtosis", pa.float64()),
    ("std_se", pa.float64()), ("folded_std", pa.float64()), ("folded_kurtosis", pa.float64()),
])

CATALOG_SCHEMA = pa.schema([
    ("model", pa.string()), ("sha", pa.string()), ("last_modified", pa.timestamp("us", tz="UTC")),
    ("params", pa.int64()), ("declared_base", pa.list_(pa.string())), ("gated", pa.bool_()),
    ("downloads", pa.int64()), ("listed_at", pa.timestamp("us", tz="UTC")),
])

EDGES_SCHEMA = pa.schema([
    ("a", pa.string()), ("b", pa.string()), ("score", pa.float64()), ("p_value", pa.float64()),
    ("kind", pa.string()), ("computed_at", pa.timestamp("us", tz="UTC")),
])

TABLES = {"signatures": SIGNATURES_SCHEMA, "layers": LAYERS_SCHEMA, "catalog": CATALOG_SCHEMA,
          "edges": EDGES_SCHEMA}

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


def _signature_rows(sigs: list[Signature]) -> pa.Table:
    rows = []
    for s in sigs:
        rows.append({
            "model": s.model, "revision": s.revision, "source": s.source, "status": s.status,
            "error": s.error, "format": s.format, "family": s.family, "architecture": s.architecture,
            "n_layers": s.n_layers, "hidden_size": s.hidden_size, "n_heads": s.n_heads,
            "n_kv_heads": s.n_kv_heads, "head_dim": s.head_dim, "dtype": s.dtype, "params": s.params,
            "declared_base": s.declared_base, "declared_relation": s.declared_relation,
            "curves": {role: s.curves.get(role) for role in CURVE_ROLES} if s.curves else None,
            "invariants": {name: s.invariants.get(name) for name in FEATURES} if s.invariants else None,
            "embedding": s.embedding, "bytes_read": s.bytes_read, "sampled": s.sampled,
            "scanner_version": s.scanner_version, "scanned_at": s.scanned_at, "scan_id": s.scan_id,
            "schema_version": SCHEMA_VERSION,
        })
    return pa.Table.from_pylist(rows, schema=SIGNATURES_SCHEMA)


def _layer_rows(sigs: list[Signature]) -> pa.Table:
    rows = []
    for s in sigs:
        for stat in s.layers:
            m = stat.moments
            rows.append({
                "scan_id": s.scan_id, "model": s.model, "revision": s.revision, "layer": stat.layer,
                "role": stat.role, "numel": m.count, "mean": m.mean, "std": m.std, "min": m.min,
                "max": m.max, "absmax": m.absmax, "skew": m.skew, "kurtosis": m.kurtosis,
                "std_se": stat.std_se, "folded_std": stat.folded_std, "folded_kurtosis": stat.folded_kurtosis,
            })
    return pa.Table.from_pylist(rows, schema=LAYERS_SCHEMA)


_SIG_COLUMNS = ("model, revision, source, n_layers, hidden_size, family, format, dtype, curves, invariants, "
                "declared_base, embedding")


def _signatures(rows) -> list[Signature]:
    """Signatures (curves and features, not layers) from rows of _SIG_COLUMNS."""
    return [Signature(model, revision, source, n_layers=n_layers, hidden_size=hidden, family=family, format=fmt,
                      dtype=dtype,
                      curves={k: v for k, v in (curves or {}).items() if v is not None},
                      invariants={k: v for k, v in (inv or {}).items() if v is not None},
                      declared_base=list(base or []), embedding=list(emb) if emb is not None else None)
            for model, revision, source, n_layers, hidden, family, fmt, dtype, curves, inv, base, emb in rows]


def _stem() -> str:
    return f"part-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


class Store:
    """A Parquet dataset (``--db``: a directory or a filesystem URI) with DuckDB views over it."""

    def __init__(self, root: str | os.PathLike):
        self.root = str(root)
        if "://" in self.root:
            self.fs, self.base = pafs.FileSystem.from_uri(self.root)
        else:
            self.fs, self.base = pafs.LocalFileSystem(), os.path.abspath(self.root)
        self._index: tuple[str, duckdb.DuckDBPyConnection] | None = None

    def files(self, table: str) -> list[str]:
        """Finished data files of ``table`` (temporary files are hidden and never listed)."""
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

    def _write_atomic(self, table: str, stem: str, data: pa.Table) -> str:
        folder = f"{self.base}/{table}"
        self.fs.create_dir(folder, recursive=True)
        tmp, final = f"{folder}/.{stem}.parquet.tmp", f"{folder}/{stem}.parquet"
        pq.write_table(data, tmp, compression="zstd", filesystem=self.fs)
        self.fs.move(tmp, final)
        return final

    def compact(self, table: str) -> tuple[int, int]:
        """Merge a table's files into one (the new file lands before the old ones go); (before, after)."""
        files = self.files(table)
        if len(files) < 2:
            return len(files), len(files)
        merged = pads.dataset(files, schema=TABLES[table], format="parquet", filesystem=self.fs).to_table()
        self._write_atomic(table, _stem(), merged)
        for f in files:
            self.fs.delete_file(f)
        return len(files), 1

    def write_edges(self, edges) -> int:
        """Append one detection run's edges (see :mod:`scanner.graph`); the ``edges`` view shows the newest."""
        now = datetime.now(timezone.utc)
        rows = [{"a": e.a, "b": e.b, "score": e.score, "p_value": e.p_value, "kind": e.kind, "computed_at": now}
                for e in edges]
        self._write_atomic("edges", _stem(), pa.Table.from_pylist(rows, schema=EDGES_SCHEMA))
        return len(rows)

    def write_catalog(self, entries) -> int:
        """Append a catalog listing (see :mod:`scanner.catalog`) as one new file."""
        rows = [{name: getattr(e, name) for name in CATALOG_SCHEMA.names} for e in entries]
        if rows:
            self._write_atomic("catalog", _stem(), pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA))
        return len(rows)

    def todo(self, limit: int | None = None) -> list[str]:
        """``hf://model@sha`` sources listed in the catalog and not yet scanned, most downloaded first."""
        query = "SELECT model, sha FROM todo ORDER BY downloads DESC NULLS LAST, model"
        with self.connect() as con:
            rows = con.execute(query + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        return [f"hf://{model}@{sha}" for model, sha in rows]

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with the store's views defined."""
        con = duckdb.connect()
        for table, schema in TABLES.items():
            files = self.files(table)
            data = (pads.dataset(files, schema=schema, format="parquet", filesystem=self.fs) if files
                    else schema.empty_table())
            con.register(f"{table}_files", data)
        for name, body in VIEWS.items():
            con.execute(f"CREATE VIEW {name} AS {body.format(dim=EMBED_DIM)}")
        return con

    def done(self) -> set[tuple[str, str]]:
        """(model, revision) pairs already scanned successfully: a re-run skips these."""
        if not self.files("signatures"):
            return set()  # a new store: no need to start DuckDB
        with self.connect() as con:
            return {tuple(r) for r in con.execute("SELECT model, revision FROM signatures").fetchall()}

    def load(self, model: str, revision: str | None = None) -> Signature:
        """A stored signature by model id (newest revision unless one is named)."""
        where, params = "model = ?", [model]
        if revision:
            where, params = where + " AND revision = ?", params + [revision]
        found = self.curves(where, params, limit=1)
        if not found:
            raise SourceError(model, f"not in the store at {self.root}")
        return found[0]

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
        path = self.index_path()
        if self._index is None or self._index[0] != path:  # keep it open: its pages stay in DuckDB's cache
            self._index = (path, duckdb.connect(path, read_only=True))
        return self._index[1]

    @staticmethod
    def _rows(con: duckdb.DuckDBPyConnection, ids: list[int]) -> list[Signature]:
        if not ids:
            return []
        rows = con.execute(f"SELECT {_SIG_COLUMNS} FROM signatures WHERE rowid IN (SELECT unnest(?::BIGINT[]))",
                           [ids]).fetchall()
        return _signatures(rows)

    def index_path(self) -> str:
        """A DuckDB file holding the newest successful signatures natively (a scan of 1M embeddings there
        takes ~0.1 s; of the Parquet files, several times more). Rebuilt when the signature files change;
        beside a local store, in the user's cache for a remote one. Replaced atomically."""
        files = self.files("signatures")
        stamp = hashlib.sha256("\n".join([_SIG_COLUMNS, *files]).encode()).hexdigest()[:16]
        if "://" in self.root:
            folder = os.path.join(os.path.expanduser("~/.cache/lineage-scanner"),
                                  hashlib.sha256(self.root.encode()).hexdigest()[:16])
        else:
            folder = self.base
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"match-index-{stamp}.duckdb")
        if not os.path.exists(path):
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with self.connect() as con:
                con.execute(f"ATTACH '{tmp}' AS idx")
                con.execute(f"CREATE TABLE idx.signatures AS SELECT {_SIG_COLUMNS} FROM signatures")
                con.execute("DETACH idx")
            os.replace(tmp, path)
            for old in os.listdir(folder):  # earlier stamps are stale
                if old.startswith("match-index-") and old.endswith(".duckdb") and old != os.path.basename(path):
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(folder, old))
        return path

    def curves(self, where: str = "true", params: list | None = None, limit: int | None = None
               ) -> list[Signature]:
        """Stored signatures with their curves (not their layers), newest first."""
        query = (f"SELECT {_SIG_COLUMNS} FROM signatures WHERE {where} ORDER BY scanned_at DESC, model"
                 + (f" LIMIT {int(limit)}" if limit else ""))
        with self.connect() as con:
            rows = con.execute(query, params or []).fetchall()
        return _signatures(rows)
