"""Family trees: how well `lineage graph` recovers who was made from whom, beside MDGBench's published figures.

Two zoos, each scanned into a fresh store and run through the same code as `lineage graph`
(lineage_scanner.lineage.graph.detect):

- the demo zoo (generated): 5 bases in 4 architectures, each with a fine-tune, a continued-training
  child, a pruned copy, an MoE upcycle and quantized exports; two evasions (permuted heads, rotated
  residual stream); grandchildren (a fine-tune of a continued-training child, a quantized fine-tune).
- trained (bench/tiny_train.py): llama-style bases trained from scratch on this CPU with one recipe and
  one corpus, each with a real fine-tune and a real continued pre-training, a fine-tune of each of
  those (grandchildren), and derivations made from them: a GPTQ copy of the base, an MoE upcycle of the
  base, a Q4_0 GGUF of the fine-tune (a quantized fine-tune), the continued model pruned, the second
  fine-tune depth up-scaled (a great-grandchild); and bases trained alone. Training takes a while the
  first time (checkpoints are kept under --trained).

Per zoo: edge precision/recall/F1 untyped (the two are parent and child), typed (and the kind is right:
fine-tune, quantized, pruned, up-scaled, MoE, evasion), directed (and the parent is the right one); top-1
parent over the models with a parent; family ARI; and of the true edges found, how many had a direction
from evidence (weights or card), and how many of those point the right way. The goals (issue 23):
directed edge F1 >= 0.95, top-1 parent 100% on the demo zoo, ARI 1.0.

    python bench/trees.py [--out bench/data/trees-zoo] [--trained bench/data/trained] [--trained-bases 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tiny_train import RELATIONS, ensure_family  # noqa: E402
from lineage_scanner.demo.derive import prune, upscale  # noqa: E402
from lineage_scanner.demo.quantize import write_quantized  # noqa: E402
from lineage_scanner.demo.writers import write_card, write_gguf, write_hf  # noqa: E402
from lineage_scanner.demo.zoo import build_zoo  # noqa: E402
from lineage_scanner.lineage.graph import detect  # noqa: E402
from lineage_scanner.lineage.treescore import PUBLISHED, Edge, TreeScore, score  # noqa: E402
from lineage_scanner.lineage.verdict import (  # noqa: E402
    CONTINUED,
    FINE_TUNE,
    IDENTICAL,
    NEAR_IDENTICAL,
    REPARAMETRISED,
    REPARAMETRISED_TRAINED,
    ROTATED,
    ROTATED_TRAINED,
    TRAINED_FURTHER,
)
from lineage_scanner.run.batch import run_batch  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402

#: Our kinds of derivation and the zoos' relations, in the classes typed F1 compares.
KIND_CLASS = {FINE_TUNE: "fine-tune", CONTINUED: "fine-tune", TRAINED_FURTHER: "fine-tune",
              "rescaled weights (possible evasion)": "fine-tune", "quantized copy": "quantized", IDENTICAL: "quantized",
              NEAR_IDENTICAL: "quantized",
              "pruned": "pruned", "pruned or depth up-scaled": "pruned", "depth up-scaled": "up-scaled",
              "MoE upcycle": "MoE", REPARAMETRISED: "evasion", REPARAMETRISED_TRAINED: "evasion", ROTATED: "evasion",
              ROTATED_TRAINED: "evasion"}
RELATION_CLASS = {"finetune": "fine-tune", "continued": "fine-tune", "quantized": "quantized", "pruned": "pruned",
                  "upscaled": "up-scaled", "moe_upcycle": "MoE", "permuted": "evasion", "rotated": "evasion"}


def demo_zoo(out: Path) -> tuple[list[str], list[Edge]]:
    """The demo zoo's paths and its true edges."""
    entries = build_zoo(out)
    return [e.path for e in entries], [Edge(e.parent, e.model, RELATION_CLASS[e.relation]) for e in entries
                                       if e.parent]


def trained_zoo(out: Path, trained: Path, bases: int, strangers: int) -> tuple[list[str], list[Edge]]:
    """The trained families (see the module docstring) written under ``out``: paths and true edges. Each
    made model's card declares what it was made from, as publishers of quantized copies do; the trained
    children's cards declare nothing."""
    paths, truth = [], []

    def made(model, parent: str, relation: str, path: Path) -> None:
        write_card(path if path.is_dir() else path.parent, parent)
        paths.append(str(path if path.is_dir() else path.parent))
        truth.append(Edge(parent, model, RELATION_CLASS[relation]))

    for seed in range(bases):
        family = ensure_family(trained, seed)
        for relation, model in family.items():
            paths.append(str(trained / model.name))
            if RELATIONS[relation] is not None:  # trained from RELATIONS[relation][0]
                truth.append(Edge(family[RELATIONS[relation][0]].name, model.name,
                                  RELATION_CLASS[relation.rpartition("-")[2]]))
        base, tuned, heavy, second = (family[r] for r in ("base", "finetune", "continued", "finetune-finetune"))
        made(f"{base.name}-gptq", base.name, "quantized",
             write_quantized(base.renamed(f"{base.name}-gptq"), out / f"{base.name}-gptq", "gptq"))
        made(f"{base.name}-moe", base.name, "moe_upcycle",
             write_hf(base.renamed(f"{base.name}-moe"), out / f"{base.name}-moe", model_type="mixtral"))
        name = f"{tuned.name}-q4_0"
        made(name, tuned.name, "quantized", write_gguf(tuned, out / name / f"{name}.gguf", "Q4_0"))
        name = f"{heavy.name}-pruned"
        made(name, heavy.name, "pruned", write_hf(prune(heavy, name), out / name))
        name = f"{second.name}-up"
        made(name, second.name, "upscaled", write_hf(upscale(second, name), out / name))
    for seed in range(bases, bases + strangers):
        paths.append(str(trained / ensure_family(trained, seed, children=False)["base"].name))
    return paths, truth


def evaluate(name: str, paths: list[str], truth: list[Edge], db: Path) -> tuple[TreeScore, float]:
    shutil.rmtree(db, ignore_errors=True)
    store = Store(db)
    summary = run_batch(paths, store, progress=False)
    if summary.failed:
        raise SystemExit(f"{name}: {summary.failed[0].error}")
    started = time.perf_counter()
    forest = detect(store)
    seconds = time.perf_counter() - started
    found = [Edge(e.parent, e.child, KIND_CLASS[e.kind or "fine-tune"], e.direction != "unknown")
             for e in forest.edges]
    models = [s.model for s in store.signatures()]
    return score(found, truth, models), seconds


def report(name: str, models: int, result: TreeScore, seconds: float) -> None:
    def f(t: tuple[float, float, float]) -> str:
        return "/".join(f"{x:.3f}" for x in t)

    print(f"{name:10} {models:6d} {result.truth_edges:5d} {result.edges:5d}  {f(result.untyped):17}  "
          f"{f(result.typed):17}  {f(result.directed):17}  {result.top1_parent:6.3f}  {result.ari:5.3f}  "
          f"{result.evidenced_right}/{result.evidenced} of {result.edges}  {seconds:6.1f}")
    for child, found, true in result.wrong_parents:
        print(f"    {child}: parent found {found}, true {true}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/data/trees-zoo")
    parser.add_argument("--trained", default="bench/data/trained")
    parser.add_argument("--trained-bases", type=int, default=2)
    parser.add_argument("--trained-strangers", type=int, default=2)
    parser.add_argument("--skip-trained", action="store_true", help="the demo zoo only (no training)")
    args = parser.parse_args()
    out = Path(args.out)
    zoos = {"demo zoo": demo_zoo(out / "demo")}
    if not args.skip_trained:
        zoos["trained"] = trained_zoo(out / "trained", Path(args.trained), args.trained_bases, args.trained_strangers)
    print(f"{'zoo':10} {'models':>6} {'true':>5} {'found':>5}  {'untyped P/R/F1':17}  {'typed P/R/F1':17}  "
          f"{'directed P/R/F1':17}  {'top-1':>6}  {'ARI':>5}  {'direction evidenced':>19}  graph s")
    for name, (paths, truth) in zoos.items():
        result, seconds = evaluate(name, paths, truth, out / f"store-{name.replace(' ', '-')}")
        report(name, len(paths), result, seconds)
    print("published on MDGBench (137 public models; not these zoos): "
          + "; ".join(f"{method} " + ", ".join(f"{k} {v}" for k, v in figures.items())
                      for method, figures in PUBLISHED.items()))


if __name__ == "__main__":
    main()
