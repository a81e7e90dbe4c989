"""``match``'s ranking: a model's relatives in the order an analyst reads them, its parent first.

p-values rank nothing among relatives (every real derivation's is astronomically small), and the nearest
relative is not always the parent: a quantized copy of the parent is as close as the parent itself, and
a sibling is nearly as close. So the relatives judged ``derived`` and the query are placed in one family
tree (:mod:`lineage_scanner.lineage.tree`): the query's links are its verdicts, the relatives' links to
each other their weight sketches' correlations (cheap: no test is needed between models the query ties
together). Each relative then has a relation to the query (parent, child, sibling, ancestor, descendant,
relative) and the rows run: parent, then the other relatives nearest first, then the rest by the
strength of their evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

from lineage_scanner.lineage.closeness import Closeness
from lineage_scanner.lineage.tree import Forest, Link, build
from lineage_scanner.lineage.verdict import Verdict, quantized

#: Relatives placed in the query's tree (the nearest): their pairwise links cost k²/2 correlations.
TREE_LIMIT = 48


@dataclass(frozen=True)
class Relative:
    """One candidate of ``match``: its verdict, and where it is derived, its closeness to the query and
    its relation (see :meth:`lineage_scanner.lineage.tree.Forest.relation`); ``direction`` is what says
    which way the edge to the query runs, where the two are parent and child."""

    signature: object
    verdict: Verdict
    closeness: Closeness | None = None
    relation: str | None = None
    direction: str | None = None

    def row(self, q_value: float | None) -> dict:
        """``match --json``'s row of this candidate, with its Benjamini-Hochberg ``q_value``."""
        v = self.verdict
        return {"model": self.signature.model, "revision": self.signature.revision, "relation": self.relation,
                "direction": self.direction, "closeness": self.closeness.value if self.closeness else None,
                "closeness_evidence": self.closeness.evidence if self.closeness else None,
                "score": v.evidence.score, "sketch_score": v.sketch.score if v.sketch else None,
                "decided_by": v.decided_by, "p_value": v.p_value, "log10_p": v.log10_p, "q_value": q_value,
                "verdict": v.verdict, "kind": v.kind, "paper_score": v.paper.score,
                "disagreement": v.conflict}


def rank(query, candidates: list, verdicts: list[Verdict]) -> list[Relative]:
    """``candidates`` (signatures) with their ``verdicts`` against ``query``, parent first (see module)."""
    derived = [(c, v) for c, v in zip(candidates, verdicts) if v.verdict == "derived" and c.model != query.model]
    links = {c.model: Link.judged(query, c, v) for c, v in derived}
    nearest = sorted(links.values(), key=lambda link: link.closeness.distance)[:TREE_LIMIT]
    placed = {link.b for link in nearest}
    sigs = {c.model: c for c, _ in derived if c.model in placed}
    pairs = [Link.measured(sigs[x], sigs[y]) for x, y in combinations(sorted(sigs), 2)]
    forest = build([query.model, *sigs], [*nearest, *(p for p in pairs if p is not None)],
                   [m for m, s in {query.model: query, **sigs}.items() if quantized(s)],
                   {m: list(s.declared_base or []) for m, s in {query.model: query, **sigs}.items()})
    rows = []
    for c, v in zip(candidates, verdicts):
        link = links.get(c.model)
        if link is None:
            rows.append(Relative(c, v))
            continue
        relation = forest.relation(query.model, c.model) if c.model in placed else "relative"
        rows.append(Relative(c, v, link.closeness, relation, _edge_direction(forest, query.model, c.model)))
    return sorted(rows, key=_order)


def _edge_direction(forest: Forest, query: str, other: str) -> str | None:
    for child, parent in ((query, other), (other, query)):
        edge = forest.parent(child)
        if edge is not None and edge.parent == parent:
            return edge.direction
    return None


def _order(r: Relative) -> tuple:
    """Parent; then derived relatives, nearest first; then the rest, strongest evidence first."""
    if r.closeness is not None:
        return (0 if r.relation == "parent" else 1, r.closeness.distance, r.signature.model)
    score = r.verdict.evidence.score
    return (2, r.verdict.log10_p, -score if math.isfinite(score) else math.inf, r.signature.model)
