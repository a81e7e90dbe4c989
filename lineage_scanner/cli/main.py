"""The ``lineage`` command: a thin layer that parses options, calls one library function, prints.

Errors reach the user as one line, ``Error: …``, with exit code 1. ``--json`` prints data on stdout;
progress bars and notes go to stderr. The commands are in :mod:`.commands`, their options in :mod:`.parser`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys

from lineage_scanner.cli.output import say
from lineage_scanner.cli.parser import build_parser
from lineage_scanner.errors import InternalError, LineageError


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr, ``Error: ...``, and exit code 1 (130 when
    interrupted); ``--debug`` shows the traceback of an unexpected one instead."""
    args = build_parser().parse_args(argv)
    if getattr(args, "cache", None):  # the process's cache directory: the match index's, the null's
        os.environ["LINEAGE_CACHE"] = args.cache
    try:
        with _stdout_for_data(args.json):
            return args.func(args)
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        expected = isinstance(exc, LineageError) or _is_duckdb_error(exc)
        if args.debug and not expected:
            raise
        message = str(exc) if expected else str(InternalError.of("lineage " + args.command, exc))
        say(f"Error: {' '.join(message.split())[:2000]}", err=True)
        return 1


@contextlib.contextmanager
def _stdout_for_data(json_output: bool):
    """With ``--json``, stdout carries the JSON alone: whatever else writes to file descriptor 1 while the
    command runs (Ray, a C library) lands on stderr."""
    try:
        real = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # stdout is not a file (a test's capture): nothing to guard
        real = None
    if not json_output or real != 1:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    data = os.fdopen(os.dup(saved), "w")
    previous, sys.stdout = sys.stdout, data
    try:
        yield
    finally:
        data.flush()
        sys.stdout = previous
        os.dup2(saved, 1)
        os.close(saved)
        data.close()


def _is_duckdb_error(exc: Exception) -> bool:
    duckdb = sys.modules.get("duckdb")  # only a command that used DuckDB can raise its errors
    return duckdb is not None and isinstance(exc, duckdb.Error)


def run() -> None:
    """The ``lineage`` command: :func:`main`, then a fast exit. Tearing down an interpreter that has loaded
    numba and LLVM takes 0.16 s here, a fifth of a one-model scan's whole process; so once the exit
    handlers have run (Ray's shutdown, temporary directories) and the output is flushed, the process
    ends without it. Every file the command wrote is closed by then."""
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
