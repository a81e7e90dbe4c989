"""The lineage graph: detected edges (verdicts between stored models) beside the edges model cards declare.

Every stored model is matched against the store (SQL pre-filter, exact re-score); each pair judged
``derived`` with confidence 1 - p at least ``min_confidence`` becomes an edge. Edges are written to the
store (``edges/*.parquet``), so SQL can set them against ``declared_base`` (view ``disagreements``), and
exported as GraphML or JSON. Families are the connected components of detected edges.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from lineage_scanner.lineage.null import null_for
from lineage_scanner.lineage.verdict import decide
from lineage_scanner.signature.record import EMBED_DIM
from lineage_scanner.store.store import Store

PREFILTER = 20


@dataclass(frozen=True)
class Edge:
    a: str
    b: str
    score: float
    p_value: float | None
    kind: str | None


def detect(store: Store, min_confidence: float = 0.99) -> list[Edge]:
    sigs = store.signatures()
    edges: dict[tuple[str, str], Edge] = {}
    for sig in sigs:
        for other in store.nearest(sig.embedding or [0.0] * EMBED_DIM, (sig.model, sig.revision), PREFILTER):
            key = tuple(sorted((sig.model, other.model)))
            if key in edges:
                continue
            v = decide(sig, other, null_for(store, sig, other))
            if v.verdict == "derived" and v.p_value is not None and 1 - v.p_value >= min_confidence:
                edges[key] = Edge(key[0], key[1], v.evidence.score, v.p_value, v.kind)
    return sorted(edges.values(), key=lambda e: (e.a, e.b))


def _graph(models: list[str], edges: list[Edge]):
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(models)
    g.add_weighted_edges_from((e.a, e.b, e.score) for e in edges)
    return g


def families(models: list[str], edges: list[Edge]) -> list[list[str]]:
    """Connected components of the detected edges, largest first."""
    import networkx as nx

    groups = (sorted(c) for c in nx.connected_components(_graph(models, edges)))
    return sorted(groups, key=lambda g: (-len(g), g))


def spanning_forest(edges: list[Edge]) -> list[Edge]:
    """Dependencies, not all relatives: the maximum spanning forest of the derived pairs by score, so
    siblings link through their parent instead of to each other."""
    import networkx as nx

    by_pair = {frozenset((e.a, e.b)): e for e in edges}
    forest = nx.maximum_spanning_tree(_graph([], edges))
    return sorted((by_pair[frozenset(pair)] for pair in forest.edges()), key=lambda e: -e.score)


def export(store: Store, edges: list[Edge], out: str | Path) -> dict:
    """Write the graph (GraphML for .graphml, else JSON) and return it as a dict."""
    sigs = store.signatures()
    declared = [(s.model, base) for s in sigs for base in s.declared_base]
    graph = {
        "nodes": [{"model": s.model, "revision": s.revision, "family": s.family, "architecture": s.architecture,
                   "declared_base": s.declared_base} for s in sigs],
        "edges": [{**asdict(e), "detected": True, "declared": (e.a, e.b) in declared or (e.b, e.a) in declared}
                  for e in edges]
        + [{"a": m, "b": base, "detected": False, "declared": True} for m, base in declared
           if not any({m, base} == {e.a, e.b} for e in edges)],
        "families": families([s.model for s in sigs], edges),
    }
    out = Path(out)
    if out.suffix == ".graphml":
        import networkx as nx

        g = nx.Graph()
        for n in graph["nodes"]:
            g.add_node(n["model"], family=n["family"] or "", declared_base=",".join(n["declared_base"]))
        for e in graph["edges"]:
            attrs = {k: v for k, v in e.items() if k not in ("a", "b") and v is not None
                     and not (isinstance(v, float) and math.isnan(v))}
            g.add_edge(e["a"], e["b"], **attrs)
        nx.write_graphml(g, out)
    else:
        out.write_text(json.dumps(graph, indent=2, default=str))
    return graph
