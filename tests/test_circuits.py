"""The circuit sketches and their tests: entries of OV and QK (exact null) that every per-head, RoPE-commuting,
permuting or rescaling map leaves alone, and their Gram, which a residual rotation leaves alone too."""

from __future__ import annotations

import numpy as np
import pytest

from lineage_scanner.demo import attacks
from lineage_scanner.lineage.circuits import circuit_evidence
from lineage_scanner.lineage.generator import base_model
from lineage_scanner.measure.circuits import CircuitAccumulator, gram_layers, matching, units_per_layer
from lineage_scanner.measure.sketch import SketchKey

KEY = SketchKey(b"a store's own secret, for tests.")


def circuit_parts(model, key: SketchKey = KEY):
    """A model's circuit sketches, straight from its matrices (norm gains first, as a scan feeds them)."""
    acc = CircuitAccumulator(model.hidden, model.head_dim, key, len(model.layers))
    for i, layer in enumerate(model.layers):
        acc.gain(i, layer["attn_norm"])
        for role in ("o", "q", "v", "k"):
            acc.add(i, role, layer[role])
    return acc.parts()


def direct(model):
    """Every layer's OV and QK circuits as D x D matrices, summed over heads, the norm gain folded in."""
    hd, groups = model.head_dim, model.n_kv_heads
    per = model.n_heads // groups
    out = []
    for layer in model.layers:
        g = layer["attn_norm"].astype(np.float64)
        q, k, v, o = (layer[r].astype(np.float64) for r in "qkvo")
        q_hat = q.reshape(groups, per, hd, -1).sum(1).reshape(groups * hd, -1)
        o_hat = o.reshape(o.shape[0], groups, per, hd).sum(2).reshape(o.shape[0], groups * hd)
        out.append({"ov": o_hat @ (v * g), "qk": (q_hat * g).T @ (k * g)})
    return out


@pytest.fixture(scope="module")
def base():
    return base_model("b", "llama", 21, 4, hidden=128, n_heads=8, n_kv_heads=2)


def entries(parts):
    return {(p.layer, p.role): p.values for p in parts if p.kind == "circuit"}


def gram(parts):
    return next(p.values for p in parts if p.kind == "circuit_gram")


def test_entries_are_the_circuits_at_the_keys_matched_pairs(base):
    i, j = matching(base.hidden, KEY)
    assert len(set(i) | set(j)) == 2 * len(i) == base.hidden  # a matching: every coordinate at most once
    got = entries(circuit_parts(base))
    for layer, circuits in enumerate(direct(base)):
        for role, x in circuits.items():
            want = np.concatenate([x[i, j], x[j, i]])
            assert np.allclose(got[(layer, role)], want, rtol=1e-5, atol=1e-7 * np.abs(want).max())
    other = SketchKey(b"another store's secret, 32 bytes")
    assert not np.array_equal(matching(base.hidden, other)[0], i)


@pytest.mark.parametrize("disguise", [
    lambda m: attacks.permute_heads(m, 1),
    lambda m: attacks.map_vo(m, 2, 1.0),
    lambda m: attacks.map_vo(m, 3, 100.0),
    lambda m: attacks.map_qk(m, 4, 1.0, "half"),
    lambda m: attacks.map_qk(m, 5, 1.0, "interleaved"),
    lambda m: attacks.rescale(m, 6),
    lambda m: attacks.fold_norms(m),
], ids=["heads permuted", "V/O maps, condition 1", "V/O maps, condition 100", "RoPE maps (half)",
        "RoPE maps (interleaved)", "rescaled", "norms folded"])
def test_every_map_that_keeps_the_function_keeps_the_circuits(base, disguise):
    original, disguised = circuit_parts(base), circuit_parts(disguise(base))
    a, b = entries(original), entries(disguised)
    for key in a:
        assert np.allclose(a[key], b[key], rtol=1e-4, atol=1e-5 * np.abs(a[key]).max()), key
    # the per-head Gram: the same cosines, a permutation of heads reordering them within their layers
    assert np.allclose(np.sort(gram(original)), np.sort(gram(disguised)), atol=1e-5)
    ev = circuit_evidence(original, disguised)
    assert ev.same_function and ev.log10_p < -6 and ev.gram_r > 0.9999


def test_a_residual_rotation_moves_the_entries_but_not_their_gram(base):
    original, rotated = circuit_parts(base), circuit_parts(attacks.rotate_residual(base, 7))
    ev = circuit_evidence(original, rotated)
    assert ev.log10_p > -3  # every entry moved: the exact test sees nothing ...
    assert ev.gram_r > 0.9999 and ev.same_function_rotated and ev.gram_log10_p < -6  # ... the Gram all of it
    everything = circuit_evidence(original, circuit_parts(attacks.disguise_all(base, 8, 100.0)))
    assert everything.gram_r > 0.9999 and everything.gram_log10_p < -6


def test_the_entries_exact_null_holds_for_models_trained_apart():
    models = [circuit_parts(base_model("x", "llama", 7300 + s, 6, hidden=128, n_heads=8, n_kv_heads=2, mlp=False))
              for s in range(16)]
    evs = [circuit_evidence(models[i], models[j]) for i in range(0, 16, 2) for j in range(1, 16, 2)]
    p = np.array([10**ev.log10_p for ev in evs])
    assert len(p) == 64 and p.min() > 1e-4
    for level in (0.05, 0.2, 0.5):  # a tail bound: valid (never below its level), conservative near 1
        assert np.mean(p <= level) <= level + 0.05
    assert max(ev.robust_log10_p for ev in evs) == 0.0 or min(ev.robust_log10_p for ev in evs) > -2
    # the calibrated per-head Gram, heads matched as for a permuted copy: nothing near its threshold
    assert max(ev.gram_r for ev in evs) < 0.5 and min(ev.gram_log10_p for ev in evs) > -1


def test_a_forger_who_copies_whole_layers_gets_no_robust_circuit_evidence(base):
    """Copying a base's V and O (and Q and K) whole into a stranger for a few layers makes those layers'
    circuits the base's: the plain test sees it, the robust one gives it away."""
    stranger = base_model("s", "llama", 22, 12, hidden=128, n_heads=8, n_kv_heads=2)
    famous = base_model("f", "llama", 23, 12, hidden=128, n_heads=8, n_kv_heads=2)
    forged = attacks.as_float64(stranger, "forged")
    copied = {r: famous.layers[3][r].copy() for r in ("q", "k", "v", "o", "attn_norm")}
    forged.layers[3] = {**forged.layers[3], **copied}
    ev = circuit_evidence(circuit_parts(famous), circuit_parts(forged))
    assert ev.log10_p < -3 and ev.robust_log10_p > -2  # one layer of twelve: 8% of attention values


def test_the_gram_units_are_the_heads_where_they_fit(base):
    """Where every head's circuits fit the key's budget, the Gram's units are the heads' own OV and QK (per
    layer: OV of each head, then QK of each), so a shallow model still has many; else each layer's sums."""
    hd, per = base.head_dim, base.n_heads // base.n_kv_heads
    part = next(p for p in circuit_parts(base) if p.kind == "circuit_gram")
    heads = 2 * base.n_heads
    assert (part.role, part.rows, part.cols) == ("heads", heads * len(base.layers), heads)
    units = []
    for layer in base.layers:
        g = layer["attn_norm"].astype(np.float64)
        q, k, v, o = (layer[r].astype(np.float64) for r in "qkvo")
        group = [slice(h // per * hd, (h // per + 1) * hd) for h in range(base.n_heads)]
        units += [o[:, h * hd:(h + 1) * hd] @ (v[group[h]] * g) for h in range(base.n_heads)]
        units += [(q[h * hd:(h + 1) * hd] * g).T @ (k[group[h]] * g) for h in range(base.n_heads)]
    x = np.stack([u.reshape(-1) for u in units])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    want = (x @ x.T)[np.triu_indices(len(units), 1)]
    assert np.allclose(part.values, want, atol=1e-5)
    assert units_per_layer(4, 128, 8, 2, KEY) == 8 and units_per_layer(32, 4096, 32, 8, KEY) == 1
    assert units_per_layer(8, 128, 32, 4, KEY) == 4  # too many heads: their KV groups
    small = SketchKey(KEY.secret, gram_bytes=2 * 4 * 128 * 128 * 4)  # the layer sums fit, the heads do not
    part = next(p for p in circuit_parts(base, small) if p.kind == "circuit_gram")
    assert (part.role, part.rows, part.cols) == ("units", 8, 8)


@pytest.mark.parametrize("heads, groups, units", [(8, 2, 8), (32, 4, 4)], ids=["by heads", "by KV groups"])
def test_a_shallow_copy_disguised_then_fine_tuned_is_found_by_its_heads(heads, groups, units):
    """Four layers give a layer-sum Gram 8 units, too few once their shared trend is removed; their heads
    (or, where heads are many, their KV groups) give far more. Every map combined (heads permuted too) and
    then a fine-tune: derived by the Gram alone."""
    from lineage_scanner.demo.derive import drift

    shape = {"hidden": 128, "n_heads": heads, "n_kv_heads": groups}
    famous = base_model("f", "llama", 24, 4, **shape)
    disguised = attacks.disguise_all(drift(famous, "ft", 25, 0.05, 0.01), 26, 100.0)
    parts = circuit_parts(famous)
    assert next(p.cols for p in parts if p.kind == "circuit_gram") == 2 * units
    ev = circuit_evidence(parts, circuit_parts(disguised))
    assert ev.log10_p > -3  # the residual rotation moved every entry
    assert 0.98 < ev.gram_r < 0.999 and ev.gram_log10_p < -6  # trained further, the same circuits by heads
    unrelated = circuit_evidence(parts, circuit_parts(base_model("s", "llama", 27, 4, **shape)))
    assert unrelated.gram_r < 0.5 and unrelated.gram_log10_p > -1


@pytest.mark.parametrize("heads", [8, 32], ids=["by heads", "by layer sums"])
def test_models_up_scaled_alike_share_repeated_circuits_not_lineage(heads):
    """Depth up-scaling repeats layers, so two unrelated models up-scaled the same way both have cosines of 1
    at the same places in their Gram: left out, what remains is as unrelated as they are."""
    from lineage_scanner.demo.derive import upscale

    shape = {"hidden": 128, "n_heads": heads, "n_kv_heads": heads // 4}
    a, b = (upscale(base_model(n, "llama", seed, 6, **shape), f"{n}-up") for n, seed in (("a", 31), ("b", 32)))
    parts = circuit_parts(a), circuit_parts(b)
    assert {p.role for p in parts[0] if p.kind == "circuit_gram"} == {"heads" if heads == 8 else "units"}
    assert max(gram(parts[0])) > 0.999  # the repeated layers
    ev = circuit_evidence(*parts)
    assert ev.gram_r < 0.5 and ev.gram_log10_p > -1


def test_the_gram_covers_the_layers_its_budget_holds():
    key = SketchKey(KEY.secret, gram_bytes=2 * 4 * 512 * 512 * 5)
    assert gram_layers(4, 512, key) == frozenset(range(4))
    some = gram_layers(32, 512, key)
    assert len(some) == 5 and some == gram_layers(32, 512, key) and max(some) < 32
    assert gram_layers(32, 4096, KEY) == frozenset()  # fewer than three layers fit: none


def test_matrices_streamed_in_blocks_of_rows_give_the_same_circuits():
    """A projection too large to hold arrives in blocks of rows (a Hub reader's read-ahead): its circuit
    sketches are those of the whole matrix."""
    key, rng = SketchKey.fresh(), np.random.default_rng(5)
    whole, blocks = CircuitAccumulator(64, 16, key, 3), CircuitAccumulator(64, 16, key, 3)
    for layer in range(3):
        gain = rng.standard_normal(64)
        whole.gain(layer, gain)
        blocks.gain(layer, gain)
        for role, shape in (("q", (64, 64)), ("k", (32, 64)), ("v", (32, 64)), ("o", (64, 64))):
            matrix = rng.standard_normal(shape).astype(np.float32)
            whole.add(layer, role, matrix)
            sink = blocks.begin(layer, role, shape)
            for first in range(0, shape[0], 5):
                sink.take(first, matrix[first : first + 5])
            sink.close()
    a, b = whole.parts(), blocks.parts()
    assert [(p.layer, p.role, p.kind) for p in a] == [(p.layer, p.role, p.kind) for p in b] and len(a) == 7
    assert all(np.allclose(p.values, q.values, rtol=1e-5, atol=1e-6) for p, q in zip(a, b))
