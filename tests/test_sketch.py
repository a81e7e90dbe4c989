"""The positional weight sketch and its exact same-shape test: positions a secret key draws, values read
the same way from every format and by sampled scans, a calibrated null, invariance to the edits that keep a
model's function, and the robust test a forger's few percent cannot move."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lineage_scanner.demo.derive import drift, fold_norms, prune, rescale, rotate_residual, upscale
from lineage_scanner.demo.writers import write_gguf, write_hf
from lineage_scanner.lineage.generator import base_model
from lineage_scanner.lineage.positional import chi2_logsf, log_tail, trimmed
from lineage_scanner.lineage.sketch import sketch_evidence
from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.measure.sampling import SamplePlan
from lineage_scanner.measure.sketch import (
    SKETCH_RUN,
    SKETCH_RUNS,
    SketchKey,
    SketchPart,
    anchor_rows,
    anchors,
    positions,
    rope_row,
)
from lineage_scanner.run.scan import scan_strict

CPU = get_backend("cpu")
KEY = SketchKey(b"a store's own secret, for tests.")


def scan(path, **kw):
    return scan_strict(str(path), CPU, set(), **kw)[1]


def toy_sketch(model, key: SketchKey = KEY) -> tuple[SketchPart, ...]:
    """The value sketch of an in-memory model, straight from its matrices (no checkpoint, no reader)."""
    out = []
    for i, layer in enumerate(model.layers):
        for role in "qkvo":
            w = layer[role] * (layer["attn_norm"][None, :] if role != "o" else 1.0)
            rows, cols = w.shape
            out.append(SketchPart(i, role, rows, cols, w.reshape(-1)[positions(rows, cols, key)].astype(np.float32)))
    return tuple(out)


def test_positions_are_the_keys_spread_over_rows_and_columns_never_crossing_a_row():
    starts, run = anchors(96 * 2, 200, KEY)
    assert run == SKETCH_RUN and len(starts) == SKETCH_RUNS
    assert (anchors(192, 200, KEY)[0] == starts).all() and not (anchors(193, 200, KEY)[0] == starts).all()
    other = SketchKey(b"another store's secret, 32 bytes")
    assert len(set(anchors(192, 200, other)[0]) & set(starts)) <= 2  # another key looks elsewhere
    rows = starts // 200
    assert (starts % 200 + run <= 200).all()  # inside one row
    band = 192 / SKETCH_RUNS
    assert ((rows >= np.arange(SKETCH_RUNS) * band) & (rows < (np.arange(SKETCH_RUNS) + 1) * band)).all()
    assert len(set(anchor_rows(192, 200, KEY))) == SKETCH_RUNS and len(set(starts % 200)) > SKETCH_RUNS // 2
    assert positions(192, 200, KEY).size == SKETCH_RUNS * SKETCH_RUN
    assert len(anchors(40, 200, KEY)[0]) == 40  # a matrix of fewer rows than bands: one run per row


def test_the_key_never_shows_and_its_id_names_key_and_sizes():
    assert KEY.secret.hex() not in repr(KEY) and KEY.id in repr(KEY)
    assert SketchKey(KEY.secret, runs=128).id != KEY.id and SketchKey(KEY.secret).id == KEY.id
    assert SketchKey.fresh().id != SketchKey.fresh().id


def test_rope_row_undoes_llama_cpp_permutation():
    hd, heads = 8, 3
    w = np.arange(heads * hd)[:, None] * np.ones((1, 4))
    permuted = w.reshape(heads, 2, hd // 2, 4).swapaxes(1, 2).reshape(w.shape)  # what convert_hf_to_gguf does
    rows = np.arange(heads * hd)
    assert (permuted[rope_row(rows, hd)] == w).all()


def test_every_format_and_packing_gives_the_same_sketch(tmp_path):
    """A phi3 model (fused QKV), the same weights split as llama, and its F16 GGUF export (Q/K rows
    permuted the way llama.cpp does) hold the same values at the same positions."""
    base = base_model("m", "phi3", 5, 4, hidden=128)
    fused = scan(write_hf(base, tmp_path / "fused"))
    split = scan(write_hf(base, tmp_path / "split", model_type="llama"))
    as_llama = base.renamed("m")
    as_llama.style = "llama"
    gguf = scan(write_gguf(as_llama, tmp_path / "g" / "m.gguf", "F16").parent)
    by = {sig.format + str(i): {(p.layer, p.role, p.kind): p.values for p in sig.sketch}
          for i, sig in enumerate((fused, split, gguf))}
    first, *others = by.values()
    assert len(first) == 4 * 6 + 1  # Q/K/V/O values and the OV/QK circuits per layer, the circuits' Gram
    for other in others:
        assert other.keys() == first.keys()
        for key, values in first.items():  # bf16 checkpoints, an f16 GGUF: equal to rounding
            assert np.corrcoef(values, other[key])[0, 1] > 0.999, key


def test_sampled_scans_read_the_same_sketch(tmp_path):
    base = base_model("m", "llama", 6, 3, hidden=512, n_heads=8, n_kv_heads=8)
    path = write_hf(base, tmp_path / "m")
    exact, sampled = scan(path), scan(path, sample=SamplePlan(fraction=0.05))
    assert sampled.sampled and sampled.bytes_read < exact.bytes_read / 4
    a = {(p.layer, p.role, p.kind): p.values for p in exact.sketch if p.kind == "values"}
    b = {(p.layer, p.role, p.kind): p.values for p in sampled.sketch}
    assert a.keys() == b.keys()  # values only: circuits need whole matrices
    for key in a:  # the very same elements: the sampled runs lie over the sketch's
        assert np.allclose(a[key], b[key], rtol=1e-6, atol=1e-9), key


@pytest.mark.slow
def test_exact_null_is_calibrated_for_independent_models():
    models = [toy_sketch(base_model("x", "llama", 7000 + s, 10, hidden=128, mlp=False)) for s in range(24)]
    evs = [sketch_evidence(models[i], models[j]) for i in range(0, 24, 2) for j in range(1, 24, 2)]
    p = np.array([ev.p_value for ev in evs])
    assert len(p) == 144 and p.min() > 1e-5
    assert np.mean(p < 0.05) <= 0.12 and np.mean(p < 0.5) >= 0.2  # uniform-ish: neither too small nor stuck at 1
    assert min(ev.robust_log10_p for ev in evs) > -1  # the robust test gives a forger his share: more cautious still


def test_the_robust_statistic_holds_its_bound_whatever_a_forger_puts_in_his_share():
    """Sign-symmetric products with up to ``give_away`` of them replaced by anything: the trimmed statistic
    exceeds z no more often than the Rademacher tail bound allows."""
    rng = np.random.default_rng(0)
    n, give_away, trials = 400, 40, 4000
    z = []
    for _ in range(trials):
        products = rng.standard_t(4, n) * rng.choice([-1.0, 1.0], n)
        products[:give_away] = np.abs(rng.standard_t(4, give_away)) * 3  # the forger's: all for lineage, large
        z.append(trimmed(products, give_away))
    z = np.array(z)
    for threshold in (1.0, 2.0, 3.0):
        assert np.mean(z >= threshold) <= 2 * math.exp(log_tail(threshold)) + 0.01


def _shared_recipe(model, pattern: np.ndarray):
    """``model`` with every matrix's rows scaled by one fixed ``pattern``: a magnitude structure by position
    that models of one recipe share (rotary rows, say), with independent signs."""
    out = model.renamed(model.name)
    for layer in out.layers:
        for role in "qkvo":
            layer[role] = layer[role] * pattern[: layer[role].shape[0], None]
    return out


def test_shared_magnitudes_by_position_do_not_pass_for_lineage():
    pattern = np.exp(np.random.default_rng(0).normal(0, 1.5, 256))  # rows 0.05x to 20x apart, the same in all
    models = [toy_sketch(_shared_recipe(base_model("x", "llama", 7100 + s, 8, hidden=128, mlp=False), pattern))
              for s in range(12)]
    evs = [sketch_evidence(models[i], models[j]) for i in range(0, 12, 2) for j in range(1, 12, 2)]
    # Pearson's r of the raw values, whose null assumes one variance at every position, spreads far wider
    # than 1/sqrt(n) ...
    raw = [abs(np.corrcoef(a.values, b.values)[0, 1]) for i in range(0, 12, 2) for j in range(1, 12, 2)
           for a, b in zip(models[i], models[j])]
    assert np.median(raw) > 2 * 0.6745 / math.sqrt(SKETCH_RUNS * SKETCH_RUN)  # twice what such a null predicts
    # ... while the self-normalised statistic stays calibrated: no pair comes near the threshold
    assert min(ev.p_value for ev in evs) > 1e-4
    child = drift(_shared_recipe(base_model("b", "llama", 7100, 8, hidden=128, mlp=False), pattern), "c", 1, 0.3, 0.05)
    assert sketch_evidence(models[0], toy_sketch(child)).log10_p < -30  # and a derivation still shows (1e-6 decides)


@pytest.mark.parametrize("edit", ["finetune", "continued", "rescaled", "sign", "folded", "rotated"])
def test_function_preserving_and_training_edits_keep_the_sketch(edit):
    """Training and rescaling keep the values (plain and robust tests firm); a rotated residual stream moves
    every one of them (the circuits' Gram sees it: tests/test_circuits.py)."""
    base = base_model("b", "llama", 8, 10, hidden=128, mlp=False)
    child = {
        "finetune": lambda: drift(base, "c", 1, 0.05, 0.01),
        "continued": lambda: drift(base, "c", 2, 0.5, 0.1),
        "rescaled": lambda: rescale(base, "c", 3),
        "folded": lambda: fold_norms(base, "c"),
        "rotated": lambda: rotate_residual(base, "c", 4),
        "sign": lambda: _negated(base),
    }[edit]()
    ev = sketch_evidence(toy_sketch(base), toy_sketch(child))
    if edit == "rotated":  # every weight moved: the values say nothing
        assert ev.p_value > 1e-3 and ev.robust_log10_p > -1
        return
    assert ev.log10_p < -100 and ev.robust_log10_p < -6 and ev.firm_share == 1.0 and ev.in_order, edit
    if edit in ("rescaled", "sign", "folded"):
        assert ev.identical


def _negated(model):
    child = model.renamed("c")
    for layer in child.layers:
        layer["q"], layer["k"] = -layer["q"], -layer["k"]
    return child


def test_pairing_follows_pruned_and_upscaled_layers():
    base = base_model("b", "llama", 9, 12, hidden=128, mlp=False)
    pruned = sketch_evidence(toy_sketch(prune(base, "p")), toy_sketch(base))
    assert pruned.pairing == tuple((k, j) for k, j in enumerate(i for i in range(12) if i % 3 != 1))
    up = upscale(base, "u")
    ev = sketch_evidence(toy_sketch(up), toy_sketch(base))
    assert len(ev.pairing) == 18 and ev.log10_p < -100
    assert [j for _, j in ev.pairing] == [*range(9), *range(3, 9), *range(9, 12)]


def test_unequal_shapes_leave_the_sketch_out():
    wide, narrow = (toy_sketch(base_model("x", "llama", s, 6, hidden=h, mlp=False)) for s, h in ((1, 128), (2, 96)))
    assert sketch_evidence(wide, narrow) is None


def test_sketch_round_trips_the_store_within_budget(tmp_path):
    from lineage_scanner.store.store import Store

    base = base_model("m", "llama", 10, 32, hidden=256, n_heads=8, n_kv_heads=2)
    sig = scan(write_hf(base, tmp_path / "m"))
    assert len(sig.sketch) == 32 * 6 + 1
    stored_bytes = sum(len(p.codes()[1]) for p in sig.sketch)
    values_bytes = sum(len(p.codes()[1]) for p in sig.sketch if p.kind == "values")
    assert values_bytes <= 64 * 1024 and stored_bytes < 128 * 1024  # the README's budget for a 32-layer model
    store = Store(tmp_path / "db")
    store.write([sig])
    back = store.load("m")
    assert [(p.layer, p.role, p.kind) for p in back.sketch] == [(p.layer, p.role, p.kind) for p in sig.sketch]
    for a, b in zip(sig.sketch, back.sketch):  # int8 codes (int16 for the Gram): rounding only
        assert np.corrcoef(a.values, b.values)[0, 1] > 0.999
    assert back.sketch_key == sig.sketch_key


def test_chi2_tail_matches_scipy_where_scipy_can_tell():
    from scipy.stats import chi2

    for x in (0.3, 2.0, 9.0, 40.0, 300.0, 700.0):
        for dof in (1, 2, 3, 4, 7, 24, 200):
            assert chi2_logsf(x, dof) == pytest.approx(float(chi2.logsf(x, dof)), rel=1e-9, abs=1e-12)
    assert math.isfinite(chi2_logsf(1e6, 3)) and chi2_logsf(1e6, 3) < -4e5  # where scipy's sf underflows
