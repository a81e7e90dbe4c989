"""Fine-tune or continued training from a sampled scan: how often the kind lands on the wrong side.

The kind of a float derivation is told by how far the projections' stds moved, against a line at 3%
(lineage_scanner.lineage.verdict.training_kind). A sampled scan's errors are as large as that line, so this
benchmark scans the generated zoo's fine-tunes and continued-training children exactly and sampled (each
repetition under a fresh key: the sample's positions, and so its errors, differ every time), judges each
against its parent, and counts the kinds per true relation for two rules on the same signatures:

- baseline: the median raw move against the line (the rule before the scans' errors were counted);
- now: ``training_kind`` (moves net of both scans' errors, "too close to tell" within two standard errors).

A kind on the wrong side is "fine-tune" for continued training or the reverse; "too close to tell" is
not wrong. The goal: none on the wrong side, and exact scans' kinds unchanged.

    python bench/sampled_kinds.py [--hidden 384] [--families 2] [--reps 3] [--fractions 0.02 0.05]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lineage_scanner.demo.zoo import FAMILIES, build_zoo  # noqa: E402
from lineage_scanner.lineage.null import synthetic  # noqa: E402
from lineage_scanner.lineage.verdict import (  # noqa: E402
    CONTINUED,
    FINE_TUNE,
    FINE_TUNE_DRIFT,
    TRAINED_FURTHER,
    decide,
)
from lineage_scanner.measure.kernels import get_backend  # noqa: E402
from lineage_scanner.measure.sampling import SamplePlan  # noqa: E402
from lineage_scanner.measure.sketch import SketchKey  # noqa: E402
from lineage_scanner.run.scan import scan_strict  # noqa: E402

TRUE_KIND = {"finetune": FINE_TUNE, "continued": CONTINUED}


def baseline_kind(a, b, alignment: list[tuple[int, int]]) -> str:
    """The rule before errors counted: the median raw |Δ log std| per matrix against the line."""
    moves = [abs(a.invariants[f][i] - b.invariants[f][j]) / 2 for f in ("qk", "vo") for i, j in alignment]
    return FINE_TUNE if np.nanmedian(moves) < FINE_TUNE_DRIFT else CONTINUED


def outcome(kind: str, truth: str) -> str:
    return "too close" if kind == TRAINED_FURTHER else ("right" if kind == truth else "WRONG")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--families", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.05])
    args = parser.parse_args()
    started = time.perf_counter()
    backend = get_backend("cpu")
    zoo = build_zoo(Path(tempfile.mkdtemp(prefix="sampled-kinds-")), hidden=args.hidden,
                    families=FAMILIES[: args.families])
    by_name = {e.model: e for e in zoo}
    children = [e for e in zoo if e.parent and e.relation in TRUE_KIND]
    counts: Counter = Counter()
    wrong: Counter = Counter()  # (rule, model, kind) of every kind on the wrong side
    exact_changed = 0
    for _ in range(args.reps):
        key = SketchKey.fresh()
        exact = {e.model: scan_strict(e.path, backend, set(), sketch_key=key)[1] for e in zoo}
        for e in children:
            parent, truth = exact[e.parent], TRUE_KIND[e.relation]
            pairs = [(i, i) for i in range(min(parent.n_layers, exact[e.model].n_layers))]
            judged = decide(exact[e.model], parent, synthetic(parent.n_layers, parent.n_layers)).kind
            exact_changed += judged != baseline_kind(exact[e.model], parent, pairs)
            for fraction in args.fractions:
                plan = SamplePlan(fraction=fraction)
                sampled = scan_strict(by_name[e.model].path, backend, set(), sample=plan, sketch_key=key)[1]
                kinds = {"now": decide(sampled, parent, synthetic(parent.n_layers, parent.n_layers)).kind,
                         "baseline": baseline_kind(sampled, parent, pairs)}
                for rule, kind in kinds.items():
                    counts[(rule, fraction, e.relation, outcome(kind, truth))] += 1
                    if outcome(kind, truth) == "WRONG":
                        wrong[(rule, f"{fraction:.0%}", e.model, kind)] += 1
    print(f"zoo: hidden {args.hidden}, {len(children)} children ({args.families} families), {args.reps} keys")
    print("| rule | sample | true relation | right | too close to tell | wrong side |")
    print("|---|---|---|---|---|---|")
    for rule in ("baseline", "now"):
        for fraction in args.fractions:
            for relation in TRUE_KIND:
                row = [counts[(rule, fraction, relation, o)] for o in ("right", "too close", "WRONG")]
                print(f"| {rule} | {fraction:.0%} | {relation} | " + " | ".join(map(str, row)) + " |")
    for (rule, fraction, model, kind), n in sorted(wrong.items()):
        print(f"wrong side ({rule}, {fraction}): {model} named {kind!r} x{n}")
    print(f"exact scans whose kind differs between the rules: {exact_changed} of {len(children) * args.reps}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
