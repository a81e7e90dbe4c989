"""The bounds a user's SQL query runs within (see :mod:`lineage_scanner.store.sql`): apart, so that the
command line can show the defaults without importing DuckDB."""

from __future__ import annotations

from dataclasses import dataclass

#: Defaults of ``lineage sql``: a query runs at most this long, in at most this much memory.
TIMEOUT_S = 300.0
MEMORY_BYTES = 4 << 30
#: Address space the process may map beyond what it maps when the query starts, besides the memory limit
#: (DuckDB's threads' stacks and arenas).
HEADROOM = 1 << 30


@dataclass(frozen=True)
class SqlLimits:
    """How long one query may run and how much memory it may take (None: no limit)."""

    timeout_s: float | None = TIMEOUT_S
    memory_bytes: int | None = MEMORY_BYTES
