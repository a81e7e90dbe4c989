"""Verdicts: what two models are judged to be, from the evidence that applies, with a p-value.

Two kinds of evidence (see the README's lineage section):

- **sketch** (:mod:`lineage_scanner.lineage.sketch`), whenever some attention matrices have equal shapes
  in both models: the weights themselves, position by position, against an exact null. It decides.
- **curves** (:mod:`lineage_scanner.lineage.score`), always computed: feature curves over depth, for
  shapes that differ (other widths) and as a second opinion. Their p-value is the larger of the
  reference null's (the store's unrelated pairs, or the built-in synthetic null) and the surrogate test's
  (curves with the pair's own depth trends), so neither a shared era nor the alignment's freedom passes
  for lineage.

``derived`` at p <= 0.001, ``unrelated`` at p >= 0.2, else ``inconclusive``; for the sketch's exact test,
whose p-values for real derivations are astronomically small, p <= 1e-6 and p >= 1e-3. Where the sketch
applies and finds nothing, curves strongly related (p <= 0.001 and score >= 0.98) mean the weights were
permuted or rotated: ``derived`` with kind "possible evasion (permuted or rotated weights)". A rotated
residual stream is caught by the sketch's V Gram test, at the same threshold (kind "rotated residual
stream"); Q/K Gram sketches never decide (models of one recipe share them, see
:mod:`lineage_scanner.lineage.sketch`). For ``derived``, a guess
at the kind of derivation from what differs besides the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lineage_scanner.layouts.families import is_moe
from lineage_scanner.lineage.null import Null
from lineage_scanner.lineage.paper import PaperScore, paper_score
from lineage_scanner.lineage.score import Evidence, evidence
from lineage_scanner.lineage.sketch import SketchEvidence, sketch_evidence

#: The curves' threshold. Their p-value is honest at its level (surrogates with the pair's own trends and the
#: same alignment search), so a level of 0.01 lets about one unrelated pair in 150 of other shapes through
#: (bench/accuracy.py: 0.23%); at 0.001 (two surrogates in 2,000) none of 4,343 went through, and every
#: derived pair that only the curves can see (permuted copies, other widths) scores far below it.
DERIVED_P = 0.001
UNRELATED_P = 0.2
#: The sketch's threshold. Its null is exact and real derivations score p < 1e-100, so a strict one costs no
#: power and keeps false alarms near one in a million per pair, where a Hub-wide ``match`` tests millions.
SKETCH_DERIVED_P = 1e-6
#: Above this, a same-shape pair's weights are judged uncorrelated: a derivation would leave p < 1e-100, so
#: the band up to here is the sketch's only "inconclusive" one (one unrelated pair in a thousand lands in it).
SKETCH_UNRELATED_P = 1e-3
ROTATED = "rotated residual stream (possible evasion)"
#: The curves alone must clear this where the sketch applies and contradicts them (a permuted or rotated
#: copy), since a same-shape pair whose weights are uncorrelated is most likely unrelated.
EVASION_P = 0.001
#: ... and score at least this: a permuted copy keeps every moment, so its curves match nearly exactly (0.999
#: and up, bench/accuracy.py), while unrelated same-shape models of one generator reached 0.90.
EVASION_SCORE = 0.98
EVASION = "possible evasion (permuted or rotated weights)"
#: A fine-tune moves each projection's std by a few percent at most; continued training moves it more.
FINE_TUNE_DRIFT = 0.03
#: A quantized copy keeps its parent's weights this closely (sketch |r|, or the curve score without one).
COPY_R = 0.98
#: Storage types of unquantized weights; anything else (GGUF Q*/IQ*, GPTQ, AWQ, fp8, bitsandbytes) is quantized.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass
class Verdict:
    a: str
    b: str
    paper: PaperScore
    #: the curve evidence (its ``surrogate_p`` computed where the verdict needed it)
    evidence: Evidence
    #: the p-value of the evidence that decided
    p_value: float | None
    verdict: str
    reason: str
    kind: str | None = None
    null: Null | None = None
    #: the curves' p-value from the reference null alone
    p_null: float | None = None
    #: the same-shape test, where it applies
    sketch: SketchEvidence | None = None
    #: the curves' p-value: the larger of the reference null's and the surrogate test's
    p_curves: float | None = None
    #: "sketch" or "curves": which evidence the verdict rests on
    decided_by: str | None = None

    @property
    def null_size(self) -> int:
        return len(self.null) if self.null else 0

    @property
    def log10_p(self) -> float:
        """log10 of the deciding p-value (the sketch's stays finite where the float would underflow)."""
        if self.decided_by == "sketch" and self.sketch is not None:
            return self.sketch.best_log10_p
        return math.log10(self.p_value) if self.p_value else (0.0 if self.p_value is None else -math.inf)

    def to_dict(self) -> dict:
        """The verdict with both kinds of evidence, as ``compare --json`` prints it: which one decided, and
        what each said."""
        sketch = self.sketch
        return {
            "a": self.a, "b": self.b, "verdict": self.verdict, "kind": self.kind, "reason": self.reason,
            "decided_by": self.decided_by, "p_value": self.p_value, "log10_p": self.log10_p,
            "paper_score": self.paper.score, "score": self.evidence.score,
            "sketch": None if sketch is None else {
                "score": sketch.score, "p_value": sketch.p_value, "log10_p": sketch.log10_p,
                "channels": list(sketch.roles), "per_channel": sketch.per_channel, "spread": sketch.spread,
                "gram_log10_p": sketch.gram_log10_p,
                "pairing": [{"a": i, "b": j, "r": r} for (i, j), r in zip(sketch.pairing, sketch.r)],
            },
            "curves": {
                "score": self.evidence.score, "p_value": self.p_curves, "p_null": self.p_null,
                "p_surrogate": self.evidence.surrogate_p, "per_feature": self.evidence.per_feature,
                "alignment": [{"a": i, "b": j} for i, j in self.evidence.alignment],
                "null": {"source": self.null.source, "size": self.null_size, "excluded": self.null.excluded}
                if self.null else None,
            },
            "per_role": self.paper.per_role,
        }


def decide(a, b, null: Null) -> Verdict:
    """Judge two signatures (with ``sketch``, ``curves``, ``invariants``, ``invariant_se``, ``family``,
    ``format``, ``dtype``, ``n_layers``) against ``null``, the reference null for the curves:
    :func:`lineage_scanner.lineage.null.null_for` draws one from a store."""
    paper = paper_score(a.curves, b.curves)
    sketch = sketch_evidence(a.sketch, b.sketch) if a.sketch and b.sketch else None
    ev = evidence(a.invariants or {}, b.invariants or {}, a.invariant_se, b.invariant_se, surrogate=False)
    p_null = null.p_value(ev.score)
    if p_null is not None and p_null < UNRELATED_P:  # the surrogates can only raise p: ask them when it matters
        ev = evidence(a.invariants or {}, b.invariants or {}, a.invariant_se, b.invariant_se)
    p_curves = p_null if p_null is None or ev.surrogate_p is None else max(p_null, ev.surrogate_p)

    def verdict(label: str, reason: str, decided_by: str | None, kind: str | None = None) -> Verdict:
        p = 10.0**sketch.best_log10_p if decided_by == "sketch" else p_curves
        return Verdict(f"{a.model}@{a.revision}", f"{b.model}@{b.revision}", paper, ev, p, label, reason, kind,
                       null, p_null, sketch, p_curves, decided_by)

    curves_derived = p_curves is not None and ev.score > 0
    if sketch is not None:
        if sketch.p_value <= SKETCH_DERIVED_P:
            return verdict("derived", f"weights correlate position by position: |r| {sketch.score:.3f} over "
                                      f"{len(sketch.pairing)} layer pairs, p = 1e{sketch.log10_p:.0f} (exact null)",
                           "sketch", _kind(a, b, ev, paper, sketch))
        if sketch.gram_log10_p is not None and sketch.gram_log10_p <= math.log10(SKETCH_DERIVED_P):
            return verdict("derived", f"V's Gram sketches agree (p = 1e{sketch.gram_log10_p:.0f}, exact over V's row "
                                      f"signs) where the values do not: the same weights in another basis",
                           "sketch", ROTATED)
        if curves_derived and p_curves <= EVASION_P and ev.score >= EVASION_SCORE:
            if sketch.p_value >= SKETCH_UNRELATED_P:
                return verdict("derived", f"curves related (score {ev.score:.3f}, p = {p_curves:.2g}) but weights "
                                          "uncorrelated at every position", "curves", EVASION)
            return verdict("derived", f"curves related (score {ev.score:.3f}, p = {p_curves:.2g}); the weights "
                                      f"only weakly (p = {sketch.p_value:.2g})", "curves", _kind(a, b, ev, paper, None))
        if sketch.best_log10_p >= math.log10(SKETCH_UNRELATED_P):
            return verdict("unrelated", f"weights uncorrelated position by position (|r| {sketch.score:.3f}, "
                                        f"p = {sketch.p_value:.2g})", "sketch")
        return verdict("inconclusive", "weak evidence: the weights correlate a little, not enough", "sketch")
    if not math.isfinite(ev.score):
        return verdict("inconclusive", "low information: the curves are flat or too short to carry a shape, "
                                       "and no matrix shape is shared", None)
    if curves_derived and p_curves <= DERIVED_P:
        return verdict("derived", f"curve score {ev.score:.3f}: p = {p_curves:.2g} against {len(null)} unrelated "
                                  f"pairs ({null.source} null) and surrogates with the pair's own depth trends",
                       "curves", _kind(a, b, ev, paper, None))
    if p_curves is None or p_curves >= UNRELATED_P:
        return verdict("unrelated", "curve score within the range of unrelated pairs", "curves")
    return verdict("inconclusive", "weak evidence: between unrelated and derived (shapes differ, so only the "
                                   "curves could be compared)", "curves")


def _kind(a, b, ev: Evidence, paper: PaperScore, sketch: SketchEvidence | None) -> str:
    """A guess at how one model came from the other, from what differs besides the weights."""
    if sketch is not None:
        moved, pairing, closeness = not sketch.in_order, list(sketch.pairing), sketch.score
    else:
        moved, pairing, closeness = len(ev.alignment) < min(a.n_layers, b.n_layers), ev.alignment, ev.score
    if a.n_layers != b.n_layers or moved:
        return "pruned or depth up-scaled"
    if is_moe(a.family) != is_moe(b.family):
        return "MoE upcycle"
    if math.isfinite(paper.score) and paper.score < 0.5 and (sketch is not None or ev.score > 0.8):
        return "rescaled weights (possible evasion)"
    if quantized(a) != quantized(b) and closeness > COPY_R:
        return "quantized copy"
    if sketch is not None and sketch.identical:
        return "identical weights"
    return "fine-tune" if _std_drift(a, b, pairing) < FINE_TUNE_DRIFT else "continued training"


def _std_drift(a, b, alignment: list[tuple[int, int]]) -> float:
    """Median over aligned layers of how far the projections' stds moved (|Δ log std| per matrix, from the
    rescaling-invariant ``qk`` and ``vo`` products); infinite when they cannot be compared."""
    moves = [abs(a.invariants[f][i] - b.invariants[f][j]) / 2 for f in ("qk", "vo") for i, j in alignment
             if f in (a.invariants or {}) and f in (b.invariants or {})]
    moves = [m for m in moves if math.isfinite(m)]
    return float(np.median(moves)) if moves else math.inf


def quantized(sig) -> bool:
    """Whether a signature's attention weights were stored quantized: any format but plain safetensors
    (a GGUF counts as a quantized export), or a storage type that is not a float."""
    return (sig.format not in (None, "safetensors")) or (sig.dtype is not None and sig.dtype not in FLOAT_DTYPES)


def q_values(p_values: list[float | None]) -> list[float | None]:
    """Benjamini-Hochberg q-values for the candidates one ``match`` ranks: the false discovery rate of
    calling each derived (scipy's ``false_discovery_control``)."""
    from scipy.stats import false_discovery_control

    known = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    if known:
        for i, q in zip(known, false_discovery_control([p_values[i] for i in known])):
            out[i] = float(q)
    return out
