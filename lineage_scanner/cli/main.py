"""The ``lineage`` command: a thin layer that parses options, calls one library function, prints.

Errors reach the user as one line, ``Error: …``, with exit code 1. ``--json`` prints data on stdout;
progress bars and notes go to stderr.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import csv
import math
import os
import sys

from lineage_scanner import __version__
from lineage_scanner.cli.output import fmt, print_json, print_table
from lineage_scanner.errors import InternalError, LineageError, UsageError
from lineage_scanner.measure.kernels import BACKENDS, BackendUnavailable

# Commands import what they use when they run: ``--help``, ``sql`` and lookups of stored models never
# load torch, numba, ray or matplotlib.


# ---- commands -----------------------------------------------------------------------------------------

def cmd_scan(args) -> int:
    from lineage_scanner.measure.sampling import SamplePlan
    from lineage_scanner.run.batch import ScanConfig, choose_executor, run_batch
    from lineage_scanner.store.store import Store

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
        print(f"Error: {record.error}", file=sys.stderr)
    for record in summary.records:
        if record.layout_source == "name-patterns":
            print(f"note: {record.model}: unknown architecture; attention found by name patterns", file=sys.stderr)
    if args.json:
        print_json({"scanned": [r.__dict__ for r in summary.records],
                     "skipped": [{"model": m, "revision": r} for m, r in summary.skipped],
                     "bytes_read": summary.bytes_read, "retried_units": summary.retried_units})
    else:
        ok = [r for r in summary.records if r.status == "ok"]
        if ok:
            print_table(["model", "revision", "layers", "MB read"],
                         [(r.model, r.revision, r.n_layers, f"{r.bytes_read / 1e6:.1f}") for r in ok])
        print(f"scanned {len(ok)} ({summary.n_copies} exact copies, no weights read), skipped "
              f"{len(summary.skipped)} already stored, failed {len(summary.failed)}, deferred {summary.n_deferred} "
              "(Hub budget spent: the next scan --catalog takes them first)", file=sys.stderr)
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


def cmd_compare(args) -> int:
    from lineage_scanner.run.lookup import signature_for
    from lineage_scanner.run.verify import judge
    from lineage_scanner.store.store import Store

    store = Store(args.db)
    a, b = signature_for(args.a, store, args.backend), signature_for(args.b, store, args.backend)
    v = judge(a, b, store, args.backend, args.verify)
    out = v.to_dict()
    if args.plot:
        from lineage_scanner.report.plot import plot_evidence

        plot_evidence(a, b, v, args.plot, title=f"{a.model} vs {b.model}: {v.verdict}"
                      f"{f' ({v.kind})' if v.kind else ''}, decided by {v.decided_by or 'nothing'}")
    if args.json:
        print_json(out)
        return 0
    print(f"{v.a}  vs  {v.b}  ({a.n_layers} vs {b.n_layers} layers)")
    print(f"verdict      {v.verdict}{f' ({v.kind})' if v.kind else ''}: {v.reason}")
    print(f"decided by   {v.decided_by or 'nothing: no unforgeable evidence is firm'}")
    for ch in v.channels:
        p = "" if ch.log10_p is None else f"   log10 p {ch.log10_p:.1f}"
        robust = "" if ch.robust_log10_p is None else f" (robust {ch.robust_log10_p:.1f})"
        print(f"  {ch.name:<13}{ch.says:<10}{p}{robust}   {ch.null} null; {ch.note}")
    if v.conflict:
        print(f"disagreement {v.conflict}")
    if v.verification:
        ver = v.verification
        print("verified     " + (f"read again under a fresh key ({ver['values_per_matrix']} values per matrix, "
                                  f"{ver['bytes_read'] / 1e6:.1f} MB, {ver['seconds']:.1f} s); stored evidence said "
                                  f"{ver['stored_verdict']}" if ver.get("ran") else f"not possible: {ver['why']}"))
    if v.sketch is not None:
        s = v.sketch
        print(f"sketch       |r| = {fmt(s.score)}   p = 1e{s.log10_p:.1f}  (exact null; roles {', '.join(s.roles)}; "
              f"{len(s.pairing)} layer pairs)")
        moved = [(i, j) for i, j in s.pairing if i != j]
        if moved:
            print(f"  layers paired out of order (a, b): {moved}")
    else:
        print("sketch       does not apply: no attention matrix has the same shape in both")
    print(f"curves       score {fmt(v.evidence.score)}   p = {fmt(v.p_curves)}  (reference: {v.null_size} unrelated "
          f"pairs from the {v.null.source}, p = {fmt(v.p_null)}; surrogates p = {fmt(v.evidence.surrogate_p)})")
    for name, r in v.evidence.per_feature.items():
        print(f"  {name}  r = {fmt(r)}")
    gaps_a = sorted(set(range(a.n_layers or 0)) - {i for i, _ in v.evidence.alignment})
    gaps_b = sorted(set(range(b.n_layers or 0)) - {j for _, j in v.evidence.alignment})
    if gaps_a or gaps_b:
        print(f"  unaligned layers: {a.model} {gaps_a}, {b.model} {gaps_b}")
    print(f"paper_score  {fmt(v.paper.score)}  (the seed method, for reference)")
    for role, r in v.paper.per_role.items():
        print(f"  {role}  r = {fmt(r)}")
    if args.plot:
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from lineage_scanner.report.pair import pair_report
    from lineage_scanner.run.lookup import signature_for
    from lineage_scanner.run.verify import judge
    from lineage_scanner.store.store import Store

    store = Store(args.db)
    a, b = signature_for(args.a, store, args.backend), signature_for(args.b, store, args.backend)
    v = judge(a, b, store, args.backend, args.verify)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(pair_report(a, b, v), encoding="utf-8")
    if args.json:
        print_json({"report": str(out), **v.to_dict()})
    else:
        print(f"{v.verdict}{f' ({v.kind})' if v.kind else ''}: report written to {out}")
    return 0


def cmd_match(args) -> int:
    from lineage_scanner.lineage.null import null_for
    from lineage_scanner.lineage.verdict import decide, q_values
    from lineage_scanner.run.lookup import signature_for
    from lineage_scanner.signature.record import EMBED_DIM
    from lineage_scanner.store.store import Store

    store = Store(args.db)
    query = signature_for(args.source, store, args.backend)
    candidates = store.nearest(query.embedding or [0.0] * EMBED_DIM, (query.model, query.revision), args.prefilter)
    verdicts = sorted((decide(query, c, null_for(store, query, c)) for c in candidates), key=_strength)
    qs = q_values([v.p_value for v in verdicts])
    rows = [{"model": v.b.rpartition("@")[0], "revision": v.b.rpartition("@")[2], "score": v.evidence.score,
             "sketch_score": v.sketch.score if v.sketch else None, "decided_by": v.decided_by,
             "p_value": v.p_value, "log10_p": v.log10_p, "q_value": q, "verdict": v.verdict, "kind": v.kind,
             "paper_score": v.paper.score, "disagreement": v.conflict} for v, q in zip(verdicts, qs)][: args.top]
    if args.json:
        print_json({"query": f"{query.model}@{query.revision}", "matches": rows})
    else:
        print(f"nearest to {query.model}@{query.revision}:")
        print_table(["model", "sketch", "score", "log10 p", "q", "verdict", "kind", "paper_score"],
                     [(r["model"], r["sketch_score"], r["score"], r["log10_p"], r["q_value"], r["verdict"],
                       r["kind"] or "", r["paper_score"]) for r in rows])
    return 0


def _strength(v) -> tuple[float, float]:
    """Strongest evidence first: the deciding p-value (in logs), then the curve score."""
    return v.log10_p, -v.evidence.score if math.isfinite(v.evidence.score) else math.inf


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
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
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
    print(f"plot written to {args.out}", file=sys.stderr)
    return 0


def cmd_graph(args) -> int:
    from lineage_scanner.lineage.graph import detect, export
    from lineage_scanner.store.store import Store

    store = Store(args.db)
    edges = detect(store, args.min_confidence)
    store.write_edges(edges)
    graph = export(store, edges, args.out)
    if args.html:
        from pathlib import Path

        from lineage_scanner.report.lineage_map import lineage_map

        Path(args.html).write_text(lineage_map(graph, f"Lineage map of {Path(args.db).resolve().name}"),
                                   encoding="utf-8")
    with store.connect() as con:
        disagreements = con.execute("SELECT model, other, problem FROM disagreements ORDER BY ALL").fetchall()
    if args.json:
        print_json({**graph, "disagreements": [dict(zip(("model", "other", "problem"), d)) for d in disagreements]})
        return 0
    print(f"{len(edges)} detected edges, {len(graph['families'])} families; graph written to {args.out}"
          + (f", map to {args.html}" if args.html else ""))
    for family in graph["families"]:
        if len(family) > 1:
            print("  " + ", ".join(family))
    if disagreements:
        print("cards and weights disagree:")
        print_table(["model", "other", "problem"], disagreements)
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

    verify = argparse.ArgumentParser(add_help=False)
    how = verify.add_mutually_exclusive_group()
    how.add_argument("--verify", dest="verify", action="store_const", const="always", default="auto",
                     help="read both models again at fresh positions drawn now, and judge by what was read (by "
                          "default this happens when the stored evidence disagrees or would call weights identical)")
    how.add_argument("--no-verify", dest="verify", action="store_const", const="never",
                     help="judge by the stored sketches alone")

    p = sub.add_parser("compare", parents=[common, verify], help="score two models (paths or stored ids)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--plot", metavar="FILE.png", help="draw the evidence that decided (the sketch's layer pairs, or "
                   "the aligned feature curves) and the seed method's curves")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", parents=[common, verify], help="a self-contained HTML report of two models' lineage")
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

    p = sub.add_parser("graph", parents=[common], help="lineage graph of the store: detected and declared edges")
    p.add_argument("--min-confidence", type=float, default=0.99, help="1 - p-value an edge needs (default 0.99)")
    p.add_argument("--out", default="lineage-graph.json", help="FILE.graphml or FILE.json")
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
        print(f"Error: {' '.join(message.split())[:2000]}", file=sys.stderr)
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
