"""Scans driven by the Hub's listing: no model-info call per model, no download counted, copies found by
their resolves and nominated copies verified at fresh positions, incremental nights."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.readers.fresh import compare_at_fresh_positions, fresh_starts, secret_generator
from lineage_scanner.readers.hub_catalog import list_catalog
from lineage_scanner.readers.local import ShardedSafetensors
from lineage_scanner.readers.open_hub import HubJob
from lineage_scanner.readers.shared import CopyIndex, Shared
from lineage_scanner.run.batch import run_batch
from lineage_scanner.run.local import InProcess
from lineage_scanner.run.nightly import run_night
from lineage_scanner.run.scan import scan_strict
from lineage_scanner.sources.hub import ListedSource
from lineage_scanner.store.store import Store
from lineage_scanner.testing.hub_repos import EPOCH
from lineage_scanner.testing.hub_server import HubStandIn, Repo

BACKEND = get_backend("cpu")


def _raw(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """A safetensors file's tensors as raw bytes (bf16 as uint16), to edit them bit for bit."""
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    data = path.read_bytes()[8 + header_len :]
    out = {}
    for name, entry in header.items():
        if name != "__metadata__":
            a, b = entry["data_offsets"]
            out[name] = np.frombuffer(data[a:b], np.uint16 if entry["dtype"] == "BF16" else np.uint8).copy()
    return out, header


def _write_like(target: Path, header: dict, tensors: dict[str, np.ndarray], source: Path) -> None:
    """``tensors`` (raw) written under ``header``'s names, dtypes and shapes, beside ``source``'s config."""
    target.mkdir(parents=True)
    shutil.copy(source / "config.json", target / "config.json")
    raw = json.dumps(header).encode()
    with open(target / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name in sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][0]):
            f.write(tensors[name].tobytes())


def forged(original: Path, other: Path, target: Path) -> Path:
    """A repo equal to ``original`` in the bytes its content digest reads (the first 4 KB of layer 0's first
    four matrices, by name) and to ``other`` everywhere else: a copy by the digest, not by its weights."""
    mine, header = _raw(original / "model.safetensors")
    theirs, _ = _raw(other / "model.safetensors")
    digested = sorted(n for n in header if ".layers.0." in n and len(header[n]["shape"]) == 2)[:4]
    out = {}
    for name, values in theirs.items():
        values = values.copy()
        if name in digested:
            values[:2048] = mine[name][:2048]
        out[name] = values
    _write_like(target, header, out, original)
    return target


def resharded(source: Path, target: Path) -> Path:
    """The same tensors in two shards with an index (other files, other hashes)."""
    raw, header = _raw(source / "model.safetensors")
    names = sorted(n for n in header if n != "__metadata__")
    target.mkdir()
    shutil.copy(source / "config.json", target / "config.json")
    weight_map = {}
    for k, part in enumerate((names[::2], names[1::2]), start=1):
        shard = f"model-{k:05d}-of-00002.safetensors"
        sub = {n: {**header[n]} for n in part}
        offset = 0
        for n in part:
            size = raw[n].nbytes
            sub[n]["data_offsets"] = [offset, offset + size]
            offset += size
        _raw_write(target / shard, sub, raw)
        weight_map |= {n: shard for n in part}
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return target


def _raw_write(path: Path, header: dict, raw: dict[str, np.ndarray]) -> None:
    data = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(data).to_bytes(8, "little") + data)
        for n in sorted(header, key=lambda n: header[n]["data_offsets"][0]):
            f.write(raw[n].tobytes())


@pytest.fixture(scope="module")
def repo_dirs(zoo_by_name, tmp_path_factory):
    root = tmp_path_factory.mktemp("listed")
    dirs = {name: Path(shutil.copytree(zoo_by_name[name].path, root / name))
            for name in ("llama-a", "llama-b", "qwen2-a", "phi3-a")}
    dirs["copy"] = Path(shutil.copytree(zoo_by_name["llama-a"].path, root / "copy"))
    dirs["sharded"] = resharded(dirs["llama-a"], root / "sharded")
    dirs["forged"] = forged(dirs["llama-a"], dirs["llama-b"], root / "forged")
    return dirs


@pytest.fixture
def hub(repo_dirs, monkeypatch):
    hour = timedelta(hours=1)
    names = {"acme/llama-a": "llama-a", "acme/llama-b": "llama-b", "acme/qwen2-a": "qwen2-a",
             "fused/phi3-a": "phi3-a", "mirror/llama-a-copy": "copy", "mirror/llama-a-sharded": "sharded",
             "adv/llama-a-forged": "forged"}
    repos = [Repo(repo_id, repo_dirs[d], last_modified=EPOCH + i * hour, downloads=100 - i)
             for i, (repo_id, d) in enumerate(names.items())]
    with HubStandIn(repos, page_size=3) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield server


def listed(hub, *models: str) -> list[ListedSource]:
    by_name = {c.model: ListedSource(c) for c in list_catalog().commits}
    hub.reset_counts()
    return [by_name[m] for m in models]


def test_a_listed_commit_costs_its_resolves_only(hub):
    """The listing says what model info would: the scan of a listed llama makes no API call, one resolve
    (its one weight file, located and then read from the file host), and never asks for config.json."""
    (source,) = listed(hub, "acme/llama-a")
    _, sig = scan_strict(source, BACKEND, set())
    assert sig.ok and (sig.model, sig.revision) == ("acme/llama-a", hub.sha_of("acme/llama-a"))
    assert hub.by_class["api"] == 0 and hub.by_class["resolve"] == 1 and hub.query_files["acme/llama-a"] == 0
    _, direct = scan_strict("hf://acme/llama-a", BACKEND, set())  # through model info: the same signature
    assert sig.curves == direct.curves and sig.hidden_size == direct.hidden_size == 128
    assert sig.declared_base == direct.declared_base and sig.family == direct.family == "llama"


def test_a_fused_layout_asks_for_config_and_is_counted(hub):
    """phi3's fused QKV is split by the head counts, which only config.json holds: the one exception, and
    the stand-in counts it as the download the Hub would count."""
    (source,) = listed(hub, "fused/phi3-a")
    _, sig = scan_strict(source, BACKEND, set())
    assert sig.ok and sig.family == "phi3" and sig.n_heads is not None
    assert hub.query_files["fused/phi3-a"] == 1 and hub.by_class["api"] == 0


def test_a_night_of_llama_and_qwen_repos_counts_no_download(hub, tmp_path):
    """A night over llama- and qwen-style repos (originals and their copies): no GET or HEAD of any
    config.json, no model-info call; the night's account says so."""
    hub.remove("fused/phi3-a")
    hub.reset_counts()
    night = run_night(Store(tmp_path / "db"), executor=InProcess())
    assert night.batch.n_failed == 0 and night.batch.scanned == 6
    assert sum(hub.query_files.values()) == 0 and night.sent.get("query_file", 0) == 0
    # llama-a's model info, opened to verify each of the two repos its content digest nominates
    assert night.sent.get("model_info", 0) == 2
    assert night.sent["listing"] == hub.requests["/api/models"] == 2


def test_an_exact_reupload_is_found_by_its_resolve(hub, tmp_path):
    """The copy's one weight file is located (its resolve states its SHA-256): it is the original's, so
    not one byte comes from the file host."""
    original, copy = listed(hub, "acme/llama-a", "mirror/llama-a-copy")
    store = Store(tmp_path / "db")
    run_batch([original], store, progress=False)
    hub.reset_counts()
    summary = run_batch([copy], store, progress=False)
    assert summary.n_copies == 1 and hub.by_class["resolve"] == 1 and hub.by_class["api"] == 0
    assert hub.by_class.get("file", 0) == 0
    stored = store.load("mirror/llama-a-copy")
    assert stored.identical_to == f"acme/llama-a@{hub.sha_of('acme/llama-a')}"
    assert stored.weights_digest == store.load("acme/llama-a").weights_digest


def test_a_resharded_copy_is_verified_before_it_is_recorded(hub, tmp_path):
    """Other files, the same tensors: nominated by the content digest, verified at fresh positions in every
    attention matrix of both, then recorded as a copy."""
    original, copy = listed(hub, "acme/llama-a", "mirror/llama-a-sharded")
    store = Store(tmp_path / "db")
    run_batch([original], store, progress=False)
    hub.reset_counts()
    summary = run_batch([copy], store, progress=False)
    stored = store.load("mirror/llama-a-sharded")
    assert summary.n_copies == 1 and stored.identical_to == f"acme/llama-a@{hub.sha_of('acme/llama-a')}"
    assert stored.content_digest is not None and stored.curves == store.load("acme/llama-a").curves
    assert hub.by_class["api"] == 1  # the original's model info: its files, to read it again
    assert hub.requests["model.safetensors"] > 2  # the original read again, at the fresh positions


def test_a_forged_copy_equal_only_where_the_digest_reads_is_scanned(hub, tmp_path):
    """Equal to llama-a in the 16 KB the content digest reads, llama-b's weights everywhere else: the digest
    nominates llama-a, the fresh positions refuse it, and the repo is scanned like any other model."""
    original, fake = listed(hub, "acme/llama-a", "adv/llama-a-forged")
    store = Store(tmp_path / "db")
    run_batch([original], store, progress=False)
    summary = run_batch([fake], store, progress=False)
    stored = store.load("adv/llama-a-forged")
    assert summary.n_copies == 0 and stored.identical_to is None and stored.ok
    assert stored.content_digest == store.load("acme/llama-a").content_digest  # nominated, indeed
    _, b = scan_strict("hf://acme/llama-b", BACKEND, set())
    assert stored.curves != store.load("acme/llama-a").curves
    assert stored.curves["q"] == b.curves["q"] and stored.curves["v"] == b.curves["v"]  # never touched


def test_fresh_positions_are_secret_and_catch_a_difference(repo_dirs):
    """Two draws of positions never agree (a secret seed each time); equal checkpoints compare equal, and a
    checkpoint that differs outside a fixed prefix is caught."""
    assert not np.array_equal(fresh_starts(10**9, 64, 16, secret_generator()),
                              fresh_starts(10**9, 64, 16, secret_generator()))
    a, copy, fake = (ShardedSafetensors([repo_dirs[n] / "model.safetensors"]) for n in ("llama-a", "copy", "forged"))
    names = sorted(n for n, t in a.tensors().items() if len(t.shape) == 2 and "self_attn" in n)
    same = compare_at_fresh_positions(a, copy, names)
    assert same.equal and same.tensors == len(names) and same.values == len(names) * (4096 // (16 * len(names))) * 16
    differ = compare_at_fresh_positions(a, fake, names)
    assert not differ.equal and differ.differing > 3000 and differ.first_difference in names


def test_incremental_nights_list_only_what_changed(hub, tmp_path):
    """Night 1 lists everything and sets the high-water mark; before night 2 one repo gets a new commit,
    one is new, one listed repo is renamed and one deleted. Night 2 lists only the two that changed, scans
    them, follows the rename (the commit kept under its new name) and records the deletion, which night 3
    does not try again."""
    store = Store(tmp_path / "db")
    first = run_night(store, minutes=0, executor=InProcess())  # lists and marks; no time to scan
    assert len(first.listing.commits) == 7 and first.batch.scanned == 0
    mark = store.high_water(json.dumps({"author": None, "filter": None, "search": None}, sort_keys=True))
    assert mark == EPOCH + timedelta(hours=6)
    now = datetime.now(timezone.utc)
    hub.repos["acme/qwen2-a"].commit(now)
    hub.add(Repo("acme/new", Path(hub.repos["acme/llama-b"].path), last_modified=now))
    old_sha = hub.sha_of("acme/llama-b")
    hub.rename("acme/llama-b", "acme/llama-b-moved")
    hub.repos["adv/llama-a-forged"].deleted = True
    hub.reset_counts()
    second = run_night(store, executor=InProcess())
    assert {c.model for c in second.listing.commits} == {"acme/qwen2-a", "acme/new", "adv/llama-a-forged"}
    # the second page's first entry is older than the mark: the listing stops there
    assert second.sent["listing"] == second.listing.pages == 2 and second.sent.get("model_info", 0) <= 1
    found = {(m, r): s for m, r, s in store.connect().execute("SELECT model, revision, status FROM latest").fetchall()}
    assert found[("acme/qwen2-a", hub.sha_of("acme/qwen2-a"))] == "ok"
    assert found[("acme/llama-b-moved", old_sha)] == "ok" and ("acme/llama-b", old_sha) not in found
    assert found[("adv/llama-a-forged", hub.sha_of("adv/llama-a-forged"))] == "not_found"
    hub.reset_counts()
    third = run_night(store, executor=InProcess())
    assert third.todo == 0 and hub.by_class.get("resolve", 0) == 0


def test_a_copy_index_shared_by_listed_reuploads(hub):
    """Two listed re-uploads in one job: the first to claim the weights is scanned, the other is its copy."""
    original, copy = listed(hub, "acme/llama-a", "mirror/llama-a-copy")
    job = HubJob(copies=Shared(CopyIndex()))
    _, first = scan_strict(original, BACKEND, set(), hub=job)
    _, second = scan_strict(copy, BACKEND, set(), hub=job)
    assert first.identical_to is None and second.identical_to == f"acme/llama-a@{hub.sha_of('acme/llama-a')}"
