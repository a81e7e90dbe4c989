"""The seed method reproduced exactly, checked against a naive reimplementation on the demo zoo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lineage_scanner.lineage.paper import paper_score
from lineage_scanner.run.batch import run_batch
from lineage_scanner.store.store import Store


@pytest.fixture(scope="module")
def store(zoo, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("db"))
    report = run_batch([e.path for e in zoo], store, progress=False)
    assert not report.failed, report.failed[0].error
    return store


def naive_curves(directory) -> dict[str, list[float]]:
    """The seed method's input as its authors computed it: load everything, torch.std per matrix."""
    tensors = load_file(directory / "model.safetensors")
    layers = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith("model.layers."))
    return {
        r: [
            tensors[f"model.layers.{i}.self_attn.{r}_proj.weight"].to(torch.float64).std().item() for i in range(layers)
        ]
        for r in "qkvo"
    }


def naive_paper_score(a: dict, b: dict) -> float:
    rs = []
    for r in "qkvo":
        x, y = np.array(a[r]), np.array(b[r])
        x, y = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
        if len(x) > len(y):
            x, y = y, x
        x = np.interp(np.linspace(0, len(x) - 1, len(y)), np.arange(len(x)), x)
        rs.append(np.corrcoef(x, y)[0, 1])
    return float(np.mean(rs))


@pytest.mark.parametrize("a,b", [("llama-a", "llama-a-ct"), ("llama-a", "llama-a-pruned"), ("llama-a", "llama-b")])
def test_paper_score_equals_the_seed_method(store, zoo_by_name, a, b):
    from pathlib import Path

    expected = naive_paper_score(naive_curves(Path(zoo_by_name[a].path)), naive_curves(Path(zoo_by_name[b].path)))
    got = paper_score(store.load(a).curves, store.load(b).curves)
    assert got.score == pytest.approx(expected, abs=1e-7)  # stds within ~1e-8 of float64 (float32 tiles)
    assert set(got.per_role) == set("qkvo")


def test_quantized_and_moe_children_match_their_parent(store, zoo):
    for e in zoo:
        if e.relation in ("quantized", "moe_upcycle", "finetune"):
            s = paper_score(store.load(e.model).curves, store.load(e.parent).curves).score
            assert s > 0.95, (e.model, s)


def test_every_derived_model_ranks_its_family_first(store, zoo):
    from lineage_scanner.demo.zoo import family_roots

    root = family_roots(zoo)
    candidates = store.signatures()
    for e in zoo:
        if e.parent and e.relation not in ("permuted", "rotated"):  # evasions built to fool the seed method
            query = store.load(e.model)
            best = max((c for c in candidates if c.model != e.model),
                       key=lambda c: paper_score(query.curves, c.curves).score)
            assert root[best.model] == root[e.model], (e.model, best.model)


def test_flat_curves_have_no_score():
    flat = {r: [0.02] * 8 for r in "qkvo"}
    assert math.isnan(paper_score(flat, flat).score)


def test_different_depths_are_interpolated():
    a = {r: list(np.sin(np.linspace(0, 3, 12)) + 2) for r in "qkvo"}
    b = {r: list(np.sin(np.linspace(0, 3, 8)) + 2) for r in "qkvo"}
    result = paper_score(a, b)
    assert result.score > 0.99 and len(result.alignment) == 12
    assert result.alignment[0] == (0, 0.0) and result.alignment[-1] == (11, 7.0)
