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
from math import comb
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when run by `ray job submit`

from scanner.cluster import run_batch  # noqa: E402
from scanner.evidence import decide  # noqa: E402
from scanner.graph import Edge, families  # noqa: E402
from scanner.null import null_for  # noqa: E402
from scanner.store import Store  # noqa: E402

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
    items = sorted({m for c in truth for m in c} | {m for c in found for m in c})
    label_t = {m: i for i, c in enumerate(truth) for m in c}
    label_f = {m: i for i, c in enumerate(found) for m in c}
    table: dict[tuple, int] = {}
    for m in items:
        key = (label_t.get(m, ("t", m)), label_f.get(m, ("f", m)))
        table[key] = table.get(key, 0) + 1
    rows: dict = {}
    cols: dict = {}
    for (t, f), n in table.items():
        rows[t] = rows.get(t, 0) + n
        cols[f] = cols.get(f, 0) + n
    index = sum(comb(n, 2) for n in table.values())
    sum_rows, sum_cols = sum(comb(n, 2) for n in rows.values()), sum(comb(n, 2) for n in cols.values())
    expected = sum_rows * sum_cols / comb(len(items), 2) if len(items) > 1 else 0.0
    maximum = (sum_rows + sum_cols) / 2
    return 1.0 if maximum == expected else (index - expected) / (maximum - expected)


def spanning_forest(edges: list[Edge]) -> list[Edge]:
    """Dependencies, not all relatives: the maximum spanning forest of the derived pairs (by score), so
    siblings link through their parent instead of to each other (Kruskal)."""
    root: dict[str, str] = {}

    def find(x: str) -> str:
        root.setdefault(x, x)
        while root[x] != x:
            root[x] = root[root[x]]
            x = root[x]
        return x

    kept = []
    for e in sorted(edges, key=lambda e: -e.score):
        a, b = find(e.a), find(e.b)
        if a != b:
            root[a] = b
            kept.append(e)
    return kept


def prf(found: set, truth: set) -> tuple[float, float, float]:
    hit = len(found & truth)
    precision = hit / len(found) if found else 0.0
    recall = hit / len(truth) if truth else 0.0
    return precision, recall, (2 * precision * recall / (precision + recall) if hit else 0.0)


def evaluate(store: Store, models: list[str], clusters, truth_edges) -> dict:
    sigs = {s.model: s for s in store.curves() if s.model in set(models)}
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
    summary = run_batch([f"hf://{m}" for m in models], store, workers=args.workers, progress=False,
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
