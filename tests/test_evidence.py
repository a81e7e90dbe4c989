"""The lineage engine on the demo zoo: evasions defeated, depth changes aligned, flat curves flagged."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from kernels import get_backend
from scanner.evidence import align, benjamini_hochberg, decide, evidence
from scanner.scan import scan_strict

CPU = get_backend("cpu")


def scan(path):
    return scan_strict(str(path), CPU, set())[1]


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
    v = decide(evader, parent)
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
    v = decide(folded, parent)
    assert v.verdict == "derived" and v.evidence.score > 0.99


def test_pruned_layers_align_to_their_originals(zoo_by_name):
    parent, pruned = scan(zoo_by_name["llama-a"].path), scan(zoo_by_name["llama-a-pruned"].path)
    kept = [i for i in range(12) if i % 3 != 1]
    pairs = evidence(pruned.invariants, parent.invariants).alignment
    assert sum(kept[i] == j for i, j in pairs) >= 7, pairs
    v = decide(pruned, parent)
    assert v.verdict == "derived" and v.kind == "pruned or depth up-scaled"


def test_zoo_verdicts(zoo):
    sigs = {e.model: scan(e.path) for e in zoo}
    root = {e.model: e.parent or e.model for e in zoo}
    for e in zoo:
        if e.parent:
            assert decide(sigs[e.model], sigs[e.parent]).verdict == "derived", e.model
    names = sorted(sigs)
    strangers = [decide(sigs[a], sigs[b]) for a in names for b in names if a < b and root[a] != root[b]]
    assert not [v for v in strangers if v.verdict == "derived"]
    assert max(v.evidence.score for v in strangers) < max(v.paper.score for v in strangers) + 0.1


def test_flat_curves_are_inconclusive(tmp_path):
    from tests.conftest import write_llama

    gen = torch.Generator().manual_seed(0)
    d = write_llama(tmp_path / "flat", n_layers=6)
    tensors = load_file(d / "model.safetensors")
    for k in tensors:
        if k.endswith("proj.weight"):
            tensors[k] = (torch.randn(tensors[k].shape, generator=gen) * 0.02).to(torch.bfloat16)
    save_file(tensors, d / "model.safetensors")
    flat = scan(d)
    flat.invariants = {k: [0.0] * 6 for k in flat.invariants}  # perfectly flat: no shape at all
    v = decide(flat, flat)
    assert v.verdict == "inconclusive" and "low information" in v.reason


def test_alignment_recovers_a_deletion():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((10, 3))
    b = np.delete(a, 4, axis=0)
    pairs = align(b, a)
    assert pairs == [(i, i if i < 4 else i + 1) for i in range(9)]


def test_benjamini_hochberg():
    q = benjamini_hochberg([0.01, None, 0.04, 0.03, 0.5])
    assert q[1] is None
    assert q[0] == pytest.approx(0.04) and q[2] == pytest.approx(0.04 * 4 / 3) and q[4] == pytest.approx(0.5)
    assert q[3] == pytest.approx(0.04 * 4 / 3)  # monotone: never below the q of a larger p


def test_compare_and_match_json(zoo, tmp_path, capsys):
    from scanner.cli import main

    db = str(tmp_path / "db")
    assert main(["scan", *[e.path for e in zoo], "--db", db, "-q"]) == 0
    capsys.readouterr()
    assert main(["compare", "llama-a", "llama-a-ct", "--db", db, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "derived" and out["p_value"] < 0.01 and out["kind"] == "continued training"
    assert out["alignment"][0] == {"a": 0, "b": 0} and set(out["per_feature"]) >= {"qk", "vo"}
    assert main(["match", "qwen2-a-moe", "--db", db, "--json", "--top", "6"]) == 0
    matches = json.loads(capsys.readouterr().out)["matches"]
    assert [m["verdict"] for m in matches[:5]] == ["derived"] * 5
    assert all(m["model"].startswith("qwen2-a") for m in matches[:5])
    assert all(m["q_value"] is not None and m["q_value"] >= m["p_value"] for m in matches)
    assert not math.isnan(matches[0]["score"])


def test_graph_families_and_disagreements(zoo, tmp_path, capsys):
    import networkx as nx

    from scanner.cli import main

    db = str(tmp_path / "db")
    assert main(["scan", *[e.path for e in zoo], "--db", db, "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "g.graphml"
    assert main(["graph", "--db", db, "--out", str(out), "--json"]) == 0
    graph = json.loads(capsys.readouterr().out)
    roots: dict[str, set[str]] = {}
    for e in zoo:
        roots.setdefault(e.parent or e.model, set()).add(e.model)
    assert sorted(map(sorted, roots.values())) == sorted(graph["families"])
    flagged = {d["model"] for d in graph["disagreements"]} | {d["other"] for d in graph["disagreements"]}
    undeclared = {e.model for e in zoo if e.relation == "continued"}  # they claim to be trained from scratch
    assert undeclared <= flagged
    assert all(d["model"] in undeclared or d["other"] in undeclared for d in graph["disagreements"])
    assert nx.read_graphml(out).number_of_nodes() == len(zoo)
