"""The lineage score users can trust beside ``paper_score``: invariant features, depth alignment,
calibrated p-values and verdicts.

Features per layer, each chosen to survive an evasion the seed method falls for:

- ``qk`` = log std(Q·diag γ) + log std(K·diag γ): scaling Q by a and K by 1/a changes no output and no
  product; folding the input-norm gain γ into Q/K/V changes neither (γ is folded in before measuring).
- ``vo`` = log std(V·diag γ) + log std(O): the same for V·b, O/b.
- ``kurt_*``: the kurtosis of each projection as stored, blind to any rescaling; ``fkurt_q/k/v``: the
  kurtosis of Q/K/V with γ folded in, which norm folding leaves alone. Both are kept: folding moves the
  first, while continued training that moves the gains moves the second, so together neither edit
  costs more than half of the kurtosis evidence.

Each feature curve is z-scored per model. Layers are aligned by dynamic programming (monotone, with a
gap cost), so pruned, truncated and depth-up-scaled models align with their parents layer by layer; the
score is the mean Pearson r of the features over aligned layers. A p-value is the share of a null of
unrelated pairs (from the store, else a built-in synthetic one) that scores as high.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numba
import numpy as np

from scanner.lineage import PaperScore, paper_score

FEATURES = ("qk", "vo", "kurt_q", "kurt_k", "kurt_v", "kurt_o", "fkurt_q", "fkurt_k", "fkurt_v")
GAP = 0.6
#: A feature whose curve moves less than this (std of its log values over layers) carries no shape.
FLAT = 0.01
DERIVED_P = 0.01
UNRELATED_P = 0.2
#: Permutations for the layer-order test; up to 6 layers (720 orders) every one is enumerated instead.
PERMUTATIONS = 2000
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

    def kurtosis(layer: int, role: str, folded: bool) -> float:
        s = by.get((layer, role))
        if s is None:
            return math.nan
        return s.folded_kurtosis if folded and s.folded_kurtosis is not None else s.moments.kurtosis

    for role in "qkvo":
        out[f"kurt_{role}"] = [kurtosis(i, role, False) for i in range(n_layers)]
    for role in "qkv":
        out[f"fkurt_{role}"] = [kurtosis(i, role, True) for i in range(n_layers)]
    return out


def _matrix(features: dict[str, list[float]]) -> tuple[np.ndarray, list[str]]:
    """Layers × usable features, each z-scored; features that are flat or missing are left out."""
    depth = len(next((v for v in features.values() if v is not None), []))
    names = [n for n in FEATURES if features.get(n) is not None and len(features[n]) == depth]
    if depth < 3 or not names:
        return np.empty((depth, 0)), []
    x = np.array([features[n] for n in names], dtype=np.float64).T
    with np.errstate(invalid="ignore"):
        spread = x.std(axis=0)
        keep = np.isfinite(x).all(axis=0) & (spread >= FLAT)
    x = x[:, keep]
    return (x - x.mean(axis=0)) / spread[keep], [n for n, k in zip(names, keep) if k]


def align(a: np.ndarray, b: np.ndarray, gap: float = GAP) -> list[tuple[int, int]]:
    """Monotone alignment of two layer sequences maximising similarity minus gap costs (Needleman-Wunsch)."""
    sim = 1.0 - ((a[:, None, :] - b[None, :, :]) ** 2).mean(axis=2) / 2.0
    pairs = _needleman_wunsch(np.ascontiguousarray(sim, dtype=np.float64), float(gap))
    return [(int(i), int(j)) for i, j in pairs[::-1]]


@numba.njit(cache=True)
def _needleman_wunsch(sim: np.ndarray, gap: float) -> np.ndarray:
    """The DP and its traceback; returns the matched (i, j) pairs from the end backwards. Ties prefer a
    match, then a gap in ``b``. Compiled: ``match`` re-scores hundreds of pairs per query."""
    n, m = sim.shape
    score = np.zeros((n + 1, m + 1))
    move = np.zeros((n + 1, m + 1), dtype=np.int8)
    for i in range(1, n + 1):
        score[i, 0] = -gap * i
    for j in range(1, m + 1):
        score[0, j] = -gap * j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag, up, left = score[i - 1, j - 1] + sim[i - 1, j - 1], score[i - 1, j] - gap, score[i, j - 1] - gap
            if diag >= up and diag >= left:
                score[i, j], move[i, j] = diag, 0
            elif up >= left:
                score[i, j], move[i, j] = up, 1
            else:
                score[i, j], move[i, j] = left, 2
    out = np.empty((min(n, m), 2), dtype=np.int64)
    k, i, j = 0, n, m
    while i > 0 and j > 0:
        if move[i, j] == 0:
            out[k, 0], out[k, 1] = i - 1, j - 1
            k += 1
            i, j = i - 1, j - 1
        elif move[i, j] == 1:
            i -= 1
        else:
            j -= 1
    return out[:k]


def permutation_p(xa: np.ndarray, xb: np.ndarray, observed: float, rounds: int = PERMUTATIONS,
                  seed: int = 0) -> float:
    """Chance that shuffling the layers of ``b`` scores as high as ``observed``: exact over every
    permutation when there are at most ``rounds`` of them, else from ``rounds`` random ones.

    Columns are z-scored, so the score of a permutation is a mean of inner products. It tests layer
    correspondence against layers in random order; curves that share a depth trend are not exchangeable,
    which is why the verdict also needs the null of unrelated models (see :func:`decide`)."""
    n = len(xa)
    if math.factorial(n) <= rounds:
        orders = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        orders = np.argsort(rng.random((rounds, n)), axis=1)
    za = (xa - xa.mean(0)) / xa.std(0)
    zb = (xb - xb.mean(0)) / xb.std(0)
    scores = np.einsum("if,pif->p", za, zb[orders]) / (n * za.shape[1])
    hits = int((scores >= observed - 1e-12).sum())
    exact = len(orders) == math.factorial(n)
    return hits / len(orders) if exact else (1 + hits) / (1 + len(orders))


@dataclass(frozen=True)
class Evidence:
    score: float
    per_feature: dict[str, float]
    alignment: list[tuple[int, int]]
    features: list[str]
    #: the layer-order permutation test, where it applies (equal depths aligned one to one)
    permutation_p: float | None = None


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
    ia, ib = (list(t) for t in zip(*pairs))
    u, v = xa[ia] - xa[ia].mean(axis=0), xb[ib] - xb[ib].mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (u * v).sum(axis=0) / np.sqrt((u * u).sum(axis=0) * (v * v).sum(axis=0))
    per = {f: float(r[k]) if np.isfinite(r[k]) else math.nan for k, f in enumerate(shared)}
    finite = [r for r in per.values() if math.isfinite(r)]
    score = float(np.mean(finite)) if finite else math.nan
    perm = None
    if math.isfinite(score) and len(xa) == len(xb) == len(pairs) and all(i == j for i, j in pairs):
        usable = [k for k, f in enumerate(shared) if math.isfinite(per[f])]
        perm = permutation_p(xa[:, usable], xb[:, usable], score)
    return Evidence(score, per, pairs, shared, perm)


@dataclass(frozen=True)
class Null:
    """Scores of unrelated pairs that a verdict is calibrated against, and where they came from."""

    scores: tuple[float, ...]
    source: str  # "store": the store's own unrelated pairs | "synthetic": the built-in null
    #: store pairs left out as outliers, likely relatives no card declares (see scanner.null)
    excluded: int = 0


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
        return len(self.null.scores) if self.null else 0


def p_value(score: float, null: tuple[float, ...] | list[float]) -> float | None:
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


def decide(a, b, null: Null | None = None) -> Verdict:
    """Score two signatures (with ``curves``, ``invariants``, ``family``, ``format``, ``dtype``, ``n_layers``).

    ``null``: unrelated pairs to calibrate against (:func:`scanner.null.null_for` draws them from a
    store); by default the built-in synthetic null at these two depths. Where the layers align one to
    one, the layer-order permutation test must agree too: the larger of the two p-values decides."""
    if null is None:
        from scanner.null import synthetic  # it scores with this module: import on use

        null = synthetic(a.n_layers or 0, b.n_layers or 0)
    paper = paper_score(a.curves, b.curves)
    ev = evidence(a.invariants or {}, b.invariants or {})
    p_null = p_value(ev.score, null.scores)
    p = p_null if p_null is None or ev.permutation_p is None else max(p_null, ev.permutation_p)
    n = len(null.scores)

    def verdict(label: str, reason: str, kind: str | None = None) -> Verdict:
        return Verdict(f"{a.model}@{a.revision}", f"{b.model}@{b.revision}", paper, ev, p, label, reason, kind,
                       null, p_null)

    if not math.isfinite(ev.score):
        return verdict("inconclusive", "low information: the curves are flat or too short to carry a shape")
    if p is not None and p <= DERIVED_P and ev.score > 0:
        return verdict("derived", f"score {ev.score:.3f} beats {(1 - p_null) * 100:.1f}% of {n} unrelated pairs "
                                  f"({null.source} null)", _kind(a, b, ev, paper))
    if p is None or p >= UNRELATED_P:
        return verdict("unrelated", "score within the range of unrelated pairs")
    return verdict("inconclusive", "weak evidence: between unrelated and derived")


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
    return "fine-tune" if _std_drift(a, b, ev.alignment) < FINE_TUNE_DRIFT else "continued training"


#: A fine-tune moves each projection's std by a few percent at most; continued training moves it more.
FINE_TUNE_DRIFT = 0.03


def _std_drift(a, b, alignment: list[tuple[int, int]]) -> float:
    """Median over aligned layers of how far the projections' stds moved (|Δ log std| per matrix, from the
    rescaling-invariant ``qk`` and ``vo`` products); infinite when they cannot be compared."""
    moves = [abs(a.invariants[f][i] - b.invariants[f][j]) / 2 for f in ("qk", "vo") for i, j in alignment
             if f in (a.invariants or {}) and f in (b.invariants or {})]
    moves = [m for m in moves if math.isfinite(m)]
    return float(np.median(moves)) if moves else math.inf


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
