"""The ``lineage`` command: a thin layer that parses options, calls one library function, prints.

Errors reach the user as one line, ``Error: …``, with exit code 1. ``--json`` prints data on stdout;
progress bars and notes go to stderr.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys

from lineage_scanner import __version__
from lineage_scanner.cli.output import compare_lines, fmt_p, plural, print_csv, print_json, print_table, say, tree_lines
from lineage_scanner.errors import InternalError, LineageError, UsageError
from lineage_scanner.measure.kernels import BACKENDS, BackendUnavailable

# Commands import what they use when they run: ``--help``, ``sql`` and lookups of stored models never
# load torch, numba, ray or matplotlib.


# ---- commands -----------------------------------------------------------------------------------------

def cmd_scan(args) -> int:
    from lineage_scanner.measure.sampling import SamplePlan
    from lineage_scanner.run.batch import ScanConfig, choose_executor, run_batch
    from lineage_scanner.sources import is_hub
    from lineage_scanner.store.store import Store

    missing = [s for s in args.sources if not is_hub(s) and not os.path.lexists(os.path.expanduser(s))]
    if missing:  # a typo, not a model: nothing to record in the store
        raise UsageError(f"{missing[0]}: no such file or directory")
    store = Store(args.db)
    sources = list(args.sources) + (store.todo(args.limit) if args.catalog else [])
    if not sources:
        raise UsageError("nothing to scan: name sources, or --catalog with unscanned catalog entries")
    sample = None
    if args.sample is not None or args.sample_error is not None:
        sample = SamplePlan(args.sample, args.sample_error)
    summary = run_batch(sources, store, choose_executor(args.workers, args.address),
                        config=ScanConfig(args.backend, args.force, sample), progress=not args.quiet)
    for record in summary.failed:
        say(f"Error: {record.error}", err=True)
    for record in summary.records:
        if record.layout_source == "name-patterns":
            say(f"note: {record.model}: unknown architecture; attention found by name patterns", err=True)
    if args.json:
        print_json({"scanned": [r.__dict__ for r in summary.records],
                     "skipped": [{"model": m, "revision": r} for m, r in summary.skipped],
                     "bytes_read": summary.bytes_read, "retried_units": summary.retried_units})
    else:
        ok = [r for r in summary.records if r.status == "ok"]
        if ok:
            print_table(["model", "revision", "layers", "MB read"],
                         [(r.model, r.revision, r.n_layers, f"{r.bytes_read / 1e6:.1f}") for r in ok])
        copies = f"; {plural(summary.n_copies, 'exact copy', 'exact copies')} of stored weights" \
            if summary.n_copies else ""
        deferred = f", deferred {summary.n_deferred} (Hub budget spent: the next scan --catalog takes them " \
                   "first)" if summary.n_deferred else ""
        print(f"scanned {len(ok)} ({summary.bytes_read / 1e6:.1f} MB read{copies}), skipped "
              f"{len(summary.skipped)} already stored, failed {len(summary.failed)}{deferred}", file=sys.stderr)
    return 1 if summary.failed else 0


def cmd_catalog(args) -> int:
    from lineage_scanner.sources.catalog import list_catalog
    from lineage_scanner.store.store import Store

    entries = list_catalog(author=args.author, search=args.search, filter=args.filter, sort=args.sort,
                           limit=args.limit)
    store = Store(args.db)
    store.write_catalog(entries)
    todo = set(store.todo())
    if args.json:
        print_json([{"model": e.model, "sha": e.sha, "params": e.params, "declared_base": e.declared_base,
                      "gated": e.gated, "scanned": e.source not in todo and not e.gated} for e in entries])
        return 0
    print_table(["model", "sha", "params", "gated", "declared base", "to scan"],
                 [(e.model, e.sha[:12], e.params, "yes" if e.gated else "", ", ".join(e.declared_base),
                   "yes" if e.source in todo else "") for e in entries])
    print(f"listed {len(entries)}; {len(todo)} commits in the store's work list (lineage scan --catalog)",
          file=sys.stderr)
    return 0


def verdict_json(v) -> dict:
    """A verdict with both kinds of evidence: which one decided, and what each said."""
    sketch = v.sketch
    return {
        "a": v.a, "b": v.b, "verdict": v.verdict, "kind": v.kind, "reason": v.reason, "decided_by": v.decided_by,
        "p_value": v.p_value, "log10_p": v.log10_p, "paper_score": v.paper.score, "score": v.evidence.score,
        "sketch": None if sketch is None else {
            "score": sketch.score, "p_value": sketch.p_value, "log10_p": sketch.log10_p,
            "channels": list(sketch.roles), "per_channel": sketch.per_channel, "spread": sketch.spread,
            "gram_log10_p": sketch.gram_log10_p,
            "pairing": [{"a": i, "b": j, "r": r} for (i, j), r in zip(sketch.pairing, sketch.r)],
        },
        "curves": {
            "score": v.evidence.score, "p_value": v.p_curves, "p_null": v.p_null, "p_surrogate": v.evidence.surrogate_p,
            "per_feature": v.evidence.per_feature, "alignment": [{"a": i, "b": j} for i, j in v.evidence.alignment],
            "null": {"source": v.null.source, "size": v.null_size, "excluded": v.null.excluded} if v.null else None,
        },
        "per_role": v.paper.per_role,
    }


def cmd_compare(args) -> int:
    from lineage_scanner.lineage.null import null_for
    from lineage_scanner.lineage.verdict import decide
    from lineage_scanner.run.lookup import signature_for
    from lineage_scanner.store.store import Store

    store = Store(args.db)
    a, b = signature_for(args.a, store, args.backend), signature_for(args.b, store, args.backend)
    v = decide(a, b, null_for(store, a, b))
    out = verdict_json(v)
    if args.plot:
        from lineage_scanner.report.plot import plot_evidence

        plot_evidence(a, b, v, args.plot, title=f"{a.model} vs {b.model}: {v.verdict}"
                      f"{f' ({v.kind})' if v.kind else ''}, decided by {v.decided_by or 'nothing'}")
    if args.json:
        print_json(out)
        return 0
    for line in compare_lines(a, b, v):
        print(line)
    if args.plot:
        say(f"plot written to {args.plot}", err=True)
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from lineage_scanner.lineage.null import null_for
    from lineage_scanner.lineage.verdict import decide
    from lineage_scanner.report.pair import pair_report
    from lineage_scanner.run.lookup import signature_for
    from lineage_scanner.store.store import Store

    store = Store(args.db)
    a, b = signature_for(args.a, store, args.backend), signature_for(args.b, store, args.backend)
    v = decide(a, b, null_for(store, a, b))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(pair_report(a, b, v), encoding="utf-8")
    if args.json:
        print_json({"report": str(out), **verdict_json(v)})
    else:
        say(f"{v.verdict}{f' ({v.kind})' if v.kind else ''}: report written to {out}")
    return 0


def cmd_match(args) -> int:
    from lineage_scanner.lineage.null import null_for
    from lineage_scanner.lineage.relatives import rank
    from lineage_scanner.lineage.verdict import decide, q_values
    from lineage_scanner.run.lookup import signature_for
    from lineage_scanner.signature.record import EMBED_DIM
    from lineage_scanner.store.store import Store

    store = Store(args.db)
    query = signature_for(args.source, store, args.backend)
    candidates = store.nearest(query.embedding or [0.0] * EMBED_DIM, (query.model, query.revision), args.prefilter)
    ranked = rank(query, candidates, [decide(query, c, null_for(store, query, c)) for c in candidates])
    qs = q_values([r.verdict.p_value for r in ranked])
    rows = [r.row(q) for r, q in zip(ranked, qs)][: args.top]
    if args.json:
        print_json({"query": f"{query.model}@{query.revision}", "matches": rows})
    else:
        say(f"nearest to {query.model}@{query.revision} (derived relatives first, the parent on top):")
        print_table(["model", "relation", "closeness", "p", "q", "verdict", "kind", "paper_score"],
                    [(r["model"], r["relation"], r["closeness"], fmt_p(r["p_value"], r["log10_p"]),
                      fmt_p(r["q_value"]), r["verdict"], r["kind"], r["paper_score"]) for r in rows])
    return 0


def sql_params(given: list[list[str]] | None) -> list[str] | dict[str, str]:
    """``-p VALUE`` binds ``?`` in order; ``-p NAME VALUE`` binds ``$NAME``; the two do not mix."""
    given = given or []
    if any(len(p) > 2 for p in given):
        raise UsageError("-p takes VALUE (for ?) or NAME VALUE (for $NAME)")
    named = [p for p in given if len(p) == 2]
    if named and len(named) != len(given):
        raise UsageError("use -p VALUE for every ? or -p NAME VALUE for every $NAME, not both")
    return {name: value for name, value in named} if named else [p[0] for p in given]


def cmd_sql(args) -> int:
    from lineage_scanner.store.sql import run_sql
    from lineage_scanner.store.store import Store

    query = args.query if args.query not in (None, "-") else sys.stdin.read()
    columns, rows = run_sql(Store(args.db), query, sql_params(args.param))
    if args.json:
        print_json([dict(zip(columns, r)) for r in rows])
    elif args.csv:
        print_csv(columns, rows)
    else:
        print_table(columns, rows)
    return 0


def cmd_store(args) -> int:
    from lineage_scanner.store.store import Store

    store = Store(args.db)
    if store.remote:
        raise UsageError("store check and repair work on a local store directory")
    found = store.check() if args.action == "check" else store.repair()
    if args.json:
        key = "problem" if args.action == "check" else "moved_to"
        print_json([{"file": f, key: other} for f, other in found])
    elif args.action == "check":
        for f, problem in found:
            print(f"{f}: {problem}")
        print(f"{len(found)} damaged or foreign file(s) in {args.db}", file=sys.stderr)
    else:
        for f, target in found:
            print(f"moved {f} -> {target}")
        print(f"{len(found)} file(s) moved aside", file=sys.stderr)
    return 1 if found and args.action == "check" else 0


def cmd_plot(args) -> int:
    from lineage_scanner.report.plot import plot_curves
    from lineage_scanner.run.lookup import signature_for
    from lineage_scanner.store.store import Store

    store = Store(args.db)
    sigs = [signature_for(s, store, args.backend) for s in args.sources]
    plot_curves(sigs, args.out, title="per-layer std of attention projections")
    say(f"plot written to {args.out}", err=True)
    return 0


def cmd_graph(args) -> int:
    from pathlib import Path

    from lineage_scanner.lineage.graph import detect, graph_data, write
    from lineage_scanner.store.store import Store

    store = Store(args.db)
    forest = detect(store, args.min_confidence)
    store.write_edges(forest.edges)
    graph = graph_data(store)
    written = [str(write(graph, args.out))] if args.out else []
    if args.html:
        from lineage_scanner.report.lineage_map import lineage_map

        Path(args.html).write_text(lineage_map(graph, f"Lineage map of {Path(args.db).resolve().name}"),
                                   encoding="utf-8")
        written.append(args.html)
    with store.connect() as con:
        disagreements = con.execute("SELECT model, other, problem FROM disagreements ORDER BY ALL").fetchall()
    if args.json:
        print_json({**graph, "disagreements": [dict(zip(("model", "other", "problem"), d)) for d in disagreements]})
        return 0
    directed = [e for e in forest.edges if e.direction != "unknown"]
    by_card = sum(e.direction == "card" for e in directed)
    say(f"{plural(len(graph['nodes']), 'model')} in {plural(len(graph['families']), 'family', 'families')}; "
        f"{plural(len(forest.edges), 'derivation')}: {len(directed) - by_card} directed by the weights, "
        f"{by_card} by cards, {len(forest.edges) - len(directed)} of unknown direction")
    for line in tree_lines(graph):
        print(line)
    if disagreements:
        print("cards and weights disagree:")
        print_table(["model", "other", "problem"], disagreements)
    if written:
        say(f"written: {', '.join(written)}", err=True)
    return 0


def cmd_demo(args) -> int:
    from lineage_scanner.demo.run import run_demo
    from lineage_scanner.store.store import Store

    report = run_demo(args.out, Store(args.db), backend=args.backend, progress=not args.quiet)
    if args.json:
        print_json({"rows": [row.__dict__ for row in report.rows], "plot": str(report.plot),
                     "stranger_paper_score": report.stranger_paper, "stranger_score": report.stranger_score,
                     "stranger_verdicts": report.stranger_verdicts})
        return 0
    rows = report.rows
    print_table(["model", "relation", "true parent", "paper_score", "score", "verdict", "kind", "family right"],
                 [(r.model, r.relation, r.parent, r.paper_score, r.score, r.verdict, r.kind or "",
                   "yes" if r.family_hit else "NO") for r in rows])
    print(f"\nderived models judged 'derived' from their parent: {sum(r.verdict == 'derived' for r in rows)}"
          f"/{len(rows)}; best match in the right family: {sum(r.family_hit for r in rows)}/{len(rows)}")
    print(f"pairs of unrelated models: verdicts {report.stranger_verdicts}; highest score "
          f"{report.stranger_score:.3f} (paper_score: {report.stranger_paper:.3f})")
    print(f"store: {args.db}   plot: {report.plot}")
    return 0


# ---- parser -------------------------------------------------------------------------------------------

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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=os.environ.get("LINEAGE_DB", "./lineage-db"),
                        help="signature store directory (default ./lineage-db, env LINEAGE_DB)")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    common.add_argument("--backend", choices=BACKENDS, default="auto", help="moments backend")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("--debug", action="store_true", help="a traceback for an unexpected error")

    parser = argparse.ArgumentParser(prog="lineage", description="Tell which open-weight language models were "
                                     "derived from which, from their weights alone.")
    parser.add_argument("--version", action="version", version=f"lineage-scanner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", parents=[common], help="scan checkpoints into signatures in the store")
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
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("catalog", parents=[common], help="list Hub models into the store's work list")
    p.add_argument("--author")
    p.add_argument("--search")
    p.add_argument("--filter", help="a Hub tag, e.g. text-generation")
    p.add_argument("--sort", choices=["downloads", "likes", "last_modified", "created_at", "trending_score"])
    p.add_argument("--limit", type=int)
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("compare", parents=[common], help="score two models (paths or stored ids)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--plot", metavar="FILE.png", help="draw the evidence that decided (the sketch's layer pairs, or "
                   "the aligned feature curves) and the seed method's curves")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", parents=[common], help="a self-contained HTML report of two models' lineage")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--out", default="lineage-report.html", metavar="FILE.html")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("match", parents=[common], help="nearest relatives of a model in the store")
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
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("store", parents=[common], help="check the store's files, or move damaged ones aside")
    p.add_argument("action", choices=["check", "repair"], help="check: list damaged or foreign files (exit 1 "
                   "if any); repair: move them to DB/quarantine/")
    p.set_defaults(func=cmd_store)

    p = sub.add_parser("plot", parents=[common], help="per-layer curves of one or more models")
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

    p = sub.add_parser("demo", parents=[common], help="build the demo zoo, scan it, print the lineage table")
    p.add_argument("--out", default="./lineage-demo", help="where the zoo is written")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr, ``Error: ...``, and exit code 1 (130 when
    interrupted); ``--debug`` shows the traceback of an unexpected one instead."""
    args = build_parser().parse_args(argv)
    try:
        with _stdout_for_data(args.json):
            return args.func(args)
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        expected = isinstance(exc, (LineageError, BackendUnavailable)) or _is_duckdb_error(exc)
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
