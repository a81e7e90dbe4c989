"""Damage in a store: files that are not readable Parquet, or not a table of this store, found from their
footers, reported once and left out of every view, so a damaged store keeps working; ``lineage store
check`` lists them and ``repair`` moves them aside.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from lineage_scanner.store.schema import REQUIRED, TABLES, compatible, duckdb_type

if TYPE_CHECKING:
    import duckdb


class Health:
    """What one store knows about its files' health: each file's columns (read once: a file is written
    once under a unique name and never changed, and a batch opens the store many times; re-reading
    hundreds of footers each time cost seconds), and the damaged files already reported (a warning
    once, not on every connection)."""

    def __init__(self):
        self.columns: dict[str, dict[str, str]] = {}
        self.reported: set[str] = set()

    def file_columns(self, con: duckdb.DuckDBPyConnection, files: list[str]) -> dict[str, dict[str, str]]:
        """Each file's top-level columns and their DuckDB types, from the Parquet footers."""
        for f in files:
            if f not in self.columns:
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
        import duckdb

        try:
            found = self.file_columns(con, files)
        except duckdb.Error:
            found, problems = {}, []
            for f in files:
                try:
                    found.update(self.file_columns(con, [f]))
                except duckdb.Error as exc:
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
