"""``lineage graph --html``: the store's families as one self-contained page a person can read.

Nodes are models (label, architecture, declared base); edges are detected derivations (kind, confidence;
the maximum spanning forest of them, so siblings link through their parent) and declared bases, in three
classes: both detected and declared (the cards and the weights agree),
detected but not declared (an undeclared derivation), declared but not detected (a claim the weights do
not back). A family is a connected component of all those edges, laid out here as a tree: its root is
the model the others declare (or the best connected), each other model one row below the relative it is
reached through. The page's script (``assets/lineage_map.js``, shipped in the package and inlined, never
fetched) draws one family at a time, or all of them while the store is small, and filters by family,
confidence and disagreement.
"""

from __future__ import annotations

import math
from importlib import resources

from lineage_scanner.report.page import esc, json_script, page

#: Past this many models the page draws one family at a time (a browser draws a few thousand SVG nodes
#: fine, but nobody reads them at once).
ALL_LIMIT = 1500

EXTRA_CSS = """
.controls { display: flex; gap: 20px; flex-wrap: wrap; align-items: center; margin: 12px 0; }
.legend span { margin-right: 16px; white-space: nowrap; }
.legend i { display: inline-block; width: 28px; height: 0; border-top: 3px solid; vertical-align: middle;
            margin-right: 6px; }
#canvas { border: 1px solid var(--line); border-radius: 6px; overflow: auto; max-height: 78vh; }
#canvas svg { display: block; }
.edge { stroke-width: 2.2; fill: none; } .edge.agree { stroke: #1a7f37; }
.edge.undeclared { stroke: #d4760a; stroke-dasharray: 7 4; }
.edge.unconfirmed { stroke: #cf222e; stroke-dasharray: 2 4; }
.node circle { fill: #fff; stroke: #1d2330; stroke-width: 1.5; } .node.root circle { fill: #dbe9ff; }
.node text { font-size: 12px; fill: #1d2330; } .node text.arch { fill: #5b6474; font-size: 11px; }
.edge-label { font-size: 10px; fill: #5b6474; }
"""


def map_data(graph: dict) -> dict:
    """The page's data from :func:`lineage_scanner.lineage.graph.export`'s graph: nodes with their family
    and place in it, edges with their class and confidence, families largest first."""
    import networkx as nx

    nodes = {n["model"]: n for n in graph["nodes"]}
    edges = []
    for e in graph["edges"]:
        if e["a"] not in nodes or e["b"] not in nodes:
            continue
        p = e.get("p_value")
        confidence = None if p is None or not math.isfinite(p) else 1.0 - p
        kind = "agree" if e["detected"] and e["declared"] else "undeclared" if e["detected"] else "unconfirmed"
        edges.append({"a": e["a"], "b": e["b"], "class": kind, "kind": e.get("kind"), "confidence": confidence,
                      "weight": (2.0 if kind == "agree" else 0.0) + _finite(e.get("score"))})
    edges = _dependencies(edges)
    g = nx.Graph()
    g.add_nodes_from(nodes)
    g.add_edges_from((e["a"], e["b"]) for e in edges)
    declared_by = {m: sum(m in nodes[n].get("declared_base", []) for n in g[m]) for m in nodes}
    families, placed = [], {}
    for members in sorted(nx.connected_components(g), key=lambda c: (-len(c), min(c))):
        root = max(sorted(members), key=lambda m: (declared_by[m], g.degree(m)))
        depth = nx.single_source_shortest_path_length(g, root)
        parent = dict(nx.bfs_predecessors(g, root))
        rows: dict[int, list[str]] = {}
        for m in sorted(members, key=lambda m: (depth[m], m)):
            rows.setdefault(depth[m], []).append(m)
        k = len(families)
        for y, row in sorted(rows.items()):  # children in the order of the relatives they hang from
            row.sort(key=lambda m: (placed[parent[m]]["x"], m) if m in parent else (0.0, m))
            for x, m in enumerate(row):
                placed[m] = {"family": k, "x": x - (len(row) - 1) / 2, "y": y, "root": m == root}
        families.append({"label": root, "size": len(members), "width": max(map(len, rows.values())),
                         "depth": max(rows) + 1})
    return {
        "nodes": [{"model": m, "revision": n.get("revision"), "architecture": n.get("architecture") or n.get("family"),
                   "declared_base": n.get("declared_base", []), **placed[m]} for m, n in nodes.items()],
        "edges": edges, "families": families, "all_limit": ALL_LIMIT,
    }


def _dependencies(edges: list[dict]) -> list[dict]:
    """Every declared edge, and of the detected ones a maximum spanning forest (declared ones first, then
    by curve score), so that siblings link through their parent instead of each to each."""
    import networkx as nx

    g = nx.Graph()
    for e in edges:
        if e["class"] != "unconfirmed":
            g.add_edge(e["a"], e["b"], weight=e["weight"])
    kept = {frozenset(pair) for pair in nx.maximum_spanning_tree(g).edges()}
    return [{k: v for k, v in e.items() if k != "weight"} for e in edges
            if e["class"] == "unconfirmed" or frozenset((e["a"], e["b"])) in kept]


def _finite(x) -> float:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else 0.0


def lineage_map(graph: dict, title: str = "Lineage map") -> str:
    """The whole page for ``graph`` (see :func:`map_data`)."""
    data = map_data(graph)
    counts = {c: sum(e["class"] == c for e in data["edges"]) for c in ("agree", "undeclared", "unconfirmed")}
    body = f"""<h1>{esc(title)}</h1>
<p class="sub">{len(data["nodes"])} models in {len(data["families"])} families; {counts["agree"]} derivations
both detected and declared, <span class="disagree">{counts["undeclared"]} detected but not declared</span>,
<span class="disagree">{counts["unconfirmed"]} declared but not detected</span>.</p>
<div class="controls">
<label>Family <select id="family"></select></label>
<label>Minimum confidence <input id="confidence" type="range" min="0.9" max="1" step="0.001" value="0.9">
<output id="confidence-value">0.900</output></label>
<label><input id="disagreements" type="checkbox"> disagreements only</label>
</div>
<p class="legend"><span><i style="border-color:#1a7f37"></i>detected and declared</span>
<span><i style="border-color:#d4760a;border-top-style:dashed"></i>detected, not declared</span>
<span><i style="border-color:#cf222e;border-top-style:dotted"></i>declared, not detected</span></p>
<p id="counts" class="muted"></p>
<div id="canvas"></div>
<noscript><p>The map needs JavaScript; the same graph is in <code>lineage graph --out FILE.json</code>.</p></noscript>
{json_script("lineage-data", data)}"""
    script = resources.files("lineage_scanner.report").joinpath("assets", "lineage_map.js").read_text("utf-8")
    return page(title, body, EXTRA_CSS, script)
