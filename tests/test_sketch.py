"""The positional weight sketch and its exact same-shape test: positions fixed by the shape, values read
the same way from every format and by sampled scans, a calibrated null, and invariance to the edits that
keep a model's function."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lineage_scanner.demo.derive import drift, fold_norms, prune, rescale, rotate_residual, upscale
from lineage_scanner.demo.writers import write_gguf, write_hf
from lineage_scanner.lineage.generator import base_model
from lineage_scanner.lineage.sketch import chi2_logsf, sketch_evidence
from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.measure.sampling import SamplePlan
from lineage_scanner.measure.sketch import (
    SKETCH_RUN,
    SKETCH_RUNS,
    SketchPart,
    anchor_rows,
    anchors,
    gram,
    positions,
    rope_row,
)
from lineage_scanner.run.scan import scan_strict

CPU = get_backend("cpu")


def scan(path, **kw):
    return scan_strict(str(path), CPU, set(), **kw)[1]


def toy_sketch(model) -> tuple[SketchPart, ...]:
    """The sketch of an in-memory model, straight from its matrices (no checkpoint, no reader)."""
    out = []
    for i, layer in enumerate(model.layers):
        for role in "qkvo":
            w = layer[role] * (layer["attn_norm"][None, :] if role != "o" else 1.0)
            rows, cols = w.shape
            out.append(SketchPart(i, role, rows, cols, w.reshape(-1)[positions(rows, cols)].astype(np.float32)))
            if role != "o":
                out.append(SketchPart(i, role, rows, cols, gram(w[anchor_rows(rows, cols)]), "gram"))
    return tuple(out)


def test_positions_depend_on_the_shape_alone_and_never_cross_a_row():
    starts, run = anchors(96, 200)
    assert run == SKETCH_RUN and len(starts) == SKETCH_RUNS
    assert (anchors(96, 200)[0] == starts).all() and not (anchors(97, 200)[0] == starts).all()
    rows = starts // 200
    assert (starts % 200 + run <= 200).all()  # inside one row
    band = 96 / SKETCH_RUNS
    assert ((rows >= np.arange(SKETCH_RUNS) * band) & (rows < (np.arange(SKETCH_RUNS) + 1) * band)).all()
    assert len(set(anchor_rows(96, 200))) == SKETCH_RUNS and positions(96, 200).size == SKETCH_RUNS * SKETCH_RUN


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
    assert len(first) == 4 * 7  # Q/K/V/O values, Q/K/V Gram, per layer
    for other in others:
        assert other.keys() == first.keys()
        for key, values in first.items():  # bf16 checkpoints, an f16 GGUF: equal to rounding
            assert np.corrcoef(values, other[key])[0, 1] > 0.999, key


def test_sampled_scans_read_the_same_sketch(tmp_path):
    base = base_model("m", "llama", 6, 3, hidden=512, n_heads=8, n_kv_heads=8)
    path = write_hf(base, tmp_path / "m")
    exact, sampled = scan(path), scan(path, sample=SamplePlan(fraction=0.05))
    assert sampled.sampled and sampled.bytes_read < exact.bytes_read / 4
    a = {(p.layer, p.role, p.kind): p.values for p in exact.sketch}
    b = {(p.layer, p.role, p.kind): p.values for p in sampled.sketch}
    assert a.keys() == b.keys()
    for key in a:  # the very same elements: the sampled runs lie over the sketch's
        assert np.allclose(a[key], b[key], rtol=1e-6, atol=1e-9), key


@pytest.mark.slow
def test_exact_null_is_calibrated_for_independent_models():
    models = [toy_sketch(base_model("x", "llama", 7000 + s, 10, hidden=128, mlp=False)) for s in range(24)]
    p = np.array([sketch_evidence(models[i], models[j]).p_value for i in range(0, 24, 2) for j in range(1, 24, 2)])
    assert len(p) == 144 and p.min() > 1e-5
    assert np.mean(p < 0.05) <= 0.12 and np.mean(p < 0.5) >= 0.2  # uniform-ish: neither too small nor stuck at 1
    gram = np.array([10 ** sketch_evidence(models[i], models[j]).gram_log10_p
                     for i in range(0, 24, 2) for j in range(1, 24, 2)])  # V's Gram: the sign randomisation
    assert gram.min() > 1e-5 and np.mean(gram < 0.05) <= 0.12 and np.mean(gram < 0.5) >= 0.2


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
    # Pearson's r, whose null assumes one variance at every position, spreads far wider than 1/sqrt(n) ...
    assert np.median([ev.score for ev in evs]) > 2.0 / math.sqrt(SKETCH_RUNS * SKETCH_RUN)
    # ... while the self-normalised statistic stays calibrated: no pair comes near the threshold
    assert min(ev.p_value for ev in evs) > 1e-4
    child = drift(_shared_recipe(base_model("b", "llama", 7100, 8, hidden=128, mlp=False), pattern), "c", 1, 0.3, 0.05)
    assert sketch_evidence(models[0], toy_sketch(child)).log10_p < -30  # and a derivation still shows (1e-6 decides)


@pytest.mark.parametrize("edit", ["finetune", "continued", "rescaled", "sign", "folded", "rotated"])
def test_function_preserving_and_training_edits_keep_the_sketch(edit):
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
    assert ev.rotated == (edit == "rotated")
    if edit == "rotated":  # every weight moved: the values say nothing, the Gram sketch names the edit
        assert ev.p_value > 1e-3 and ev.per_channel["k:gram"] > 0.99
        return
    assert ev.log10_p < -100 and ev.in_order, edit
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
    assert len(sig.sketch) == 32 * 7
    stored_bytes = sum(len(p.codes()[1]) + 4 for p in sig.sketch)
    assert stored_bytes < 64 * 1024  # the README's budget for a 32-layer model
    store = Store(tmp_path / "db")
    store.write([sig])
    back = store.load("m")
    assert [(p.layer, p.role, p.kind) for p in back.sketch] == [(p.layer, p.role, p.kind) for p in sig.sketch]
    for a, b in zip(sig.sketch, back.sketch):  # int8 codes: rounding only
        assert np.corrcoef(a.values, b.values)[0, 1] > 0.999


def test_chi2_tail_matches_scipy_where_scipy_can_tell():
    from scipy.stats import chi2

    for x in (0.3, 2.0, 9.0, 40.0, 300.0, 700.0):
        for dof in (1, 2, 3, 4, 7, 24, 200):
            assert chi2_logsf(x, dof) == pytest.approx(float(chi2.logsf(x, dof)), rel=1e-9, abs=1e-12)
    assert math.isfinite(chi2_logsf(1e6, 3)) and chi2_logsf(1e6, 3) < -4e5  # where scipy's sf underflows
