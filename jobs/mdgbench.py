"""MDGBench on the Hub: scan its 137 models and score clustering and typed dependency edges.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/mdgbench.py --db s3://bucket/mdgbench --bench ../shared/benchmarks/mdgbench

Ground truth (model list, 17 clusters, 131 typed edges) comes from the MDGBench files; models are scanned
from the Hub (what cannot be read, such as LoRA adapters without full weights, stays a singleton).
Every pair is judged; the pairs judged ``derived`` make the family trees `lineage graph` makes (one parent
per model, each edge typed and directed: :mod:`lineage_scanner.lineage.tree`). The report gives
clustering ARI (over all benchmark models, and over those scanned) and edge precision/recall/F1 (untyped,
typed with our kinds mapped to the benchmark's relations, and directed), next to the published results of
other methods.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when run by `ray job submit`

from lineage_scanner.lineage.null import null_for  # noqa: E402
from lineage_scanner.lineage.tree import Link, build  # noqa: E402
from lineage_scanner.lineage.treescore import PUBLISHED, Edge, adjusted_rand_index, score  # noqa: E402
from lineage_scanner.lineage.verdict import CONTINUED, FINE_TUNE, TRAINED_FURTHER, decide, quantized  # noqa: E402
from lineage_scanner.run.batch import run_batch  # noqa: E402
from lineage_scanner.run.ray import RayExecutor  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402

#: our guess of the kind of derivation -> MDGBench's relation names
RELATION = {"quantized copy": "qtz", FINE_TUNE: "finetune", CONTINUED: "finetune", TRAINED_FURTHER: "finetune",
            "pruned": "finetune", "depth up-scaled": "finetune", "pruned or depth up-scaled": "finetune",
            "MoE upcycle": "merge", "rescaled weights (possible evasion)": "finetune"}


def load_truth(bench: Path) -> tuple[list[str], list[list[str]], list[tuple[str, str, str]]]:
    models = json.loads((bench / "model_list.json").read_text())["models"]
    clusters = json.loads((bench / "cluster.json").read_text())
    by_flat = {m.replace("/", "_"): m for m in models}
    edges = []
    with open(bench / "model_relation.csv") as f:
        for row in csv.DictReader(f):
            a, b = by_flat.get(row["Base Model"].strip()), by_flat.get(row["Derived Model"].strip())
            if a and b:
                edges.append((a, b, row["Relation"].strip()))
    return models, clusters, edges


def evaluate(store: Store, models: list[str], clusters, truth_edges) -> dict:
    sigs = {s.model: s for s in store.signatures() if s.model in set(models)}
    links = []
    for a, b in combinations(sorted(sigs), 2):
        v = decide(sigs[a], sigs[b], null_for(store, sigs[a], sigs[b]))
        if v.verdict == "derived":
            links.append(Link.judged(sigs[a], sigs[b], v))
    forest = build(sorted(sigs), links, [m for m, s in sigs.items() if quantized(s)],
                   {m: list(s.declared_base or []) for m, s in sigs.items()})
    found = [Edge(e.parent, e.child, RELATION.get(e.kind or "", "finetune"), e.direction != "unknown")
             for e in forest.edges]
    result = score(found, [Edge(a, b, rel) for a, b, rel in truth_edges], models)
    families = [list(f.members) for f in forest.families]
    scanned = set(sigs)
    return {
        "models": len(models), "scanned": len(scanned), "detected_edges": len(found),
        "ari_all": adjusted_rand_index(clusters, families),
        "ari_scanned": adjusted_rand_index([[m for m in c if m in scanned] for c in clusters],
                                           [[m for m in c if m in scanned] for c in families]),
        "edges_untyped": result.untyped, "edges_typed": result.typed, "edges_directed": result.directed,
        "top1_parent": result.top1_parent, "families": [f for f in families if len(f) > 1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--bench", default=str(Path(__file__).resolve().parents[2] / "shared/benchmarks/mdgbench"))
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    models, clusters, truth_edges = load_truth(Path(args.bench))
    store = Store(args.db)
    summary = run_batch([f"hf://{m}" for m in models], store, RayExecutor(args.workers), progress=True,
                        keep_records=False)
    print(f"[lineage] scanned {summary.scanned - summary.n_failed} of {len(models)} "
          f"({summary.n_failed} failed: gated, adapters without weights, unreachable)", flush=True)
    r = evaluate(store, models, clusters, truth_edges)
    print(f"clustering ARI: {r['ari_all']:.3f} over all {r['models']} models, "
          f"{r['ari_scanned']:.3f} over the {r['scanned']} scanned")
    for label in ("edges_untyped", "edges_typed", "edges_directed"):
        p, rec, f1 = r[label]
        print(f"{label.replace('_', ' ')}: precision {p:.3f} recall {rec:.3f} F1 {f1:.3f}")
    print(f"top-1 parent: {r['top1_parent']:.3f}")
    print("published:", "; ".join(f"{name} {metric} {value}" for name, table in PUBLISHED.items()
                                  for metric, value in table.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
