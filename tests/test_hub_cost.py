"""What a Hub scan costs, against a stand-in that behaves like the Hub where cost is decided: one resolve
per weight file (its signed URL reused until it expires), one model-info call per model, no token sent to
the file host, the Hub's rate-limit answers, and exact re-uploads found by their files' SHA-256."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from lineage_scanner.lineage.null import synthetic
from lineage_scanner.lineage.verdict import decide
from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.readers.hub_http import HubClient
from lineage_scanner.readers.hub_urls import file_url
from lineage_scanner.readers.local import ShardedSafetensors
from lineage_scanner.run.batch import run_batch
from lineage_scanner.run.scan import scan_strict
from lineage_scanner.store.store import Store
from lineage_scanner.testing.hub_server import HubStandIn, Limits, Repo
from tests.helpers import unrelated_by_chance

pytestmark = pytest.mark.hub

BACKEND = get_backend("cpu")


@pytest.fixture(scope="module")
def repos(zoo_by_name, tmp_path_factory):
    root = tmp_path_factory.mktemp("costrepos")
    out = [Repo(f"acme/{name}", shutil.copytree(zoo_by_name[name].path, root / name)) for name in ("llama-a", "phi3-a")]
    # an exact re-upload under another name (its own card), and a different model
    out.append(Repo("mirror/llama-a-copy", shutil.copytree(zoo_by_name["llama-a"].path, root / "copy"),
                    card={"base_model": "acme/llama-a"}))
    out.append(Repo("acme/llama-b", shutil.copytree(zoo_by_name["llama-b"].path, root / "llama-b")))
    return out


@pytest.fixture
def hub(repos, monkeypatch):
    def start(**options) -> HubStandIn:
        server = HubStandIn(repos, **options).__enter__()
        started.append(server)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_TOKEN", "hf_cost_test_token")
        return server

    started: list[HubStandIn] = []
    yield start
    for server in started:
        server.__exit__(None, None, None)


def test_one_resolve_per_weight_file_and_one_info_call(hub):
    server = hub()
    for repo, weights, config in (
            ("acme/llama-a", ["model.safetensors"], 0),
            # phi3's QKV is fused: its split needs the head counts, which only config.json holds
            ("acme/phi3-a", ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"], 1)):
        server.reset_counts()
        _, sig = scan_strict(f"hf://{repo}", BACKEND, set())
        assert sig.ok and sig.files == weights
        assert server.by_class["api"] == 1  # model info, sizes and hashes included
        assert all(server.resolves[w] == 1 for w in weights), dict(server.resolves)
        # the weights, and config.json only where the layout needs it (a complete shard set needs no index)
        assert server.by_class["resolve"] == len(weights) + config and server.query_files[repo] == config
        assert sum(server.requests[w] for w in weights) > len(weights)  # the ranges went to the file host
        assert server.file_host_tokens == 0  # and never with the token
    assert sig.weights_digest is not None


def test_signed_url_is_reused_until_it_expires(hub):
    server = hub(url_ttl_s=2.0)
    client = HubClient("hf://acme/llama-a")
    url = file_url("acme/llama-a", server.sha_of("acme/llama-a"), "model.safetensors")
    for _ in range(3):
        assert len(client.get(url, 0, 99)[0]) == 100
    assert server.resolves["model.safetensors"] == 1 and client.resolves == 1
    time.sleep(1.6)  # past three quarters of its life: resolved afresh before it runs out
    assert len(client.get(url, 100, 199)[0]) == 100
    assert server.resolves["model.safetensors"] == 2


def test_revoked_signed_url_is_resolved_again(hub):
    server = hub()
    client = HubClient("hf://acme/llama-a")
    url = file_url("acme/llama-a", server.sha_of("acme/llama-a"), "model.safetensors")
    first = client.get(url, 0, 99)[0]
    server.revoke_urls()
    assert client.get(url, 0, 99)[0] == first  # a 403 from the file host, then a fresh resolve
    assert server.resolves["model.safetensors"] == 2


def test_rate_limits_answer_like_the_hub(hub):
    server = hub(limits=Limits(api=2, resolve=None, window_s=300))
    info = f"{server.endpoint}/api/models/acme/llama-a"
    from huggingface_hub.utils import get_session

    first, second, third = (get_session().get(info) for _ in range(3))
    assert first.status_code == second.status_code == 200 and third.status_code == 429
    assert first.headers["RateLimit"].startswith('"api";r=1;t=') and second.headers["RateLimit"].startswith('"api";r=0')
    assert third.headers["RateLimit-Policy"] == '"fixed window";"api";q=2;w=300'
    assert 0 < int(third.headers["Retry-After"]) <= 300 and server.rejected["api"] == 1


def test_rate_limited_window_is_waited_out(hub):
    """The first answer says the window's last API call is spent (RateLimit r=0): the second model's info
    call waits for the next window instead of meeting a 429."""
    from lineage_scanner.readers.open_hub import HubJob
    from lineage_scanner.readers.shared import RateBudget, Shared

    server = hub(limits=Limits(api=1, resolve=None, window_s=2))
    job = HubJob(budget=Shared(RateBudget()))  # one budget for both scans, as a batch's scanner has
    _, first = scan_strict("hf://acme/llama-a", BACKEND, set(), hub=job)
    _, second = scan_strict("hf://acme/llama-b", BACKEND, set(), hub=job)
    assert first.ok and second.ok and server.by_class["api"] == 2 and server.rejected["api"] == 0


@pytest.mark.slow
def test_exact_reupload_is_found_by_hash_without_reading_weights(hub, tmp_path):
    server = hub()
    store = Store(tmp_path / "db")
    run_batch(["hf://acme/llama-a"], store, progress=False)
    server.reset_counts()
    summary = run_batch(["hf://mirror/llama-a-copy"], store, progress=False)
    assert summary.n_failed == 0 and server.requests["model.safetensors"] == 0  # not one weight byte
    assert server.by_class["resolve"] == 0 and server.by_class["api"] == 1
    copy, original = store.load("mirror/llama-a-copy"), store.load("acme/llama-a")
    assert copy.identical_to == f"acme/llama-a@{original.revision}"
    assert copy.revision == server.sha_of("mirror/llama-a-copy")
    assert copy.weights_digest == original.weights_digest and copy.curves == original.curves
    assert copy.declared_base == ["acme/llama-a"] and copy.bytes_read < 10_000
    v = decide(copy, original, synthetic(copy.n_layers, original.n_layers))
    assert v.verdict == "derived" and v.kind == "identical weights"
    # a different model is read as usual
    server.reset_counts()
    run_batch(["hf://acme/llama-b"], store, progress=False)
    assert store.load("acme/llama-b").identical_to is None and server.requests["model.safetensors"] > 0


def _write_giant_llama(directory, hidden: int, heads: int) -> dict[str, tuple[float, float]]:
    """One llama layer whose Q, K, V and O are ``hidden`` x ``hidden`` bf16 (over 1 GB each), written row
    block by row block (never whole in memory): each is a 64-row random block tiled down the rows, so its
    exact mean and std are those of the block. Returns {role: (mean, unbiased std)}."""
    import json

    import numpy as np
    import torch

    directory.mkdir(parents=True)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "num_attention_heads": heads, "num_key_value_heads": heads, "num_hidden_layers": 1,
              "intermediate_size": 64, "vocab_size": 16}
    (directory / "config.json").write_text(json.dumps(config))
    roles = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
    size = hidden * hidden * 2
    header, offset = {}, 0
    for proj in roles.values():
        header[f"model.layers.0.self_attn.{proj}.weight"] = {"dtype": "BF16", "shape": [hidden, hidden],
                                                             "data_offsets": [offset, offset + size]}
        offset += size
    header["model.layers.0.input_layernorm.weight"] = {"dtype": "BF16", "shape": [hidden],
                                                       "data_offsets": [offset, offset + hidden * 2]}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    expected = {}
    with open(directory / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for k, role in enumerate(roles):
            block = torch.from_numpy(np.random.default_rng(k).normal(0, 0.02 * (k + 1), (64, hidden))
                                     .astype(np.float32)).to(torch.bfloat16)
            exact = block.to(torch.float64).numpy()
            n = hidden * hidden
            expected[role] = (exact.mean(), exact.std() * (n / (n - 1)) ** 0.5)
            data = block.view(torch.int16).numpy().tobytes()
            for _ in range(hidden // 64):
                f.write(data)
        f.write(torch.ones(hidden, dtype=torch.bfloat16).view(torch.int16).numpy().tobytes())
    return expected


SCAN_AND_REPORT = """
import json, sys
def peak():  # this process's own peak (ru_maxrss would keep the forking test process's across exec)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) << 10
from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.run.scan import scan_strict
_, sig = scan_strict(sys.argv[1], get_backend("cpu"), set())
print(json.dumps({"std": {s.role: [s.moments.mean, s.moments.std] for s in sig.layers},
                  "rss": peak(), "bytes": sig.bytes_read}))
"""


@pytest.mark.slow
def test_memory_is_bounded_by_bytes_whatever_the_tensor_size(hub, repos, tmp_path):
    """A layer of four 1 GB projections streams through the moments: the scanning process's peak memory
    stays within the read-ahead budget above a small model's scan (measured: +127 MiB; 4.2 GB without
    streaming), and the moments are exact."""
    import json
    import os
    import subprocess
    import sys

    from lineage_scanner.readers.hub_safetensors import READ_AHEAD_BYTES

    hidden = 22528  # 22528^2 bf16 = 1.015 GB per projection
    expected = _write_giant_llama(tmp_path / "giant", hidden, heads=176)
    repos.append(Repo("acme/giant", tmp_path / "giant"))
    repos[-1].sha256("model.safetensors")  # the stand-in hashes 4 GB once, before its model info is timed
    try:
        server = hub()
        env = {**os.environ, "HF_ENDPOINT": server.endpoint}

        def scan(source: str) -> dict:
            done = subprocess.run([sys.executable, "-c", SCAN_AND_REPORT, source], env=env, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-2000:]
            return json.loads(done.stdout.strip().splitlines()[-1])

        small, giant = scan("hf://acme/llama-a"), scan("hf://acme/giant")
    finally:
        repos.pop()
    assert giant["bytes"] > 4 * hidden * hidden * 2  # every byte of the four projections was read
    for role, (mean, std) in expected.items():
        got_mean, got_std = giant["std"][role]
        assert abs(got_std / std - 1) < 1e-6 and abs(got_mean - mean) < 1e-6 * std, role
    assert giant["rss"] - small["rss"] < READ_AHEAD_BYTES + (64 << 20), (giant["rss"] >> 20, small["rss"] >> 20)


@pytest.mark.parametrize("name", ["llama-a", "phi3-a"])  # phi3: fused QKV, its parts row ranges of one tensor
def test_streamed_tensors_measure_as_whole_ones(hub, zoo_by_name, monkeypatch, name):
    """With a read-ahead budget smaller than every matrix, each is measured block by block of rows: the
    moments and the folded std agree with a whole read to rounding, the sketch exactly."""
    import numpy as np

    server = hub()
    monkeypatch.setattr("lineage_scanner.readers.hub_safetensors.READ_AHEAD_BYTES", 16 << 10)
    _, remote = scan_strict(f"hf://acme/{name}", BACKEND, set())
    _, local = scan_strict(zoo_by_name[name].path, BACKEND, set())
    assert server.requests[remote.files[0]] > 4 * remote.n_layers  # many blocks per matrix
    for a, b in zip(local.layers, remote.layers):
        # float32 tiles grouped by blocks of rows: the same statistics to ~1e-9, not the same bits
        assert (a.layer, a.role) == (b.layer, b.role) and abs(a.moments.std / b.moments.std - 1) < 1e-7
        assert a.folded_std == b.folded_std or a.folded_std == pytest.approx(b.folded_std, rel=1e-7)
    # the value sketches (the Hub scan, read without config.json, has no head size: no circuit sketches)
    values = [[p for p in sig.sketch if p.kind == "values"] for sig in (local, remote)]
    assert [(p.layer, p.role) for p in values[0]] == [(p.layer, p.role) for p in values[1]]
    assert all(np.array_equal(p.values, q.values) for p, q in zip(*values))


def test_reuploads_in_the_same_batch_are_read_once(hub, tmp_path):
    """Two commits with the same weight files, new to the store, in one batch: the first to be opened is
    scanned, the other is its copy (the job's copy index says so before any weight byte is fetched)."""
    server = hub()
    store = Store(tmp_path / "db")
    summary = run_batch(["hf://acme/llama-a", "hf://mirror/llama-a-copy", "hf://acme/llama-b"], store,
                        progress=False)
    assert summary.n_failed == 0 and summary.n_copies == 1 and server.resolves["model.safetensors"] == 2
    copy = store.load("mirror/llama-a-copy")
    assert copy.identical_to == f"acme/llama-a@{server.sha_of('acme/llama-a')}"
    assert copy.curves == store.load("acme/llama-a").curves


def _resharded(source, target, metadata: dict | None = None, shards: int = 2):
    """The same tensors in other files: ``shards`` shards with an index (or one file with other metadata)."""
    import json

    from safetensors.torch import load_file, save_file

    target.mkdir()
    shutil.copy(source / "config.json", target / "config.json")
    tensors = load_file(source / "model.safetensors")
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, target / "model.safetensors", metadata=metadata)
        return target
    weight_map = {}
    for k in range(shards):
        shard = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = names[k::shards]
        save_file({n: tensors[n] for n in part}, target / shard)
        weight_map |= {n: shard for n in part}
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return target


def test_verification_reads_the_head_size_a_scan_goes_without(hub):
    """A Hub scan does not fetch config.json (a counted download) and GQA shapes without a Q norm do not
    tell the head size, so the stored signature has no circuits; deep verification, at a user's query,
    fetches config.json once per model so that the circuits an adversary cannot reparametrise away are
    compared too."""
    from lineage_scanner.run.verify import verify

    server = hub()
    _, a = scan_strict("hf://acme/llama-a", BACKEND, set())
    _, b = scan_strict("hf://acme/llama-b", BACKEND, set())
    assert sum(server.query_files.values()) == 0 and a.head_dim is None
    assert not [p for p in a.sketch if p.kind != "values"]  # no head size: no circuit sketches
    server.reset_counts()
    fresh_a, fresh_b, _ = verify(a, b, BACKEND)
    assert server.query_files == {"acme/llama-a": 1, "acme/llama-b": 1}
    for fresh in (fresh_a, fresh_b):
        assert fresh.head_dim and {p.kind for p in fresh.sketch} >= {"values", "circuit"}
    verdict = decide(fresh_a, fresh_b, synthetic(a.n_layers, b.n_layers), verification={"ran": True})
    assert "circuits" in {c.name for c in verdict.channels} and unrelated_by_chance(verdict), verdict.reason


def test_resharded_and_reheaded_copies_are_found_by_content(hub, repos, zoo_by_name, tmp_path):
    source = Path(zoo_by_name["llama-a"].path)
    extra = [Repo("mirror/llama-a-sharded", _resharded(source, tmp_path / "sharded")),
             Repo("mirror/llama-a-reheaded", _resharded(source, tmp_path / "reheaded", {"note": "mine"}, shards=1))]
    repos.extend(extra)
    try:
        server = hub()
        store = Store(tmp_path / "db")
        run_batch(["hf://acme/llama-a"], store, progress=False)
        for repo in extra:
            server.reset_counts()
            summary = run_batch([f"hf://{repo.repo_id}"], store, progress=False)
            copy = store.load(repo.repo_id)
            assert summary.n_copies == 1 and copy.identical_to.startswith("acme/llama-a@"), repo.repo_id
            assert copy.curves == store.load("acme/llama-a").curves and copy.content_digest is not None
            assert copy.files == [f for f in repo.files() if f.endswith(".safetensors")]
            # headers, a few KB per layer-0 matrix, and runs at fresh positions of both models' attention
            # (read to verify the copy, each well under a whole read)
            attention = sum(t.nbytes for t in ShardedSafetensors([source / "model.safetensors"]).tensors().values()
                            if "self_attn" in t.name)
            mine = sum(v for k, v in server.bytes_served.items() if k in copy.files)
            assert mine < 110_000 * len(copy.files) + 4 * 4096 + 0.6 * attention
            assert sum(server.bytes_served.values()) - mine < 110_000 + 0.6 * attention
            # the copy's weight files (located), the original's (read again to verify); no config.json
            assert server.by_class["resolve"] == len(copy.files) + 1 and sum(server.query_files.values()) == 0
    finally:
        del repos[-2:]


def test_rate_budget_counts_down_whatever_order_answers_come_in():
    from lineage_scanner.readers.shared import RateBudget

    budget = RateBudget()
    assert budget.ask("api") == 0  # nothing known: the server's answer will say
    budget.observe("api", 200, {"RateLimit": '"api";r=2;t=100'})
    assert budget.ask("api") == 0 and budget.ask("api") == 0  # the two that remain, admitted
    budget.observe("api", 200, {"RateLimit": '"api";r=1;t=100'})  # a late answer, counted before those two
    assert 99 < budget.ask("api") <= 100  # spent: wait for the reset, not a 429
    budget.observe("api", 429, {"Retry-After": "7"})
    assert 6 < budget.ask("resolve") + budget.ask("api") <= 7  # a 429 without RateLimit: its Retry-After


def test_a_renamed_repo_costs_two_api_calls_and_keeps_its_commit(hub, repos, tmp_path):
    server = hub()
    sha = server.sha_of("acme/llama-b")
    server.rename("acme/llama-b", "acme/llama-b-moved")
    try:
        server.reset_counts()
        _, sig = scan_strict(f"hf://acme/llama-b@{sha}", BACKEND, set())  # as yesterday's catalog names it
        assert (sig.model, sig.revision) == ("acme/llama-b-moved", sha)
        assert server.by_class["api"] == 2  # the redirect, then the model info under the new name
        # listed under both names in one night: one scan
        summary = run_batch([f"hf://acme/llama-b@{sha}", f"hf://acme/llama-b-moved@{sha}"], Store(tmp_path / "db"),
                            progress=False)
        assert summary.scanned == 1 and summary.n_skipped == 1
    finally:
        server.rename("acme/llama-b-moved", "acme/llama-b")
