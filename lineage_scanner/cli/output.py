"""How commands print: JSON (NaN as null) on stdout, and for people aligned tables, p-values as numbers a
person reads, family trees, and the comparison of two models.

Everything printed for a person goes through :func:`lineage_scanner.printable.printable`: a model name
is chosen by whoever publishes it, and an escape sequence in one must not reach the terminal. CSV cells
are neutralised as well (:func:`csv_cell`), since a spreadsheet runs a cell that starts with ``=``.
"""

from __future__ import annotations

import csv
import json
import math
import sys

from lineage_scanner.printable import p_is, printable
from lineage_scanner.printable import pvalue as fmt_p

#: A family tree lists at most this many children of one model (and of the models with no relative); the
#: rest are counted.
CHILDREN_SHOWN = 30
#: What a spreadsheet reads as the start of a formula (or a command, for tab and carriage return).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def clean(value):
    """JSON-safe: NaN/Inf become null, tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def print_json(data) -> None:
    """JSON on stdout: control characters in strings come out as ``\\u`` escapes, never raw."""
    json.dump(clean(data), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def say(text: str, err: bool = False) -> None:
    """One line for a person (stdout, or stderr with ``err``), made printable."""
    print(printable(text), file=sys.stderr if err else sys.stdout)


def fmt(value) -> str:
    """A table cell: floats to 4 decimals, nothing as "-", text made printable."""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return "-" if value is None or value == "" else printable(value)


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def print_table(columns: list[str], rows: list[tuple]) -> None:
    cells = [[fmt(v) for v in row] for row in rows]
    columns = [printable(c) for c in columns]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def csv_cell(value):
    """A CSV cell no spreadsheet runs: text starting with ``= + - @``, a tab or a carriage return gets a
    leading ``'`` (OWASP's advice for CSV injection), and control characters are escaped; numbers stay
    numbers."""
    if not isinstance(value, str):
        return value
    text = printable(value)
    return "'" + text if value.startswith(FORMULA_START) else text


def print_csv(columns: list[str], rows: list[tuple]) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow([csv_cell(c) for c in columns])
    writer.writerows([csv_cell(v) for v in row] for row in rows)


def tree_lines(graph: dict) -> list[str]:
    """The families of ``graph`` (:func:`lineage_scanner.lineage.graph.graph_data`) as indented trees: each
    model under its parent with the kind of derivation and what gave its direction."""
    edge = {e["child"]: e for e in graph["edges"] if e.get("detected")}
    children: dict[str, list[str]] = {}
    for child, e in sorted(edge.items()):
        children.setdefault(e["parent"], []).append(child)
    lines = []
    for members in graph["families"]:
        if len(members) < 2:
            continue
        root = next((n["root"] for n in graph["nodes"] if n["model"] == members[0]), members[0])
        lines.append(printable(root))
        lines.extend(_branches(root, children, edge, ""))
    alone = [m[0] for m in graph["families"] if len(m) == 1]
    if alone:
        more = f" and {len(alone) - CHILDREN_SHOWN:,} more" if len(alone) > CHILDREN_SHOWN else ""
        lines.append(f"no relative in the store ({len(alone):,}): "
                     f"{', '.join(printable(m) for m in alone[:CHILDREN_SHOWN])}{more}")
    return lines


def _branches(parent: str, children: dict[str, list[str]], edge: dict, indent: str) -> list[str]:
    out = []
    kids = sorted(children.get(parent, []), key=lambda c: (-edge[c]["closeness"] if edge[c]["closeness"] else 0, c))
    for k, child in enumerate(kids[:CHILDREN_SHOWN]):
        last = k == len(kids) - 1
        e = edge[child]
        how = "direction unknown" if e["direction"] == "unknown" else f"direction: {e['direction']}"
        out.append(f"{indent}{'└─' if last else '├─'} {printable(child)}  {printable(e['kind'] or 'derived')} ({how})")
        out.extend(_branches(child, children, edge, indent + ("   " if last else "│  ")))
    if len(kids) > CHILDREN_SHOWN:
        out.append(f"{indent}└─ … and {len(kids) - CHILDREN_SHOWN:,} more (lineage graph --out FILE.json lists them)")
    return out


def compare_lines(a, b, v) -> list[str]:
    """``lineage compare``'s report of verdict ``v`` on signatures ``a`` and ``b``: the verdict, what decided,
    every channel's finding (and where channels disagree), what deep verification read, then each kind of
    evidence, every p-value written out (see :func:`lineage_scanner.printable.pvalue`)."""
    lines = [f"{v.a}  vs  {v.b}  ({a.n_layers} vs {b.n_layers} layers)",
             f"verdict      {v.verdict}{f' ({v.kind})' if v.kind else ''}: {v.reason}",
             f"decided by   {_decider(v)}"]
    for ch in v.channels:
        robust = "" if ch.robust_log10_p is None else f" (robust: {p_is(None, ch.robust_log10_p)})"
        found = "" if ch.log10_p is None else f", {p_is(None, ch.log10_p)}{robust}"
        lines.append(f"  {ch.name:<13}{ch.says}{found}; {ch.null} null; {ch.note}")
    if v.conflict:
        lines.append(f"disagreement {v.conflict}")
    if v.verification:
        ver = v.verification
        lines.append("verified     " + (
            f"read again under a fresh key ({ver['values_per_matrix']} values per matrix, "
            f"{ver['bytes_read'] / 1e6:.1f} MB, {ver['seconds']:.1f} s); the stored evidence said "
            f"{ver['stored_verdict']}" if ver.get("ran") else f"not possible: {ver['why']}"))
    s = v.sketch
    if s is None:
        lines.append("sketch       does not apply: no attention matrix has the same shape in both")
    else:
        lines.append(f"sketch       |r| = {s.score:.4f} over {plural(len(s.pairing), 'layer pair')} "
                     f"(channels {', '.join(s.roles)}), {p_is(None, s.log10_p)}")
        if v.verdict == "derived" and not s.in_order:
            lines.append(f"  layers paired ({a.model} -> {b.model}): "
                         + ", ".join(f"{i}->{j}" for i, j in s.pairing))
    c = v.circuits
    if c is not None:
        gram = "" if c.gram_r is None else f"; their Gram r = {c.gram_r:.4f}, {p_is(None, c.gram_log10_p)}"
        lines.append(f"circuits     r = {fmt(c.score)} (weakest layer {fmt(c.weakest)}) over "
                     f"{plural(len(c.pairing), 'layer pair')}, {p_is(None, c.log10_p)}{gram}")
    surrogate = ("not run: the reference null alone puts the pair among unrelated ones"
                 if v.evidence.surrogate_p is None else fmt_p(v.evidence.surrogate_p))
    null = f"{plural(v.null_size, 'unrelated pair')} from the {v.null.source} null" if v.null else "no reference null"
    lines.append(f"curves       score {fmt(v.evidence.score)}, {p_is(v.p_curves)} (reference: {null}, "
                 f"{p_is(v.p_null)}; surrogates: {surrogate})")
    lines += [f"  {name}  r = {fmt(r)}" for name, r in v.evidence.per_feature.items()]
    if v.verdict == "derived" and v.decided_by == "curves":
        gaps_a = sorted(set(range(a.n_layers or 0)) - {i for i, _ in v.evidence.alignment})
        gaps_b = sorted(set(range(b.n_layers or 0)) - {j for _, j in v.evidence.alignment})
        if gaps_a or gaps_b:
            lines.append(f"  layers left unaligned: {a.model} {gaps_a or 'none'}, {b.model} {gaps_b or 'none'}")
    lines.append(f"paper_score  {fmt(v.paper.score)}  (the seed method, for reference)")
    lines += [f"  {role}  r = {fmt(r)}" for role, r in v.paper.per_role.items()]
    return [printable(line) for line in lines]


def _decider(v) -> str:
    names = {"sketch": "the weight sketch's exact test of the values", "circuits": "the circuit sketches' exact test",
             "circuit gram": "the circuits' Gram (invariant to a rotated residual stream)",
             "curves": "the feature curves"}
    if v.decided_by is None:
        return "nothing: no unforgeable evidence is firm"
    return f"{names.get(v.decided_by, v.decided_by)}, {p_is(v.p_value, v.log10_p)}"
