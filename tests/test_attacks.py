"""The adversary's tools (lineage_scanner.demo.attacks) and their referee (lineage_scanner.demo.forward):
every disguise keeps the logits and moves the weights; every forgery and scrub changes what it says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lineage_scanner.demo import attacks
from lineage_scanner.demo.forward import ROPE_CONVENTIONS, function_gap, logits, probe_tokens
from lineage_scanner.lineage.generator import base_model
from lineage_scanner.measure.sketch import SketchKey, anchor_rows, positions, rope_row

#: The key an adversary aims at (one he holds: a guess, or one that leaked).
KEY = SketchKey.fresh()

#: A function-preserving map agrees to float64 rounding (~1e-14 here); a broken one is off by percents.
SAME_FUNCTION = 1e-9


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request):
    """Hidden 64, 4 query heads in 2 KV groups, 3 layers with MLPs; qwen2 adds Q/K/V biases."""
    return base_model("m", request.param, 5, 3, hidden=64, n_heads=4, n_kv_heads=2)


@pytest.fixture(scope="module")
def stranger():
    return base_model("s", "llama", 6, 3, hidden=64, n_heads=4, n_kv_heads=2)


def test_forward_is_the_trained_torch_model():
    """The numpy pass computes what bench/tiny_train.py's TinyLlama computes (interleaved rotary pairs),
    with its head tied to the embedding and its final gain at 1, as ToyModel holds a model."""
    from bench.tiny_train import TinyLlama, as_toy

    net = TinyLlama(seed=3).double()
    with torch.no_grad():
        for p in net.parameters():  # trained-looking: gains and weights off their init
            p.add_(torch.randn_like(p) * (0.3 if p.dim() == 1 else 0.02))
        net.head.weight.copy_(net.embed.weight)
        net.norm.weight.fill_(1.0)
    for module in net.modules():
        if isinstance(module, torch.nn.RMSNorm):
            module.eps = 1e-6
    toy = as_toy(net, "tiny")
    toy.layers = [{k: v.astype(np.float64) for k, v in layer.items()} for layer in toy.layers]
    tokens = probe_tokens(toy, 20)
    with torch.no_grad():
        want = net(torch.as_tensor(tokens)[None])[0].numpy()
    got = logits(toy, tokens, "interleaved")
    # as_toy hands the weights over in float32 and the torch rope takes its angles in float32: 1e-7 apart
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
    assert np.linalg.norm(logits(toy, tokens, "half") - want) / np.linalg.norm(want) > 1e-3


def test_rope_conventions_differ_by_an_order_of_rows(model):
    """A model read with the 'half' pairs equals the same model with each Q/K head's two halves interleaved
    (llama.cpp's row order) read with 'interleaved' pairs, and differs from the model itself read so."""
    moved = attacks.as_float64(model, "moved")
    for layer in moved.layers:
        for role, heads in (("q", model.n_heads), ("k", model.n_kv_heads)):
            order = np.empty(heads * model.head_dim, np.int64)
            order[rope_row(np.arange(len(order)), model.head_dim)] = np.arange(len(order))
            for key in (role, f"{role}_bias"):
                if key in layer:
                    layer[key] = layer[key][order]
    tokens = probe_tokens(model)
    half = logits(model, tokens, "half")
    assert np.abs(logits(moved, tokens, "interleaved") - half).max() < 1e-12 * np.abs(half).max()
    assert function_gap(model, model, "interleaved") == 0.0
    assert np.linalg.norm(logits(model, tokens, "interleaved") - half) > 1e-3 * np.linalg.norm(half)


def _moved(before, after, roles) -> float:
    """The smallest relative change ||W' - W|| / ||W|| over the given roles of every layer."""
    return min(np.linalg.norm(np.asarray(b[r], np.float64) - a[r]) / np.linalg.norm(a[r])
               for a, b in zip(before.layers, after.layers) for r in roles)


DISGUISES = {
    # name: (transform(model, seed, rope), roles whose every value moves, roles that must move by >= 10%)
    "permute heads": (lambda m, s, rope: attacks.permute_heads(m, s), "qkvo", "qkvo"),
    "fold norms": (lambda m, s, rope: attacks.fold_norms(m), "qkv", "qkv"),
    "rotate residual": (lambda m, s, rope: attacks.rotate_residual(m, s), "qkvo", "qkvo"),
    "rotate 25% of the residual": (lambda m, s, rope: attacks.rotate_residual(m, s, 0.25), "", "qkvo"),
    "v/o maps, condition 1": (lambda m, s, rope: attacks.map_vo(m, s, 1.0), "vo", "vo"),
    "v/o maps, condition 100": (lambda m, s, rope: attacks.map_vo(m, s, 100.0), "vo", "vo"),
    "q/k maps, rotations": (lambda m, s, rope: attacks.map_qk(m, s, 1.0, rope), "qk", "qk"),
    "q/k maps, moduli 1/4-4": (lambda m, s, rope: attacks.map_qk(m, s, 4.0, rope), "qk", "qk"),
    "rescale": (lambda m, s, rope: attacks.rescale(m, s), "qkvo", "qkvo"),
    "all combined": (lambda m, s, rope: attacks.disguise_all(m, s, 100.0, rope), "qkvo", "qkvo"),
}


@pytest.mark.parametrize("rope", ROPE_CONVENTIONS)
@pytest.mark.parametrize("name", DISGUISES)
def test_disguise_keeps_the_function_and_moves_the_weights(model, name, rope):
    transform, every, far = DISGUISES[name]
    disguised = transform(model, 11, rope)
    assert function_gap(model, disguised, rope) < SAME_FUNCTION
    for role in every:
        assert all(np.all(np.asarray(b[role], np.float64) != a[role]) for a, b in zip(model.layers, disguised.layers))
    assert _moved(model, disguised, far) > 0.1
    assert model.layers[0]["q"].dtype == np.float32  # the input is left as it was


def test_qk_map_is_tied_to_its_rope_convention(model):
    """A Q/K map that commutes with one convention's rotation changes the function under the other: the
    referee can tell a wrong disguise from a right one."""
    for rope, other in (("half", "interleaved"), ("interleaved", "half")):
        disguised = attacks.map_qk(model, 3, 1.0, rope)
        assert function_gap(model, disguised, other) > 1e-3


def test_conditioned_matrix_has_its_condition_number():
    rng = np.random.default_rng(0)
    for condition in (1.0, 4.0, 16.0, 100.0):
        assert np.linalg.cond(attacks.conditioned(rng, 16, condition)) == pytest.approx(condition, rel=1e-9)


def _count(model) -> int:
    return sum(layer[r].size for layer in model.layers for r in attacks.ATTENTION)


def _rows(model) -> int:
    return sum(layer[r].shape[0] for layer in model.layers for r in attacks.ATTENTION)


@pytest.mark.parametrize("fraction", [0.005, 0.01, 0.02, 0.05])
def test_copy_values_changes_what_it_says(stranger, fraction):
    base = base_model("b", "llama", 7, 3, hidden=64, n_heads=4, n_kv_heads=2)
    expected = {
        "positions": sum(round(fraction * layer[r].size) for layer in stranger.layers for r in attacks.ATTENTION),
        "rows": round(fraction * _rows(stranger)) * stranger.hidden,  # every llama attention row is hidden long
        "sketch": sum(positions(*layer[r].shape, KEY).size for layer in stranger.layers for r in attacks.ATTENTION),
        "anchor rows": sum(anchor_rows(*layer[r].shape, KEY).size * layer[r].shape[1] for layer in stranger.layers
                           for r in attacks.ATTENTION),
    }
    for placement, count in expected.items():
        forged = attacks.copy_values(stranger, base, 1, fraction, placement, KEY)
        assert attacks.changed_fraction(stranger, forged) == count / _count(stranger), placement
        masks = attacks.select(stranger, 1, fraction, placement, KEY)
        for layer, source, own, mask in zip(forged.layers, base.layers, stranger.layers, masks):
            for r, m in mask.items():  # the base's values where selected, its own elsewhere
                assert np.array_equal(layer[r][m], source[r][m]) and np.array_equal(layer[r][~m], own[r][~m])


def test_copy_whole_matrices_takes_the_smallest_that_fit(stranger):
    base = base_model("b", "llama", 7, 3, hidden=64, n_heads=4, n_kv_heads=2)
    forged = attacks.copy_values(stranger, base, 1, 0.2, "matrices")
    whole = [(r, np.array_equal(a[r], b[r])) for a, b in zip(forged.layers, base.layers) for r in attacks.ATTENTION]
    assert sorted(r for r, copied in whole if copied) == ["k", "k", "v"]  # 3 of the 6 K/V (2,048 values each)
    assert attacks.changed_fraction(stranger, forged) == 3 * 2048 / _count(stranger) <= 0.2
    assert attacks.changed_fraction(stranger, attacks.copy_values(stranger, base, 1, 0.05, "matrices")) == 0


def test_copy_values_needs_equal_shapes(stranger):
    wider = base_model("w", "llama", 7, 3, hidden=128, n_heads=4, n_kv_heads=2)
    with pytest.raises(ValueError, match="copy_values: q"):
        attacks.copy_values(stranger, wider, 0, 0.01, "positions")
    with pytest.raises(ValueError, match="unknown placement"):
        attacks.select(stranger, 0, 0.01, "columns")
    with pytest.raises(ValueError, match="give the key aimed at"):
        attacks.select(stranger, 0, 0.01, "sketch")


@pytest.mark.parametrize("placement", ["positions", "rows", "anchor rows"])
@pytest.mark.parametrize("fraction", [0.01, 0.05])
def test_scrub_changes_what_it_says(model, placement, fraction):
    masks = attacks.select(model, 2, fraction, placement, KEY)
    scrubbed = attacks.scrub(model, 2, fraction, placement, KEY)
    selected = sum(m.sum() for layer in masks for m in layer.values())
    assert attacks.changed_fraction(model, scrubbed) == selected / _count(model)
    if placement == "rows":
        assert attacks.changed_fraction(model, scrubbed) == round(fraction * _rows(model)) / _rows(model)
    for layer, before in zip(scrubbed.layers, model.layers):  # the noise has the std of the rows it replaces
        ratio = layer["q"].std(axis=1) / before["q"].std(axis=1)
        assert 0.8 < np.median(ratio) < 1.2


def test_shrink_largest_shrinks_the_largest(model):
    shrunk = attacks.shrink_largest(model, strength=0.0005)
    for before, after in zip(model.layers, shrunk.layers):
        flat = np.concatenate([np.abs(before[r]).reshape(-1) for r in attacks.ATTENTION])
        changed = [np.asarray(after[r], np.float64) != before[r] for r in attacks.ATTENTION]
        assert sum(c.sum() for c in changed) == math.ceil(0.0005 * flat.size)
        for r, c in zip(attacks.ATTENTION, changed):
            assert np.all(np.abs(before[r][c]) >= np.sort(flat)[-math.ceil(0.0005 * flat.size)])
            np.testing.assert_allclose(after[r][c], 0.1 * before[r][c], rtol=1e-7)


@pytest.mark.parametrize("width", [0.75, 1.5])
def test_forged_curves_copy_moments_not_values(width):
    base = base_model("b", "llama", 8, 4, hidden=128, n_heads=4, n_kv_heads=2)
    forged = attacks.forge_curves(base, 3, width)
    assert forged.hidden == round(128 * width) and len(forged.layers) == 4
    assert forged.layers[0]["q"].shape == (forged.hidden, forged.hidden)
    assert forged.layers[0]["k"].shape == (2 * forged.head_dim, forged.hidden)
    for a, b in zip(base.layers, forged.layers):
        for r in attacks.ATTENTION:
            w = np.asarray(a[r], np.float64)
            assert b[r].std() == pytest.approx(w.std(), rel=1e-9)
            assert attacks._kurtosis(b[r]) == pytest.approx(attacks._kurtosis(w), rel=1e-6)
        assert set(np.unique(b["attn_norm"])) <= set(np.asarray(a["attn_norm"], np.float64))
    assert np.isfinite(logits(forged, probe_tokens(forged))).all()  # a model that runs, if to no purpose


def test_every_disguise_of_the_attack_matrix_keeps_the_function():
    """bench/adversarial.py's disguises, wired as the matrix runs them, under both rotary conventions."""
    from bench.adversarial import Family, cases

    base = base_model("b", "llama", 9, 3, hidden=64, n_heads=4, n_kv_heads=2)
    disguises = [c for c in cases() if c.group == "disguise"]
    assert len(disguises) >= 14
    for rope in ROPE_CONVENTIONS:
        fam = Family("f", "generated", base, attacks.rescale(base, 1), base, (), rope)
        for case in disguises:
            inst = case.make(fam, 3)
            assert inst.keeps_function and function_gap(inst.start, inst.model, rope) < SAME_FUNCTION, case


def test_attack_matrix_refuses_a_disguise_that_changes_the_function(tmp_path):
    """An instance that fails the function check stops the run: an error of the harness, never a result."""
    from bench.adversarial import DERIVED, Case, Family, Instance, Scanner, run_family

    base = base_model("b", "llama", 9, 3, hidden=64, n_heads=4, n_kv_heads=2)
    fam = Family("f", "generated", base, base, base, (), "half")
    wrong = Case("disguise", "Q/K maps for the other convention", "-", DERIVED,
                 lambda f, seed: Instance(attacks.map_qk(f.base, seed, 1.0, "interleaved"), f.base, f.base, True))
    with pytest.raises(RuntimeError, match="Q/K maps for the other convention .* changed the function"):
        run_family(fam, [wrong], 1, Scanner(tmp_path), {}, print)
