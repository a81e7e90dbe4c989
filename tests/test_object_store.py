"""The store on an object store: an S3-compatible server process on 127.0.0.1 (moto), reached through the
standard AWS variables. Every command works on ``s3://bucket/prefix``; objects appear whole or not at all;
Ray workers write there themselves, exactly once even when one dies after writing; SQL reaches the store's
objects and nothing else; readers write nothing into the bucket."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lineage_scanner.run.batch import run_batch
from lineage_scanner.run.ray import RayExecutor
from lineage_scanner.store.store import Store
from lineage_scanner.testing.s3_server import S3Server
from tests.helpers import crashing_worker, unrelated_by_chance, write_llama

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
LINEAGE = str(Path(sys.executable).parent / "lineage")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("s3") / "moto.log") as server:
        server.bucket("lineage")
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for i, name in enumerate(("base-a", "base-b", "base-c", "base-d")):
        write_llama(root / name, n_layers=4, seed=i + 1)
    return root


def lineage(s3: S3Server, *args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINEAGE, *args, "--cache", str(cache)], env=s3.apply(), capture_output=True, text=True,
                          timeout=300)


def counts(store: Store) -> dict[tuple[str, str], int]:
    with store.connect() as con:
        return {(m, r): n for m, r, n in con.execute("SELECT model, revision, count(*) FROM scans GROUP BY ALL")
                .fetchall()}


def test_every_command_on_a_store_in_a_bucket(s3, models, tmp_path):
    db, cache = "s3://lineage/cli", tmp_path / "cache"
    sources = [str(models / n) for n in ("base-a", "base-b", "base-c")]
    out = lineage(s3, "scan", *sources, "--db", db, "--json", "-q", cache=cache)
    assert out.returncode == 0, out.stderr
    objects = s3.objects("lineage/cli")
    assert {k.split("/")[2] for k in objects} == {"signatures", "layers", "sketch.key"}  # the store's own key
    assert not [k for k in objects if "/." in k or k.endswith(".tmp")], "a temporary object is left"
    out = lineage(s3, "sql", "SELECT model FROM signatures ORDER BY model", "--db", db, "--json", cache=cache)
    assert [r["model"] for r in json.loads(out.stdout)] == ["base-a", "base-b", "base-c"], out.stderr
    out = lineage(s3, "compare", "base-a", "base-b", "--db", db, "--json", cache=cache)
    assert out.returncode == 0 and unrelated_by_chance(json.loads(out.stdout)), out.stdout + out.stderr
    out = lineage(s3, "match", "base-a", "--db", db, "--json", cache=cache)
    assert {m["model"] for m in json.loads(out.stdout)["matches"]} == {"base-b", "base-c"}, out.stderr
    out = lineage(s3, "report", "base-a", "base-c", "--db", db, "--out", str(tmp_path / "r.html"), cache=cache)
    assert out.returncode == 0, out.stderr
    out = lineage(s3, "store", "check", "--db", db, cache=cache)
    assert out.returncode == 0, out.stderr
    assert s3.objects("lineage/cli") == objects, "a read command wrote into the bucket"
    assert list((cache / "match-index").rglob("*.duckdb")), "the match index is kept in the local cache"
    out = lineage(s3, "graph", "--db", db, "--out", str(tmp_path / "g.json"), "--json", cache=cache)
    assert out.returncode == 0 and "not stored" not in out.stderr, out.stderr
    assert any("/edges/" in k for k in s3.objects("lineage/cli"))  # graph stores its run: a writer
    out = lineage(s3, "scan", *sources, str(models / "base-d"), "--db", db, "--json", "-q", cache=cache)
    scanned = json.loads(out.stdout)
    assert [r["model"] for r in scanned["scanned"]] == ["base-d"] and len(scanned["skipped"]) == 3
    for text in (out.stdout, out.stderr, *(s3.read(k).decode("latin-1") for k in s3.objects("lineage/cli"))):
        assert s3.secret not in text


def test_check_and_repair_in_a_bucket(s3, s3_env, models, tmp_path):
    store = Store("s3://lineage/damaged")
    run_batch([str(models / "base-a")], store, progress=False)
    fs = s3.filesystem()
    with fs.open_output_stream("lineage/damaged/signatures/corrupt.parquet") as f:
        f.write(b"PAR1 not really")
    with fs.open_output_stream("lineage/damaged/signatures/foreign.parquet") as f:
        pq.write_table(pa.table({"x": [1]}), f)
    cache = tmp_path / "cache"
    out = lineage(s3, "sql", "SELECT model FROM signatures", "--db", store.root, "--json", cache=cache)
    assert out.returncode == 0 and json.loads(out.stdout) == [{"model": "base-a"}]
    assert "corrupt.parquet" in out.stderr and "foreign.parquet" in out.stderr
    out = lineage(s3, "store", "check", "--db", store.root, "--json", cache=cache)
    assert out.returncode == 1 and {Path(p["file"]).name for p in json.loads(out.stdout)} == {"corrupt.parquet",
                                                                                              "foreign.parquet"}
    assert lineage(s3, "store", "repair", "--db", store.root, cache=cache).returncode == 0
    assert {k.rsplit("/", 1)[1] for k in s3.objects("lineage/damaged/quarantine")} == {"corrupt.parquet",
                                                                                       "foreign.parquet"}
    assert lineage(s3, "store", "check", "--db", store.root, cache=cache).returncode == 0


def test_sql_reaches_the_stores_objects_and_nothing_else(s3, s3_env, models, tmp_path):
    run_batch([str(models / "base-a")], Store("s3://lineage/mine"), progress=False)
    run_batch([str(models / "base-b")], Store("s3://lineage/mine2"), progress=False)  # a prefix of the same stem
    s3.bucket("secrets")
    with s3.filesystem().open_output_stream("secrets/t.parquet") as f:
        pq.write_table(pa.table({"secret": ["do not read"]}), f)
    cache = tmp_path / "cache"
    out = lineage(s3, "sql", "SELECT model FROM signatures", "--db", "s3://lineage/mine", "--json", cache=cache)
    assert json.loads(out.stdout) == [{"model": "base-a"}], out.stderr
    other = s3.objects("lineage/mine2/signatures")
    for target in ["s3://secrets/t.parquet", f"s3://lineage/{next(iter(other)).split('/', 1)[1]}",
                   "s3://lineage/mine/../mine2/signatures/*.parquet", f"{s3.endpoint}/secrets/t.parquet",
                   "/etc/passwd"]:
        for query in (f"SELECT * FROM read_parquet('{target}')", f"SELECT * FROM '{target}'",
                      f"SELECT * FROM read_blob('{target}')"):
            out = lineage(s3, "sql", query, "--db", "s3://lineage/mine", cache=cache)
            assert out.returncode == 1 and out.stderr.startswith("Error: "), (query, out.stdout, out.stderr)
            assert "do not read" not in out.stdout + out.stderr and "base-b" not in out.stdout


def test_workers_write_their_units_exactly_once(s3, s3_env, models, tmp_path):
    """On Ray the workers write their units to the bucket themselves; a worker that dies after writing
    (tests.helpers.crashing_worker's "written" phase) is not scanned again: the driver finds its unit in
    the store."""
    from lineage_scanner.run.ray import connect

    marker = tmp_path / "crashed-after-writing"
    worker = crashing_worker(f"{marker}:base-b:written")
    connect(num_cpus=2)  # the local Ray's workers inherit this process's AWS variables (never a runtime_env)
    store = Store("s3://lineage/ray")
    summary = run_batch([str(models / n) for n in ("base-a", "base-b", "base-c", "base-d")], store,
                        RayExecutor(2, worker=worker), progress=False, unit_bytes=1)
    assert marker.exists() and summary.retried_units == 1 and summary.n_failed == 0
    assert sorted(m for m, _ in counts(store)) == ["base-a", "base-b", "base-c", "base-d"]
    assert set(counts(store).values()) == {1}, "a model was stored twice"
    names = [k.rsplit("/", 1)[1] for k in s3.objects("lineage/ray/signatures")]
    assert len(names) == 4 and len({n.rsplit("-", 2)[0] for n in names}) == 1  # one file per unit, one batch


WRITER = """
import os, sys
import numpy as np, pyarrow as pa
from lineage_scanner.store.files import Files, new_stem
files = Files(sys.argv[1])
table = pa.table({"model": [f"m{i}" for i in range(400_000)], "x": np.random.default_rng(0).random(400_000)})
while True:
    files.write("signatures", new_stem(), table)
    print("wrote", flush=True)
"""


def test_a_writer_killed_mid_upload_leaves_no_partial_object(s3, tmp_path):
    """A process writing large files, killed at arbitrary moments: every object under a data file's name is
    whole (its footer reads); what was cut short is at most a hidden temporary key that no view lists."""
    root = "s3://lineage/killed"
    for delay in (0.05, 0.2, 0.4):  # after one file, during the next
        proc = subprocess.Popen([sys.executable, "-c", WRITER, root], env=s3.apply(), stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "wrote"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    objects = s3.objects("lineage/killed")
    listed = [k for k in objects if not k.rsplit("/", 1)[1].startswith(".")]
    assert listed, "the writer never finished a file: the test proved nothing"
    for key in listed:
        assert pq.read_metadata(pa.BufferReader(s3.read(key))).num_rows == 400_000
    done = subprocess.run([sys.executable, "-c", f"from lineage_scanner.store.files import Files; "
                           f"print(len(Files({root!r}).list('signatures')))"], env=s3.apply(), capture_output=True,
                          text=True, timeout=60)
    assert int(done.stdout) == len(listed)
