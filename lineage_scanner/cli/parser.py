"""The ``lineage`` command line: every command, its options and its help text."""

from __future__ import annotations

import argparse
import os

from lineage_scanner import __version__
from lineage_scanner.cli.commands import (
    cmd_catalog,
    cmd_compare,
    cmd_demo,
    cmd_graph,
    cmd_match,
    cmd_plot,
    cmd_report,
    cmd_scan,
    cmd_sql,
    cmd_store,
)
from lineage_scanner.measure.kernels import BACKENDS
from lineage_scanner.readers.hub_time import DEFAULT_DEADLINE_S
from lineage_scanner.store.limits import MEMORY_BYTES, TIMEOUT_S


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1]")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _bytes(text: str) -> int:
    """A size: a number of bytes, or with a unit (KB, MB, GB, TB: powers of 1024; a trailing B optional)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    body = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = body[-1:] if body[-1:] in units and body[-1:] else ""
    try:
        value = float(body[: len(body) - len(unit)]) * units[unit]
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a size (for example 4GB or 512MB)")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=os.environ.get("LINEAGE_DB", "./lineage-db"),
                        help="signature store directory (default ./lineage-db, env LINEAGE_DB)")
    common.add_argument("--cache", help="directory for caches such as the match index (default $LINEAGE_CACHE, "
                        "else the XDG cache); never the store, which may be read-only")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("--debug", action="store_true", help="a traceback for an unexpected error")
    # for the commands that may scan a model (a path or hf:// reference is scanned into the store first)
    scanning = argparse.ArgumentParser(add_help=False, parents=[common])
    scanning.add_argument("--backend", choices=BACKENDS, default="auto", help="moments backend")

    parser = argparse.ArgumentParser(prog="lineage", description="Tell which open-weight language models were "
                                     "derived from which, from their weights alone.")
    parser.add_argument("--version", action="version", version=f"lineage-scanner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", parents=[scanning], help="scan checkpoints into signatures in the store")
    p.add_argument("sources", nargs="*", help="model directory, .safetensors, index.json, .gguf, or "
                   "hf://org/name[@revision]")
    p.add_argument("--force", action="store_true", help="re-scan models already in the store")
    p.add_argument("--catalog", action="store_true", help="also scan catalog entries not yet in the store")
    p.add_argument("--limit", type=int, help="with --catalog: at most this many entries")
    p.add_argument("--sample", type=_fraction, metavar="FRACTION",
                   help="estimate large tensors from this fraction of their elements, in spread runs")
    p.add_argument("--sample-error", type=_fraction, metavar="E",
                   help="raise the sampled fraction per tensor until std's relative standard error <= E")
    p.add_argument("--workers", type=_positive, help="scan on Ray with this many workers (default: in this "
                   "process; with --address or RAY_ADDRESS, one worker per GPU, else per CPU)")
    p.add_argument("--address", help="scan on this Ray cluster (or set RAY_ADDRESS); without it or --workers, "
                   "the scan runs in this process")
    p.add_argument("--deadline", type=_seconds, default=DEFAULT_DEADLINE_S, metavar="SECONDS",
                   help=f"seconds one Hub model's scan may take before it is a timeout row (default "
                        f"{DEFAULT_DEADLINE_S:.0f})")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("catalog", parents=[common], help="list Hub models into the store's work list")
    p.add_argument("--author")
    p.add_argument("--search")
    p.add_argument("--filter", help="a Hub tag, e.g. text-generation")
    p.add_argument("--sort", choices=["downloads", "likes", "last_modified", "created_at", "trending_score"])
    p.add_argument("--limit", type=int)
    p.set_defaults(func=cmd_catalog)

    verify = argparse.ArgumentParser(add_help=False)
    how = verify.add_mutually_exclusive_group()
    how.add_argument("--verify", dest="verify", action="store_const", const="always", default="auto",
                     help="read both models again at fresh positions drawn now, and judge by what was read (by "
                          "default this happens when the stored evidence disagrees or would call weights identical)")
    how.add_argument("--no-verify", dest="verify", action="store_const", const="never",
                     help="judge by the stored sketches alone")

    p = sub.add_parser("compare", parents=[scanning, verify], help="score two models (paths or stored ids)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--plot", metavar="FILE.png", help="draw the evidence that decided (the sketch's layer pairs, or "
                   "the aligned feature curves) and the seed method's curves")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", parents=[scanning, verify], help="a self-contained HTML report of two models' lineage")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--out", default="lineage-report.html", metavar="FILE.html")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("match", parents=[scanning], help="nearest relatives of a model in the store")
    p.add_argument("source")
    p.add_argument("--top", type=_positive, default=10)
    p.add_argument("--prefilter", type=_positive, default=100, help="candidates kept by the SQL embedding pre-filter")
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("sql", parents=[common], help="read-only SQL over the views "
                       "signatures, layers, errors, scans")
    p.add_argument("query", nargs="?", help="SQL text; '-' or nothing reads stdin")
    p.add_argument("-p", "--param", action="append", nargs="+", metavar="VALUE",
                   help="bind a parameter: -p VALUE for each ?, or -p NAME VALUE for each $NAME (as text: "
                        "cast in SQL, e.g. ?::INT)")
    p.add_argument("--csv", action="store_true", help="CSV output")
    p.add_argument("--timeout", type=_seconds, default=TIMEOUT_S, metavar="SECONDS",
                   help=f"stop the query after this long (default {TIMEOUT_S:g})")
    p.add_argument("--memory-limit", type=_bytes, default=MEMORY_BYTES, metavar="SIZE",
                   help=f"memory the query may take, e.g. 512MB (default {MEMORY_BYTES >> 30} GB)")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("store", parents=[common], help="check the store's files, or move damaged ones aside")
    p.add_argument("action", choices=["check", "repair"], help="check: list damaged or foreign files (exit 1 "
                   "if any); repair: move them to DB/quarantine/")
    p.set_defaults(func=cmd_store)

    p = sub.add_parser("plot", parents=[scanning], help="per-layer curves of one or more models")
    p.add_argument("sources", nargs="+")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("graph", parents=[common], help="family trees of the store's models: each model's parent, "
                       "each derivation typed and directed, beside what the cards declare")
    p.add_argument("--min-confidence", type=float, default=0.99, help="1 - p-value an edge needs (default 0.99)")
    p.add_argument("--out", metavar="FILE", help="also write the graph: FILE.graphml (GraphML) or any other name "
                   "(JSON)")
    p.add_argument("--html", metavar="FILE.html", help="also a self-contained page of the families, for a browser")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("demo", parents=[scanning], help="build the demo zoo, scan it, print the lineage table")
    p.add_argument("--out", default="./lineage-demo", help="where the zoo is written")
    p.set_defaults(func=cmd_demo)
    return parser
