"""The lineage score users can trust beside ``paper_score``: invariant features, depth alignment,
calibrated p-values and verdicts.

Features per layer, each chosen to survive an evasion the seed method falls for:

- ``qk`` = log std(Q·diag γ) + log std(K·diag γ): scaling Q by a and K by 1/a changes no output and no
  product; folding the input-norm gain γ into Q/K/V changes neither (γ is folded in before measuring).
- ``vo`` = log std(V·diag γ) + log std(O): the same for V·b, O/b.
- ``kurt_*``: the kurtosis of each projection, blind to any rescaling.

Each feature curve is z-scored per model. Layers are aligned by dynamic programming (monotone, with a
gap cost), so pruned, truncated and depth-up-scaled models align with their parents layer by layer; the
score is the mean Pearson r of the features over aligned layers. A p-value is the share of a null of
unrelated pairs (from the store, else a built-in synthetic one) that scores as high.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scanner.lineage import PaperScore, paper_score

FEATURES = ("qk", "vo", "kurt_q", "kurt_k", "kurt_v", "kurt_o")
GAP = 0.6
#: A feature whose curve moves less than this (std of its log values over layers) carries no shape.
FLAT = 0.01
DERIVED_P = 0.01
UNRELATED_P = 0.2
MOE = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3")


def invariants(stats, n_layers: int) -> dict[str, list[float]]:
    """Feature curves from a scan's per-layer moments (see the module docstring)."""
    by = {(s.layer, s.role): s for s in stats}

    def std(layer: int, role: str, folded: bool) -> float:
        s = by.get((layer, role))
        if s is None:
            return math.nan
        value = s.folded_std if folded and s.folded_std is not None else s.moments.std
        return math.log(value) if value and value > 0 else math.nan

    out: dict[str, list[float]] = {
        "qk": [std(i, "q", True) + std(i, "k", True) for i in range(n_layers)],
        "vo": [std(i, "v", True) + std(i, "o", False) for i in range(n_layers)],
    }
    for role in "qkvo":
        out[f"kurt_{role}"] = [by[(i, role)].moments.kurtosis if (i, role) in by else math.nan
                               for i in range(n_layers)]
    return out


def _matrix(features: dict[str, list[float]]) -> tuple[np.ndarray, list[str]]:
    """Layers × usable features, each z-scored; features that are flat or missing are left out."""
    cols, names = [], []
    for name in FEATURES:
        x = np.asarray(features.get(name) or [], dtype=np.float64)
        if x.size < 3 or not np.isfinite(x).all() or x.std() < FLAT:
            continue
        cols.append((x - x.mean()) / x.std())
        names.append(name)
    depth = len(next(iter(features.values()), []))
    return (np.stack(cols, axis=1) if cols else np.empty((depth, 0))), names


def align(a: np.ndarray, b: np.ndarray, gap: float = GAP) -> list[tuple[int, int]]:
    """Monotone alignment of two layer sequences maximising similarity minus gap costs (Needleman-Wunsch)."""
    n, m = len(a), len(b)
    sim = 1.0 - ((a[:, None, :] - b[None, :, :]) ** 2).mean(axis=2) / 2.0
    score = np.zeros((n + 1, m + 1))
    score[1:, 0] = -gap * np.arange(1, n + 1)
    score[0, 1:] = -gap * np.arange(1, m + 1)
    move = np.zeros((n + 1, m + 1), dtype=np.int8)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            options = (score[i - 1, j - 1] + sim[i - 1, j - 1], score[i - 1, j] - gap, score[i, j - 1] - gap)
            k = int(np.argmax(options))
            score[i, j], move[i, j] = options[k], k
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if move[i, j] == 0:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif move[i, j] == 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


@dataclass(frozen=True)
class Evidence:
    score: float
    per_feature: dict[str, float]
    alignment: list[tuple[int, int]]
    features: list[str]


def evidence(a: dict[str, list[float]], b: dict[str, list[float]]) -> Evidence:
    ma, na = _matrix(a)
    mb, nb = _matrix(b)
    shared = [f for f in na if f in nb]
    if len(shared) == 0 or len(ma) < 3 or len(mb) < 3:
        return Evidence(math.nan, {}, [], shared)
    xa = ma[:, [na.index(f) for f in shared]]
    xb = mb[:, [nb.index(f) for f in shared]]
    pairs = align(xa, xb)
    if len(pairs) < 3:
        return Evidence(math.nan, {}, pairs, shared)
    ia, ib = zip(*pairs)
    per = {}
    for k, f in enumerate(shared):
        u, v = xa[list(ia), k], xb[list(ib), k]
        per[f] = float(np.corrcoef(u, v)[0, 1]) if u.std() > 0 and v.std() > 0 else math.nan
    finite = [r for r in per.values() if math.isfinite(r)]
    return Evidence(float(np.mean(finite)) if finite else math.nan, per, pairs, shared)


@dataclass
class Verdict:
    a: str
    b: str
    paper: PaperScore
    evidence: Evidence
    p_value: float | None
    verdict: str
    reason: str
    kind: str | None = None
    null_size: int = 0
    extra: dict = field(default_factory=dict)


def p_value(score: float, null: list[float]) -> float | None:
    """Chance that an unrelated pair scores this high. Empirical while some null score reaches it;
    beyond the null's range, a normal tail fitted to its Fisher-z transformed scores (a finite null
    cannot show a p-value below 1/(n+1) otherwise)."""
    if len(null) < 10 or not math.isfinite(score):
        return None
    higher = sum(s >= score for s in null)
    if higher:
        return (1 + higher) / (1 + len(null))
    z = np.arctanh(np.clip(np.asarray(null), -0.999999, 0.999999))
    mu, sigma = float(z.mean()), float(z.std(ddof=1)) or 1e-6
    tail = 0.5 * math.erfc((math.atanh(min(score, 0.999999)) - mu) / (sigma * math.sqrt(2)))
    return max(tail, 1e-12)


def decide(a, b, null: list[float] | None = None) -> Verdict:
    """Score two signatures (with ``curves``, ``invariants``, ``family``, ``format``, ``n_layers``).

    ``null``: scores of unrelated pairs to calibrate against; by default the built-in synthetic null at
    these two depths (see :mod:`scanner.null`)."""
    if null is None:
        from scanner.null import synthetic_null  # it scores with this module: import on use

        null = list(synthetic_null(a.n_layers or 0, b.n_layers or 0))
    paper = paper_score(a.curves, b.curves)
    ev = evidence(a.invariants or {}, b.invariants or {})
    p = p_value(ev.score, null)
    name_a, name_b = f"{a.model}@{a.revision}", f"{b.model}@{b.revision}"
    if not math.isfinite(ev.score):
        return Verdict(name_a, name_b, paper, ev, None, "inconclusive",
                       "low information: the curves are flat or too short to carry a shape", None, len(null))
    if p is not None and p <= DERIVED_P and ev.score > 0:
        return Verdict(name_a, name_b, paper, ev, p, "derived", f"score {ev.score:.3f} beats "
                       f"{(1 - p) * 100:.1f}% of {len(null)} unrelated pairs", _kind(a, b, ev, paper), len(null))
    if p is None or p >= UNRELATED_P:
        return Verdict(name_a, name_b, paper, ev, p, "unrelated", "score within the range of unrelated pairs",
                       None, len(null))
    return Verdict(name_a, name_b, paper, ev, p, "inconclusive", "weak evidence: between unrelated and derived",
                   None, len(null))


def _kind(a, b, ev: Evidence, paper: PaperScore) -> str:
    """A guess at how one model came from the other, from what differs besides the weights' shape."""
    if a.n_layers != b.n_layers or len(ev.alignment) < min(a.n_layers, b.n_layers):
        return "pruned or depth up-scaled"
    if (a.family in MOE) != (b.family in MOE):
        return "MoE upcycle"
    if math.isfinite(paper.score) and paper.score < 0.5 and ev.score > 0.8:
        return "rescaled weights (possible evasion)"
    if quantized(a) != quantized(b) and ev.score > 0.98:
        return "quantized copy"
    return "fine-tune" if ev.score > 0.95 else "continued training"


#: Storage types of unquantized weights; anything else (GGUF Q*/IQ*, GPTQ, AWQ, fp8, bitsandbytes) is quantized.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def quantized(sig) -> bool:
    """Whether a signature's attention weights were stored quantized (GGUF counts as a quantized export)."""
    return sig.format == "gguf" or (sig.dtype is not None and sig.dtype not in FLOAT_DTYPES)


def benjamini_hochberg(p_values: list[float | None]) -> list[float | None]:
    """q-values for the candidates one ``match`` ranks: the false discovery rate of calling each derived."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    order = sorted(idx, key=lambda i: p_values[i])
    q: list[float | None] = [None] * len(p_values)
    running = 1.0
    for rank in range(len(order), 0, -1):
        i = order[rank - 1]
        running = min(running, p_values[i] * len(order) / rank)
        q[i] = running
    return q
