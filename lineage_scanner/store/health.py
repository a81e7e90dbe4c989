"""Damage in a store: files that are not readable Parquet, or not a table of this store, found from their
footers, reported once and left out of every view, so a damaged store keeps working; and rows whose
values lie outside what any scan writes (a depth of 2e9, an infinite std), found by ``lineage store
check``. ``repair`` moves the files holding either aside.

Rows out of bounds are also kept out of the views (see :data:`SCALAR_BOUNDS`): nothing downstream sizes
memory by a stored depth or width it has not been shown to be plausible.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from lineage_scanner.layouts.resolve import MAX_LAYERS
from lineage_scanner.store.files import Files
from lineage_scanner.store.schema import REQUIRED, TABLES, arrow_schema, compatible, duckdb_type

if TYPE_CHECKING:
    import duckdb

#: Widths far beyond any model (the largest have hidden sizes in the tens of thousands).
MAX_WIDTH = 1 << 20


def _between(column: str, low: int, high: int) -> tuple[str, str, str]:
    return (column, f"{column} IS NOT NULL AND {column} NOT BETWEEN {low} AND {high}",
            f"'{column} ' || {column} || ' outside {low}..{high}'")


def _infinite(column: str, listed: bool = False) -> tuple[str, str, str]:
    test = (f"list_has_any({column}, ['inf'::DOUBLE, '-inf'::DOUBLE])" if listed else f"isinf({column})")
    return column.split(".")[0], f"coalesce({test}, false)", f"'{column} holds an infinite value'"


def _long(column: str) -> tuple[str, str, str]:
    return (column.split(".")[0], f"coalesce(len({column}) > {MAX_LAYERS}, false)",
            f"'{column} has ' || len({column}) || ' points, over {MAX_LAYERS}'")


#: Bounds of the scalars memory is sized by (depth, widths): rows outside them are left out of the views.
SCALAR_BOUNDS = (_between("n_layers", 1, MAX_LAYERS), *(_between(c, 1, MAX_WIDTH) for c in
                                                       ("hidden_size", "n_heads", "n_kv_heads", "head_dim")))
_CURVES = ("curves.q", "curves.k", "curves.v", "curves.o")
#: (column, SQL that is true for a bad row, SQL naming the problem) per table.
BOUNDS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "signatures": (*SCALAR_BOUNDS, ("params", "params < 0", "'params ' || params || ' is negative'"),
                   ("bytes_read", "bytes_read < 0", "'bytes_read ' || bytes_read || ' is negative'"),
                   *(_long(c) for c in _CURVES), *(_infinite(c, listed=True) for c in _CURVES),
                   ("embedding", "list_has_any(embedding::FLOAT[], ['inf'::FLOAT, '-inf'::FLOAT])",
                    "'embedding holds an infinite value'"),
                   ("sketch", f"list_bool_or([p.rows NOT BETWEEN 1 AND {MAX_WIDTH} OR p.cols NOT BETWEEN 1 AND "
                              f"{MAX_WIDTH} OR (p.layer NOT BETWEEN 0 AND {MAX_LAYERS - 1} AND "
                              "NOT (p.layer = -1 AND p.kind = 'circuit_gram')) for p in sketch])",
                    f"'a sketch of a matrix outside 1..{MAX_WIDTH} rows or columns, or layers 0..{MAX_LAYERS - 1} (-1: "
                    "the Gram of every layer)'")),
    "layers": (_between("layer", 0, MAX_LAYERS - 1), ("numel", "numel < 0", "'numel ' || numel || ' is negative'"),
               ("std", "std < 0", "'std ' || std || ' is negative'"),
               *(_infinite(c) for c in ("mean", "std", "min", "max", "absmax", "skew", "kurtosis"))),
    "catalog": (),
    "edges": (),
}


def in_bounds(table: str) -> str:
    """SQL that is true for a row of ``table`` whose scalars are in :data:`SCALAR_BOUNDS`."""
    return "NOT (" + " OR ".join(f"coalesce({bad}, false)" for _, bad, _ in SCALAR_BOUNDS) + ")" \
        if table == "signatures" else "true"


class Health:
    """What one store knows about its files' health: each file's columns (read once: a file is written
    once under a unique name and never changed, and a batch opens the store many times; re-reading
    hundreds of footers each time cost seconds), and the damaged files already reported (a warning
    once, not on every connection)."""

    def __init__(self, files: Files):
        self.files = files
        self.columns: dict[str, dict[str, str]] = {}
        self.reported: set[str] = set()

    def file_columns(self, con: duckdb.DuckDBPyConnection, files: list[str]) -> dict[str, dict[str, str]]:
        """Each file's top-level columns and their DuckDB types, from the Parquet footers (a remote file's
        read by pyarrow: DuckDB reaches no remote file itself)."""
        for f in files:
            if f not in self.columns:
                if self.files.remote:
                    import pyarrow.parquet as pq

                    rel = con.from_arrow(pq.read_schema(f, filesystem=self.files.fs).empty_table())
                else:
                    rel = con.read_parquet([f])
                self.columns[f] = dict(zip(rel.columns, (str(t) for t in rel.types)))
        return {f: self.columns[f] for f in files}

    def sound(self, con: duckdb.DuckDBPyConnection, table: str, files: list[str]) -> list[str]:
        """``files`` less those that are damaged or foreign, each reported once (on stderr) and left out."""
        damaged = dict(self.damage(con, table, files))
        for path, problem in damaged.items():
            if path not in self.reported:
                self.reported.add(path)
                print(f"warning: {path}: {problem}; left out (`lineage store repair` moves it aside)",
                      file=sys.stderr)
        return [f for f in files if f not in damaged]

    def damage(self, con: duckdb.DuckDBPyConnection, table: str, files: list[str]) -> list[tuple[str, str]]:
        """(file, problem) for every file of ``table`` that is not a readable Parquet file of its schema.
        One pass over the footers; files are probed one by one only when that pass fails."""
        try:
            found = self.file_columns(con, files)
        except Exception:  # DuckDB's and pyarrow's errors alike: probe each file
            found, problems = {}, []
            for f in files:
                try:
                    found.update(self.file_columns(con, [f]))
                except Exception as exc:
                    problems.append((f, f"not a readable Parquet file ({str(exc).splitlines()[0][:200]})"))
            return problems + self.damage(con, table, [f for f in files if f in found])
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

    def out_of_bounds(self, con: duckdb.DuckDBPyConnection, table: str, files: list[str]) -> list[tuple[str, str]]:
        """(file, problem) for each sound file of ``table`` holding rows outside :data:`BOUNDS`: the first
        such row named, and how many there are."""
        problems = []
        for f in files:
            present = self.columns[f]
            checks = [(bad, say) for column, bad, say in BOUNDS[table] if column in present]
            if not checks:
                continue
            if self.files.remote:
                import pyarrow.dataset as pads

                con.register("checked", pads.dataset([f], schema=arrow_schema(table), format="parquet",
                                                     filesystem=self.files.fs))
            else:
                con.read_parquet([f]).create_view("checked", replace=True)
            problem = "CASE " + " ".join(f"WHEN coalesce({bad}, false) THEN {say}" for bad, say in checks) + " END"
            found = con.execute(f"SELECT count(*), first(k), first(p) FROM (SELECT model || '@' || revision AS k, "
                                f"{problem} AS p FROM checked) WHERE p IS NOT NULL").fetchall()[0]
            if found[0]:
                problems.append((f, f"{found[0]} row(s) out of bounds, first {found[1]}: {found[2]}"))
        return problems
