"""User SQL over the store, sandboxed: it can read the store's views and nothing else.

The connection that runs it has the store's views defined first, then DuckDB's own locks: external access
off with only the store's data files allowed (so no other file is read, and no file is written, not even
inside the store), extensions neither installed nor loaded, and the configuration locked so the query
cannot undo any of it. On top, one statement only, and only a SELECT: ``EXPLAIN [ANALYZE]`` is judged by
the statement it wraps (``EXPLAIN ANALYZE`` runs it). Values reach the query as bound parameters (``?``
or ``$name``), never as SQL text.

Bounded in time and memory (:class:`SqlLimits`, ``lineage sql --timeout/--memory-limit``): a query past its
time is interrupted; DuckDB's own memory limit bounds what its buffer manager tracks, and the process's
address space is capped for the query's duration (limit plus what the process already maps) so that what it
does not track (one huge string from ``repeat``) fails the query, not the machine. Either is a one-line
error naming the limit.
"""

from __future__ import annotations

import contextlib
import resource
import threading
from collections.abc import Iterator, Mapping, Sequence

import duckdb

from lineage_scanner.errors import QueryLimitError, UsageError
from lineage_scanner.store.limits import HEADROOM, SqlLimits
from lineage_scanner.store.store import Store

Params = Sequence[object] | Mapping[str, object] | None
DEFAULT_LIMITS = SqlLimits()


def run_sql(store: Store, query: str, params: Params = None, limits: SqlLimits = DEFAULT_LIMITS
            ) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of one read-only query over the store's views (only those it names are
    defined: ``SELECT 1`` lists no file), within ``limits``."""
    with store.connect(sandbox=True, for_query=query, memory_limit=limits.memory_bytes) as con:
        statement = _only_select(con, query)
        try:
            with _interrupted_after(con, limits.timeout_s), _address_space(limits.memory_bytes):
                result = con.execute(statement, params or [])
                columns = [d[0] for d in result.description]
                return columns, result.fetchall()
        except duckdb.PermissionException as exc:
            raise UsageError(f"refused: the query reaches outside the store ({_first_line(exc)})") from None
        except duckdb.InterruptException:
            raise QueryLimitError(f"the query ran past its time limit of {limits.timeout_s:g} s and was stopped "
                                  "(lineage sql --timeout)") from None
        except (duckdb.OutOfMemoryException, MemoryError):
            raise QueryLimitError(f"the query needs more than its memory limit of {limits.memory_bytes / 2**30:.3g} "
                                  "GiB (lineage sql --memory-limit)") from None


@contextlib.contextmanager
def _interrupted_after(con: duckdb.DuckDBPyConnection, seconds: float | None) -> Iterator[None]:
    if seconds is None:
        yield
        return
    timer = threading.Timer(seconds, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@contextlib.contextmanager
def _address_space(limit: int | None) -> Iterator[None]:
    """The process's address space capped at what it maps now plus ``limit`` and HEADROOM, restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _mapped_bytes()
    if limit is None or mapped is None:
        yield
        return
    cap = mapped + limit + HEADROOM
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _mapped_bytes() -> int | None:
    """The process's virtual memory size (Linux), None where it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    return None


def _only_select(con: duckdb.DuckDBPyConnection, query: str) -> str:
    """The query's single statement, if it is a SELECT (or an EXPLAIN of one); else UsageError."""
    statements = con.extract_statements(query)
    if not statements:
        raise UsageError("empty SQL")
    for statement in statements:
        _check_kind(con, statement)
    if len(statements) > 1:
        raise UsageError(f"one statement at a time, not {len(statements)}")
    return statements[0].query


def _check_kind(con: duckdb.DuckDBPyConnection, statement) -> None:
    """A SELECT, or an EXPLAIN [ANALYZE] of one; else UsageError naming what it is."""
    kind = statement.type
    text = statement.query
    if kind == duckdb.StatementType.EXPLAIN:
        text = _explained(text)
        inner = con.extract_statements(text)
        kind = inner[0].type if len(inner) == 1 else None
    if kind != duckdb.StatementType.SELECT:
        name = kind.name if kind is not None else "several statements"
        raise UsageError(f"only SELECT queries are allowed here, not {name}")


def _explained(text: str) -> str:
    """What ``EXPLAIN [ANALYZE]`` wraps, found by DuckDB's tokenizer (comments in between are skipped);
    EXPLAIN with options in parentheses is refused rather than parsed."""
    tokens = duckdb.tokenize(text)
    words = [(start, tok) for start, tok in tokens if tok != duckdb.token_type.comment]
    skip = 1
    if len(words) > 1 and _word(text, tokens, words[1][0]).upper() == "ANALYZE":
        skip = 2
    if len(words) <= skip or text[words[skip][0]] == "(":
        raise UsageError("only EXPLAIN [ANALYZE] SELECT ... is allowed here")
    return text[words[skip][0]:]


def _word(text: str, tokens, start: int) -> str:
    ends = [s for s, _ in tokens if s > start] + [len(text)]
    return text[start:min(ends)].strip()


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]
