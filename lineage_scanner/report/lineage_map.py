"""``lineage graph --html``: the store's family trees as one self-contained page a person can read at any size.

Each family is drawn as an indented tree: every model on a row of its own under its parent, with the kind
of derivation and what gave its direction beside the name, so no label can fall on another whatever the
names or the family's size. Edges are styled by what the cards say: declared and detected, detected but
undeclared; a card's claim the weights do not back is a red tag on the claimant (and a dotted line to
the claimed base when both are drawn). A model with many children shows them in groups by kind, each
opening on click a page at a time, so a base with thousands of derivatives reads as a handful of rows.

The page fits the window (zoom with the wheel or the buttons, drag to pan, "fit" to see everything) and
lays the view out again for every filter: family, "disagreements only" (the models whose cards and
weights disagree, with the ancestors that place them), and a search by name. The script
(``assets/lineage_map.js``, shipped in the package and inlined, never fetched) reads the data as JSON
and sets every text through ``textContent``.
"""

from __future__ import annotations

import math
from importlib import resources

from lineage_scanner.printable import printable, pvalue
from lineage_scanner.report.page import esc, json_script, page

#: Past this many models the page offers one family at a time, not all of them at once.
ALL_LIMIT = 1500

EXTRA_CSS = """
body { max-width: none; }
.controls { display: flex; gap: 18px; flex-wrap: wrap; align-items: center; margin: 10px 0; }
.legend { display: flex; gap: 18px; flex-wrap: wrap; margin: 6px 0; font-size: 13px; }
.legend span { white-space: nowrap; }
.legend i { display: inline-block; width: 28px; height: 0; border-top: 3px solid; vertical-align: middle;
            margin-right: 6px; }
#canvas { border: 1px solid var(--line); border-radius: 6px; height: calc(100vh - 230px); min-height: 420px;
          position: relative; overflow: hidden; touch-action: none; cursor: grab; background: #fff; }
#canvas svg { display: block; width: 100%; height: 100%; user-select: none; }
.zoom { position: absolute; right: 10px; top: 10px; display: flex; gap: 4px; }
.zoom button { font: 13px system-ui, sans-serif; min-width: 30px; height: 28px; border: 1px solid var(--line);
               border-radius: 4px; background: #f6f8fa; cursor: pointer; }
.link { fill: none; stroke-width: 1.6; } .link.agree { stroke: #1a7f37; }
.link.undeclared { stroke: #d4760a; stroke-dasharray: 6 3; } .link.group { stroke: #8c959f; }
.link.claim { stroke: #cf222e; stroke-dasharray: 2 3; }
.node circle { fill: #fff; stroke: #1d2330; stroke-width: 1.5; } .node.root circle { fill: #dbe9ff; }
.node.flagged circle { stroke: #cf222e; stroke-width: 2.2; } .node.found circle { fill: #ffe08a; }
.node text, .group text { font: 13px system-ui, -apple-system, "Segoe UI", sans-serif; fill: #1d2330; }
.node text.tag { font-size: 11px; fill: #5b6474; } .node text.claim { font-size: 11px; fill: #cf222e; }
.group rect { fill: #eef1f5; stroke: #8c959f; } .group text { fill: #0550ae; cursor: pointer; }
.node.context text.name { fill: #8c959f; }
"""


def map_data(graph: dict) -> dict:
    """The page's data from :func:`lineage_scanner.lineage.graph.graph_data`'s graph: nodes by index,
    each with its parent (-1 for a root), how it was derived and whether the cards agree; families
    largest first. Every text is made printable here (see :func:`lineage_scanner.printable.printable`)."""
    index = {n["model"]: i for i, n in enumerate(graph["nodes"])}
    derived = {e["child"]: e for e in graph["edges"] if e.get("detected") and e["parent"] in index}
    claims: dict[str, list[str]] = {}
    for e in graph["edges"]:
        if not e.get("detected") and e["child"] in index:
            claims.setdefault(e["child"], []).append(printable(e["parent"]))
    nodes = []
    for n in graph["nodes"]:
        e = derived.get(n["model"])
        node = {"label": printable(n["model"]), "revision": printable(n.get("revision")),
                "architecture": printable(n.get("architecture") or n.get("family") or "unknown"),
                "declared": [printable(b) for b in n.get("declared_base") or []], "parent": -1,
                "claims": claims.get(n["model"], [])}
        if e is not None:
            node.update({"parent": index[e["parent"]], "kind": printable(e.get("kind") or "derived"),
                         "direction": printable(e.get("direction") or "unknown"), "note": printable(e.get("note")),
                         "class": "undeclared" if e.get("disagreement") else "agree",
                         "closeness": _finite(e.get("closeness")), "evidence": printable(e.get("evidence")),
                         "p": pvalue(e.get("p_value"), e.get("log10_p")),
                         "runner_up": printable(e.get("runner_up")) if e.get("runner_up") else None})
        nodes.append(node)
    root = {n["model"]: n.get("root") or n["model"] for n in graph["nodes"]}
    families = [{"root": index[root[members[0]]], "size": len(members), "label": printable(root[members[0]])}
                for members in graph["families"]]
    return {"nodes": nodes, "families": families, "all_limit": ALL_LIMIT}


def _finite(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def lineage_map(graph: dict, title: str = "Lineage map") -> str:
    """The whole page for ``graph`` (see :func:`map_data`)."""
    data = map_data(graph)
    derived = [n for n in data["nodes"] if n["parent"] >= 0]
    undeclared = sum(n["class"] == "undeclared" for n in derived)
    claims = sum(len(n["claims"]) for n in data["nodes"])
    body = f"""<h1>{esc(title)}</h1>
<p class="sub">{len(data["nodes"])} models in {len(data["families"])} families; {len(derived)} derivations,
{len(derived) - undeclared} of them declared by the derived model's card,
<span class="disagree">{undeclared} not declared</span>, and
<span class="disagree">{claims} declared base{"" if claims == 1 else "s"} the weights do not support</span>.</p>
<div class="controls">
<label>Family <select id="family"></select></label>
<label><input id="disagreements" type="checkbox"> disagreements only</label>
<label>Find <input id="find" type="search" placeholder="model name" size="24"></label>
<span id="counts" class="muted"></span>
</div>
<div class="legend"><span><i style="border-color:#1a7f37"></i>derivation the card declares</span>
<span><i style="border-color:#d4760a;border-top-style:dashed"></i>derivation no card declares</span>
<span><i style="border-color:#cf222e;border-top-style:dotted"></i>declared base the weights do not support</span>
<span class="muted">beside each name: the kind of derivation, and what says which way it runs (hover for
details; ▸ opens a group)</span></div>
<div id="canvas"><div class="zoom"><button id="zoom-in" title="zoom in">+</button>
<button id="zoom-out" title="zoom out">&minus;</button>
<button id="fit" title="fit to the window">fit</button></div></div>
<noscript><p>The map needs JavaScript; the same graph is in <code>lineage graph --out FILE.json</code>.</p></noscript>
{json_script("lineage-data", data)}"""
    script = resources.files("lineage_scanner.report").joinpath("assets", "lineage_map.js").read_text("utf-8")
    return page(title, body, EXTRA_CSS, script)
