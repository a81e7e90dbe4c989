"""The lineage engine on the demo zoo: evasions defeated, depth changes aligned, flat curves flagged."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lineage_scanner.lineage.score import align, evidence
from lineage_scanner.lineage.verdict import REPARAMETRISED, ROTATED, decide, q_values
from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.measure.sketch import SketchKey
from lineage_scanner.run.scan import scan_strict
from tests.helpers import judge, unrelated_by_chance

CPU = get_backend("cpu")


#: This module's own sketch key: its verdicts on the zoo the same on every run (a process's key is random).
KEY = SketchKey(b"tests/test_evidence.py key".ljust(32, b"."))


def scan(path):
    return scan_strict(str(path), CPU, set(), sketch_key=KEY)[1]


def transformed(zoo_by_name, tmp_path, name, change):
    src = zoo_by_name["llama-a"].path
    dst = shutil.copytree(src, tmp_path / name)
    tensors = load_file(dst / "model.safetensors")
    change(tensors, np.random.default_rng(5))
    save_file({k: v.contiguous() for k, v in tensors.items()}, dst / "model.safetensors")
    return dst


def rescale(tensors, rng):
    for i in range(12):
        p = f"model.layers.{i}.self_attn."
        a, b = rng.uniform(0.3, 3.0, size=2)
        for name, factor in (("q", a), ("k", 1 / a), ("v", b), ("o", 1 / b)):
            w = tensors[p + f"{name}_proj.weight"]
            tensors[p + f"{name}_proj.weight"] = (w.to(torch.float32) * factor).to(w.dtype)


def fold_norms(tensors, rng):
    for i in range(12):
        p = f"model.layers.{i}."
        gain = tensors[p + "input_layernorm.weight"].to(torch.float32)
        for name in "qkv":
            w = tensors[p + f"self_attn.{name}_proj.weight"]
            tensors[p + f"self_attn.{name}_proj.weight"] = (w.to(torch.float32) * gain[None, :]).to(w.dtype)
        tensors[p + "input_layernorm.weight"] = torch.ones_like(tensors[p + "input_layernorm.weight"])


def test_rescaling_evasion_is_caught(zoo_by_name, tmp_path):
    parent = scan(zoo_by_name["llama-a"].path)
    evader = scan(transformed(zoo_by_name, tmp_path, "evader", rescale))
    v = judge(evader, parent)
    assert v.paper.score < 0.6, "the seed method is fooled by the rescaling"
    assert v.evidence.score > 0.99 and v.verdict == "derived"
    assert v.kind == "rescaled weights (possible evasion)"
    for name in ("qk", "vo"):  # the invariant products do not move, up to bf16 rounding
        assert np.allclose(evader.invariants[name], parent.invariants[name], atol=2e-3)


def test_norm_folding_changes_nothing(zoo_by_name, tmp_path):
    parent = scan(zoo_by_name["llama-a"].path)
    folded = scan(transformed(zoo_by_name, tmp_path, "folded", fold_norms))
    for name in ("qk", "vo"):
        assert np.allclose(folded.invariants[name], parent.invariants[name], atol=2e-3)
    for role in "qkv":  # the folded matrices' kurtosis too, up to bf16 rounding
        assert np.allclose(folded.invariants[f"fkurt_{role}"], parent.invariants[f"fkurt_{role}"], rtol=1e-2)
    v = judge(folded, parent)
    assert v.verdict == "derived" and v.evidence.score > 0.99


def test_folded_moments_from_column_sums_match_numpy():
    from lineage_scanner.measure.kernels.cpu import moments_and_columns
    from lineage_scanner.measure.records import ColumnSums

    rng = np.random.default_rng(7)
    w = torch.from_numpy((rng.standard_t(5, (48, 40)) * 0.02 + 0.003).astype(np.float32))
    gain = rng.uniform(0.2, 3.0, 40)
    std, kurt = ColumnSums(0, "q", moments_and_columns(w, 1)[1], w.numel()).folded(gain)
    y = w.double().numpy() * gain[None, :]
    d = y - y.mean()
    assert std == pytest.approx(y.std(ddof=1), rel=1e-8)
    assert kurt == pytest.approx(y.size * (d**4).sum() / ((d**2).sum() ** 2), rel=1e-7)


def test_norm_folding_changes_nothing_in_sampled_scans(zoo_by_name, tmp_path):
    from lineage_scanner.measure.sampling import SamplePlan

    plan = SamplePlan(fraction=0.25)
    path = zoo_by_name["llama-a"].path
    parent = scan_strict(path, CPU, set(), sample=plan, sketch_key=KEY)[1]
    folded = scan_strict(str(transformed(zoo_by_name, tmp_path, "folded", fold_norms)), CPU, set(), sample=plan,
                         sketch_key=KEY)[1]
    exact = {(s.layer, s.role): s.folded_std for s in scan(path).layers}
    sampled = [s for s in parent.layers if s.role in "qkv" and s.std_se > 0]
    assert sampled and all(s.folded_std is not None for s in sampled)
    for s in sampled:  # a sample's folded std estimates the whole matrix's
        assert abs(s.folded_std / exact[(s.layer, s.role)] - 1) < 5 * s.std_se + 1e-3
    for name in ("qk", "vo"):
        assert np.allclose(folded.invariants[name], parent.invariants[name], atol=5e-3)
    assert judge(folded, parent).verdict == "derived"


def test_pruned_layers_align_to_their_originals(zoo_by_name):
    parent, pruned = scan(zoo_by_name["llama-a"].path), scan(zoo_by_name["llama-a-pruned"].path)
    kept = [i for i in range(12) if i % 3 != 1]
    pairs = evidence(pruned.invariants, parent.invariants).alignment
    assert sum(kept[i] == j for i, j in pairs) >= 7, pairs
    v = judge(pruned, parent)
    assert v.verdict == "derived" and v.kind == "pruned or depth up-scaled"


@pytest.mark.slow
def test_zoo_verdicts(zoo):
    from lineage_scanner.demo.zoo import family_roots

    sigs = {e.model: scan(e.path) for e in zoo}
    root = family_roots(zoo)
    kinds = {}
    for e in zoo:
        if e.parent:
            v = judge(sigs[e.model], sigs[e.parent])
            assert v.verdict == "derived", e.model
            kinds[e.relation] = v.kind
    # the two evasions keep the function but move every weight: the circuits' entries catch the permuted
    # heads, their Gram the rotated residual stream, and each is named
    assert kinds["permuted"] == REPARAMETRISED, kinds
    assert kinds["rotated"] == ROTATED, kinds
    names = sorted(sigs)
    strangers = [judge(sigs[a], sigs[b]) for a in names for b in names if a < b and root[a] != root[b]]
    assert not [v for v in strangers if v.verdict == "derived"]
    same_shape = [v for v in strangers if v.sketch is not None]
    assert len(same_shape) > 100
    # the weight channels' exact null: "unrelated" needs p >= 1e-3 from each, so about one pair in a
    # thousand (more where one chance agreement is shared by a family's members) is left inconclusive
    # by chance; never by a firm channel
    doubtful = [v for v in same_shape if v.verdict != "unrelated"]
    assert len(doubtful) <= 0.02 * len(same_shape), doubtful
    assert all(unrelated_by_chance(v) for v in doubtful)
    assert max(v.evidence.score for v in strangers) < max(v.paper.score for v in strangers) + 0.1


def test_training_kind_is_told_net_of_the_scans_errors():
    """How far the stds moved names a fine-tune or continued training; a scan's errors add to every move,
    so a fine-tune measured through a coarse sample must not pass for continued training, and where the
    errors straddle the line the kind says it cannot tell."""
    from types import SimpleNamespace

    from lineage_scanner.lineage.verdict import CONTINUED, FINE_TUNE, TRAINED_FURTHER, training_kind

    rng = np.random.default_rng(0)
    layers = 12
    curve = {f: rng.normal(0.0, 0.3, layers) for f in ("qk", "vo")}

    def sig(moved: float, se: float, noise: float = 0.0):
        invariants = {f: list(c + 2 * moved * rng.choice([-1, 1], layers) + rng.normal(0, noise, layers))
                      for f, c in curve.items()}
        return SimpleNamespace(invariants=invariants, invariant_se={f: [se] * layers for f in curve})

    base, pairs = sig(0.0, 0.001), [(i, i) for i in range(layers)]
    assert training_kind(sig(0.005, 0.001), base, pairs) == FINE_TUNE
    assert training_kind(sig(0.08, 0.001), base, pairs) == CONTINUED
    # a fine-tune read through errors of 0.04 per point: raw moves near 0.03, net of the errors near 0
    noisy_fine_tune = sig(0.005, 0.04, noise=0.04)
    raw = np.median([abs(a - b) / 2 for f in curve for a, b in zip(noisy_fine_tune.invariants[f], base.invariants[f])])
    assert raw > 0.01 and training_kind(noisy_fine_tune, base, pairs) == FINE_TUNE
    assert training_kind(sig(0.03, 0.04, noise=0.04), base, pairs) == TRAINED_FURTHER


def test_flat_curves_are_inconclusive(tmp_path):
    from tests.helpers import write_llama

    gen = torch.Generator().manual_seed(0)
    d = write_llama(tmp_path / "flat", n_layers=6)
    tensors = load_file(d / "model.safetensors")
    for k in tensors:
        if k.endswith("proj.weight"):
            tensors[k] = (torch.randn(tensors[k].shape, generator=gen) * 0.02).to(torch.bfloat16)
    save_file(tensors, d / "model.safetensors")
    flat = scan(d)
    flat.invariants = {k: [0.0] * 6 for k in flat.invariants}  # perfectly flat: no shape at all
    flat.sketch = ()  # and no matrix shape to compare either (as between models of other widths)
    v = judge(flat, flat)
    assert v.verdict == "inconclusive" and "low information" in v.reason


def test_alignment_recovers_a_deletion():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((10, 3))
    b = np.delete(a, 4, axis=0)
    matched = align(b[None], a[None])[0]
    assert [tuple(map(int, p)) for p in matched if p[0] >= 0] == [(i, i if i < 4 else i + 1) for i in range(9)]


def test_alignment_is_the_same_one_by_one_and_in_a_batch():
    rng = np.random.default_rng(4)
    xa, xb = rng.standard_normal((6, 9, 3)), rng.standard_normal((6, 12, 3))
    together = align(xa, xb)
    assert all((together[k] == align(xa[k : k + 1], xb[k : k + 1])[0]).all() for k in range(6))


def test_benjamini_hochberg():
    q = q_values([0.01, None, 0.04, 0.03, 0.5])
    assert q[1] is None
    assert q[0] == pytest.approx(0.04) and q[2] == pytest.approx(0.04 * 4 / 3) and q[4] == pytest.approx(0.5)
    assert q[3] == pytest.approx(0.04 * 4 / 3)  # monotone: never below the q of a larger p


@pytest.mark.slow
def test_compare_and_match_json(zoo, tmp_path, capsys):
    from lineage_scanner.cli.main import main

    db = str(tmp_path / "db")
    assert main(["scan", *[e.path for e in zoo], "--db", db, "-q"]) == 0
    capsys.readouterr()
    assert main(["compare", "llama-a", "llama-a-ct", "--db", db, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "derived" and out["p_value"] < 1e-6 and out["kind"] == "continued training"
    assert out["decided_by"] == "sketch" and out["sketch"]["score"] > 0.9
    curves = out["curves"]
    assert curves["alignment"][0] == {"a": 0, "b": 0} and set(curves["per_feature"]) >= {"qk", "vo"}
    assert curves["null"]["source"] == "synthetic" and curves["null"]["size"] >= 50  # the zoo is too small a store
    assert curves["p_surrogate"] < 0.01 and curves["p_value"] == max(curves["p_null"], curves["p_surrogate"])
    assert main(["match", "qwen2-a-moe", "--db", db, "--json", "--top", "6"]) == 0
    matches = json.loads(capsys.readouterr().out)["matches"]
    assert [m["verdict"] for m in matches[:5]] == ["derived"] * 5
    assert all(m["model"].startswith("qwen2-a") for m in matches[:5])
    assert all(m["q_value"] is not None and m["q_value"] >= m["p_value"] for m in matches)
    assert not math.isnan(matches[0]["score"])


def _features(x: np.ndarray) -> dict[str, list[float]]:
    return {name: list(map(float, x[:, k])) for k, name in enumerate(("qk", "vo", "kurt_q"))}


def test_surrogates_explain_a_shared_depth_trend_but_not_shared_wiggles():
    """Curves of one era share their trend over depth; the surrogates keep each model's trend, so a pair that
    shares only that scores high and still gets no small p-value, while a derived pair does."""
    rng = np.random.default_rng(2)
    t = np.linspace(0, 1, 24)[:, None]
    trend = np.hstack([3 * t, 2 * t**2, -2 * t])
    a, stranger = trend + rng.normal(0, 0.25, (24, 3)), trend + rng.normal(0, 0.25, (24, 3))
    child = a + rng.normal(0, 0.05, (24, 3))
    unrelated = evidence(_features(a), _features(stranger))
    assert unrelated.score > 0.8 and unrelated.surrogate_p > 0.05  # high, and fully explained by the trend
    derived = evidence(_features(a), _features(child))
    assert derived.score > 0.95 and derived.surrogate_p == pytest.approx(1 / 2000)  # resolves below 0.001
    assert evidence(_features(a), _features(stranger), surrogate=False).surrogate_p is None


def test_surrogates_keep_the_trend_and_the_spectrum():
    from lineage_scanner.curves import zscore
    from lineage_scanner.lineage.score import surrogates

    rng = np.random.default_rng(5)
    t = np.linspace(-1, 1, 16)
    x = zscore(np.stack([t, np.sin(3 * t) + 0.3 * rng.standard_normal(16)], axis=1))
    s = surrogates(x, 300, rng)
    assert s.shape == (300, 16, 2) and np.allclose(s.mean(axis=1), 0) and np.allclose(s.std(axis=1), 1)
    assert np.mean([np.corrcoef(x[:, 0], d[:, 0])[0, 1] for d in s]) > 0.99  # a pure trend survives
    wiggle = [np.corrcoef(x[:, 1], d[:, 1])[0, 1] for d in s]
    assert 0.2 < np.mean(wiggle) < 0.95  # the trend part of the second feature stays, its wiggles move


def test_noisy_sampled_features_are_left_out():
    from lineage_scanner.lineage.score import usable

    rng = np.random.default_rng(6)
    x = rng.standard_normal((12, 3))
    errors = {"qk": [0.01] * 12, "vo": [0.5] * 12, "kurt_q": [0.0] * 12}
    _, kept = usable(_features(x), errors)
    assert kept == ["qk", "kurt_q"]  # vo's points are as noisy as its curve moves


def _stored(model, features, family="llama", base=()):
    from lineage_scanner.signature.features import embedding
    from lineage_scanner.signature.record import Signature

    depth = len(features["qk"])
    return Signature(model, "r1", model, family=family, n_layers=depth, invariants=features,
                     embedding=embedding(features), declared_base=list(base))


def test_store_null_from_unrelated_pairs_leaves_out_relatives(tmp_path):
    from lineage_scanner.lineage.null import MIN_STORE_PAIRS, null_for, synthetic, synthetic_features
    from lineage_scanner.store.store import Store

    store = Store(tmp_path / "db")
    bases = {f"base-{i}": synthetic_features(12, 100 + i) for i in range(12)}
    sigs = [_stored(m, f) for m, f in bases.items()]
    store.write(sigs)
    query, other = sigs[0], sigs[1]
    small = null_for(store, query, other)  # 10 other bases: 45 pairs, under the minimum
    assert small.source == "synthetic" and small == synthetic(12, 12)

    rng = np.random.default_rng(0)
    noisy = {k: list(np.asarray(v) + rng.normal(0, 0.01, 12)) for k, v in bases["base-5"].items()}
    store.write([_stored("base-12", synthetic_features(12, 200)),
                 _stored("base-5-ft", noisy, base=["base-5"]),  # a declared child: never a null pair
                 _stored("base-5-copy", noisy),  # an undeclared one: an outlier among unrelated pairs
                 _stored("deep", synthetic_features(30, 300)), _stored("gpt", synthetic_features(12, 301), "gpt2")])
    null = null_for(store, query, other)
    assert null.source == "store" and len(null.scores) >= MIN_STORE_PAIRS
    # 13 peers (base-2..12 and the two copies; not the pair judged, not the deep or gpt2 ones): 78 pairs, less
    # the declared one; the undeclared copy's pairs with base-5 and base-5-ft are dropped as outliers
    assert len(null.scores) + null.excluded == 78 - 1 and null.excluded == 2
    assert max(null.scores) < 0.95
    v = decide(_stored("base-5-again", noisy), sigs[5], null)
    # curves alone can be forged: related curves keep a pair from "unrelated", never make it "derived"
    assert v.verdict == "inconclusive" and "curves" in v.conflict
    assert v.null.source == "store" and v.p_curves >= v.p_null and v.p_curves < 1e-3


def test_store_null_needs_many_families_not_just_many_pairs(tmp_path):
    from lineage_scanner.lineage.null import null_for, synthetic_features
    from lineage_scanner.store.store import Store

    store = Store(tmp_path / "db")
    rng = np.random.default_rng(1)
    sigs = []
    for i in range(3):  # 3 families of 11: 363 unrelated pairs, but only 3 independent relationships
        base = synthetic_features(12, 400 + i)
        sigs.append(_stored(f"fam{i}", base))
        sigs += [_stored(f"fam{i}-{k}", {n: list(np.asarray(v) + rng.normal(0, 0.05, 12)) for n, v in base.items()},
                         base=[f"fam{i}"]) for k in range(10)]
    store.write(sigs)
    assert null_for(store, sigs[0], sigs[12]).source == "synthetic"


def test_synthetic_null_is_kept_on_disk(tmp_path, monkeypatch):
    from lineage_scanner.lineage import null

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    null.synthetic.cache_clear()
    first = null.synthetic(5, 4, 12)
    (cached,) = (tmp_path / "lineage-scanner" / "null").glob("*-5-4-12.json")
    null.synthetic.cache_clear()
    cached.write_text(json.dumps([0.5] * 12))  # what is on disk is what a new process gets
    assert null.synthetic(5, 4, 12).scores == (0.5,) * 12 and len(first.scores) == 12
    null.synthetic.cache_clear()
