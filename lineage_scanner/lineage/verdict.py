"""Verdicts: a score, its p-value against a null, and what the pair is judged to be.

``derived`` (p ≤ 0.01), ``unrelated`` (p ≥ 0.2), else ``inconclusive``, each with a reason; for
``derived``, a guess at the kind of derivation from what differs besides the weights' shape. Where the
layers align one to one, the layer-order permutation test must agree too: the larger p decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lineage_scanner.layouts.families import is_moe
from lineage_scanner.lineage.null import Null
from lineage_scanner.lineage.paper import PaperScore, paper_score
from lineage_scanner.lineage.score import Evidence, evidence

DERIVED_P = 0.01
UNRELATED_P = 0.2
#: A fine-tune moves each projection's std by a few percent at most; continued training moves it more.
FINE_TUNE_DRIFT = 0.03
#: Storage types of unquantized weights; anything else (GGUF Q*/IQ*, GPTQ, AWQ, fp8, bitsandbytes) is quantized.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass
class Verdict:
    a: str
    b: str
    paper: PaperScore
    evidence: Evidence
    #: the p-value the verdict rests on: the null's, or the permutation test's where that is larger
    p_value: float | None
    verdict: str
    reason: str
    kind: str | None = None
    null: Null | None = None
    #: the p-value from the null of unrelated pairs alone
    p_null: float | None = None

    @property
    def null_size(self) -> int:
        return len(self.null) if self.null else 0


def decide(a, b, null: Null) -> Verdict:
    """Judge two signatures (with ``curves``, ``invariants``, ``family``, ``format``, ``dtype``,
    ``n_layers``) against ``null``: :func:`lineage_scanner.lineage.null.null_for` draws one from a store."""
    paper = paper_score(a.curves, b.curves)
    ev = evidence(a.invariants or {}, b.invariants or {})
    p_null = null.p_value(ev.score)
    p = p_null if p_null is None or ev.permutation_p is None else max(p_null, ev.permutation_p)

    def verdict(label: str, reason: str, kind: str | None = None) -> Verdict:
        return Verdict(f"{a.model}@{a.revision}", f"{b.model}@{b.revision}", paper, ev, p, label, reason, kind,
                       null, p_null)

    if not math.isfinite(ev.score):
        return verdict("inconclusive", "low information: the curves are flat or too short to carry a shape")
    if p is not None and p <= DERIVED_P and ev.score > 0:
        return verdict("derived", f"score {ev.score:.3f} beats {(1 - p_null) * 100:.1f}% of {len(null)} unrelated "
                                  f"pairs ({null.source} null)", _kind(a, b, ev, paper))
    if p is None or p >= UNRELATED_P:
        return verdict("unrelated", "score within the range of unrelated pairs")
    return verdict("inconclusive", "weak evidence: between unrelated and derived")


def _kind(a, b, ev: Evidence, paper: PaperScore) -> str:
    """A guess at how one model came from the other, from what differs besides the weights' shape."""
    if a.n_layers != b.n_layers or len(ev.alignment) < min(a.n_layers, b.n_layers):
        return "pruned or depth up-scaled"
    if is_moe(a.family) != is_moe(b.family):
        return "MoE upcycle"
    if math.isfinite(paper.score) and paper.score < 0.5 and ev.score > 0.8:
        return "rescaled weights (possible evasion)"
    if quantized(a) != quantized(b) and ev.score > 0.98:
        return "quantized copy"
    return "fine-tune" if _std_drift(a, b, ev.alignment) < FINE_TUNE_DRIFT else "continued training"


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
