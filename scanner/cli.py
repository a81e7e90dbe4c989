"""The ``lineage`` command: a thin layer that parses options, calls one library function, prints.

Errors reach the user as one line, ``Error: …``, with exit code 1. ``--json`` prints data on stdout;
progress bars and notes go to stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys

import duckdb

from kernels import BACKENDS, BackendUnavailable
from scanner import __version__
from scanner.errors import ScanError
from scanner.evidence import decide
from scanner.lineage import EMBED_DIM
from scanner.null import null_for
from scanner.store import Store


class UsageError(Exception):
    """A command was given something it cannot use (not a scan error)."""


def _clean(value):
    """JSON-safe: NaN/Inf become null, tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _print_json(data) -> None:
    json.dump(_clean(data), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def _print_table(columns: list[str], rows: list[tuple]) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


# ---- commands -----------------------------------------------------------------------------------------

def cmd_scan(args) -> int:
    store = Store(args.db)
    sources = list(args.sources) + (store.todo(args.limit) if args.catalog else [])
    if not sources:
        raise UsageError("nothing to scan: name sources, or --catalog with unscanned catalog entries")
    sample = None
    if args.sample is not None or args.sample_error is not None:
        from scanner.sampling import SamplePlan

        sample = SamplePlan(args.sample, args.sample_error, max_runs=args.sample_runs)
    if len(sources) > 1 or args.address or args.workers:  # a batch: Ray actors (a local Ray by default)
        from scanner.cluster import run_batch

        summary = run_batch(sources, store, workers=args.workers, address=args.address, backend=args.backend,
                            force=args.force, sample=sample, progress=not args.quiet)
    else:
        from scanner.cluster import BatchSummary
        from scanner.scan import scan_sources

        report = scan_sources(sources, store, backend=args.backend, force=args.force, progress=not args.quiet,
                              sample=sample)
        summary = BatchSummary()
        summary.add(report.scanned, report.skipped)
    for record in summary.failed:
        print(f"Error: {record.error}", file=sys.stderr)
    if args.json:
        _print_json({"scanned": [r.__dict__ for r in summary.records],
                     "skipped": [{"model": m, "revision": r} for m, r in summary.skipped],
                     "bytes_read": summary.bytes_read, "retried_units": summary.retried_units})
    else:
        ok = [r for r in summary.records if r.status == "ok"]
        if ok:
            _print_table(["model", "revision", "layers", "MB read"],
                         [(r.model, r.revision, r.n_layers, f"{r.bytes_read / 1e6:.1f}") for r in ok])
        print(f"scanned {len(ok)}, skipped {len(summary.skipped)} already stored, failed {len(summary.failed)}",
              file=sys.stderr)
    return 1 if summary.failed else 0


def cmd_catalog(args) -> int:
    from scanner.catalog import list_catalog

    entries = list_catalog(author=args.author, search=args.search, filter=args.filter, sort=args.sort,
                           limit=args.limit)
    store = Store(args.db)
    store.write_catalog(entries)
    todo = set(store.todo())
    if args.json:
        _print_json([{"model": e.model, "sha": e.sha, "params": e.params, "declared_base": e.declared_base,
                      "gated": e.gated, "scanned": e.source not in todo and not e.gated} for e in entries])
        return 0
    _print_table(["model", "sha", "params", "gated", "declared base", "to scan"],
                 [(e.model, e.sha[:12], e.params, "yes" if e.gated else "", ", ".join(e.declared_base),
                   "yes" if e.source in todo else "") for e in entries])
    print(f"listed {len(entries)}; {len(todo)} commits in the store's work list (lineage scan --catalog)",
          file=sys.stderr)
    return 0


def verdict_json(v) -> dict:
    return {
        "a": v.a, "b": v.b, "paper_score": v.paper.score, "score": v.evidence.score, "p_value": v.p_value,
        "verdict": v.verdict, "reason": v.reason, "kind": v.kind,
        "per_role": v.paper.per_role, "per_feature": v.evidence.per_feature,
        "alignment": [{"a": i, "b": j} for i, j in v.evidence.alignment], "p_null": v.p_null,
        "p_permutation": v.evidence.permutation_p,
        "null": {"source": v.null.source, "size": v.null_size, "excluded": v.null.excluded} if v.null else None,
    }


def cmd_compare(args) -> int:
    from scanner.scan import signature_for

    store = Store(args.db)
    a, b = signature_for(args.a, store, args.backend), signature_for(args.b, store, args.backend)
    v = decide(a, b, null_for(store, a, b))
    out = verdict_json(v)
    if args.plot:
        from scanner.plot import plot_curves

        plot_curves([a, b], args.plot, title=f"{a.model} vs {b.model}: {v.verdict}, score {_fmt(v.evidence.score)}"
                    f", paper_score {_fmt(v.paper.score)}", per_role=v.paper.per_role,
                    alignment=v.evidence.alignment)
    if args.json:
        _print_json(out)
        return 0
    print(f"{v.a}  vs  {v.b}  ({a.n_layers} vs {b.n_layers} layers)")
    print(f"verdict      {v.verdict}{f' ({v.kind})' if v.kind else ''}: {v.reason}")
    print(f"score        {_fmt(v.evidence.score)}   p = {_fmt(v.p_value)}  (null: {v.null_size} unrelated pairs"
          f" from the {v.null.source}; layer-order permutation p = {_fmt(v.evidence.permutation_p)})")
    print(f"paper_score  {_fmt(v.paper.score)}")
    for role, r in v.paper.per_role.items():
        print(f"  {role}  r = {_fmt(r)}")
    for name, r in v.evidence.per_feature.items():
        print(f"  {name}  r = {_fmt(r)}")
    gaps_a = sorted(set(range(a.n_layers or 0)) - {i for i, _ in v.evidence.alignment})
    gaps_b = sorted(set(range(b.n_layers or 0)) - {j for _, j in v.evidence.alignment})
    if gaps_a or gaps_b:
        print(f"unaligned layers: {a.model} {gaps_a}, {b.model} {gaps_b}")
    if args.plot:
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def cmd_match(args) -> int:
    from scanner.evidence import benjamini_hochberg
    from scanner.scan import signature_for

    store = Store(args.db)
    query = signature_for(args.source, store, args.backend)
    candidates = store.nearest(query.embedding or [0.0] * EMBED_DIM, (query.model, query.revision), args.prefilter)
    verdicts = sorted((decide(query, c, null_for(store, query, c)) for c in candidates),
                      key=lambda v: -v.evidence.score if math.isfinite(v.evidence.score) else math.inf)
    q_values = benjamini_hochberg([v.p_value for v in verdicts])
    rows = [{"model": v.b.rpartition("@")[0], "revision": v.b.rpartition("@")[2], "score": v.evidence.score,
             "p_value": v.p_value, "q_value": q, "verdict": v.verdict, "kind": v.kind,
             "paper_score": v.paper.score} for v, q in zip(verdicts, q_values)][: args.top]
    if args.json:
        _print_json({"query": f"{query.model}@{query.revision}", "matches": rows})
    else:
        print(f"nearest to {query.model}@{query.revision}:")
        _print_table(["model", "score", "p", "q", "verdict", "kind", "paper_score"],
                     [(r["model"], r["score"], r["p_value"], r["q_value"], r["verdict"], r["kind"] or "",
                       r["paper_score"]) for r in rows])
    return 0


READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def run_sql(store: Store, query: str) -> tuple[list[str], list[tuple]]:
    """Run read-only SQL over the store's views; any statement but SELECT/EXPLAIN is refused."""
    with store.connect() as con:
        statements = con.extract_statements(query)
        if not statements:
            raise UsageError("empty SQL")
        for stmt in statements:
            if stmt.type not in READ_ONLY:
                raise UsageError(f"only SELECT queries are allowed here, not {stmt.type.name}")
        result = None
        for stmt in statements:
            result = con.execute(stmt.query)
        columns = [d[0] for d in result.description]
        return columns, result.fetchall()


def cmd_sql(args) -> int:
    query = args.query if args.query not in (None, "-") else sys.stdin.read()
    columns, rows = run_sql(Store(args.db), query)
    if args.json:
        _print_json([dict(zip(columns, r)) for r in rows])
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        _print_table(columns, rows)
    return 0


def cmd_plot(args) -> int:
    from scanner.plot import plot_curves
    from scanner.scan import signature_for

    store = Store(args.db)
    sigs = [signature_for(s, store, args.backend) for s in args.sources]
    plot_curves(sigs, args.out, title="per-layer std of attention projections")
    print(f"plot written to {args.out}", file=sys.stderr)
    return 0


def cmd_graph(args) -> int:
    from scanner.graph import detect, export

    store = Store(args.db)
    edges = detect(store, args.min_confidence)
    store.write_edges(edges)
    graph = export(store, edges, args.out)
    with store.connect() as con:
        disagreements = con.execute("SELECT model, other, problem FROM disagreements ORDER BY ALL").fetchall()
    if args.json:
        _print_json({**graph, "disagreements": [dict(zip(("model", "other", "problem"), d)) for d in disagreements]})
        return 0
    print(f"{len(edges)} detected edges, {len(graph['families'])} families; graph written to {args.out}")
    for family in graph["families"]:
        if len(family) > 1:
            print("  " + ", ".join(family))
    if disagreements:
        print("cards and weights disagree:")
        _print_table(["model", "other", "problem"], disagreements)
    return 0


def cmd_demo(args) -> int:
    from scanner.demo.run import run_demo

    report = run_demo(args.out, Store(args.db), backend=args.backend, progress=not args.quiet)
    if args.json:
        _print_json({"rows": [row.__dict__ for row in report.rows], "plot": str(report.plot),
                     "stranger_paper_score": report.stranger_paper, "stranger_score": report.stranger_score,
                     "stranger_verdicts": report.stranger_verdicts})
        return 0
    rows = report.rows
    _print_table(["model", "relation", "true parent", "paper_score", "score", "verdict", "kind", "family right"],
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

    parser = argparse.ArgumentParser(prog="lineage", description=__doc__.splitlines()[0])
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
    p.add_argument("--sample-runs", type=_positive, default=16, metavar="N",
                   help="runs (range requests) per tensor part when sampling (default 16)")
    p.add_argument("--workers", type=_positive, help="Ray scan workers (default: one per GPU, else per CPU)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
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
    p.add_argument("--plot", metavar="FILE.png", help="draw both models' normalized curves per role")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("match", parents=[common], help="nearest relatives of a model in the store")
    p.add_argument("source")
    p.add_argument("--top", type=_positive, default=10)
    p.add_argument("--prefilter", type=_positive, default=100, help="candidates kept by the SQL embedding pre-filter")
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("sql", parents=[common], help="read-only SQL over the views "
                       "signatures, layers, errors, scans")
    p.add_argument("query", nargs="?", help="SQL text; '-' or nothing reads stdin")
    p.add_argument("--csv", action="store_true", help="CSV output")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("plot", parents=[common], help="per-layer curves of one or more models")
    p.add_argument("sources", nargs="+")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("graph", parents=[common], help="lineage graph of the store: detected and declared edges")
    p.add_argument("--min-confidence", type=float, default=0.99, help="1 - p-value an edge needs (default 0.99)")
    p.add_argument("--out", default="lineage-graph.json", help="FILE.graphml or FILE.json")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("demo", parents=[common], help="build the demo zoo, scan it, print the lineage table")
    p.add_argument("--out", default="./lineage-demo", help="where the zoo is written")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ScanError, UsageError, BackendUnavailable, duckdb.Error) as exc:
        print(f"Error: {exc}".splitlines()[0], file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
