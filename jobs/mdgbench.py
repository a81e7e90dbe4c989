"""MDGBench on the Hub: scan its 137 models and score clustering and typed dependency edges.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/mdgbench.py --db s3://bucket/mdgbench --bench ../shared/benchmarks/mdgbench

Ground truth (model list, 17 clusters, 131 typed edges) comes from the MDGBench files; models are scanned
from the Hub (what cannot be read, such as LoRA adapters without full weights, stays a singleton).
Families are the connected components of pairs judged ``derived``; dependency edges are their maximum
spanning forest by score (siblings link through their parent). The report gives clustering ARI (over all
benchmark models, and over those scanned) and edge precision/recall/F1, untyped and typed (the relation
from our guess of the kind), next to the published results of other methods.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when run by `ray job submit`

from lineage_scanner.lineage.graph import Edge, families, spanning_forest  # noqa: E402
from lineage_scanner.lineage.null import null_for  # noqa: E402
from lineage_scanner.lineage.verdict import decide  # noqa: E402
from lineage_scanner.run.batch import run_batch
from lineage_scanner.run.ray import RayExecutor  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402

PUBLISHED = {"ARI": {"seed std method (PDF)": 0.52, "HuRef": 0.69, "MoTHer": 0.50, "REEF": 0.29, "TensorLock": 0.96},
             "F1": {"TensorLock": 0.78, "MoTHer": 0.04}}
#: our guess of the kind of derivation -> MDGBench's relation names
RELATION = {"quantized copy": "qtz", "fine-tune": "finetune", "continued training": "finetune",
            "pruned or depth up-scaled": "finetune", "MoE upcycle": "merge",
            "rescaled weights (possible evasion)": "finetune"}


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


def adjusted_rand_index(truth: list[list[str]], found: list[list[str]]) -> float:
    """ARI of two partitions of the same items (items missing from one side are singletons there)."""
    from sklearn.metrics import adjusted_rand_score

    items = sorted({m for c in truth for m in c} | {m for c in found for m in c})
    label_t = {m: i for i, c in enumerate(truth) for m in c}
    label_f = {m: i for i, c in enumerate(found) for m in c}
    return float(adjusted_rand_score([label_t.get(m, f"only-{m}") for m in items],
                                     [label_f.get(m, f"only-{m}") for m in items])) if len(items) > 1 else 1.0


def prf(found: set, truth: set) -> tuple[float, float, float]:
    hit = len(found & truth)
    precision = hit / len(found) if found else 0.0
    recall = hit / len(truth) if truth else 0.0
    return precision, recall, (2 * precision * recall / (precision + recall) if hit else 0.0)


def evaluate(store: Store, models: list[str], clusters, truth_edges) -> dict:
    sigs = {s.model: s for s in store.signatures() if s.model in set(models)}
    edges = []
    for a, b in combinations(sorted(sigs), 2):
        v = decide(sigs[a], sigs[b], null_for(store, sigs[a], sigs[b]))
        if v.verdict == "derived":
            edges.append(Edge(a, b, v.evidence.score, v.p_value, v.kind))
    edges = spanning_forest(edges)
    found = families(models, edges)
    scanned = set(sigs)
    untyped_truth = {frozenset((a, b)) for a, b, _ in truth_edges}
    typed_truth = {(frozenset((a, b)), rel) for a, b, rel in truth_edges}
    untyped = {frozenset((e.a, e.b)) for e in edges}
    typed = {(frozenset((e.a, e.b)), RELATION.get(e.kind or "", "finetune")) for e in edges}
    return {
        "models": len(models), "scanned": len(scanned), "detected_edges": len(edges),
        "ari_all": adjusted_rand_index(clusters, found),
        "ari_scanned": adjusted_rand_index([[m for m in c if m in scanned] for c in clusters],
                                           [[m for m in c if m in scanned] for c in found]),
        "edges_untyped": prf(untyped, untyped_truth), "edges_typed": prf(typed, typed_truth),
        "families": [f for f in found if len(f) > 1],
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
    for label in ("edges_untyped", "edges_typed"):
        p, rec, f1 = r[label]
        print(f"{label.replace('_', ' ')}: precision {p:.3f} recall {rec:.3f} F1 {f1:.3f}")
    print("published:", "; ".join(f"{metric} {name} {value}" for metric, table in PUBLISHED.items()
                                  for name, value in table.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
