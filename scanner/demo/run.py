"""``lineage demo``: build the zoo, scan it into the store, and show how well lineage is recovered."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scanner.cluster import run_batch
from scanner.demo.zoo import build_zoo
from scanner.lineage import paper_score, rank
from scanner.plot import plot_curves
from scanner.store import Store


@dataclass
class DemoRow:
    model: str
    relation: str
    parent: str
    parent_score: float
    best_match: str
    parent_rank: int | None
    #: the best match is the parent or a sibling: the lineage family is right
    family_hit: bool


@dataclass
class DemoReport:
    rows: list[DemoRow]
    plot: Path
    #: highest paper_score between models of different families: the seed method's false-alarm level
    stranger_score: float
    stranger_pair: tuple[str, str]

    @property
    def top1(self) -> int:
        return sum(r.parent_rank == 1 for r in self.rows)


def run_demo(out: str | Path, store: Store, backend: str = "auto", progress: bool = True) -> DemoReport:
    """Build the zoo, scan it through Ray (a local one unless RAY_ADDRESS names a cluster), report."""
    entries = build_zoo(out)
    summary = run_batch([e.path for e in entries], store, backend=backend, progress=progress)
    if summary.failed:
        raise RuntimeError(f"demo zoo failed to scan: {summary.failed[0].error}")
    sigs = {s.model: s for s in store.curves() if s.model in {e.model for e in entries}}
    root = {e.model: e.parent or e.model for e in entries}
    rows = []
    for e in entries:
        if e.parent is None:
            continue
        query = sigs[e.model]
        ranked = rank(query, list(sigs.values()), top=len(sigs))
        names = [m.model for m in ranked]
        rows.append(DemoRow(e.model, e.relation, e.parent, paper_score(query.curves, sigs[e.parent].curves).score,
                            names[0], names.index(e.parent) + 1, root[names[0]] == e.parent))
    strangers = [(paper_score(sigs[a].curves, sigs[b].curves).score, (a, b))
                 for a in sigs for b in sigs if a < b and root[a] != root[b]]
    stranger_score, stranger_pair = max(strangers)
    first = next(r for r in rows if r.relation == "continued")
    plot = plot_curves([sigs[first.parent], sigs[first.model]], Path(out) / "compare.png",
                       title=f"{first.parent} vs {first.model} (paper_score {first.parent_score:.3f})")
    return DemoReport(rows, plot, stranger_score, stranger_pair)
