"""End to end, one case per attack class (issue 21): checkpoints written, scanned into a store under its key,
judged by ``lineage compare``. Disguises that keep a copy's function are derived and named; forgeries of a
few percent of a famous model's values are never derived; scrubs of a few percent of a copy are never
unrelated; a forger who learned the store's key is caught by deep verification at fresh positions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lineage_scanner.cli.main import main
from lineage_scanner.demo import attacks
from lineage_scanner.demo.derive import drift
from lineage_scanner.demo.writers import write_hf
from lineage_scanner.lineage.generator import base_model
from lineage_scanner.lineage.verdict import REPARAMETRISED, ROTATED
from lineage_scanner.measure.sketch import positions
from lineage_scanner.store.key import store_key
from lineage_scanner.store.store import Store
from tests.helpers import unrelated_by_chance

SHAPE = {"hidden": 256, "n_heads": 8, "n_kv_heads": 2}
LAYERS = 6


def _leaked_key_forgery(stranger, famous, store: Store):
    """A stranger carrying the famous model's values exactly where the store's sketch reads (the store's
    key stolen): under 1% of its attention values."""
    key = store_key(store)
    out = attacks.as_float64(stranger, "leaked")
    for layer, source in zip(out.layers, famous.layers):
        layer["attn_norm"] = source["attn_norm"].astype(np.float64).copy()
        for role in attacks.ATTENTION:
            flat, src = layer[role].reshape(-1), source[role].reshape(-1)
            at = positions(*layer[role].shape, key)
            flat[at] = src[at]
    return out


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Every attack against one famous base, scanned into one store; compare's JSON per case."""
    root = tmp_path_factory.mktemp("adversary")
    famous = base_model("famous", "llama", 31, LAYERS, **SHAPE)
    stranger = base_model("stranger", "llama", 32, LAYERS, **SHAPE)
    heavy = drift(famous, "heavy", 33, 0.5, 0.05)
    store = Store(root / "db")
    cases = {
        "famous": famous, "stranger": stranger,
        "permuted": attacks.permute_heads(famous, 1),
        "rotated": attacks.rotate_residual(famous, 2),
        "vo maps, condition 100": attacks.map_vo(famous, 3, 100.0),
        "rope maps": attacks.map_qk(famous, 4, 2.0),
        "all disguises": attacks.disguise_all(famous, 5, 100.0),
        "all disguises after a fine-tune": attacks.disguise_all(drift(famous, "ft", 6, 0.05, 0.01), 7, 100.0),
        "5% copied at random positions": attacks.copy_values(stranger, famous, 8, 0.05, "positions"),
        "5% copied as whole rows": attacks.copy_values(stranger, famous, 9, 0.05, "rows"),
        "5% copied as whole matrices": attacks.copy_values(stranger, famous, 10, 0.05, "matrices"),
        "curves forged at another width": attacks.forge_curves(famous, 11),
        "5% scrubbed at random positions": attacks.scrub(famous, 12, 0.05, "positions"),
        "5% scrubbed as whole rows": attacks.scrub(famous, 13, 0.05, "rows"),
        "largest weights shrunk": attacks.shrink_largest(famous),
        "heavy fine-tune, 5% rows scrubbed": attacks.scrub(heavy, 14, 0.05, "rows"),
        "copied where the stolen key reads": _leaked_key_forgery(stranger, famous, store),
    }
    paths = {}
    for name, model in cases.items():
        model.name = name.replace(" ", "-").replace(",", "").replace("%", "pc")
        paths[name] = str(write_hf(model, root / model.name))
    db = str(root / "db")
    assert main(["scan", *paths.values(), "--db", db, "-q", "--backend", "cpu"]) == 0
    return db, {name: cases[name].name for name in cases}


def compare(judged, capsys, name: str) -> dict:
    db, ids = judged
    capsys.readouterr()
    assert main(["compare", ids["famous"], ids[name], "--db", db, "--json", "--backend", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name, kind", [
    ("permuted", REPARAMETRISED), ("rotated", ROTATED), ("vo maps, condition 100", REPARAMETRISED),
    ("rope maps", REPARAMETRISED), ("all disguises", ROTATED), ("all disguises after a fine-tune", None)])
def test_a_disguised_copy_is_derived_and_named(judged, capsys, name, kind):
    out = compare(judged, capsys, name)
    assert out["verdict"] == "derived" and out["log10_p"] <= -6, out["reason"]
    assert out["decided_by"] in ("circuits", "circuit gram", "sketch")  # a map of Q/K alone leaves V/O's values
    if kind:
        assert out["kind"] == kind
    else:
        assert "possible evasion" in out["kind"]


@pytest.mark.parametrize("name", ["5% copied at random positions", "5% copied as whole rows",
                                  "5% copied as whole matrices", "curves forged at another width"])
def test_a_forgery_is_never_derived(judged, capsys, name):
    out = compare(judged, capsys, name)
    assert out["verdict"] != "derived", out["reason"]


@pytest.mark.parametrize("name", ["5% scrubbed at random positions", "5% scrubbed as whole rows",
                                  "largest weights shrunk", "heavy fine-tune, 5% rows scrubbed"])
def test_a_scrubbed_copy_is_never_unrelated(judged, capsys, name):
    out = compare(judged, capsys, name)
    assert out["verdict"] == "derived", out["reason"]


def test_a_forger_with_the_stolen_key_is_caught_by_fresh_positions(judged, capsys):
    db, ids = judged
    stored = compare(judged, capsys, "copied where the stolen key reads")
    assert stored["verification"]["ran"]  # the stored channels disagreed (or looked identical): re-read
    assert stored["verdict"] != "derived" and stored["verification"]["stored_verdict"] in ("derived", "inconclusive")
    capsys.readouterr()
    assert main(["compare", ids["famous"], ids["copied where the stolen key reads"], "--db", db, "--json",
                 "--no-verify"]) == 0
    assert json.loads(capsys.readouterr().out)["verification"] is None


def test_unrelated_models_are_read_again_only_where_it_is_cheap(judged, capsys, monkeypatch):
    """A stored "unrelated" between models of one shape is what a scrub aimed with a stolen key would leave:
    small models are read again at fresh positions (and stay unrelated); large ones only where the curves
    do not agree with it, as here."""
    out = compare(judged, capsys, "stranger")
    assert unrelated_by_chance(out) and out["verification"]["ran"], out["reason"]
    assert out["verification"]["stored_verdict"] != "derived"
    monkeypatch.setattr("lineage_scanner.run.verify.CHEAP_VALUES", 0)  # as if both were too large
    out = compare(judged, capsys, "stranger")
    assert unrelated_by_chance(out), out["reason"]
    assert out["verdict"] != "unrelated" or out["verification"] is None  # a stored "unrelated" is not re-read
    assert {c["name"]: c["says"] for c in out["channels"]}["sketch"] != "related"


def test_a_scrub_aimed_with_the_stolen_key_is_read_again(tmp_path, capsys, monkeypatch):
    """On a narrow model the key's anchor rows are most of each matrix: whoever stole the key replaces them
    all and every stored weight channel is blank. Curves that do not refute a relation then send the pair
    to fresh positions, which land on what the scrubber left: never "unrelated"."""
    monkeypatch.setenv("LINEAGE_SKETCH_KEY", "a1" * 32)
    store = Store(tmp_path / "db")
    base = base_model("narrow", "llama", 1, 6, hidden=96, n_heads=4, n_kv_heads=2)
    tuned = drift(base, "narrow-ft", 11, 0.05, 0.01)
    scrubbed = attacks.scrub(tuned, 1, 0.0, "anchor rows", store_key(store))
    scrubbed.name = "narrow-scrubbed"
    assert attacks.changed_fraction(tuned, scrubbed) > 0.5
    paths = [str(write_hf(m, tmp_path / m.name)) for m in (base, scrubbed)]
    db = str(tmp_path / "db")
    assert main(["scan", *paths, "--db", db, "-q", "--backend", "cpu"]) == 0

    def compare(*flags: str) -> dict:
        capsys.readouterr()
        assert main(["compare", "narrow", "narrow-scrubbed", "--db", db, "--json", "--backend", "cpu", *flags]) == 0
        return json.loads(capsys.readouterr().out)

    monkeypatch.setattr("lineage_scanner.run.verify.CHEAP_VALUES", 0)  # the curves' trigger alone
    stored = compare("--no-verify")
    says = {c["name"]: c["says"] for c in stored["channels"]}
    assert stored["verdict"] == "unrelated" and says.pop("curves") == "weak", stored["channels"]
    assert set(says.values()) == {"unrelated"}  # every stored weight channel blanked
    checked = compare()
    assert checked["verification"]["ran"] and checked["verification"]["stored_verdict"] == "unrelated"
    assert checked["verdict"] != "unrelated", checked["reason"]
