"""The store's DuckDB views: what a query sees of the Parquet files.

Each table's files are read under the current schema (``<table>_files``: columns an older file lacks
read as NULL; see :mod:`lineage_scanner.store.schema`), damaged files left out (see
:mod:`lineage_scanner.store.health`). The views above them keep the newest row per (model, revision), so
re-scans append and ``--force`` never rewrites. A local store's files are read by DuckDB in place, a
remote one's through pyarrow datasets. Paths reach DuckDB as values of its relational API, never as SQL
text, so store paths may hold any character.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from lineage_scanner.signature.record import EMBED_DIM
from lineage_scanner.store.files import Files
from lineage_scanner.store.health import Health, in_bounds
from lineage_scanner.store.schema import TABLES, arrow_schema, columns, duckdb_type

if TYPE_CHECKING:
    import duckdb

VIEWS = {
    # rows whose depth or widths lie outside what any scan writes are left out (``lineage store check``)
    "scans": "SELECT * REPLACE (embedding::FLOAT[{dim}] AS embedding) FROM signatures_files WHERE {bounds}",
    "latest": "SELECT * FROM scans "
              "QUALIFY row_number() OVER (PARTITION BY model, revision ORDER BY scanned_at DESC, scan_id) = 1",
    "signatures": "SELECT * EXCLUDE (error) FROM latest WHERE status = 'ok'",
    "errors": "SELECT model, revision, source, status, reason, error, scanned_at FROM latest WHERE status <> 'ok'",
    "layers": "SELECT l.* FROM layers_files l SEMI JOIN signatures s ON l.scan_id = s.scan_id",
    # newest listing per model: the commit a nightly scan should have
    "catalog": "SELECT * FROM catalog_files QUALIFY row_number() OVER (PARTITION BY model ORDER BY listed_at DESC) = 1",
    # listed commits without a signature yet (gated repos are left out: they cannot be read)
    "todo": "SELECT c.* FROM catalog c ANTI JOIN signatures s ON c.model = s.model AND c.sha = s.revision "
            "WHERE NOT c.gated",
    # the newest detection run (lineage graph): its derivations, parent to child
    "edges": "SELECT a AS parent, b AS child, kind, coalesce(direction, 'unknown') AS direction, note, "
             "score AS closeness, evidence, p_value, log10_p, 1 - p_value AS confidence, declared, family, runner_up, "
             "runner_up_score AS runner_up_closeness, computed_at "
             "FROM edges_files WHERE computed_at = (SELECT max(computed_at) FROM edges_files)",
    # where model cards and weights disagree: a declared base (scanned) that the weights' tree does not put
    # among the model's ancestors, or a derivation the weights show that no card's chain of bases covers
    "disagreements": """
        WITH RECURSIVE declared AS (SELECT model, unnest(declared_base) AS base FROM signatures),
             chain(model, ancestor) AS (
                 SELECT model, model FROM signatures
                 UNION SELECT c.model, d.base FROM chain c JOIN declared d ON d.model = c.ancestor),
             lineage(model, ancestor) AS (
                 SELECT child, parent FROM edges
                 UNION SELECT l.model, e.parent FROM lineage l JOIN edges e ON e.child = l.ancestor),
             member AS (SELECT child AS model, family FROM edges UNION SELECT parent, family FROM edges)
        SELECT d.model, d.base AS other,
               CASE WHEN EXISTS (SELECT 1 FROM lineage l WHERE l.model = d.base AND l.ancestor = d.model)
                        THEN 'declared base derived from this model by the weights'
                    WHEN EXISTS (SELECT 1 FROM member x JOIN member y ON x.family = y.family
                                 WHERE x.model = d.model AND y.model = d.base)
                        THEN 'declared base a relative but not an ancestor by the weights'
                    ELSE 'declared base not related by the weights' END AS problem,
               NULL::DOUBLE AS closeness
        FROM declared d
        WHERE d.base IN (SELECT model FROM signatures)
          AND NOT EXISTS (SELECT 1 FROM lineage l WHERE l.model = d.model AND l.ancestor = d.base)
        UNION ALL
        SELECT e.child, e.parent, 'derivation the weights show but no card declares', e.closeness
        FROM edges e
        WHERE NOT EXISTS (SELECT 1 FROM chain x JOIN chain y ON x.ancestor = y.ancestor
                          WHERE x.model = e.parent AND y.model = e.child)
    """,
}

#: What each view reads, so that a query can have only the views it names (and theirs) defined.
DEPENDS = {"scans": ("signatures_files",), "latest": ("scans",), "signatures": ("latest",), "errors": ("latest",),
           "layers": ("layers_files", "signatures"), "catalog": ("catalog_files",),
           "todo": ("catalog", "signatures"), "edges": ("edges_files",), "disagreements": ("signatures", "edges")}


def connect(database: str = ":memory:", **kwargs) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for the store (every one it opens comes from here), without DuckDB's progress
    bar, which it draws on standard output for a query past two seconds: in the middle of a command's
    output (`lineage sql`'s CSV or JSON)."""
    import duckdb

    con = duckdb.connect(database, **kwargs)
    con.execute("SET enable_progress_bar = false")
    return con


def needed(names: set[str]) -> set[str]:
    """``names`` with every view and files table they read, transitively."""
    out, todo = set(), [n.lower() for n in names]
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(DEPENDS.get(name, ()))
    return out


def open_views(files: Files, health: Health, database: str = ":memory:", sandbox: bool = False,
               for_query: str | None = None, edges: list[dict] | None = None, memory_limit: int | None = None
               ) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the store's views defined (as temporary views: ``database`` may be a file
    that is being filled, and never keeps them); only those ``for_query`` names (and what they read), if
    given. ``sandbox``: then locked so that only the store's data files can be read and nothing written
    (see :mod:`lineage_scanner.store.sql`). ``edges``: rows the ``edges`` table holds instead of its
    files (a graph run that a read-only store could not take). ``memory_limit``: DuckDB's, in bytes, set
    before the sandbox locks the configuration."""
    import duckdb

    con = connect(database, config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    wanted = {*VIEWS, *(f"{t}_files" for t in TABLES)}
    if for_query is not None:
        with contextlib.suppress(duckdb.Error):  # a query DuckDB cannot parse gets every view (and its error)
            wanted = needed(set(con.get_table_names(for_query)))
    read = [f for table in TABLES if f"{table}_files" in wanted
            for f in _define_files_view(con, files, health, table, edges if table == "edges" else None)]
    for name, body in VIEWS.items():
        if name in wanted:
            con.execute(f"CREATE TEMP VIEW {name} AS {body.format(dim=EMBED_DIM, bounds=in_bounds('signatures'))}")
    if sandbox:  # a remote store's files reach DuckDB only as the pyarrow datasets registered above
        con.execute("SET allowed_paths = ?", [read if not files.remote else []])
        con.execute("SET allowed_directories = ?", [[]])
        con.execute("SET enable_external_access = false")
        con.execute("SET python_enable_replacements = false")  # no Python object in reach but the views
        if memory_limit is not None:
            con.execute(f"SET memory_limit = '{int(memory_limit)}B'")
        con.execute("SET lock_configuration = true")
    return con


def _define_files_view(con: duckdb.DuckDBPyConnection, files: Files, health: Health, table: str,
                       rows: list[dict] | None = None) -> list[str]:
    """``<table>_files``: every sound file of the table under the current schema (or ``rows`` given);
    columns that older files lack read as NULL. The files it reads."""
    paths = health.sound(con, table, files.list(table)) if rows is None else []
    raw = f"{table}_raw"
    present: set[str] = set()
    if rows is not None:
        import pyarrow as pa

        con.register(raw, pa.Table.from_pylist(rows, schema=arrow_schema(table)))
        present = set(columns(table))
    elif paths and files.remote:
        import pyarrow.dataset as pads

        con.register(raw, pads.dataset(paths, schema=arrow_schema(table), format="parquet", filesystem=files.fs))
        present = set(columns(table))
    elif paths:
        con.read_parquet(paths, union_by_name=True).create_view(raw, replace=True)
        present = {row[0] for row in con.execute(f"DESCRIBE {raw}").fetchall()}
    select = ", ".join(f'"{c}"' if c in present else f'NULL::{duckdb_type(table, c)} AS "{c}"'
                       for c in columns(table))
    source = f"FROM {raw}" if present else "WHERE false"
    con.execute(f"CREATE TEMP VIEW {table}_files AS SELECT {select} {source}")
    return paths
