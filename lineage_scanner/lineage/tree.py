"""Family trees of derivations: each model's parent among its relatives, and which way each edge runs.

Verdicts come in pairs, and inside a family every pair is related: a base, its fine-tune, its quantized
copy and its continued-training child are all "derived" from one another. An analyst needs the tree
they were made along. Each related pair becomes a :class:`Link` with a closeness (an effect size, see
:mod:`lineage_scanner.lineage.closeness`) and a direction where the weights or a card give one (see
:mod:`lineage_scanner.lineage.direction`). Within each family (a connected component of links) the tree
is the minimum-cost spanning arborescence from the family's root (Edmonds' algorithm,
:func:`min_arborescence`) where making ``p`` the parent of ``c`` costs:

- the distance of the pair (-log r within a tier of evidence), so each model hangs from the relative
  nearest to it: a child of a derivative under that derivative, siblings under their parent rather than
  under each other, since a sibling carries a change of its own on top of the parent's weights;
- a large penalty where the direction says ``c`` came first (a quantized model is never the source of
  float weights, a pruned one never of the deeper original), or that neither came from the other;
- a smaller one where ``p`` is stored quantized: a quantized copy can be as close to a sibling as the
  parent itself (its rounding is tiny), but copies are what people run, not what they train from;
- and where the child's card names ``p``, a hair less, so that between a parent and an exact copy of it
  (equally near) the card decides.

The root is a model that nothing says came from another; among those, the one that most directions
name as the source. Edges of unknown direction cost the same either way, so this choice orders them and
nothing else: a base with a quantized copy, a card-declared fine-tune and a pruned child is the root,
and its continued-training child (no card, same shape, same format) hangs under it with its direction
marked unknown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from lineage_scanner.lineage.closeness import Closeness, closeness, measured
from lineage_scanner.lineage.direction import APART, UNKNOWN, Direction, direction

#: Making the later model of a directed pair the parent of the earlier one: past any sum of distances.
CONTRADICTED = 1000.0
#: Making a quantized copy the parent of anything: past any distance within a tier, below the tiers' gaps.
QUANTIZED_PARENT = 5.0
#: What a card naming the parent takes off: between two candidates equally near (the parent and an exact
#: copy of it), the one the card names; far below any difference the weights can resolve.
CARD_TIE = 1e-6
#: Per link between the candidate parent and the root: at equal closeness (within 1e-4 in -log r) the parent
#: nearer the root wins. A model that computes the same function as the root (a permuted copy) is exactly
#: as close to a third model as the root is; only the shorter story tells them apart.
HOP_TIE = 1e-4


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
                   closeness(a, b, s, verdict.evidence.score, verdict.circuits),
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
    _root: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._parent = {e.child: e for e in self.edges}
        self._root = {m: f.root for f in self.families for m in f.members}

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
        return self._root.get(model)


def build(models: Iterable[str], links: Iterable[Link], quantized: Iterable[str] = (),
          declared: dict[str, list[str]] | None = None) -> Forest:
    """The forest of ``models`` tied by ``links``; ``quantized`` names the models stored quantized (see
    :func:`lineage_scanner.lineage.verdict.quantized`), which make poor parents; ``declared`` is each
    model's card-declared bases, which break ties and mark the edges a card names."""
    declared = declared or {}
    unique: dict[frozenset[str], Link] = {}
    for link in links:  # one link per pair (the first)
        unique.setdefault(frozenset((link.a, link.b)), link)
    copies = set(quantized)
    nodes = set(models) | {m for link in unique.values() for m in (link.a, link.b)}
    joined = {m: m for m in nodes}  # union-find over the links: the families

    def find(m: str) -> str:
        while joined[m] != m:
            joined[m] = joined[joined[m]]
            m = joined[m]
        return m

    for link in unique.values():
        joined[find(link.a)] = find(link.b)
    members: dict[str, list[str]] = {}
    for m in sorted(nodes):
        members.setdefault(find(m), []).append(m)
    family_links: dict[str, list[Link]] = {}
    for link in unique.values():
        family_links.setdefault(find(link.a), []).append(link)
    edges: list[TreeEdge] = []
    families: list[Family] = []
    for key, group in sorted(members.items(), key=lambda item: (-len(item[1]), item[1][0])):
        root, tree = _arborescence(group, family_links.get(key, []), copies, declared)
        families.append(Family(root, tuple(group)))
        edges.extend(replace(e, family=root, declared=e.parent in declared.get(e.child, ())) for e in tree)
    return Forest(edges, families)


def _arborescence(members: list[str], links: list[Link], copies: set[str], declared: dict[str, list[str]]
                  ) -> tuple[str, list[TreeEdge]]:
    """The family's root and its edges in breadth-first order from the root."""
    if len(members) == 1:
        return members[0], []
    index = {m: k for k, m in enumerate(members)}
    root = index[_root(members, links, copies)]
    hops = _hops(members[root], links)
    arcs: list[tuple[int, int, float]] = []
    carried: list[Link] = []
    for link in links:
        for parent, child in ((link.a, link.b), (link.b, link.a)):
            if index[child] != root:
                cost = _cost(link, parent, child, copies, declared) + HOP_TIE * hops.get(parent, 0)
                arcs.append((index[parent], index[child], cost))
                carried.append(link)
    chosen = min_arborescence(len(members), arcs, root)
    children: dict[int, list[int]] = {}
    for node, a in enumerate(chosen):
        if a is not None:
            children.setdefault(arcs[a][0], []).append(node)
    order, k = [root], 0
    while k < len(order):  # breadth first from the root
        order.extend(sorted(children.get(order[k], [])))
        k += 1
    sizes = dict.fromkeys(order, 1)
    for node in reversed(order[1:]):
        sizes[arcs[chosen[node]][0]] += sizes[node]
    entry: dict[int, int] = {}
    _preorder(root, children, entry)
    into: dict[int, list[int]] = {}
    for a, (_, v, _) in enumerate(arcs):
        into.setdefault(v, []).append(a)
    out = []
    for node in order[1:]:
        parent = arcs[chosen[node]][0]
        low, high = entry[node], entry[node] + sizes[node]  # the node's subtree, in depth-first order
        rivals = [(arcs[a][2], a) for a in into.get(node, []) if arcs[a][0] != parent
                  and not low <= entry[arcs[a][0]] < high]
        runner = carried[min(rivals)[1]] if rivals else None
        out.append(_edge(carried[chosen[node]], members[parent], members[node], runner,
                         None if runner is None else (runner.a if runner.b == members[node] else runner.b)))
    return members[root], out


def _root(members: list[str], links: list[Link], copies: set[str]) -> str:
    """The family's root: a model that the fewest directions say came from another, then the one that most
    directions name as the source, then one stored in floats, then the first by name."""
    claimed = dict.fromkeys(members, 0)
    sources = dict.fromkeys(members, 0)
    for link in links:
        if link.direction.upstream is not None:
            sources[link.direction.upstream] += 1
            claimed[link.direction.downstream(link.a, link.b)] += 1
    return min(members, key=lambda m: (claimed[m], -sources[m], m in copies, m))


def _preorder(root: int, children: dict[int, list[int]], entry: dict[int, int]) -> None:
    stack = [root]
    while stack:
        node = stack.pop()
        entry[node] = len(entry)
        stack.extend(reversed(sorted(children.get(node, []))))


def min_arborescence(n: int, arcs: list[tuple[int, int, float]], root: int) -> list[int | None]:
    """Edmonds' (Chu-Liu's) minimum-cost spanning arborescence of nodes ``0..n-1`` rooted at ``root``: for
    each node the index in ``arcs`` (tail, head, cost) of the arc into it (None for the root). Every node
    must be reachable from the root.

    networkx's implementation contracts one cycle at a time and copies the whole graph for each: a family
    of 150 models took two minutes. Here each round picks every node's cheapest arc, contracts all the
    cycles those make at once, and goes on with the contracted graph; then the rounds are unwound, each
    arc chosen into a contracted cycle replacing the cycle's own arc at its head. A round costs one pass
    over the arcs (a family of thousands with twenty candidates each takes seconds). Ties go to the
    earlier arc."""
    rounds = []
    while True:
        best: list[int | None] = [None] * n
        for a, (u, v, w) in enumerate(arcs):
            if v != root and u != v and (best[v] is None or w < arcs[best[v]][2]):
                best[v] = a
        cycle, seen, cycles = [-1] * n, [-1] * n, 0
        for start in range(n):
            v = start
            while v != root and seen[v] == -1:
                seen[v] = start
                v = arcs[best[v]][0]
            if v != root and seen[v] == start and cycle[v] == -1:
                while cycle[v] == -1:
                    cycle[v] = cycles
                    v = arcs[best[v]][0]
                cycles += 1
        if not cycles:
            break
        ids, fresh = [0] * n, cycles
        for v in range(n):
            if cycle[v] == -1:
                ids[v], fresh = fresh, fresh + 1
            else:
                ids[v] = cycle[v]
        contracted, origin = [], []
        for a, (u, v, w) in enumerate(arcs):
            if ids[u] != ids[v]:  # an arc into a cycle costs what it saves over the cycle's own arc there
                contracted.append((ids[u], ids[v], w - arcs[best[v]][2] if cycle[v] != -1 else w))
                origin.append(a)
        rounds.append((arcs, best, origin))
        n, arcs, root = fresh, contracted, ids[root]
    for arcs, chosen, origin in reversed(rounds):
        for a in best:
            if a is not None:
                chosen[arcs[origin[a]][1]] = origin[a]
        best = chosen
    return best


def _hops(root: str, links: list[Link]) -> dict[str, int]:
    """Each member's number of links from the root (breadth first over the family's links)."""
    near: dict[str, list[str]] = {}
    for link in links:
        near.setdefault(link.a, []).append(link.b)
        near.setdefault(link.b, []).append(link.a)
    hops, order = {root: 0}, [root]
    for m in order:  # grows as it goes: breadth first
        for n in near.get(m, ()):
            if n not in hops:
                hops[n] = hops[m] + 1
                order.append(n)
    return hops


def _cost(link: Link, parent: str, child: str, copies: set[str], declared: dict[str, list[str]]) -> float:
    cost = link.closeness.distance
    if link.direction.upstream == child or link.direction.basis == APART:
        cost += CONTRADICTED
    if parent in declared.get(child, ()):  # the child's card names this parent: it wins a tie (an exact copy)
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
