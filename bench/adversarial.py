"""The attack matrix (issue 21): how often each attack on lineage evidence gets the verdict it is after.

For each attack class and strength, many instances are made (lineage_scanner.demo.attacks), written as
Hugging Face checkpoints, scanned as a user's scan reads them (``scan_strict``, CPU backend) and judged
against the model they are about by :func:`judge`, the one function a new engine replaces. Reported: the
rate of ``derived``, ``unrelated`` and ``inconclusive``, beside the goal the issue sets:

- disguises (function-preserving maps of a copy, or of a fine-tune): ``derived`` in at least 99%. Each
  disguised copy is run through lineage_scanner.demo.forward first and must give the logits of the model it
  was made from to 1e-9; one that does not stops the run (a bug of the harness, never a result);
- forgeries (an unrelated model given a base's values or curves): ``derived`` never;
- scrubs (a fine-tune with a few values replaced): ``unrelated`` never;
- unrelated pairs trained apart: ``derived`` in at most 0.1%, and never between models of one shape.

Models: (a) trained from scratch on this CPU (bench/tiny_train.py: seeds 0-2 with a real fine-tune and a real
continued pre-training, seeds 3-5 alone; read from ``--trained``, trained there only if missing), interleaved
rotary pairs as they were trained; (b) the demo generator's llama-style models (hidden 512, 8 heads, 2 KV
heads, 8 layers, MLP 1024), with simulated fine-tunes (lineage_scanner.demo.derive.drift), Hugging Face's
rotary convention.

    python bench/adversarial.py [--trained bench/data/trained] [--reps 10] [--md bench/data/adversarial.md]
    python bench/adversarial.py --quick  # about two minutes: generated models only, one of each
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
#: The forward passes multiply 24 tokens by a matrix: BLAS threads only spin against each other there (on a
#: loaded 2-core machine one thread was 10-20x faster). Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from bench.tiny_train import ensure_family  # noqa: E402
from lineage_scanner.demo import attacks  # noqa: E402
from lineage_scanner.demo.derive import drift  # noqa: E402
from lineage_scanner.demo.forward import function_gap  # noqa: E402
from lineage_scanner.demo.writers import write_hf  # noqa: E402
from lineage_scanner.lineage.generator import ToyModel, base_model  # noqa: E402
from lineage_scanner.lineage.null import synthetic  # noqa: E402
from lineage_scanner.lineage.verdict import Verdict  # noqa: E402
from lineage_scanner.measure.kernels import get_backend  # noqa: E402
from lineage_scanner.measure.sketch import SketchKey  # noqa: E402
from lineage_scanner.run.scan import scan_strict  # noqa: E402
from lineage_scanner.run.verify import judge as verified_judge  # noqa: E402
from lineage_scanner.signature.record import Signature  # noqa: E402

#: A disguise must give the logits of the model it was made from to this (relative, float64).
SAME_FUNCTION = 1e-9
VERDICTS = ("derived", "unrelated", "inconclusive")
#: The store's secret key: every model is scanned at its positions. An adversary aims at a key of his own
#: (his best guess) or, in the leaked-key rows, at this one.
STORE_KEY = SketchKey.fresh()


def judge(a: Signature, b: Signature) -> Verdict:
    """The verdict under test, of ``b`` about ``a``: the engine as ``lineage compare`` runs it (stored
    sketches under the store's key, deep verification at fresh positions where they ask for it) against the
    built-in synthetic null at the pair's depths. The one function to swap for another engine; the harness
    reads only the result's ``verdict`` and ``kind``. Each signature's ``source`` is its checkpoint, still
    on disk, for an engine that reads the weights again."""
    return verified_judge(a, b, None, "cpu", "auto", null=synthetic(a.n_layers or 0, b.n_layers or 0))


@dataclass(frozen=True)
class Family:
    """A base, its fine-tune and its heavy fine-tune (or continued pre-training), the unrelated models of
    its shape a forger may start from, and the rotary convention its function is checked under."""

    name: str
    kind: str  # "trained" | "generated"
    base: ToyModel
    finetune: ToyModel
    heavy: ToyModel
    strangers: tuple[ToyModel, ...]
    rope: str


@dataclass(frozen=True)
class Instance:
    model: ToyModel  # the attacked model, as it would be published
    reference: ToyModel  # the model it is judged against
    start: ToyModel  # the model the attack edited: changed values are counted against it
    keeps_function: bool = False  # a disguise: must compute what ``start`` computes


@dataclass(frozen=True)
class Goal:
    label: str
    verdict: str
    at_least: float = 0.0
    at_most: float = 1.0

    def met(self, rate: float) -> bool:
        return self.at_least <= rate <= self.at_most


DERIVED = Goal("derived ≥ 99%", "derived", at_least=0.99)
NEVER_DERIVED = Goal("derived 0%", "derived", at_most=0.0)
NEVER_UNRELATED = Goal("unrelated 0%", "unrelated", at_most=0.0)
RARELY_DERIVED = Goal("derived ≤ 0.1%", "derived", at_most=0.001)


@dataclass(frozen=True)
class Case:
    group: str  # "control" | "disguise" | "forgery" | "scrub"
    attack: str
    strength: str
    goal: Goal
    make: Callable[[Family, int], Instance]
    seeded: bool = True  # False: one instance per family (the attack draws nothing)


def disguise(transform: Callable[[ToyModel, int, str], ToyModel], start: str = "base"
             ) -> Callable[[Family, int], Instance]:
    """A function-preserving map of the family's base (or its fine-tune), judged against the base."""
    def make(fam: Family, seed: int) -> Instance:
        source = getattr(fam, start)
        return Instance(transform(source, seed, fam.rope), fam.base, source, keeps_function=True)
    return make


def forgery(fraction: float, placement: str, leaked: bool = False) -> Callable[[Family, int], Instance]:
    """A stranger of the base's shape with the base's values at ``fraction`` of positions, in ``placement``
    (for "sketch", at the positions of a key of the forger's own, or with ``leaked`` of the store's key)."""
    def make(fam: Family, seed: int) -> Instance:
        stranger = fam.strangers[seed % len(fam.strangers)]
        key = STORE_KEY if leaked else SketchKey.fresh()
        return Instance(attacks.copy_values(stranger, fam.base, seed, fraction, placement, key), fam.base, stranger)
    return make


def curve_forgery(width: float) -> Callable[[Family, int], Instance]:
    def make(fam: Family, seed: int) -> Instance:
        return Instance(attacks.forge_curves(fam.base, seed, width), fam.base, fam.base)
    return make


def scrubbed(edit: Callable[[ToyModel, int], ToyModel], start: str = "finetune") -> Callable[[Family, int], Instance]:
    """The family's fine-tune (or heavy fine-tune) with a few values edited, judged against the base."""
    def make(fam: Family, seed: int) -> Instance:
        source = getattr(fam, start)
        return Instance(edit(source, seed), fam.base, source)
    return make


def _anchors(model: ToyModel, seed: int, leaked: bool = False) -> ToyModel:
    """The anchor rows of a key (the scrubber's own guess, or with ``leaked`` the store's) replaced by noise."""
    return attacks.scrub(model, seed, 0.0, "anchor rows", STORE_KEY if leaked else SketchKey.fresh())


def _anchors_and_largest(model: ToyModel, seed: int, leaked: bool = False) -> ToyModel:
    return attacks.shrink_largest(_anchors(model, seed, leaked), strength=0.0005)


def cases() -> list[Case]:
    """The attack matrix's rows, cheapest evidence first within each group."""
    def plain(relation: str) -> Callable[[Family, int], Instance]:
        return lambda fam, seed: Instance(getattr(fam, relation), fam.base, getattr(fam, relation))

    rows = [
        Case("control", "fine-tune, no attack", "-", DERIVED, plain("finetune"), seeded=False),
        Case("control", "heavy fine-tune, no attack", "-", DERIVED, plain("heavy"), seeded=False),
        Case("disguise", "head permutation", "all heads, MLP units", DERIVED,
             disguise(lambda m, s, rope: attacks.permute_heads(m, s))),
        Case("disguise", "norm folding", "-", DERIVED, disguise(lambda m, s, rope: attacks.fold_norms(m)),
             seeded=False),
        Case("disguise", "rescaling + norm folding", "x3", DERIVED, disguise(lambda m, s, rope: attacks.rescale(m, s))),
        Case("disguise", "rescaling + norm folding", "x30", DERIVED,
             disguise(lambda m, s, rope: attacks.rescale(m, s, 30.0))),
        Case("disguise", "residual rotation", "25% of coordinates", DERIVED,
             disguise(lambda m, s, rope: attacks.rotate_residual(m, s, 0.25))),
        Case("disguise", "residual rotation", "all coordinates", DERIVED,
             disguise(lambda m, s, rope: attacks.rotate_residual(m, s))),
    ]
    rows += [Case("disguise", "per-group V/O maps", f"condition {c:g}", DERIVED,
                  disguise(lambda m, s, rope, c=c: attacks.map_vo(m, s, c))) for c in (1.0, 4.0, 16.0, 100.0)]
    rows += [Case("disguise", "RoPE-commuting Q/K maps", label, DERIVED,
                  disguise(lambda m, s, rope, x=x: attacks.map_qk(m, s, x, rope)))
             for label, x in (("|c| = 1", 1.0), ("|c| in [1/4, 4]", 4.0))]
    for start, name in (("base", "all combined"), ("finetune", "all combined after a fine-tune")):
        rows += [Case("disguise", name, f"V/O condition {c:g}", DERIVED,
                      disguise(lambda m, s, rope, c=c: attacks.disguise_all(m, s, c, rope), start))
                 for c in (4.0, 100.0)]
    for placement in ("positions", "rows", "matrices"):
        rows += [Case("forgery", f"copied {placement}", f"{f:.1%}", NEVER_DERIVED, forgery(f, placement))
                 for f in (0.005, 0.01, 0.02, 0.05)]
    rows += [Case("forgery", "copied at a guessed key's positions", "all of them", NEVER_DERIVED,
                  forgery(0.0, "sketch")),
             Case("forgery", "copied at the leaked store key's positions", "all of them", NEVER_DERIVED,
                  forgery(0.0, "sketch", leaked=True)),
             Case("forgery", "curves at another width", "hidden x0.75", NEVER_DERIVED, curve_forgery(0.75)),
             Case("forgery", "curves at another width", "hidden x1.5", NEVER_DERIVED, curve_forgery(1.5)),
             Case("scrub", "a guessed key's anchor rows to noise", "-", NEVER_UNRELATED, scrubbed(_anchors)),
             Case("scrub", "the leaked store key's anchor rows to noise", "-", NEVER_UNRELATED,
                  scrubbed(lambda m, s: _anchors(m, s, leaked=True))),
             Case("scrub", "positions to noise", "1%", NEVER_UNRELATED,
                  scrubbed(lambda m, s: attacks.scrub(m, s, 0.01, "positions"))),
             Case("scrub", "positions to noise", "5%", NEVER_UNRELATED,
                  scrubbed(lambda m, s: attacks.scrub(m, s, 0.05, "positions"))),
             Case("scrub", "whole rows to noise", "5%", NEVER_UNRELATED,
                  scrubbed(lambda m, s: attacks.scrub(m, s, 0.05, "rows"))),
             Case("scrub", "largest weights x0.1", "0.05% per layer", NEVER_UNRELATED,
                  scrubbed(lambda m, s: attacks.shrink_largest(m, s, 0.0005)), seeded=False),
             Case("scrub", "anchor rows + largest x0.1", "0.05% per layer", NEVER_UNRELATED,
                  scrubbed(_anchors_and_largest)),
             Case("scrub", "leaked key's anchor rows + largest x0.1", "0.05% per layer", NEVER_UNRELATED,
                  scrubbed(lambda m, s: _anchors_and_largest(m, s, leaked=True))),
             Case("scrub", "anchor rows after a heavy fine-tune", "-", NEVER_UNRELATED, scrubbed(_anchors, "heavy"))]
    return rows


@dataclass
class Tally:
    """The verdicts one row of the matrix collected."""

    group: str
    attack: str
    strength: str
    models: str
    goal: Goal
    verdicts: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    changed: list[float] = field(default_factory=list)

    def add(self, verdict: Verdict, changed: float | None = None) -> None:
        self.verdicts[verdict.verdict] += 1
        if verdict.verdict == "derived":
            self.kinds[verdict.kind] += 1
        if changed is not None:
            self.changed.append(changed)

    @property
    def n(self) -> int:
        return sum(self.verdicts.values())

    def rate(self, verdict: str) -> float:
        return self.verdicts[verdict] / self.n if self.n else float("nan")

    def cells(self) -> list[str]:
        changed = f"{100 * sum(self.changed) / len(self.changed):.2f}%" if self.changed else "-"
        kind = self.kinds.most_common(1)[0][0] if self.kinds else "-"
        return [self.group, self.attack, self.strength, self.models, str(self.n), changed,
                *(f"{100 * self.rate(v):.1f}" for v in VERDICTS), str(kind), self.goal.label,
                "yes" if self.goal.met(self.rate(self.goal.verdict)) else "NO"]


HEADER = ["class", "attack", "strength", "models", "n", "changed", "derived %", "unrelated %", "inconclusive %",
          "usual kind (derived)", "goal", "met?"]


class Scanner:
    """Writes models as checkpoints and scans them. A checkpoint stays on disk until :meth:`drop` (an
    instance's, once judged) or the end of the run (a reference's), so an engine that reads models again
    when it judges (deep verification) finds them at each signature's ``source``."""

    def __init__(self, workdir: Path):
        self.workdir, self.backend, self.references = workdir, get_backend("cpu"), {}

    def __call__(self, model: ToyModel, name: str) -> Signature:
        return scan_strict(str(write_hf(model, self.workdir / name)), self.backend, set(), sketch_key=STORE_KEY)[1]

    def drop(self, name: str) -> None:
        shutil.rmtree(self.workdir / name)

    def reference(self, model: ToyModel) -> Signature:
        """A model instances are judged against (or a member of the unrelated pairs), scanned once."""
        if model.name not in self.references:
            self.references[model.name] = self(model, model.name)
        return self.references[model.name]


def run_family(fam: Family, matrix: list[Case], reps: int, scan: Scanner, tallies: dict, log) -> None:
    """Every case of ``matrix`` on ``fam`` (``reps`` instances of each seeded one), judged into ``tallies``.
    Raises RuntimeError when a disguise does not keep the function it claims to."""
    for k, case in enumerate(matrix):
        key = (case.group, case.attack, case.strength, fam.kind)
        tally = tallies.setdefault(key, Tally(case.group, case.attack, case.strength, fam.kind, case.goal))
        for rep in range(reps if case.seeded else 1):
            inst = case.make(fam, 7919 * rep + 31 * k + 1)
            if inst.keeps_function:
                gap = function_gap(inst.start, inst.model, fam.rope)
                if not gap < SAME_FUNCTION:
                    raise RuntimeError(f"{fam.name}: {case.attack} ({case.strength}) changed the function: "
                                       f"logits {gap:.2g} apart (a bug of the attack, not a result)")
            same_shape = inst.model.hidden == inst.start.hidden and len(inst.model.layers) == len(inst.start.layers)
            name = f"{fam.name}-case{k}-{rep}"
            tally.add(judge(scan.reference(inst.reference), scan(inst.model, name)),
                      attacks.changed_fraction(inst.start, inst.model) if same_shape else None)
            scan.drop(name)
        log(f"  {fam.name}: {case.attack} ({case.strength}): {dict(tally.verdicts)}")


def trained_families(root: Path, seeds: range, strangers: range) -> list[Family]:
    """bench/tiny_train.py's families, read from ``root`` (trained there first if missing)."""
    alone = tuple(ensure_family(root, s, children=False)["base"] for s in strangers)
    out = []
    for seed in seeds:
        fam = ensure_family(root, seed, only=("base", "finetune", "continued"))
        out.append(Family(f"trained-{seed}", "trained", fam["base"], fam["finetune"], fam["continued"], alone,
                          "interleaved"))
    return out


@dataclass(frozen=True)
class Shape:
    hidden: int = 512
    heads: int = 8
    kv_heads: int = 2
    layers: int = 8

    def model(self, name: str, seed: int) -> ToyModel:
        return base_model(name, "llama", seed, self.layers, self.hidden, self.heads, self.kv_heads)


def generated_family(shape: Shape, seed: int, strangers: tuple[ToyModel, ...]) -> Family:
    base = shape.model(f"gen-{seed}", seed)
    return Family(base.name, "generated", base, drift(base, f"{base.name}-ft", seed + 1, 0.05, 0.01),
                  drift(base, f"{base.name}-ct", seed + 2, 0.3, 0.08), strangers, "half")


def unrelated_pairs(sigs: dict[str, Signature], root: dict[str, str], kind: dict[str, str], tallies: dict) -> None:
    """Every pair of models from different families: same-shape pairs per kind, and pairs across kinds."""
    for a, b in combinations(sorted(sigs), 2):
        if root[a] == root[b]:
            continue
        same = kind[a] == kind[b]
        models = kind[a] if same else "trained vs generated"
        strength = "same shape" if same else "other shapes"
        goal = NEVER_DERIVED if same else RARELY_DERIVED
        tally = tallies.setdefault(("control", "unrelated pairs", strength, models),
                                   Tally("control", "unrelated pairs", strength, models, goal))
        tally.add(judge(sigs[a], sigs[b]))


def markdown(tallies: list[Tally]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" if i < 4 or i > 8 else "---:"
                                                            for i in range(len(HEADER))) + "|"]
    lines += ["| " + " | ".join(t.cells()) + " |" for t in tallies]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained", default="bench/data/trained", help="bench/tiny_train.py's checkpoints")
    parser.add_argument("--reps", type=int, default=10, help="instances per case and family")
    parser.add_argument("--generated", type=int, default=3, help="generated families")
    parser.add_argument("--strangers", type=int, default=30, help="more generated models, for unrelated pairs")
    parser.add_argument("--models", default="trained,generated", help="which models: trained, generated or both")
    parser.add_argument("--quick", action="store_true", help="generated models only, small, one of each")
    parser.add_argument("--only", default="", help="run only the cases whose attack contains this")
    parser.add_argument("--md", default="bench/data/adversarial.md", help="where the table is written")
    args = parser.parse_args()
    started = time.perf_counter()
    shape = Shape(hidden=256, heads=4, layers=4) if args.quick else Shape()
    reps, n_generated, n_strangers = (1, 1, 3) if args.quick else (args.reps, args.generated, args.strangers)
    models = {"generated"} if args.quick else set(args.models.split(","))
    if not models or models - {"trained", "generated"}:
        parser.error(f"--models: {args.models!r} is not trained, generated or both")
    if "generated" not in models:
        n_generated = n_strangers = 0
    matrix = [c for c in cases() if args.only in c.attack]
    tallies: dict[tuple, Tally] = {}
    root: dict[str, str] = {}
    kind: dict[str, str] = {}

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="adversarial-") as tmp:
        scan = Scanner(Path(tmp))
        trained = trained_families(Path(args.trained), range(3), range(3, 6)) if "trained" in models else []
        strangers = tuple(shape.model(f"gen-stranger-{s}", 5000 + s) for s in range(min(3, n_strangers)))
        generated = (generated_family(shape, 1000 + 10 * i, strangers) for i in range(n_generated))
        for fam in (*trained, *generated):  # generated families made one at a time: 70 MB a model
            log(f"{fam.name}: {len(matrix)} cases")
            members = {m.name: fam.base.name for m in (fam.base, fam.finetune, fam.heavy)}
            for m in (*fam.strangers, fam.base, fam.finetune, fam.heavy):
                scan.reference(m)
                root[m.name], kind[m.name] = members.get(m.name, m.name), fam.kind
            run_family(fam, matrix, reps, scan, tallies, log)
        for s in range(len(strangers), n_strangers):  # more unrelated generated models, one at a time
            model = shape.model(f"gen-stranger-{s}", 5000 + s)
            scan.reference(model)
            root[model.name], kind[model.name] = model.name, "generated"
        log(f"unrelated pairs among {len(scan.references)} models")
        unrelated_pairs(scan.references, root, kind, tallies)
    rows = list(tallies.values())  # in the order made: trained models' rows, generated ones', unrelated pairs
    table = markdown(rows)
    print(table)
    Path(args.md).parent.mkdir(parents=True, exist_ok=True)
    Path(args.md).write_text(table)
    log(f"written {args.md}")


if __name__ == "__main__":
    main()
