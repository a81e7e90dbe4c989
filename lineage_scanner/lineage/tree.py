"""Family trees of derivations: each model's parent among its relatives, and which way each edge runs.

Verdicts come in pairs, and inside a family every pair is related: a base, its fine-tune, its quantized
copy and its continued-training child are all "derived" from one another. An analyst needs the tree
they were made along. Each related pair becomes a :class:`Link` with a closeness (an effect size, see
:mod:`lineage_scanner.lineage.closeness`) and a direction where the weights or a card give one (see
:mod:`lineage_scanner.lineage.direction`). Within each family (a connected component of links) the tree
is the minimum-cost spanning arborescence (Edmonds' algorithm, networkx's implementation) where making
``p`` the parent of ``c`` costs:

- the distance of the pair (-log r within a tier of evidence), so each model hangs from the relative
  nearest to it: a child of a derivative under that derivative, siblings under their parent rather than
  under each other, since a sibling carries a change of its own on top of the parent's weights;
- a large penalty where the direction says ``c`` came first (a quantized model is never the source of
  float weights, a pruned one never of the deeper original);
- a smaller one where ``p`` is stored quantized: a quantized copy can be as close to a sibling as the
  parent itself (its rounding is tiny), but copies are what people run, not what they train from;
- and where the child's card names ``p``, a hair less, so that between a parent and an exact copy of it
  (equally near) the card decides.

A virtual root links to every model of the family; linking it costs the same for all, plus the penalty
for a model that something says came from another, so the root is a model nothing says was derived.
Among models that tie (edges of unknown direction can be turned either way at no cost), the root is the
one that more directions name as the source: a base with a quantized copy, a card-declared fine-tune and
a pruned child is the root, and its continued-training child (no card, same shape, same format) hangs
under it with its direction marked unknown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from lineage_scanner.lineage.closeness import Closeness, closeness, measured
from lineage_scanner.lineage.direction import CARD, UNKNOWN, Direction, direction

#: Making the later model of a directed pair the parent of the earlier one: past any sum of distances.
CONTRADICTED = 1000.0
#: Making a quantized copy the parent of anything: past any distance within a tier, below the tiers' gaps.
QUANTIZED_PARENT = 5.0
#: What linking the virtual root costs: past any real path, so each family has exactly one root.
ROOT_COST = 1e6
#: Per direction naming a model as the source: a tie-breaker among roots, far below any distance.
SOURCE_BONUS = 1e-6
#: What a card naming the parent takes off: between two candidates equally near (the parent and an exact
#: copy of it), the one the card names; far below any difference the weights can resolve.
CARD_TIE = 1e-6
_ROOT = ("virtual root",)  # not a string, so no model name can be it


@dataclass(frozen=True)
class Link:
    """A related pair as the tree builder sees it: the verdict's kind and p-value, how close the two are,
    and which came first where that is known."""

    a: str
    b: str
    kind: str | None
    p_value: float | None
    log10_p: float
    closeness: Closeness
    direction: Direction

    @classmethod
    def judged(cls, a, b, verdict) -> Link:
        """The link of signatures ``a`` and ``b`` judged derived by ``verdict``."""
        s = verdict.sketch
        typical = float(np.median(s.r)) if s is not None and s.r else None
        return cls(a.model, b.model, verdict.kind, verdict.p_value, verdict.log10_p,
                   closeness(a, b, s, verdict.evidence.score),
                   direction(a, b, s.grid if s is not None else None, typical))

    @classmethod
    def measured(cls, a, b) -> Link | None:
        """The link of two signatures that were not judged (two relatives of one query), where their weight
        sketches tie them (:func:`lineage_scanner.lineage.closeness.measured`); None where they do not. It
        carries no kind and no p-value: no test was run."""
        found = measured(a, b)
        if found is None:
            return None
        near, grid = found
        return cls(a.model, b.model, None, None, math.nan, near, direction(a, b, grid.grid, near.value))


@dataclass(frozen=True)
class TreeEdge:
    """One derivation: ``child`` was made from ``parent``. ``direction`` is what says which way it runs
    (see :mod:`lineage_scanner.lineage.direction`), ``unknown`` where nothing does (then the tree's
    placement alone orders the two); ``runner_up`` is the next-nearest relative that could have been the
    parent, and its closeness, to show how clear the choice was."""

    parent: str
    child: str
    kind: str | None
    direction: str
    note: str
    closeness: float
    evidence: str
    p_value: float | None
    log10_p: float
    runner_up: str | None = None
    runner_up_closeness: float | None = None
    #: whether the child's card names the parent as its base
    declared: bool = False
    #: the root of the edge's family
    family: str = ""


@dataclass(frozen=True)
class Family:
    root: str
    members: tuple[str, ...]


@dataclass
class Forest:
    """Every family's tree: its edges (parent before child, families in order) and its members."""

    edges: list[TreeEdge]
    families: list[Family]
    _parent: dict[str, TreeEdge] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._parent = {e.child: e for e in self.edges}

    def parent(self, model: str) -> TreeEdge | None:
        return self._parent.get(model)

    def ancestors(self, model: str) -> list[str]:
        out, seen = [], {model}
        while (edge := self._parent.get(model)) is not None and edge.parent not in seen:
            model = edge.parent
            out.append(model)
            seen.add(model)
        return out

    def relation(self, model: str, other: str) -> str | None:
        """What ``other`` is to ``model``: parent, child, sibling, ancestor, descendant, relative (same
        family otherwise), or None (another family)."""
        up = self._parent.get(model)
        if up is not None and up.parent == other:
            return "parent"
        down = self._parent.get(other)
        if down is not None and down.parent == model:
            return "child"
        if up is not None and down is not None and up.parent == down.parent:
            return "sibling"
        if other in self.ancestors(model):
            return "ancestor"
        if model in self.ancestors(other):
            return "descendant"
        return "relative" if self.family_of(model) == self.family_of(other) is not None else None

    def family_of(self, model: str) -> str | None:
        """The root of ``model``'s family (None for a model the forest does not hold)."""
        chain = self.ancestors(model)
        if chain:
            return chain[-1]
        return model if any(model in f.members for f in self.families) else None


def build(models: Iterable[str], links: Iterable[Link], quantized: Iterable[str] = (),
          declared: dict[str, list[str]] | None = None) -> Forest:
    """The forest of ``models`` tied by ``links``; ``quantized`` names the models stored quantized (see
    :func:`lineage_scanner.lineage.verdict.quantized`), which make poor parents; ``declared`` is each
    model's card-declared bases, to mark the edges a card names."""
    import networkx as nx

    links = list(links)
    copies = set(quantized)
    g = nx.Graph()
    g.add_nodes_from(sorted(set(models) | {m for link in links for m in (link.a, link.b)}))
    for link in links:
        g.add_edge(link.a, link.b, link=link)
    edges: list[TreeEdge] = []
    families: list[Family] = []
    for members in sorted(nx.connected_components(g), key=lambda c: (-len(c), min(c))):
        family_links = [g.edges[pair]["link"] for pair in g.subgraph(members).edges]
        root, tree = _arborescence(sorted(members), family_links, copies)
        families.append(Family(root, tuple(sorted(members))))
        edges.extend(replace(e, family=root, declared=e.parent in (declared or {}).get(e.child, ())) for e in tree)
    return Forest(edges, families)


def _arborescence(members: list[str], links: list[Link], copies: set[str]) -> tuple[str, list[TreeEdge]]:
    """The family's root and its edges in breadth-first order from the root."""
    import networkx as nx

    if len(members) == 1:
        return members[0], []
    d = nx.DiGraph()
    claimed = {link.direction.downstream(link.a, link.b) for link in links} - {None}
    sources = {m: 0 for m in members}
    for link in links:
        if link.direction.upstream is not None:
            sources[link.direction.upstream] += 1
    for m in members:
        d.add_edge(_ROOT, m, weight=ROOT_COST + CONTRADICTED * (m in claimed) - SOURCE_BONUS * sources[m])
    for link in links:
        for parent, child in ((link.a, link.b), (link.b, link.a)):
            d.add_edge(parent, child, weight=_cost(link, parent, child, copies), link=link)
    tree = nx.minimum_spanning_arborescence(d, attr="weight", preserve_attrs=True)
    (root,) = tree.successors(_ROOT)
    order = [child for _, child in nx.bfs_edges(tree, root)]
    parent_of = {child: parent for parent, child in tree.edges if parent != _ROOT}
    out = []
    for child in order:
        parent = parent_of[child]
        link = d.edges[parent, child]["link"]
        descendants = nx.descendants(tree, child)
        rivals = [(d.edges[p, child]["weight"], p) for p in d.predecessors(child)
                  if p not in (_ROOT, parent) and p not in descendants]
        runner = min(rivals) if rivals else None
        out.append(_edge(link, parent, child, d.edges[runner[1], child]["link"] if runner else None,
                         runner[1] if runner else None))
    return root, out


def _cost(link: Link, parent: str, child: str, copies: set[str]) -> float:
    cost = link.closeness.distance
    if link.direction.upstream == child:
        cost += CONTRADICTED
    elif link.direction.basis == CARD:  # the child's card names this parent: it wins a tie (an exact copy)
        cost -= CARD_TIE
    if parent in copies:
        cost += QUANTIZED_PARENT
    return cost


def _edge(link: Link, parent: str, child: str, rival: Link | None, rival_name: str | None) -> TreeEdge:
    known = link.direction.upstream is not None
    if known and link.direction.upstream != parent:
        basis, note = UNKNOWN, f"placed against the evidence: {link.direction.note}"
    else:
        basis, note = (link.direction.basis, link.direction.note) if known else (UNKNOWN, link.direction.note)
    return TreeEdge(parent, child, _kind(link.kind, basis), basis, note, link.closeness.value,
                    link.closeness.evidence, link.p_value, link.log10_p, rival_name,
                    rival.closeness.value if rival is not None else None)


def _kind(kind: str | None, basis: str) -> str | None:
    """The verdict's kind, told apart where the direction says more (pruned, or depth up-scaled)."""
    if basis == "fewer layers":
        return "pruned"
    if basis == "more layers":
        return "depth up-scaled"
    return kind
