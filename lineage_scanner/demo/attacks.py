"""What an adversary who has read this code does to a :class:`ToyModel`, to hide a copy or to fake one.

Three kinds of transform, each a pure function of a model, a seed and a strength (the input is never
changed; every output array is float64, so a disguise's exactness is not lost to float32 rounding before
the writers store it as bf16):

- **Disguises** keep the model's function: the logits of :func:`lineage_scanner.demo.forward.logits` agree
  with the original's to rounding (~1e-12 relative), and every weight the sketch reads moves. They are what
  a thief applies to a stolen model before publishing it as "trained from scratch".
- **Forgeries** make an *unrelated* model look derived from a base: its values copied into the model at a
  fraction of positions, or curves of moments faked at another width. The function is not kept (nor need it
  be: the forger wants an accusation, not a working model).
- **Scrubs** make a *derived* model look unrelated by changing few values: the current sketch's anchor rows,
  a fraction of positions or rows replaced by noise of the same std, the largest weights shrunk.

"Attention values" below are the elements of the Q/K/V/O matrices, the evidence the sketch and the curves
are built from; :func:`changed_fraction` counts how many of them an attack changed.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from lineage_scanner.demo.forward import rope_pairs
from lineage_scanner.lineage.generator import ToyModel, heavy_tailed
from lineage_scanner.measure.sketch import SketchKey, anchor_rows, positions

ATTENTION = ("q", "k", "v", "o")
#: Where copied or scrubbed values go: random elements of every matrix, random whole rows, whole matrices
#: (smallest first), the positions a sketch key reads, that key's anchor rows (the adversary's guess at a
#: store's key, or a key that leaked).
PLACEMENTS = ("positions", "rows", "matrices", "sketch", "anchor rows")
#: The matrices whose input is the residual stream (after a norm), and those whose output is added to it.
READS_RESIDUAL = frozenset({"q", "k", "v", "gate", "up"})
WRITES_RESIDUAL = frozenset({"o", "down"})


def as_float64(model: ToyModel, name: str) -> ToyModel:
    """A deep copy named ``name`` whose arrays are all float64."""
    out = copy.deepcopy(model)
    out.name = name
    out.layers = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in out.layers]
    out.embed = np.asarray(out.embed, np.float64)
    return out


def haar_orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random orthogonal n x n matrix, uniform (Haar) over the orthogonal group."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _partial_shuffle(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """An order of range(n) that moves ceil(fraction·n) randomly chosen items (all of them to new places when
    at least two are chosen) and leaves the rest where they are."""
    order = np.arange(n)
    chosen = rng.choice(n, size=min(n, math.ceil(fraction * n)), replace=False)
    if len(chosen) >= 2:
        order[chosen] = np.roll(chosen, 1)
    return order


# ---------------------------------------------------------------------------------------------- disguises

def permute_heads(model: ToyModel, seed: int, strength: float = 1.0) -> ToyModel:
    """Reorder heads and MLP units: in every layer, KV heads (each with its group of query heads) and the query
    heads within each group, O's input columns to match; the MLP's hidden units (gate and up rows, down's
    columns). ``strength``: the fraction of KV heads, of query heads per group and of MLP units moved.
    Keeps the function exactly (a sum over heads and units does not care about their order); every
    moment of every matrix stays, every weight moves."""
    rng = np.random.default_rng(seed)
    out = as_float64(model, f"{model.name}-permuted")
    hd, per_group = out.head_dim, out.n_heads // out.n_kv_heads
    for layer in out.layers:
        kv = _partial_shuffle(rng, out.n_kv_heads, strength)
        q_heads = np.concatenate([g * per_group + _partial_shuffle(rng, per_group, strength) for g in kv])
        rows = {"q": _head_rows(q_heads, hd), "k": _head_rows(kv, hd), "v": _head_rows(kv, hd)}
        for key in [key for key in layer if key.removesuffix("_bias") in rows]:  # Q/K/V and their biases
            layer[key] = layer[key][rows[key.removesuffix("_bias")]]
        layer["o"] = layer["o"][:, rows["q"]]
        if "gate" in layer:
            units = _partial_shuffle(rng, layer["gate"].shape[0], strength)
            layer["gate"], layer["up"] = layer["gate"][units], layer["up"][units]
            layer["down"] = layer["down"][:, units]
    return out


def _head_rows(heads: np.ndarray, head_dim: int) -> np.ndarray:
    """The rows of a projection that hold ``heads``, head after head."""
    return (heads[:, None] * head_dim + np.arange(head_dim)).reshape(-1)


def fold_norms(model: ToyModel, seed: int = 0, strength: float = 1.0) -> ToyModel:
    """Fold each RMSNorm gain into the matrices it feeds (``attn_norm`` into Q/K/V, ``mlp_norm`` into gate
    and up) and set the gains to 1. Keeps the function exactly; moves every column of Q/K/V/gate/up by its
    gain. Deterministic: ``seed`` and ``strength`` are taken only for a uniform signature."""
    out = as_float64(model, f"{model.name}-folded")
    for layer in out.layers:
        for gain, roles in (("attn_norm", ("q", "k", "v")), ("mlp_norm", ("gate", "up"))):
            for role in roles:
                if role in layer:
                    layer[role] = layer[role] * layer[gain][None, :]
            layer[gain] = np.ones_like(layer[gain])
    return out


def rotate_residual(model: ToyModel, seed: int, strength: float = 1.0) -> ToyModel:
    """Rotate the residual stream by an orthogonal R: norm gains folded (:func:`fold_norms`), then every
    matrix reading the stream W·Rᵀ (Q/K/V, gate, up), every matrix writing it R·W (O, down), the embedding
    E·Rᵀ. RMSNorm commutes with R (it only divides by the norm), and the final gain-less norm and the tied
    embedding give logits (R·x)·(R·e) = x·e, so the function is kept exactly. ``strength``: the fraction
    of residual coordinates R mixes (a Haar-random rotation of that many, chosen at random; 1 = all).
    Stds survive; every position and every kurtosis moves."""
    rng = np.random.default_rng(seed)
    out = fold_norms(model)
    out.name = f"{model.name}-rotated"
    rotation = np.eye(out.hidden)
    mixed = np.sort(rng.choice(out.hidden, size=max(2, round(strength * out.hidden)), replace=False))
    rotation[np.ix_(mixed, mixed)] = haar_orthogonal(rng, len(mixed))
    for layer in out.layers:
        for role in READS_RESIDUAL & layer.keys():
            layer[role] = layer[role] @ rotation.T
        for role in WRITES_RESIDUAL & layer.keys():
            layer[role] = rotation @ layer[role]
    out.embed = out.embed @ rotation.T
    return out


def conditioned(rng: np.random.Generator, n: int, condition: float) -> np.ndarray:
    """A random n x n matrix U·diag(s)·W (U, W Haar-orthogonal) whose singular values run geometrically
    from condition^-1/2 to condition^1/2: condition number exactly ``condition``, determinant ±1."""
    gains = rng.permutation(np.geomspace(condition**-0.5, condition**0.5, n))
    return haar_orthogonal(rng, n) * gains[None, :] @ haar_orthogonal(rng, n)


def _map_vo(model: ToyModel, maps: list[list[np.ndarray]]) -> None:
    """In place: per layer and KV group g, V's rows of g (and its bias) -> B·V_g, and O's columns of every
    query head of g -> O_h·B⁻¹, with B = ``maps[layer][g]``: each head's output O_h·V_g is unchanged."""
    hd, per_group = model.head_dim, model.n_heads // model.n_kv_heads
    for layer, layer_maps in zip(model.layers, maps):
        for g, b in enumerate(layer_maps):
            rows = slice(g * hd, (g + 1) * hd)
            layer["v"][rows] = b @ layer["v"][rows]
            if "v_bias" in layer:
                layer["v_bias"][rows] = b @ layer["v_bias"][rows]
            inverse = np.linalg.inv(b)
            for h in range(g * per_group, (g + 1) * per_group):
                cols = slice(h * hd, (h + 1) * hd)
                layer["o"][:, cols] = layer["o"][:, cols] @ inverse


def _map_qk(model: ToyModel, coefficients: list[np.ndarray], rope: str) -> None:
    """In place: per layer, KV group g and rotary pair j, the pair of every query head of g multiplied by
    c = ``coefficients[layer][g, j]`` (a complex number: a 2x2 scaled rotation of the pair's two rows) and
    K's pair by 1/conj(c). Rotary embedding multiplies each pair by a unit complex number, which commutes
    with c, and q·k sums Re(q_j·conj(k_j)) over pairs, which c·conj(1/conj(c))= 1 leaves unchanged."""
    hd, per_group = model.head_dim, model.n_heads // model.n_kv_heads
    first, second = rope_pairs(hd, rope)

    def turn(layer: dict[str, np.ndarray], role: str, head: int, c: np.ndarray) -> None:
        for key in (role, f"{role}_bias"):
            if key in layer:
                w = layer[key]
                a, b = w[head * hd + first].copy(), w[head * hd + second].copy()
                shape = (-1,) + (1,) * (w.ndim - 1)
                re, im = c.real.reshape(shape), c.imag.reshape(shape)
                w[head * hd + first], w[head * hd + second] = re * a - im * b, im * a + re * b

    for layer, c in zip(model.layers, coefficients):
        for g in range(model.n_kv_heads):
            turn(layer, "k", g, 1.0 / np.conj(c[g]))
            for h in range(g * per_group, (g + 1) * per_group):
                turn(layer, "q", h, c[g])


def map_vo(model: ToyModel, seed: int, strength: float = 4.0) -> ToyModel:
    """Per KV group, an invertible map B of V's rows undone on O's columns (:func:`_map_vo`), B a random
    rotation times gains of condition number ``strength`` (1: a pure rotation). Keeps the function exactly
    and every per-head OV circuit O_h·V_g; moves every V and O weight."""
    rng = np.random.default_rng(seed)
    out = as_float64(model, f"{model.name}-vo")
    _map_vo(out, [[conditioned(rng, out.head_dim, strength) for _ in range(out.n_kv_heads)] for _ in out.layers])
    return out


def map_qk(model: ToyModel, seed: int, strength: float = 1.0, rope: str = "half") -> ToyModel:
    """RoPE-commuting maps of Q and K (:func:`_map_qk`) under the ``rope`` convention: per layer, KV group and
    rotary pair, c with a uniform phase and a modulus log-uniform in [1/strength, strength] (1: pure
    rotations of each pair). Keeps the function exactly and every per-head QK circuit; moves every Q and K
    weight."""
    rng = np.random.default_rng(seed)
    out = as_float64(model, f"{model.name}-qk")
    spread = math.log(strength)
    shape = (out.n_kv_heads, out.head_dim // 2)
    _map_qk(out, [np.exp(rng.uniform(-spread, spread, shape) + 1j * rng.uniform(-np.pi, np.pi, shape))
                  for _ in out.layers], rope)
    return out


def _factors(rng: np.random.Generator, strength: float, n: int) -> np.ndarray:
    """n factors each at least strength^1/2 away from 1 and at most ``strength``: log-magnitude uniform in
    [ln(strength)/2, ln(strength)], either sign (a disguise wants every layer moved, none left near 1)."""
    spread = math.log(strength)
    return np.exp(rng.choice([-1.0, 1.0], n) * rng.uniform(spread / 2, spread, n))


def rescale(model: ToyModel, seed: int, strength: float = 3.0) -> ToyModel:
    """Per layer Q·a and K/a, V·b and O/b, and per MLP unit up·s and down's column /s (SwiGLU's product is
    linear in up), each factor between ``strength`` and its square root, or their inverses
    (:func:`_factors`); then the norm gains folded (:func:`fold_norms`). Keeps the function exactly; every
    projection's std and the seed method's curves move, every weight's sign stays."""
    rng = np.random.default_rng(seed)
    out = fold_norms(model)
    out.name = f"{model.name}-rescaled"
    for layer in out.layers:
        a, b = _factors(rng, strength, 2)
        layer["q"], layer["k"], layer["v"], layer["o"] = layer["q"] * a, layer["k"] / a, layer["v"] * b, layer["o"] / b
        for role, factor in (("q_bias", a), ("k_bias", 1 / a), ("v_bias", b)):
            if role in layer:
                layer[role] = layer[role] * factor
        if "up" in layer:
            s = _factors(rng, strength, layer["up"].shape[0])
            layer["up"], layer["down"] = layer["up"] * s[:, None], layer["down"] / s[None, :]
    return out


def disguise_all(model: ToyModel, seed: int, strength: float = 4.0, rope: str = "half") -> ToyModel:
    """Every disguise at once, as a thief would: heads and units permuted, the residual stream rotated, V/O
    maps of condition number ``strength``, RoPE-commuting Q/K maps with moduli in [1/2, 2], rescaled with
    the gains folded. Keeps the function exactly."""
    out = permute_heads(model, seed)
    out = rotate_residual(out, seed + 1)
    out = map_vo(out, seed + 2, strength)
    out = map_qk(out, seed + 3, 2.0, rope)
    out = rescale(out, seed + 4)
    out.name = f"{model.name}-disguised"
    return out


# ------------------------------------------------------------------------------------- forgeries and scrubs

def _rows_of(model: ToyModel) -> list[tuple[int, str, int]]:
    """Every attention row as (layer, role, row)."""
    return [(i, role, r) for i, layer in enumerate(model.layers) for role in ATTENTION
            for r in range(layer[role].shape[0])]


def select(model: ToyModel, seed: int, fraction: float, placement: str, key: SketchKey | None = None
           ) -> list[dict[str, np.ndarray]]:
    """Per layer and attention role, a boolean mask of the values an attack edits (see PLACEMENTS):

    - "positions": round(fraction·size) random elements of every matrix;
    - "rows": round(fraction·rows) random whole rows drawn from all attention rows of the model;
    - "matrices": whole matrices, smallest first (ties in random order), as many as fit in ``fraction`` of
      all attention values (none when the smallest does not fit);
    - "sketch": the positions :func:`lineage_scanner.measure.sketch.positions` reads under ``key``
      (``fraction`` unused);
    - "anchor rows": ``key``'s anchor rows, whole (``fraction`` unused).

    A store's key is its secret: an adversary aims at a key of his own (a guess) or at one that leaked.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    if placement in ("sketch", "anchor rows") and key is None:
        raise ValueError(f"placement {placement!r} aims at a sketch key's positions: give the key aimed at")
    rng = np.random.default_rng(seed)
    masks = [{role: np.zeros(layer[role].shape, bool) for role in ATTENTION} for layer in model.layers]
    if placement == "rows":
        pool = _rows_of(model)
        for k in rng.choice(len(pool), size=round(fraction * len(pool)), replace=False):
            i, role, r = pool[k]
            masks[i][role][r] = True
    elif placement == "matrices":
        order = sorted(((layer[role].size, rng.random(), i, role) for i, layer in enumerate(model.layers)
                        for role in ATTENTION))
        budget = fraction * sum(m[0] for m in order)
        for size, _, i, role in order:
            if size > budget:
                break
            masks[i][role][...] = True
            budget -= size
    else:
        for i, layer in enumerate(model.layers):
            for role in ATTENTION:
                rows, cols = layer[role].shape
                flat = masks[i][role].reshape(-1)
                if placement == "positions":
                    flat[rng.choice(rows * cols, size=round(fraction * rows * cols), replace=False)] = True
                elif placement == "sketch":
                    flat[positions(rows, cols, key)] = True
                else:
                    masks[i][role][anchor_rows(rows, cols, key)] = True
    return masks


def copy_values(unrelated: ToyModel, base: ToyModel, seed: int, fraction: float, placement: str,
                key: SketchKey | None = None) -> ToyModel:
    """Forgery: ``unrelated`` with ``base``'s attention values at the positions :func:`select` picks. The
    shapes must agree. Changes exactly the selected values; the function is not kept."""
    out = as_float64(unrelated, f"{unrelated.name}-forged")
    for layer, source, mask in zip(out.layers, base.layers, select(unrelated, seed, fraction, placement, key)):
        for role, m in mask.items():
            if source[role].shape != layer[role].shape:
                raise ValueError(f"copy_values: {role} is {source[role].shape} in {base.name}, "
                                 f"{layer[role].shape} in {unrelated.name}")
            layer[role][m] = source[role][m]
    return out


def scrub(model: ToyModel, seed: int, fraction: float, placement: str, key: SketchKey | None = None) -> ToyModel:
    """Scrubbing: the attention values :func:`select` picks replaced by heavy-tailed noise at the std of the
    row each sits in (so no row, and hardly a matrix, changes its std). Changes exactly the selected values."""
    rng = np.random.default_rng(seed + 1)
    out = as_float64(model, f"{model.name}-scrubbed")
    for layer, mask in zip(out.layers, select(model, seed, fraction, placement, key)):
        for role, m in mask.items():
            w = layer[role]
            noise = heavy_tailed(rng, w.shape).astype(np.float64) * w.std(axis=1, keepdims=True)
            w[m] = noise[m]
    return out


def shrink_largest(model: ToyModel, seed: int = 0, strength: float = 0.0005, factor: float = 0.1) -> ToyModel:
    """Scrubbing: in every layer, the largest ``strength`` fraction of its attention values (by magnitude,
    over Q/K/V/O together) multiplied by ``factor``: the outliers that dominate a self-normalised sketch
    statistic. Deterministic (``seed`` unused). Changes ceil(strength·values) values per layer."""
    out = as_float64(model, f"{model.name}-shrunk")
    for layer in out.layers:
        flat = np.concatenate([np.abs(layer[role]).reshape(-1) for role in ATTENTION])
        count = math.ceil(strength * flat.size)
        threshold = np.partition(flat, flat.size - count)[flat.size - count]
        for role in ATTENTION:
            w = layer[role]
            w[np.abs(w) >= threshold] *= factor
    return out


def _kurtosis(x: np.ndarray) -> float:
    square = (x - x.mean()) ** 2
    return float(np.mean(square * square) / np.mean(square) ** 2)


def _like(rng: np.random.Generator, reference: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Fresh noise of ``shape`` with ``reference``'s mean, std and kurtosis, all three matched exactly (as a
    scan measures them, on the sample itself): Gaussian draws z taken to sign(z)·|z|^p, the power p solved
    for (kurtosis grows with p: about 1 at p → 0, 3 at p = 1, 11.7 at p = 2), then shifted and scaled.
    The power is found on the first 65,536 draws, then refined on all of them by the secant method."""
    from scipy.optimize import brentq, newton

    target = _kurtosis(reference)
    z = rng.standard_normal(shape).reshape(-1)
    sign, log_magnitude = np.sign(z), np.log(np.abs(z))

    def excess(p: float, n: int | None = None) -> float:
        return _kurtosis(sign[:n] * np.exp(p * log_magnitude[:n])) - target

    guess = brentq(excess, 0.05, 6.0, args=(65_536,), xtol=1e-4)
    found = newton(excess, guess, x1=1.01 * guess, tol=1e-10, maxiter=20, full_output=True, disp=False)
    power = found[0] if found[1].converged else brentq(excess, 0.05, 6.0, xtol=1e-10)
    noise = sign * np.exp(power * log_magnitude)
    noise = (noise - noise.mean()) / noise.std()
    return (reference.mean() + noise * reference.std()).reshape(shape)


def forge_curves(base: ToyModel, seed: int, width: float = 0.75) -> ToyModel:
    """Forgery without copying anything: a model at hidden size ``width``·base's (rounded to whole rotary
    heads; same heads, layers, vocabulary) whose every matrix is fresh heavy-tailed noise with the base
    matrix's mean, std and kurtosis, and whose norm gains are the base's, resampled to the new width. Every curve
    of moments over depth is the base's; no value is shared."""
    rng = np.random.default_rng(seed)
    step = 2 * base.n_heads
    hidden = max(step, round(base.hidden * width / step) * step)
    out = ToyModel(f"{base.name}-curves", base.style, hidden, base.n_heads, base.n_kv_heads,
                   intermediate=max(1, round(base.intermediate * hidden / base.hidden)), vocab=base.vocab)
    hd = out.head_dim
    shapes = {"q": (base.n_heads * hd, hidden), "k": (base.n_kv_heads * hd, hidden),
              "v": (base.n_kv_heads * hd, hidden), "o": (hidden, base.n_heads * hd),
              "gate": (out.intermediate, hidden), "up": (out.intermediate, hidden), "down": (hidden, out.intermediate)}
    for layer in base.layers:
        forged = {}
        for key, w in layer.items():
            w = np.asarray(w, np.float64)
            if key in shapes:
                forged[key] = _like(rng, w, shapes[key])
            else:  # norm gains over the residual, biases over a projection's rows: resampled to the new size
                size = hidden if key.endswith("norm") else shapes[key.removesuffix("_bias")][0]
                forged[key] = rng.choice(w, size=size)
        out.layers.append(forged)
    out.embed = _like(rng, np.asarray(base.embed, np.float64), (base.vocab, hidden))
    return out


def changed_fraction(before: ToyModel, after: ToyModel) -> float:
    """The fraction of attention values (Q/K/V/O of every layer) that differ between two same-shaped models."""
    changed = total = 0
    for a, b in zip(before.layers, after.layers):
        for role in ATTENTION:
            changed += int(np.count_nonzero(np.asarray(a[role], np.float64) != np.asarray(b[role], np.float64)))
            total += a[role].size
    return changed / total
