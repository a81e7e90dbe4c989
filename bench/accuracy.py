"""Accuracy of lineage detection: `paper_score`, the curve score, the sketch and the verdict, on a generated
and CPU-trained zoo.

Generated: six base families (four llama-style bases that share an architecture and differ only in their
seed, one qwen2, one phi3), each with derived models: light and heavy drift, pruned, depth up-scaled, MoE
upcycle, quantized GGUF (Q8_0, Q4_0), quantized safetensors (GPTQ, AWQ, fp8, bitsandbytes int8 and NF4),
rescaled (Q·a, K/a, V·b, O/b), norm-folded, heads permuted, residual stream rotated, and two combinations
(rescaled after heavy drift, pruned after norm folding); and twelve more llama-style bases without children.

Trained (bench/tiny_train.py): twelve llama-style bases trained from scratch on this CPU with one recipe
and one corpus, different seeds; four of them with a real fine-tune and a real continued pre-training,
grandchildren (a fine-tune of each of those, paired here with the base, their ancestor), and from those:
a GPTQ copy and a Q4_0 GGUF of the base, the fine-tune rescaled, the continued model pruned, the base
norm-folded; and five BERT-style encoders of different depths and widths (4-12 layers,
hidden 64-128), trained apart, two with a real fine-tune. Training takes about 80 core-minutes the first
time (measured one thread per model); checkpoints are kept under --trained.

Verdicts are reported twice: against the built-in synthetic null, and against the null of a store
holding the whole zoo with each derived model's card declaring its parent.

Positives: each derived model with its parent. Negatives: every pair of models from different families.
Reports AUROC, TPR at 1% FPR and top-1 parent attribution (the parent scores highest among all bases), per
method (the verdict's score is -log10 of its deciding p-value), the false-positive rate of `derived` among
unrelated pairs (all, same-shape, different-shape), for the whole zoo and for the trained models alone, and
the positives that fall short of `derived`.

    python bench/accuracy.py [--out bench/data/accuracy-zoo] [--trained bench/data/trained] [--trained-bases 4]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tiny_train import ensure_encoders, ensure_family  # noqa: E402
from lineage_scanner.demo.derive import (  # noqa: E402
    drift,
    fold_norms,
    permute_heads,
    prune,
    rescale,
    rotate_residual,
    upscale,
)
from lineage_scanner.demo.quantize import SCHEMES, write_quantized  # noqa: E402
from lineage_scanner.demo.writers import write_gguf, write_hf  # noqa: E402
from lineage_scanner.lineage.generator import base_model  # noqa: E402
from lineage_scanner.lineage.null import null_for, synthetic  # noqa: E402
from lineage_scanner.lineage.verdict import decide  # noqa: E402
from lineage_scanner.measure.kernels import get_backend  # noqa: E402
from lineage_scanner.run.scan import scan_strict  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402

BASES = [("llama-1", "llama", 101), ("llama-2", "llama", 102), ("llama-3", "llama", 103), ("llama-4", "llama", 104),
         ("qwen2-1", "qwen2", 201), ("phi3-1", "phi3", 301)]
#: Independent bases without children: negatives, and the declared families a store's null needs.
STRANGERS = [(f"llama-s{i}", "llama", 110 + i) for i in range(12)]


def derivations(base, seed: int):
    yield "finetune", drift(base, f"{base.name}-ft", seed + 1, 0.05, 0.01), None
    heavy = drift(base, f"{base.name}-ct", seed + 2, 0.3, 0.08)
    yield "continued", heavy, None
    yield "pruned", prune(drift(base, f"{base.name}-pruned", seed + 3, 0.05, 0.01), f"{base.name}-pruned"), None
    yield "upscaled", upscale(drift(base, f"{base.name}-up", seed + 4, 0.05, 0.01), f"{base.name}-up"), None
    yield "moe_upcycle", drift(base, f"{base.name}-moe", seed + 5, 0.05, 0.01), "mixtral"
    yield "rescaled", rescale(base, f"{base.name}-rescaled", seed + 6), None
    yield "folded", fold_norms(base, f"{base.name}-folded"), None
    yield "rescaled+continued", rescale(heavy, f"{base.name}-ct-rescaled", seed + 7), None
    yield "folded+pruned", prune(fold_norms(base, f"{base.name}-fp"), f"{base.name}-fp"), None
    yield "permuted", permute_heads(base, f"{base.name}-permuted", seed + 8), None
    yield "rotated", rotate_residual(base, f"{base.name}-rotated", seed + 9), None


def build(out: Path, trained: Path, trained_bases: int, trained_strangers: int
          ) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """Write the zoo; returns (model, parent, relation) rows and each model's path."""
    truth, paths = [], {}
    for name, style, seed in STRANGERS:
        paths[name] = str(write_hf(base_model(name, style, seed, 12), out / name))
    for seed in range(trained_bases, trained_bases + trained_strangers):
        paths[ensure_family(trained, seed, children=False)["base"].name] = str(trained / f"trained-{seed}")
    for name, style, seed in BASES:
        base = base_model(name, style, seed, 12)
        paths[name] = str(write_hf(base, out / name))
        for relation, child, model_type in derivations(base, seed * 10):
            paths[child.name] = str(write_hf(child, out / child.name, model_type=model_type))
            truth.append((child.name, name, relation))
        for qtype in ("Q8_0", "Q4_0"):
            model = f"{name}-{qtype.lower()}"
            paths[model] = str(write_gguf(base, out / model / f"{model}.gguf", qtype))
            truth.append((model, name, "quantized"))
        for scheme in SCHEMES:
            model = f"{name}-{scheme}"
            paths[model] = str(write_quantized(base.renamed(model), out / model, scheme))
            truth.append((model, name, f"quantized {scheme}"))
    for seed in range(trained_bases):
        family = ensure_family(trained, seed)
        base = family["base"]
        paths[base.name] = str(trained / base.name)
        for relation in ("finetune", "continued", "continued-finetune", "finetune-finetune"):
            # children and grandchildren, each paired with the base (its ancestor) as every row here is
            paths[family[relation].name] = str(trained / family[relation].name)
            truth.append((family[relation].name, base.name, f"trained {relation}"))
        made = [
            ("trained rescaled finetune", rescale(family["finetune"], f"{base.name}-ft-rescaled", seed), None),
            ("trained pruned continued", prune(family["continued"], f"{base.name}-ct-pruned"), None),
            ("trained folded", fold_norms(base, f"{base.name}-folded"), None),
            ("trained permuted", permute_heads(family["finetune"], f"{base.name}-ft-permuted", seed), None),
            ("trained rotated", rotate_residual(base, f"{base.name}-rotated", seed), None),
        ]
        for relation, child, _ in made:
            paths[child.name] = str(write_hf(child, out / child.name))
            truth.append((child.name, base.name, relation))
        name = f"{base.name}-gptq"
        paths[name] = str(write_quantized(base.renamed(name), out / name, "gptq"))
        truth.append((name, base.name, "trained quantized gptq"))
        name = f"{base.name}-q4_0"
        paths[name] = str(write_gguf(base, out / name / f"{name}.gguf", "Q4_0"))
        truth.append((name, base.name, "trained quantized"))
    for name, (path, parent) in ensure_encoders(trained).items():
        paths[name] = str(path)
        if parent:
            truth.append((name, parent, "trained encoder finetune"))
    return truth, paths


def _finite(x: float) -> float:
    """A score that could not be computed (flat curves) counts as the lowest possible."""
    return x if math.isfinite(x) else -1.0


def auroc(pos: list[float], neg: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([1] * len(pos) + [0] * len(neg), [*pos, *neg]))


def tpr_at(pos: list[float], neg: list[float], fpr: float = 0.01) -> float:
    threshold = np.quantile(np.asarray(neg), 1 - fpr)
    return float(np.mean(np.asarray(pos) > threshold))


METHODS = {
    "paper_score": lambda v: v.paper.score,
    "curve score": lambda v: v.evidence.score,
    "sketch": lambda v: v.sketch.score if v.sketch else math.nan,
    "verdict": lambda v: -v.log10_p,  # how strongly the deciding evidence speaks for derivation
}


def report(title: str, sigs: dict, truth: list[tuple[str, str, str]], root: dict[str, str], bases: list[str],
           judges: dict) -> None:
    """Scores (the same under any null) once; verdicts under each null in ``judges``."""
    judge = next(iter(judges.values()))
    positives = [(m, parent, rel, judge(m, parent)) for m, parent, rel in truth]
    names = sorted(sigs)
    unrelated = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if root[a] != root[b]]
    negatives = [judge(a, b) for a, b in unrelated]
    print(f"\n{title}: {len(sigs)} models; {len(positives)} derived pairs, {len(negatives)} unrelated pairs "
          f"({sum(v.sketch is not None for v in negatives)} of them with a shared matrix shape)")
    print(f"{'method':12} {'AUROC':>7} {'TPR@1%FPR':>10} {'top-1 parent':>13}")
    for method, get in METHODS.items():
        pos = [_finite(get(v)) for *_, v in positives]
        neg = [_finite(get(v)) for v in negatives]
        candidates = [b for b in bases if b in sigs]
        top1 = np.mean([max(candidates, key=lambda b: _finite(get(judge(m, b)))) == parent
                        for m, parent, _, _ in positives])
        print(f"{method:12} {auroc(pos, neg):7.4f} {tpr_at(pos, neg):10.3f} {top1:13.3f}")
    print(f"highest unrelated curve score {np.nanmax([v.evidence.score for v in negatives]):.3f}, "
          f"highest unrelated paper_score {np.nanmax([v.paper.score for v in negatives]):.3f}")  # nan: flat curves
    for label, judge in judges.items():
        verdicts = [judge(a, b) for a, b in unrelated]
        counts: dict[str, int] = {}
        for v in verdicts:
            counts[v.verdict] = counts.get(v.verdict, 0) + 1
        same = [v for v in verdicts if v.sketch is not None]
        other = [v for v in verdicts if v.sketch is None]
        fpr = {name: sum(v.verdict == "derived" for v in group) / max(len(group), 1)
               for name, group in (("all", verdicts), ("same shape", same), ("other shapes", other))}
        missed = [(m, judge(m, parent).verdict) for m, parent, _ in truth if judge(m, parent).verdict != "derived"]
        tpr = 1 - len(missed) / len(truth)
        print(f"verdicts, {label} null: unrelated pairs {counts}; FPR of derived "
              + ", ".join(f"{k} {x:.4f}" for k, x in fpr.items())
              + f"; TPR {tpr:.3f}; derived pairs not judged derived: {missed or 0}")
    print(f"{'relation':28} {'pairs':>5} {'derived':>8} {'by sketch':>9} {'min sketch':>10} {'min score':>10} "
          f"{'min paper':>10}  kinds")
    for relation in dict.fromkeys(rel for _, _, rel, _ in positives):
        group = [v for _, _, rel, v in positives if rel == relation]
        sketch = [v.sketch.score for v in group if v.sketch]
        kinds = sorted({str(v.kind) for v in group})
        print(f"{relation:28} {len(group):5d} {sum(v.verdict == 'derived' for v in group):8d} "
              f"{sum(v.decided_by == 'sketch' for v in group):9d} {min(sketch) if sketch else math.nan:10.3f} "
              f"{min(v.evidence.score for v in group):10.3f} {min(v.paper.score for v in group):10.3f}  {kinds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/data/accuracy-zoo")
    parser.add_argument("--trained", default="bench/data/trained")
    parser.add_argument("--trained-bases", type=int, default=4)
    parser.add_argument("--trained-strangers", type=int, default=8)
    args = parser.parse_args()
    truth, paths = build(Path(args.out), Path(args.trained), args.trained_bases, args.trained_strangers)
    backend = get_backend("cpu")
    sigs = {m: scan_strict(p, backend, set())[1] for m, p in paths.items()}
    encoders = [m for m in paths if m.startswith("encoder-") and not m.endswith("-finetune")]
    trained_bases = [f"trained-{seed}" for seed in range(args.trained_bases + args.trained_strangers)] + encoders
    bases = [b for b, _, _ in BASES + STRANGERS] + trained_bases
    root = {b: b for b in bases} | {m: parent for m, parent, _ in truth}
    for model, parent, _ in truth:  # as the cards of a well-kept store would declare
        sigs[model].declared_base = [parent]
    shutil.rmtree(Path(args.out) / "store", ignore_errors=True)
    store = Store(Path(args.out) / "store")
    store.write(sigs.values())
    cache: dict[tuple[str, str, str], object] = {}

    def judge_with(null: str):
        def judge(a: str, b: str):
            key = (null, a, b)
            if key not in cache:
                cache[key] = decide(sigs[a], sigs[b], null_for(store, sigs[a], sigs[b]) if null == "store" else
                                      synthetic(sigs[a].n_layers, sigs[b].n_layers))
            return cache[key]
        return judge

    judges = {"synthetic": judge_with("synthetic"), "store": judge_with("store")}
    report("whole zoo", sigs, truth, root, bases, judges)
    trained = {m: s for m, s in sigs.items() if root[m] in trained_bases}
    report("trained on this CPU only", trained, [t for t in truth if t[1] in trained_bases], root, trained_bases,
           judges)


if __name__ == "__main__":
    main()
