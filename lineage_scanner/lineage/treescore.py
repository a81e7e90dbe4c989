"""How a recovered forest compares with known lineage: the figures MDGBench reports, and the parents.

Edges are scored three ways: untyped (the two models are parent and child, whichever way), typed (and
the kind of derivation is right, in the caller's classes) and directed (and the parent is the right one
of the two). Beside them: the share of models with a known parent whose recovered parent is it (top-1
parent), the adjusted Rand index of the families, and of the recovered edges that are true ones, how
many had a direction from evidence (the weights or a card) and how many of those point the right way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import comb

#: Published figures on MDGBench (137 public models, 17 clusters, 131 typed edges; TensorLock's README):
#: clustering ARI and dependency-edge F1, the latter also with the benchmark's prior knowledge.
PUBLISHED = {
    "TensorLock": {"ARI": 0.96, "F1": 0.78, "F1 with prior knowledge": 0.82},
    "MoTHer": {"ARI": 0.50, "F1": 0.04, "F1 with prior knowledge": 0.28},
    "HuRef": {"ARI": 0.69}, "REEF": {"ARI": 0.29}, "seed std method": {"ARI": 0.52},
}


@dataclass(frozen=True)
class Edge:
    """One derivation, as found or as known: ``child`` made from ``parent``, of ``kind`` (the caller's
    class of derivation), ``evidenced`` when something (weights, a card) gave its direction."""

    parent: str
    child: str
    kind: str
    evidenced: bool = True


@dataclass(frozen=True)
class TreeScore:
    untyped: tuple[float, float, float]
    typed: tuple[float, float, float]
    directed: tuple[float, float, float]
    top1_parent: float
    ari: float
    edges: int
    truth_edges: int
    #: true edges found with a direction from evidence, and how many of those point the right way
    evidenced: int
    evidenced_right: int
    #: (child, parent found, true parent) for every model whose recovered parent is not its own
    wrong_parents: list[tuple[str, str | None, str]] = field(default_factory=list)


def score(found: list[Edge], truth: list[Edge], models: list[str]) -> TreeScore:
    """``found`` against ``truth`` over ``models`` (families are the connected components of each)."""
    undirected = {frozenset((e.parent, e.child)) for e in found}
    true_undirected = {frozenset((e.parent, e.child)) for e in truth}
    parent = {e.child: e.parent for e in found}
    evidenced = [e for e in found if e.evidenced and frozenset((e.parent, e.child)) in true_undirected]
    right = {(e.parent, e.child) for e in truth}
    wrong = [(e.child, parent.get(e.child), e.parent) for e in truth if parent.get(e.child) != e.parent]
    return TreeScore(
        untyped=prf(undirected, true_undirected),
        typed=prf({(frozenset((e.parent, e.child)), e.kind) for e in found},
                  {(frozenset((e.parent, e.child)), e.kind) for e in truth}),
        directed=prf({(e.parent, e.child) for e in found}, right),
        top1_parent=1.0 - len(wrong) / len(truth) if truth else 1.0,
        ari=adjusted_rand_index(_components(models, truth), _components(models, found)),
        edges=len(found), truth_edges=len(truth), evidenced=len(evidenced),
        evidenced_right=sum((e.parent, e.child) in right for e in evidenced), wrong_parents=wrong,
    )


def prf(found: set, truth: set) -> tuple[float, float, float]:
    """Precision, recall and F1 of ``found`` against ``truth``."""
    hit = len(found & truth)
    precision = hit / len(found) if found else 0.0
    recall = hit / len(truth) if truth else 0.0
    return precision, recall, (2 * precision * recall / (precision + recall) if hit else 0.0)


def adjusted_rand_index(truth: list[list[str]], found: list[list[str]]) -> float:
    """ARI of two partitions (items missing from one side are singletons there): Hubert and Arabie's
    correction of the Rand index for chance, from the contingency table."""
    label_t = {m: i for i, c in enumerate(truth) for m in c}
    label_f = {m: i for i, c in enumerate(found) for m in c}
    items = sorted(set(label_t) | set(label_f))
    if len(items) < 2:
        return 1.0
    t = [label_t.get(m, ("alone", m)) for m in items]
    f = [label_f.get(m, ("alone", m)) for m in items]
    pairs = sum(comb(n, 2) for n in Counter(zip(t, f)).values())
    rows, cols = sum(comb(n, 2) for n in Counter(t).values()), sum(comb(n, 2) for n in Counter(f).values())
    expected = rows * cols / comb(len(items), 2)
    top = (rows + cols) / 2
    return 1.0 if top == expected else (pairs - expected) / (top - expected)


def _components(models: list[str], edges: list[Edge]) -> list[list[str]]:
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(models)
    g.add_edges_from((e.parent, e.child) for e in edges)
    return [sorted(c) for c in nx.connected_components(g)]
