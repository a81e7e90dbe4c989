"""Verdicts: what two models are judged to be, from evidence an adversary can neither forge nor scrub.

Channels (see the README's lineage section and the threat model there):

- **values** (:mod:`lineage_scanner.lineage.sketch`), where attention matrices have equal shapes: the weights
  themselves at positions the store's secret key chose, exact null. Its robust test (a forger's few percent
  given away) may call a pair derived; its plain test (which scrubbing a few percent cannot silence) may
  rule lineage out.
- **circuits** (:mod:`lineage_scanner.lineage.circuits`), where the residual widths agree: entries of the
  OV and QK circuits (exact null, robust and plain as above), unchanged by every per-head, RoPE-commuting,
  permuting or rescaling map; and their Gram sketch (calibrated null), unchanged by a residual rotation too.
- **curves** (:mod:`lineage_scanner.lineage.score`), always: feature curves over depth, calibrated against a
  reference null and surrogates. They can be forged without copying a single weight (noise scaled to a
  base's moments), so they never call a pair derived on their own; they are the evidence across widths,
  and where they say related they keep a pair from being called unrelated.

Rules. ``derived`` needs one unforgeable channel firm at p <= 1e-6 (the values' or the circuits' robust test,
or the Gram at its calibrated p). ``unrelated`` needs every channel that applies to say nothing: weights
uncorrelated by the plain tests (p >= 1e-3), no circuit or Gram agreement, curves within the range of
unrelated pairs. Anything else is ``inconclusive``, and says which channels disagree: conflicting evidence
is never read as "unrelated", since that is exactly what someone hiding a copy would arrange. Evidence whose
positions an adversary could know (a sketch taken without a store's key) cannot call a pair derived either.
Deep verification (:mod:`lineage_scanner.run.verify`) re-reads both models at positions drawn afresh and
decides by the same rules on what it read. "identical weights" needs complete evidence: equal SHA-256s of
the whole weight files, or a verification that read every attention value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lineage_scanner.layouts.families import is_moe
from lineage_scanner.lineage.circuits import GRAM_DERIVED_R, CircuitEvidence, circuit_evidence
from lineage_scanner.lineage.null import Null
from lineage_scanner.lineage.paper import PaperScore, paper_score
from lineage_scanner.lineage.score import Evidence, evidence
from lineage_scanner.lineage.sketch import SketchEvidence, sketch_evidence
from lineage_scanner.signature.record import PUBLIC_KEY

#: The curves' thresholds. Their p-value is honest at its level (surrogates with the pair's own trends and the
#: same alignment search); at 0.001 none of 4,343 unrelated pairs of other shapes went through
#: (bench/accuracy.py). Curves alone never call a pair derived, but at this level they keep it from being
#: called unrelated.
DERIVED_P = 0.001
UNRELATED_P = 0.2
#: The weight channels' threshold for ``derived``: real derivations score p < 1e-20, so a strict one costs no
#: power and keeps false alarms near one in a million per pair, where a Hub-wide ``match`` tests millions.
SKETCH_DERIVED_P = 1e-6
#: Below this, a weight channel's plain test says "related": the pair cannot be called unrelated.
SKETCH_UNRELATED_P = 1e-3
LOG10_DERIVED = math.log10(SKETCH_DERIVED_P)
LOG10_UNRELATED = math.log10(SKETCH_UNRELATED_P)
REPARAMETRISED = "same function, reparametrised (possible evasion)"
REPARAMETRISED_TRAINED = "reparametrised, then trained further (possible evasion)"
ROTATED = "same function in a rotated residual basis (possible evasion)"
ROTATED_TRAINED = "rotated residual stream, then trained further (possible evasion)"
IDENTICAL = "identical weights"
#: The value sketch equal everywhere it looked, not read in full: a copy, or a forgery of more than it saw.
NEAR_IDENTICAL = "copy (equal at every sketched position; not verified in full)"
#: A fine-tune moves each projection's std by a few percent at most; continued training moves it more.
FINE_TUNE_DRIFT = 0.03
FINE_TUNE, CONTINUED = "fine-tune", "continued training"
#: Named when the stds, as measured, cannot say which side of FINE_TUNE_DRIFT the move lies (a sampled scan's
#: errors are as large as the line itself): either guess would be a coin toss that a re-scan could flip.
TRAINED_FURTHER = "fine-tune or continued training (too close to tell)"
#: Re-measurements that size the drift's error (see _std_drift).
DRIFT_DRAWS = 256
#: A quantized copy keeps its parent's weights this closely (sketch |r|, or the curve score without one).
COPY_R = 0.98
#: Storage types of unquantized weights; anything else (GGUF Q*/IQ*, GPTQ, AWQ, fp8, bitsandbytes) is quantized.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class Channel:
    """One channel's finding, as a report and ``compare --json`` show it: whether it applies, what it says
    ("related", "unrelated", "weak" or "forgeable"), its p-values (log10; the robust one where it has one)
    and whether its null is exact or calibrated."""

    name: str
    says: str
    log10_p: float | None = None
    robust_log10_p: float | None = None
    null: str = "exact"
    note: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "says": self.says, "log10_p": self.log10_p,
                "robust_log10_p": self.robust_log10_p, "null": self.null, "note": self.note}


@dataclass
class Verdict:
    a: str
    b: str
    paper: PaperScore
    #: the curve evidence (its ``surrogate_p`` computed where the verdict needed it)
    evidence: Evidence
    #: the p-value of the evidence that decided (None: nothing decided)
    p_value: float | None
    verdict: str
    reason: str
    kind: str | None = None
    null: Null | None = None
    #: the curves' p-value from the reference null alone
    p_null: float | None = None
    #: the value sketches' test, where shapes are shared
    sketch: SketchEvidence | None = None
    #: the curves' p-value: the larger of the reference null's and the surrogate test's
    p_curves: float | None = None
    #: "sketch", "circuits", "circuit gram" or None: which evidence the verdict rests on
    decided_by: str | None = None
    #: the circuit tests, where residual widths are shared
    circuits: CircuitEvidence | None = None
    #: every channel's finding
    channels: tuple[Channel, ...] = ()
    #: the channels that disagree, in words (None when they agree)
    conflict: str | None = None
    #: what deep verification found, when it ran (see :mod:`lineage_scanner.run.verify`)
    verification: dict | None = field(default=None)

    @property
    def null_size(self) -> int:
        return len(self.null) if self.null else 0

    @property
    def log10_p(self) -> float:
        """log10 of the deciding p-value (stays finite where the float would underflow)."""
        if self.decided_by is not None:
            return self._deciding_log10_p
        return math.log10(self.p_value) if self.p_value else (0.0 if self.p_value is None else -math.inf)

    @property
    def _deciding_log10_p(self) -> float:
        found = {c.name: c for c in self.channels}
        channel = found.get(self.decided_by)
        if channel is None:
            return 0.0
        return channel.robust_log10_p if channel.robust_log10_p is not None else (channel.log10_p or 0.0)

    @property
    def wants_verification(self) -> bool:
        """Whether this verdict should be checked at fresh positions (``compare`` does it where it can read
        both models): the channels disagree, only complete evidence could say "identical weights", or the
        stored weights say "unrelated" while the curves cannot rule a relation out. The last is the scrub
        of a leaked key: whoever knows where a store reads can replace exactly those values (on a narrow
        model, most of them), leaving every stored weight channel blank while the rest of the copy, and
        its curves, remain; fresh positions land on what he left."""
        if self.verification is not None:
            return False
        curves = next((c for c in self.channels if c.name == "curves"), None)
        unrefuted = self.verdict == "unrelated" and curves is not None and curves.says != "unrelated"
        return self.conflict is not None or self.kind == NEAR_IDENTICAL or unrefuted

    def to_dict(self) -> dict:
        """The verdict with every channel's evidence: which one decided, what each said, what disagrees."""
        s, c = self.sketch, self.circuits
        return {
            "a": self.a, "b": self.b, "verdict": self.verdict, "kind": self.kind, "reason": self.reason,
            "decided_by": self.decided_by, "p_value": self.p_value, "log10_p": self.log10_p,
            "paper_score": self.paper.score, "score": self.evidence.score,
            "channels": [ch.to_dict() for ch in self.channels], "conflict": self.conflict,
            "verification": self.verification,
            "sketch": None if s is None else {
                "score": s.score, "p_value": s.p_value, "log10_p": s.log10_p, "robust_log10_p": s.robust_log10_p,
                "firm_share": s.firm_share, "channels": list(s.roles), "per_channel": s.per_channel, "spread": s.spread,
                "pairing": [{"a": i, "b": j, "r": r} for (i, j), r in zip(s.pairing, s.r)],
            },
            "circuits": None if c is None else {
                "score": c.score, "log10_p": c.log10_p, "robust_log10_p": c.robust_log10_p, "weakest": c.weakest,
                "gram_r": c.gram_r, "gram_log10_p": c.gram_log10_p,
                "pairing": [{"a": i, "b": j} for i, j in c.pairing],
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


def decide(a, b, null: Null, verification: dict | None = None) -> Verdict:
    """Judge two signatures (with ``sketch``, ``sketch_key``, ``curves``, ``invariants``, ``invariant_se``,
    ``family``, ``format``, ``dtype``, ``n_layers``, ``weights_digest``) against ``null``, the reference
    null for the curves (:func:`lineage_scanner.lineage.null.null_for` draws one from a store).
    ``verification``: set when ``a`` and ``b`` are fresh readings of deep verification (its summary, which
    the verdict carries), so that their sketches count as unforgeable whatever key they carry."""
    paper = paper_score(a.curves, b.curves)
    keyed = verification is not None or _same_secret_key(a, b)
    comparable = verification is not None or getattr(a, "sketch_key", None) == getattr(b, "sketch_key", None)
    parts_a, parts_b = (a.sketch or ()), (b.sketch or ())
    sketch = sketch_evidence(parts_a, parts_b) if comparable and parts_a and parts_b else None
    hint = sketch.pairing if sketch is not None and sketch.robust_log10_p <= LOG10_DERIVED else None
    circuits = circuit_evidence(parts_a, parts_b, hint, _circuit_costs(parts_a)) if comparable else None
    ev = evidence(a.invariants or {}, b.invariants or {}, a.invariant_se, b.invariant_se, surrogate=False)
    p_null = null.p_value(ev.score)
    if p_null is not None and p_null < UNRELATED_P:  # the surrogates can only raise p: ask them when it matters
        ev = evidence(a.invariants or {}, b.invariants or {}, a.invariant_se, b.invariant_se)
    p_curves = p_null if p_null is None or ev.surrogate_p is None else max(p_null, ev.surrogate_p)
    channels = _channels(sketch, circuits, ev, p_curves, keyed)
    found = {c.name: c for c in channels}

    def verdict(label: str, reason: str, decided_by: str | None, kind: str | None = None,
                conflict: str | None = None) -> Verdict:
        p = None
        if decided_by in found:
            ch = found[decided_by]
            p = 10.0 ** (ch.robust_log10_p if ch.robust_log10_p is not None else ch.log10_p)
        elif decided_by is None and label != "derived":
            p = p_curves
        return Verdict(f"{a.model}@{a.revision}", f"{b.model}@{b.revision}", paper, ev, p, label, reason, kind,
                       null, p_null, sketch, p_curves, decided_by, circuits, tuple(channels), conflict, verification)

    related = [c for c in channels if c.says == "related"]
    disagree = _disagreement(channels)
    values, entries, gram = found.get("sketch"), found.get("circuits"), found.get("circuit gram")
    if values is not None and values.says == "related" and values.robust_log10_p <= LOG10_DERIVED:
        kind = _kind(a, b, ev, paper, sketch, verification)
        if circuits is not None and circuits.same_function and sketch.firm_share < 1.0:
            kind = REPARAMETRISED  # some matrices moved while what they compute did not
        return verdict("derived", f"weights correlate position by position: |r| {sketch.score:.3f} over "
                                  f"{len(sketch.pairing)} layer pairs, robust p = {_p(values.robust_log10_p)} "
                                  "(exact null, a forger's share given away)", "sketch", kind, disagree)
    if entries is not None and entries.says == "related" and entries.robust_log10_p <= LOG10_DERIVED:
        kind = REPARAMETRISED if circuits.same_function else REPARAMETRISED_TRAINED
        if values is not None and values.says == "related":  # the weights moved less than a disguise would
            kind = _kind(a, b, ev, paper, sketch, verification)
        return verdict("derived", f"the attention circuits agree (median r {circuits.score:.3f} over "
                                  f"{len(circuits.pairing)} layers, robust p = {_p(entries.robust_log10_p)}, exact "
                                  "null) where the weights themselves "
                                  f"{'agree only weakly' if values and values.says != 'unrelated' else 'do not'}",
                       "circuits", kind, disagree)
    if gram is not None and gram.says == "related" and gram.log10_p <= LOG10_DERIVED \
            and circuits.gram_r >= GRAM_DERIVED_R:
        rotated = entries is None or entries.log10_p > LOG10_UNRELATED  # the entries moved: another basis
        same = circuits.same_function_rotated if rotated else circuits.same_function
        kind = ((ROTATED if same else ROTATED_TRAINED) if rotated
                else (REPARAMETRISED if same else REPARAMETRISED_TRAINED))
        return verdict("derived", f"the circuits' Gram agrees (r {circuits.gram_r:.3f} once the trend models of one "
                                  f"recipe share is removed, p = {_p(gram.log10_p)}, calibrated null)"
                                  + (": the same circuits in another residual basis" if rotated else ""),
                       "circuit gram", kind, disagree)
    if not comparable and parts_a and parts_b:
        unkeyed = "sketches taken under different keys (another store's, or none), so no weights were compared"
        return verdict("inconclusive", unkeyed, None, None, unkeyed)
    weight_channels = [c for c in channels if c.name != "curves" and c.says != "forgeable"]
    if not related and weight_channels and all(c.says == "unrelated" for c in weight_channels):
        return verdict("unrelated", "weights uncorrelated by every test that applies ("
                       + ", ".join(c.name for c in weight_channels) + "), curves within the range of unrelated pairs",
                       weight_channels[0].name)
    if not related and not weight_channels:
        if not math.isfinite(ev.score):
            return verdict("inconclusive", "low information: the curves are flat or too short to carry a shape, "
                                           "and no weights can be compared", None)
        if p_curves is None or p_curves >= UNRELATED_P:
            return verdict("unrelated", "curve score within the range of unrelated pairs (no weights can be "
                                        "compared: shapes differ)", "curves")
    if disagree is None and related:
        disagree = " and ".join(f"{c.name} say related" for c in related) + "; nothing unforgeable is firm"
    reason = disagree or "weak evidence: between unrelated and derived"
    return verdict("inconclusive", reason, None, None, disagree)


def _channels(sketch: SketchEvidence | None, circuits: CircuitEvidence | None, ev: Evidence,
              p_curves: float | None, keyed: bool) -> list[Channel]:
    """Each channel's finding in one word (see :class:`Channel`)."""
    out = []
    if sketch is not None:
        out.append(Channel("sketch", _says(sketch.log10_p, sketch.robust_log10_p, keyed), sketch.log10_p,
                           sketch.robust_log10_p, note=f"|r| {sketch.score:.3f}, firm share {sketch.firm_share:.2f}"))
    if circuits is not None and circuits.pairing:
        out.append(Channel("circuits", _says(circuits.log10_p, circuits.robust_log10_p, keyed), circuits.log10_p,
                           circuits.robust_log10_p, note=f"median r {circuits.score:.3f}"))
    if circuits is not None and circuits.gram_log10_p is not None:
        out.append(Channel("circuit gram", _says(circuits.gram_log10_p, circuits.gram_log10_p, True),
                           circuits.gram_log10_p, None, "calibrated", f"r {circuits.gram_r:.3f}"))
    if p_curves is not None and math.isfinite(ev.score):
        says = ("related" if p_curves <= DERIVED_P and ev.score > 0
                else "unrelated" if p_curves >= UNRELATED_P else "weak")
        out.append(Channel("curves", says, math.log10(max(p_curves, 1e-300)), None, "calibrated",
                           f"score {ev.score:.3f}; curves can be forged, so they never decide 'derived'"))
    return out


def _says(log10_plain: float, log10_robust: float, keyed: bool) -> str:
    if log10_plain >= LOG10_UNRELATED:
        return "unrelated"
    if log10_plain <= LOG10_DERIVED and not keyed:
        return "forgeable"
    return "related" if log10_plain <= LOG10_DERIVED or log10_robust <= LOG10_DERIVED else "weak"


def _disagreement(channels: list[Channel]) -> str | None:
    """The channels that disagree, in words; a plain test firm where the robust one is not is a finding of
    its own (the weights agree at a few positions only: a partial copy, or a forgery)."""
    notes = []
    for c in channels:
        if c.robust_log10_p is not None and c.log10_p is not None and c.log10_p <= LOG10_DERIVED < c.robust_log10_p:
            notes.append(f"{c.name}: the plain test says related (p = {_p(c.log10_p)}) but the robust one does not "
                         f"(p = {_p(c.robust_log10_p)}): the weights agree at a few positions or matrices only")
        if c.says == "forgeable":
            notes.append(f"{c.name}: related at positions taken without a store key, which anyone could target")
    said = {c.says for c in channels if c.says in ("related", "unrelated")}
    if said == {"related", "unrelated"}:
        notes.append("; ".join(f"{c.name} say{'s' if not c.name.endswith('s') else ''} {c.says}" for c in channels
                               if c.says in ("related", "unrelated")))
    return "; ".join(notes) or None


def _same_secret_key(a, b) -> bool:
    key = getattr(a, "sketch_key", None) or PUBLIC_KEY
    return key != PUBLIC_KEY and key == getattr(b, "sketch_key", None)


def _circuit_costs(parts) -> dict[str, float] | None:
    """Each circuit's share of the attention values (what copying it whole costs a forger), from the value
    sketches' matrix shapes."""
    sizes = {p.role: p.rows * p.cols for p in parts if p.kind == "values"}
    layers = len({p.layer for p in parts if p.kind == "values"})
    if not all(r in sizes for r in "qkvo") or not layers:
        return None
    total = layers * sum(sizes[r] for r in "qkvo")
    return {"ov": (sizes["o"] + sizes["v"]) / total, "qk": (sizes["q"] + sizes["k"]) / total}


def _p(log10_p: float) -> str:
    """A p-value for a reason: 1.2e-5, or < 1e-300 with its log10 where a float underflows."""
    if log10_p < -300:
        return f"< 1e-300 (log10 {log10_p:.0f})"
    return f"{10 ** log10_p:.2g}"


def _kind(a, b, ev: Evidence, paper: PaperScore, sketch: SketchEvidence | None, verification: dict | None) -> str:
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
        complete = (a.weights_digest is not None and a.weights_digest == getattr(b, "weights_digest", None)) or \
            bool(verification and verification.get("identical"))
        return IDENTICAL if complete else NEAR_IDENTICAL
    return training_kind(a, b, pairing)


def training_kind(a, b, alignment: list[tuple[int, int]]) -> str:
    """Fine-tune or continued training, by how far the stds moved (see :func:`_std_drift`); said to be too
    close to tell where the line lies within two standard errors of the measured drift."""
    drift, error = _std_drift(a, b, alignment)
    if abs(drift - FINE_TUNE_DRIFT) < 2.0 * error:
        return TRAINED_FURTHER
    return FINE_TUNE if drift < FINE_TUNE_DRIFT else CONTINUED


def _std_drift(a, b, alignment: list[tuple[int, int]]) -> tuple[float, float]:
    """Median over aligned layers of how far the projections' stds moved (|Δ log std| per matrix, from the
    rescaling-invariant ``qk`` and ``vo`` products), and that median's standard error; infinite (and 0)
    when they cannot be compared.

    Each move is measured through both signatures' errors (``invariant_se``: a sample's, else the floor of
    a matrix's finite size), which add to |Δ| on average: a fine-tune scanned at 2% would otherwise look as
    far moved as continued training. So each move is taken net of that noise (sqrt(Δ² - σ²), at least 0).
    The median's error is found by measuring again with the same noise added (a parametric bootstrap): the
    net moves near zero are far from normal, and a formula for the median of normal values undercounts it
    several times over."""
    deltas, sigmas = [], []
    for f in ("qk", "vo"):
        if f not in (a.invariants or {}) or f not in (b.invariants or {}):
            continue
        for i, j in alignment:
            delta = a.invariants[f][i] - b.invariants[f][j]
            if math.isfinite(delta):
                deltas.append(delta)
                sigmas.append(math.hypot(_se(a, f, i), _se(b, f, j)))
    if not deltas:
        return math.inf, 0.0
    delta, sigma = np.array(deltas), np.array(sigmas)

    def net(d: np.ndarray) -> np.ndarray:
        return np.median(np.sqrt(np.maximum(d * d - sigma * sigma, 0.0)), axis=-1) / 2

    again = delta + np.random.default_rng(0).standard_normal((DRIFT_DRAWS, delta.size)) * sigma
    return float(net(delta)), float(np.std(net(again)))


def _se(sig, feature: str, layer: int) -> float:
    """One point's standard error; 0 where the signature carries none (stored before errors were)."""
    errors = (getattr(sig, "invariant_se", None) or {}).get(feature) or ()
    se = errors[layer] if layer < len(errors) else 0.0
    return se if se is not None and math.isfinite(se) else 0.0


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
