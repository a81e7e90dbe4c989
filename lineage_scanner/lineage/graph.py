"""The lineage graph: the store's families as trees of derivations, beside what model cards declare.

Every stored model is matched against the store (SQL pre-filter, exact re-score); each pair judged
``derived`` with confidence 1 - p of at least ``min_confidence`` becomes a :class:`~lineage_scanner.lineage.
tree.Link`, and the links make a forest of derivations (:mod:`lineage_scanner.lineage.tree`): one parent
per model, each edge typed and directed. The edges are written to the store (view ``edges``), where SQL
sets them against ``declared_base`` (view ``disagreements``); :func:`graph_data` reads them back as the
graph a file or the lineage map holds.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from pathlib import Path

from lineage_scanner.lineage.null import null_for
from lineage_scanner.lineage.tree import Forest, Link, build
from lineage_scanner.lineage.verdict import decide, quantized
from lineage_scanner.printable import xml_safe
from lineage_scanner.signature.record import EMBED_DIM
from lineage_scanner.store.store import Store

#: Candidates each model is judged against (the nearest by the embedding pre-filter).
PREFILTER = 20


def detect(store: Store, min_confidence: float = 0.99, progress: Callable[[int, int], None] | None = None
           ) -> Forest:
    """Judge every stored model against its nearest candidates and build the forest of derivations."""
    sigs = _newest(store.signatures())
    links: dict[frozenset[str], Link] = {}
    judged: set[frozenset[str]] = set()
    for k, sig in enumerate(sigs):
        for other in store.nearest(sig.embedding or [0.0] * EMBED_DIM, (sig.model, sig.revision), PREFILTER):
            key = frozenset((sig.model, other.model))
            if key in judged or len(key) < 2:
                continue
            judged.add(key)
            v = decide(sig, other, null_for(store, sig, other))
            if v.verdict == "derived" and v.p_value is not None and 1 - v.p_value >= min_confidence:
                links[key] = Link.judged(sig, other, v)
        if progress:
            progress(k + 1, len(sigs))
    return build([s.model for s in sigs], links.values(), [s.model for s in sigs if quantized(s)],
                 {s.model: list(s.declared_base or []) for s in sigs})


def _newest(sigs: list) -> list:
    """One signature per model, its newest (``Store.signatures`` lists the newest first)."""
    seen: dict[str, object] = {}
    for s in sigs:
        seen.setdefault(s.model, s)
    return list(seen.values())


def graph_data(store: Store, con=None) -> dict:
    """The graph the store holds: its models, the newest run's derivations (``detected``; with the
    ``disagreement`` where no card declares one) beside the declared bases the weights do not support
    (``declared`` only, the problem in ``note``), and its families (members lists, largest first; each
    node names its ``root`` and ``parent``). ``con``: a connection to read through instead of a new one
    (a read-only store's, whose ``edges`` are a run that could not be written)."""
    with contextlib.nullcontext(con) if con is not None else store.connect() as con:
        nodes = con.execute(
            "SELECT model, arg_max(revision, scanned_at), arg_max(family, scanned_at), "
            "arg_max(architecture, scanned_at), arg_max(declared_base, scanned_at), arg_max(format, scanned_at), "
            "arg_max(n_layers, scanned_at) FROM signatures GROUP BY model ORDER BY model").fetchall()
        columns = ("parent", "child", "kind", "direction", "note", "closeness", "evidence", "p_value", "log10_p",
                   "declared", "family", "runner_up", "runner_up_closeness")
        edges = [dict(zip(columns, row)) for row in con.execute(
            f"SELECT {', '.join(columns)} FROM edges ORDER BY family, parent, child").fetchall()]
        problems = con.execute("SELECT model, other, problem FROM disagreements ORDER BY ALL").fetchall()
    unsupported = [(model, base, problem) for model, base, problem in problems if problem.startswith("declared")]
    undeclared = {(model, other): problem for model, other, problem in problems if not problem.startswith("declared")}
    root = {m: e["family"] for e in edges for m in (e["parent"], e["child"])}
    parent = {e["child"]: e["parent"] for e in edges}
    members: dict[str, list[str]] = {}
    for model, *_ in nodes:
        members.setdefault(root.get(model, model), []).append(model)
    families = sorted((sorted(m) for m in members.values()), key=lambda m: (-len(m), m))
    return {
        "nodes": [{"model": m, "revision": rev, "family": fam, "architecture": arch, "declared_base": list(base or []),
                   "format": fmt, "n_layers": layers, "root": root.get(m, m), "parent": parent.get(m)}
                  for m, rev, fam, arch, base, fmt, layers in nodes],
        "edges": [{**e, "confidence": None if e["p_value"] is None else 1.0 - e["p_value"], "detected": True,
                   "disagreement": undeclared.get((e["child"], e["parent"]))} for e in edges]
        + [{"parent": base, "child": model, "kind": None, "direction": "card", "note": problem,
            "detected": False, "declared": True} for model, base, problem in unsupported],
        "families": families,
    }


def write(graph: dict, out: str | Path) -> Path:
    """The graph as GraphML (for ``.graphml``: directed, parent to child, names made valid XML by
    :func:`lineage_scanner.printable.xml_safe`) or JSON (anything else)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() != ".graphml":
        out.write_text(json.dumps(graph, indent=2, default=str), encoding="utf-8")
        return out
    import networkx as nx

    g = nx.DiGraph()
    for n in graph["nodes"]:
        g.add_node(xml_safe(n["model"]), **_attributes({**n, "declared_base": ",".join(n["declared_base"])}))
    for e in graph["edges"]:
        g.add_edge(xml_safe(e["parent"]), xml_safe(e["child"]), **_attributes(e))
    nx.write_graphml(g, out)
    return out


def _attributes(row: dict) -> dict:
    """GraphML attributes: the scalar values that are set, text made valid XML."""
    out = {}
    for key, value in row.items():
        if value is None or isinstance(value, (list, dict)) or (isinstance(value, float) and not math.isfinite(value)):
            continue
        out[key] = xml_safe(value) if isinstance(value, str) else value
    return out
