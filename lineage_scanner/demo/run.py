"""``lineage demo``: build the zoo, scan it into the store, and show how well lineage is recovered."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lineage_scanner.demo.zoo import build_zoo, family_roots
from lineage_scanner.lineage.null import null_for
from lineage_scanner.lineage.verdict import decide
from lineage_scanner.report.plot import plot_curves
from lineage_scanner.run.batch import ScanConfig, run_batch
from lineage_scanner.run.ray import RayExecutor
from lineage_scanner.store.store import Store


@dataclass
class DemoRow:
    model: str
    relation: str
    parent: str
    paper_score: float
    score: float
    verdict: str
    kind: str | None
    #: the best match by score is in the model's family: the lineage family is right
    family_hit: bool


@dataclass
class DemoReport:
    rows: list[DemoRow]
    plot: Path
    #: highest score between models of different families, by each method: the false-alarm level
    stranger_paper: float
    stranger_score: float
    stranger_verdicts: dict[str, int]


def run_demo(out: str | Path, store: Store, backend: str = "auto", progress: bool = True) -> DemoReport:
    """Build the zoo, scan it through Ray (a local one unless RAY_ADDRESS names a cluster), report."""
    entries = build_zoo(out)
    summary = run_batch([e.path for e in entries], store, RayExecutor(), config=ScanConfig(backend), progress=progress)
    if summary.failed:
        raise RuntimeError(f"demo zoo failed to scan: {summary.failed[0].error}")
    names = {e.model for e in entries}
    sigs = {s.model: s for s in store.signatures() if s.model in names}
    root = family_roots(entries)

    def judge(a: str, b: str):
        return decide(sigs[a], sigs[b], null_for(store, sigs[a], sigs[b]))

    rows = []
    for e in entries:
        if e.parent is None:
            continue
        v = judge(e.model, e.parent)
        others = [(judge(e.model, n).evidence.score, n) for n in sigs if n != e.model]
        best = max((s, n) for s, n in others if math.isfinite(s))[1]
        rows.append(DemoRow(e.model, e.relation, e.parent, v.paper.score, v.evidence.score, v.verdict, v.kind,
                            root[best] == root[e.model]))
    strangers = [judge(a, b) for a in sorted(sigs) for b in sorted(sigs) if a < b and root[a] != root[b]]
    verdicts: dict[str, int] = {}
    for v in strangers:
        verdicts[v.verdict] = verdicts.get(v.verdict, 0) + 1
    first = next(r for r in rows if r.relation == "continued")
    plot = plot_curves([sigs[first.parent], sigs[first.model]], Path(out) / "compare.png",
                       title=f"{first.parent} vs {first.model}: {first.verdict}, score {first.score:.3f}, "
                             f"paper_score {first.paper_score:.3f}")
    return DemoReport(rows, plot, max(v.paper.score for v in strangers),
                      max(v.evidence.score for v in strangers), verdicts)
