"""One function per ``lineage`` command: parse what argparse gave, call the library, print.

Commands import what they use when they run: ``--help``, ``sql`` and lookups of stored models never load
torch, numba, ray or matplotlib.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lineage_scanner.cli.output import compare_lines, fmt_p, plural, print_csv, print_json, print_table, say, tree_lines
from lineage_scanner.errors import UsageError


def _store(args):
    from lineage_scanner.store.store import Store

    return Store(args.db)


def cmd_scan(args) -> int:
    from lineage_scanner import api
    from lineage_scanner.measure.sampling import SamplePlan
    from lineage_scanner.readers.hub_time import Timeouts
    from lineage_scanner.run.base import ScanConfig

    sample = None
    if args.sample is not None or args.sample_error is not None:
        sample = SamplePlan(args.sample, args.sample_error)
    summary = api.scan(args.sources, _store(args),
                       ScanConfig(args.backend, args.force, sample, timeouts=Timeouts(model_s=args.deadline)),
                       from_catalog=args.catalog, limit=args.limit, workers=args.workers, address=args.address,
                       progress=not args.quiet)
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
    from lineage_scanner import api

    listing = api.catalog(_store(args), author=args.author, search=args.search, filter=args.filter, sort=args.sort,
                          limit=args.limit)
    entries, todo = listing.entries, listing.todo
    if listing.refused:
        print(f"warning: {listing.where}: {listing.refused} listed entries refused (a bad repo id or commit)",
              file=sys.stderr)
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
    from lineage_scanner import api

    pair = api.compare(args.a, args.b, _store(args), args.backend, plot=args.plot, verify=args.verify)
    a, b, v = pair.a, pair.b, pair.verdict
    if args.json:
        print_json(v.to_dict())
        return 0
    for line in compare_lines(a, b, v):
        print(line)
    if args.plot:
        say(f"plot written to {args.plot}", err=True)
    return 0


def cmd_report(args) -> int:
    from lineage_scanner import api

    out = Path(args.out)
    v = api.report(args.a, args.b, _store(args), out, args.backend, args.verify).verdict
    if args.json:
        print_json({"report": str(out), **v.to_dict()})
    else:
        say(f"{v.verdict}{f' ({v.kind})' if v.kind else ''}: report written to {out}")
    return 0


def cmd_match(args) -> int:
    from lineage_scanner import api

    found = api.match(args.source, _store(args), args.top, args.prefilter, args.backend)
    query = f"{found.query.model}@{found.query.revision}"
    if args.json:
        print_json({"query": query, "matches": found.matches})
    else:
        say(f"nearest to {query} (derived relatives first, the parent on top):")
        print_table(["model", "relation", "closeness", "p", "q", "verdict", "kind", "paper_score"],
                    [(r["model"], r["relation"], r["closeness"], fmt_p(r["p_value"], r["log10_p"]),
                      fmt_p(r["q_value"]), r["verdict"], r["kind"], r["paper_score"]) for r in found.matches])
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
    from lineage_scanner.store.sql import SqlLimits, run_sql

    query = args.query if args.query not in (None, "-") else sys.stdin.read()
    columns, rows = run_sql(_store(args), query, sql_params(args.param), SqlLimits(args.timeout, args.memory_limit))
    if args.json:
        print_json([dict(zip(columns, r)) for r in rows])
    elif args.csv:
        print_csv(columns, rows)
    else:
        print_table(columns, rows)
    return 0


def cmd_store(args) -> int:
    from lineage_scanner import api

    found = api.store_health(_store(args), repair=args.action == "repair")
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
    from lineage_scanner import api

    api.plot(args.sources, _store(args), args.out, args.backend)
    say(f"plot written to {args.out}", err=True)
    return 0


def cmd_graph(args) -> int:
    from lineage_scanner import api

    found = api.graph(_store(args), args.out, args.min_confidence, args.html,
                      title=f"Lineage map of {Path(args.db).resolve().name}")
    graph, disagreements = found.graph, found.disagreements
    if args.json:
        print_json({**graph, "disagreements": [dict(zip(("model", "other", "problem"), d)) for d in disagreements]})
        return 0
    directed = [e for e in found.edges if e.direction != "unknown"]
    by_card = sum(e.direction == "card" for e in directed)
    say(f"{plural(len(graph['nodes']), 'model')} in {plural(len(graph['families']), 'family', 'families')}; "
        f"{plural(len(found.edges), 'derivation')}: {len(directed) - by_card} directed by the weights, "
        f"{by_card} by cards, {len(found.edges) - len(directed)} of unknown direction")
    for line in tree_lines(graph):
        print(line)
    if disagreements:
        print("cards and weights disagree:")
        print_table(["model", "other", "problem"], disagreements)
    written = [str(p) for p in (found.written, args.html) if p]
    if written:
        say(f"written: {', '.join(written)}", err=True)
    return 0


def cmd_demo(args) -> int:
    from lineage_scanner.demo.run import run_demo

    report = run_demo(args.out, _store(args), backend=args.backend, progress=not args.quiet)
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
