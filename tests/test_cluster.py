"""Distributed scanning on a real Ray, loopback only: faults, resume, `ray job submit`, cluster.yaml."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lineage_scanner.run.base import UNKNOWN_BYTES
from lineage_scanner.run.batch import plan_units, run_batch
from lineage_scanner.run.ray import RayExecutor
from lineage_scanner.store.store import Store
from tests.helpers import crashing_worker, raw_safetensors
from tests.ray_nodes import RayHead

pytestmark = [pytest.mark.cluster, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module (2 CPUs): starting one costs seconds."""
    from lineage_scanner.run.ray import connect

    return connect(num_cpus=2)


def count_scans(store: Store) -> dict[tuple[str, str], int]:
    rows = store.connect().execute("SELECT model, revision, count(*) FROM scans GROUP BY ALL").fetchall()
    return {(m, r): n for m, r, n in rows}


def test_cluster_yaml_passes_rays_validation():
    """Ray's own validation of the launcher config; every node reaches the store by its instance role and
    the Hub by a token file written from a secret manager, none of them spelled in the file."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = (ROOT / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    validate_config(prepare_config(config))
    assert config["available_node_types"]["gpu_worker"]["resources"] == {"GPU": 1}
    assert all("IamInstanceProfile" in t["node_config"] for t in config["available_node_types"].values())
    assert any("secretsmanager" in c and ".cache/huggingface/token" in c for c in config["setup_commands"])
    assert "--db s3://" in text and "AWS_SECRET_ACCESS_KEY" not in text and "HF_TOKEN=" not in text
    config["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(Exception, match="many"):
        validate_config(prepare_config(config))


def test_rayjob_manifest_passes_kuberays_crd_schema():
    """jobs/rayjob.yaml against the RayJob CRD's OpenAPI schema. No pip package ships KubeRay's CRDs, so the
    relevant part of KubeRay v1.7.0's published schema (ray.io_rayjobs.yaml) is kept as test data, every
    object closed as kubectl's strict validation is; a manifest with a wrong type or an unknown field fails."""
    import json

    import jsonschema

    schema = json.loads((ROOT / "tests" / "data" / "kuberay_rayjob_v1.7.0.schema.json").read_text())
    manifest = yaml.safe_load((ROOT / "jobs" / "rayjob.yaml").read_text())
    jsonschema.validate(manifest, schema)
    spec = manifest["spec"]
    assert "jobs/nightly_scan.py" in spec["entrypoint"] and "--db s3://" in spec["entrypoint"]
    assert set(yaml.safe_load(spec["runtimeEnvYAML"]).get("env_vars", {})) == {"HF_HUB_DISABLE_TELEMETRY"}
    pods = [spec["rayClusterSpec"]["headGroupSpec"], *spec["rayClusterSpec"]["workerGroupSpecs"]]
    for pod in pods:  # secrets come from Kubernetes secrets, never as values in the manifest
        env = {e["name"]: e for c in pod["template"]["spec"]["containers"] for e in c["env"]}
        for name in ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "secretKeyRef" in env[name]["valueFrom"] and "value" not in env[name]
    for broken in ({"replicas": "four"}, {"entrypointt": "python x.py"}):
        bad = json.loads(json.dumps(manifest))
        target = bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0] if "replicas" in broken else bad["spec"]
        target.update(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_units_are_balanced_by_bytes(tmp_path):
    sizes = {"a": 10, "b": 10, "c": 1000, "d": 10}
    for name, size in sizes.items():
        (tmp_path / f"{name}.safetensors").write_bytes(bytes(size))
    units = list(plan_units((str(tmp_path / f"{n}.safetensors") for n in sizes), unit_bytes=100))
    assert [[Path(s).stem for s in u.sources] for u in units] == [["a", "b"], ["c"], ["d"]]
    assert [u.nbytes for u in units] == [20, 1000, 10]
    assert next(plan_units(["hf://org/x"])).nbytes == UNKNOWN_BYTES


def test_faults_lose_nothing_and_duplicate_nothing(ray_local, zoo, tmp_path):
    bad = raw_safetensors(tmp_path / "bad.safetensors", [1])
    sources = [e.path for e in zoo] + [str(bad)]
    worker = crashing_worker(f"{tmp_path / 'crashed-once'}:llama-b-ft,always:gpt2-a-ct")
    store = Store(tmp_path / "db")
    summary = run_batch(sources, store, RayExecutor(2, worker=worker), progress=False, unit_bytes=20 << 20)
    assert (tmp_path / "crashed-once").exists() and summary.retried_units >= 2
    counts = count_scans(store)
    assert set(counts.values()) == {1}, "a model was written twice"
    assert {m for m, _ in counts} == {e.model for e in zoo} | {"bad.safetensors"}
    errors = dict(store.connect().execute("SELECT model, status FROM errors").fetchall())
    assert errors == {"gpt2-a-ct": "worker_died", "bad.safetensors": "bad_header"}
    assert sorted(r.model for r in summary.failed) == ["bad.safetensors", "gpt2-a-ct"]


def test_an_interrupted_batch_resumes_without_duplicates(ray_local, zoo, tmp_path):
    store = Store(tmp_path / "db")
    sources = [e.path for e in zoo]
    first = run_batch(sources, store, RayExecutor(2), progress=False, unit_bytes=8 << 20, max_units=3)
    assert 0 < first.scanned < len(zoo)
    second = run_batch(sources, store, RayExecutor(2), progress=False, unit_bytes=8 << 20)
    assert second.n_skipped == first.scanned and first.scanned + second.scanned == len(zoo)
    assert set(count_scans(store).values()) == {1} and len(count_scans(store)) == len(zoo)


@pytest.fixture
def ray_head():
    """A real `ray start --head` on 127.0.0.1 (2 CPUs, token auth, free ports); afterwards its own processes
    are stopped, never another Ray on the machine (see tests/ray_nodes.py)."""
    head = RayHead().start()
    try:
        yield head.env, head.dashboard
    finally:
        head.stop()


@pytest.mark.cluster
@pytest.mark.slow
def test_ray_job_submit_batch_scan(ray_head, zoo, tmp_path):
    env, address = ray_head
    sources = tmp_path / "sources.txt"
    sources.write_text("# the demo zoo\n" + "\n".join(e.path for e in zoo) + "\n")
    db = tmp_path / "db"
    submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address,
              "--working-dir", str(ROOT), "--", "python", "jobs/batch_scan.py", str(sources), "--db", str(db)]
    started = time.time()
    done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout and "[lineage] batch done" in done.stdout, done.stdout[-2000:]
    store = Store(db)
    counts = count_scans(store)
    assert len(counts) == len(zoo) and set(counts.values()) == {1}
    assert len(store.files("signatures")) == 1  # compacted
    assert time.time() - started < 600


@pytest.mark.hub
def test_two_workers_share_one_hub_budget(ray_local, zoo_by_name, tmp_path, monkeypatch):
    """The job's rate budget is one actor: after a window's first 429 (API) or its last allowed request
    (resolve, whose answers say what remains), every worker waits for the window to reset."""
    from lineage_scanner.testing.hub_server import HubStandIn, Limits, Repo

    names = ["llama-a", "llama-a-ft", "llama-a-ct", "llama-b", "llama-b-ft", "qwen2-a"]
    repos = [Repo(f"acme/{n}", shutil.copytree(zoo_by_name[n].path, tmp_path / n)) for n in names]
    window = 3.0
    with HubStandIn(repos, limits=Limits(api=2, resolve=4, window_s=window)) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        started = time.monotonic()
        summary = run_batch([f"hf://acme/{n}" for n in names], Store(tmp_path / "db"), RayExecutor(workers=2),
                            unit_bytes=1, progress=False)
        windows = (time.monotonic() - started) / window + 1
    assert summary.n_failed == 0 and summary.n_deferred == 0 and summary.scanned == len(names)
    assert all(hub.requests[f"api:acme/{n}"] == 1 for n in names)  # each model's one info call, admitted once
    assert hub.rejected["api"] <= windows and hub.rejected["resolve"] <= windows  # at most the first of a window


@pytest.mark.hub
def test_workers_scan_several_hub_models_at_once(ray_local, zoo_by_name, tmp_path, monkeypatch):
    """With three models in flight per worker (their kernels one at a time), every signature is what a
    scan in this process gives."""
    from lineage_scanner.measure.kernels import get_backend
    from lineage_scanner.run.scan import scan_strict
    from lineage_scanner.testing.hub_server import HubStandIn, Repo

    names = ["llama-a", "llama-a-ft", "llama-a-ct", "llama-b", "phi3-a", "qwen2-a"]
    repos = [Repo(f"acme/{n}", shutil.copytree(zoo_by_name[n].path, tmp_path / n)) for n in names]
    with HubStandIn(repos, latency_s=0.02) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        store = Store(tmp_path / "db")
        summary = run_batch([f"hf://acme/{n}" for n in names], store, RayExecutor(workers=2, in_flight=3),
                            unit_bytes=1, progress=False)
        assert summary.n_failed == 0 and summary.scanned == len(names)
        for n in names:
            _, alone = scan_strict(f"hf://acme/{n}", get_backend("cpu"), set())
            stored = store.load(f"acme/{n}")
            assert stored.curves == alone.curves and stored.invariants == alone.invariants, n
