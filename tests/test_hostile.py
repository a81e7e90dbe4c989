"""Hostile repos and servers: names that try to leave the model, files that never end, JSON bombs,
servers that ignore Range or ask to wait forever. Each is a one-line error row, fast, and the other models
of the batch still land."""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

import pytest

from lineage_scanner.cli.main import main
from lineage_scanner.errors import SourceError
from lineage_scanner.run.batch import run_batch
from lineage_scanner.sources.hub import HubRef
from lineage_scanner.store.store import Store
from lineage_scanner.testing.gguf_files import GgufShape, write_claims
from lineage_scanner.testing.hub_server import HubStandIn, Repo
from tests.helpers import write_llama


def scan(tmp_path, *sources):
    summary = run_batch([str(s) for s in sources], Store(tmp_path / "db"), progress=False)
    return {r.model: (r.status, r.error) for r in summary.records}


def sharded(directory: Path, index_names: list, shard: str = "model-00001-of-00001.safetensors") -> Path:
    """A two-shard checkpoint whose index names ``index_names`` as its shards."""
    write_llama(directory, n_layers=2)
    weights = directory / "model.safetensors"
    weights.rename(directory / shard)
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {f"t{i}": name for i, name in enumerate(index_names)}}))
    return directory


@pytest.mark.parametrize("name, problem", [
    ("../other/model.safetensors", "not a plain relative path"),
    ("/etc/passwd", "not a plain relative path"),
    ("a/../../b.safetensors", "not a plain relative path"),
    (7, "not a non-empty string"),
    ("", "not a non-empty string"),
])
def test_index_names_stay_inside_the_model(tmp_path, name, problem):
    bad = sharded(tmp_path / "bad", ["model-00001-of-00001.safetensors", name])
    good = write_llama(tmp_path / "good")
    rows = scan(tmp_path, bad, good)
    assert rows["good"][0] == "ok"
    status, error = rows["bad"]
    assert status == "bad_header" and problem in error and "model.safetensors.index.json" in error


def test_links_out_of_the_model_are_refused_unless_named(tmp_path):
    outside = write_llama(tmp_path / "elsewhere")
    model = write_llama(tmp_path / "model")
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to(outside / "model.safetensors")
    status, error = scan(tmp_path, model)["model"]
    assert status == "not_found" and "leads outside the model directory" in error
    link = tmp_path / "named.safetensors"
    link.symlink_to(outside / "model.safetensors")
    assert [status for status, _ in scan(tmp_path / "again", link).values()] == ["ok"]  # the user named it


def test_a_hugging_face_cache_snapshot_is_read_through_its_links(tmp_path):
    repo = tmp_path / "models--org--m"
    snapshot, blobs = repo / "snapshots" / "abc", repo / "blobs"
    write_llama(tmp_path / "src")
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for f in (tmp_path / "src").iterdir():
        shutil.move(f, blobs / f.name)
        (snapshot / f.name).symlink_to(Path("../../blobs") / f.name)
    assert scan(tmp_path, snapshot)["abc"][0] == "ok"


def test_a_fifo_is_an_error_not_a_hang(tmp_path):
    fifo_dir = write_llama(tmp_path / "fifo-model")
    (fifo_dir / "model.safetensors").unlink()
    os.mkfifo(fifo_dir / "model.safetensors")
    os.mkfifo(tmp_path / "pipe.safetensors")
    good = write_llama(tmp_path / "good")
    started = time.monotonic()
    rows = scan(tmp_path, fifo_dir, tmp_path / "pipe.safetensors", good)
    assert time.monotonic() - started < 30
    assert rows["good"][0] == "ok"
    assert rows["fifo-model"][0] == "not_found" and "not a regular file" in rows["fifo-model"][1]
    assert "not a regular file" in rows["pipe.safetensors"][1]


@pytest.mark.parametrize("config, problem", [
    ("[" * 100_000 + "]" * 100_000, "nested deeper"),
    ('{"a": ' * 200 + "1" + "}" * 200, "nested deeper"),
    ('{"architectures": 5, "model_type": "llama"}', None),
    ('{"architectures": [[]], "model_type": ["llama"]}', None),
])
def test_hostile_configs_are_one_line_errors(tmp_path, capsys, config, problem):
    model = write_llama(tmp_path / "m")
    (model / "config.json").write_text(config)
    code = main(["scan", str(model), "--db", str(tmp_path / "db"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("Error: ") and "Traceback" not in err
    if problem:
        assert problem in err


def test_a_huge_config_is_refused_before_it_is_read(tmp_path, capsys):
    model = write_llama(tmp_path / "m")
    with open(model / "config.json", "r+b") as f:
        f.truncate(300 << 20)  # sparse: 300 MB that take no disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = main(["scan", str(model), "--db", str(tmp_path / "db"), "-q"])
    assert code == 1 and "over the 16 MiB cap" in capsys.readouterr().err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 << 10  # KB: no 300 MB read


@pytest.mark.parametrize("text", ["hf://org/m@..", "hf://org/m@a/../../x", "hf://../m", "hf://org/m@",
                                  "hf://org/m@main/../../other/f.gguf", "hf://org", "hf://org/m@ma in"])
def test_bad_hub_references_are_refused(text):
    with pytest.raises(SourceError):
        HubRef.parse(text)


def test_pull_request_revisions_parse():
    assert HubRef.parse("hf://org/m@refs/pr/3/x.gguf") == HubRef("org/m", "refs/pr/3", "x.gguf")


@pytest.fixture
def hostile_hub(zoo_by_name, tmp_path, monkeypatch):
    root = tmp_path / "repos"
    repos = [Repo("acme/good", shutil.copytree(zoo_by_name["llama-a"].path, root / "good")),
             Repo("acme/victim", shutil.copytree(zoo_by_name["llama-b"].path, root / "victim"))]
    # its one shard is not named as a complete set of shards, so its index is what says the shards are
    evil = sharded(root / "evil", ["weights.safetensors", "../victim/model.safetensors"], "weights.safetensors")
    repos.append(Repo("acme/evil", evil))
    with HubStandIn(repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setattr("lineage_scanner.readers.hub_http.BACKOFF_S", 0.01)
        yield server


@pytest.mark.hub
def test_a_hub_index_cannot_reach_another_repo(hostile_hub, tmp_path):
    rows = scan(tmp_path, "hf://acme/evil", "hf://acme/good")
    assert rows["acme/good"][0] == "ok"
    assert rows["acme/evil"][0] == "bad_header" and "not a plain relative path" in rows["acme/evil"][1]
    assert not any("victim" in f for f in hostile_hub.requests)


@pytest.mark.hub
def test_retry_after_is_bounded_and_deferred_is_its_own_status(hostile_hub, tmp_path, monkeypatch):
    monkeypatch.setattr("lineage_scanner.readers.hub_http.MAX_RETRY_AFTER_S", 0.2)
    monkeypatch.setattr("lineage_scanner.readers.hub_http.MAX_WAIT_S", 0.5)
    hostile_hub.inject("model.safetensors", *["429-forever"] * 10)
    started = time.monotonic()
    rows = scan(tmp_path, "hf://acme/good")
    assert time.monotonic() - started < 20
    status, error = rows["acme/good"]
    assert status == "deferred" and "left for the next run" in error


@pytest.mark.hub
def test_a_server_that_ignores_range_is_an_error_not_a_download(hostile_hub, tmp_path):
    hostile_hub.inject("model.safetensors", "no-range")
    rows = scan(tmp_path, "hf://acme/good")
    status, error = rows["acme/good"]
    assert status == "network" and "ignored the range request" in error
    size = (Path(hostile_hub.repos["acme/good"].path) / "model.safetensors").stat().st_size
    assert hostile_hub.bytes_served["model.safetensors"] <= size


def _gguf(n_kv: int, body: bytes) -> bytes:
    import struct

    return b"GGUF" + struct.pack("<IQQ", 3, 0, n_kv) + body


def _array_of(item_type: int, count: int) -> bytes:
    import struct

    return struct.pack("<Q", 3) + b"key" + struct.pack("<II", 9, item_type) + struct.pack("<Q", count)


@pytest.mark.parametrize("name, body", [
    ("array-of-2-60", _array_of(4, 1 << 60)),
    ("million-strings", _array_of(8, 10**6)),
    ("nested-arrays", _array_of(9, 10**5)),
    ("string-too-long", __import__("struct").pack("<Q", 1 << 40) + b"k"),
])
def test_gguf_metadata_counts_are_checked_before_allocation(tmp_path, name, body):
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(_gguf(1, body + bytes(99_000)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    status, error = scan(tmp_path, path)[f"{name}.gguf"]
    assert status == "bad_header" and "remain in the file" in error
    assert time.monotonic() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 << 10  # KB


def test_a_damaged_store_still_works_and_repairs(tmp_path, capsys):
    db = tmp_path / "db"
    run_batch([str(write_llama(tmp_path / "a", seed=1)), str(write_llama(tmp_path / "b", seed=2))], Store(db),
              progress=False)
    (db / "signatures" / "corrupt.parquet").write_bytes(b"PAR1 not really")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), db / "signatures" / "foreign.parquet")
    pq.write_table(pa.table({"model": ["fake"], "revision": ["r"], "status": ["ok"], "scan_id": ["s"],
                             "scanned_at": [1], "n_layers": ["many"]}), db / "signatures" / "lying.parquet")
    code = main(["sql", "SELECT model FROM signatures ORDER BY model", "--db", str(db), "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and [r["model"] for r in json.loads(out)] == ["a", "b"]
    assert sum("corrupt.parquet" in line for line in err.splitlines()) == 1
    assert "foreign.parquet" in err and "lying.parquet" in err
    assert main(["scan", str(write_llama(tmp_path / "c", seed=3)), "--db", str(db), "-q"]) == 0
    capsys.readouterr()
    assert main(["store", "check", "--db", str(db), "--json"]) == 1
    problems = {Path(p["file"]).name: p["problem"] for p in json.loads(capsys.readouterr().out)}
    assert set(problems) == {"corrupt.parquet", "foreign.parquet", "lying.parquet"}
    assert "no column model" in problems["foreign.parquet"] and "n_layers is VARCHAR" in problems["lying.parquet"]
    assert main(["store", "repair", "--db", str(db), "-q"]) == 0
    capsys.readouterr()
    assert main(["store", "check", "--db", str(db)]) == 0
    assert sorted(p.name for p in (db / "quarantine" / "signatures").iterdir()) == sorted(problems)


def test_an_unwritable_store_is_a_one_line_error(tmp_path, capsys):
    db = tmp_path / "db"
    db.write_text("a file, not a directory")
    code = main(["scan", str(write_llama(tmp_path / "m")), "--db", str(db), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("Error: ") and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.hub
def test_a_huge_config_on_the_hub_is_refused_unread(hostile_hub, zoo_by_name, tmp_path):
    """A fused layout needs config.json (the head counts): 40 MB of it is refused from its Content-Length."""
    repo = Repo("acme/fused", Path(shutil.copytree(zoo_by_name["phi3-a"].path, tmp_path / "fused")))
    hostile_hub.add(repo)
    path = repo.path / "config.json"
    path.write_bytes(b" " * (40 << 20) + path.read_bytes())  # valid JSON, 40 MB of it
    status, error = scan(tmp_path, "hf://acme/fused")["acme/fused"]
    assert status == "network" and "over the 16 MiB cap" in error
    assert hostile_hub.bytes_served.get("config.json", 0) == 0


def test_a_complete_shard_set_is_read_without_its_index(hostile_hub, tmp_path):
    """Shards named as a complete set need no index: a lying one is never even fetched."""
    evil = sharded(tmp_path / "complete", ["model-00001-of-00001.safetensors", "../victim/model.safetensors"])
    hostile_hub.add(Repo("acme/complete", evil))
    assert scan(tmp_path, "hf://acme/complete")["acme/complete"][0] == "ok"
    assert hostile_hub.requests.get("model.safetensors.index.json", 0) == 0
    assert not any("victim" in f for f in hostile_hub.requests)


#: One llama layer of hidden 8192 (64 heads of 128, one KV head), as a GGUF's tensor table claims it.
BIG = GgufShape("llama", layers=1, hidden=8192, heads=64, kv_heads=1, ffn=0, vocab=0, merges=0)


def big_layer(q_rows: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """Layer 0's attention, Q first in the table (the first claim a reader meets), in F32 but O in Q4_0."""
    return [("blk.0.attn_q.weight", "F32", (q_rows, BIG.hidden)), ("blk.0.attn_norm.weight", "F32", (BIG.hidden,)),
            ("blk.0.attn_k.weight", "F32", (128, BIG.hidden)), ("blk.0.attn_v.weight", "F32", (128, BIG.hidden)),
            ("blk.0.attn_output.weight", "Q4_0", (BIG.hidden, BIG.hidden))]


@pytest.fixture
def gguf_hub(tmp_path, monkeypatch):
    """A stand-in Hub with a good safetensors model, a GGUF whose header claims a 4 GiB layer-0 Q that the
    file does not hold, and a GGUF whose 256 MiB layer-0 Q is real (zeros in a sparse file)."""
    root = tmp_path / "repos"
    (root / "liar").mkdir(parents=True)
    (root / "big").mkdir()
    write_claims(root / "liar" / "liar.gguf", BIG, big_layer(32768 * 4), holes=False)
    write_claims(root / "big" / "big.gguf", BIG, big_layer(BIG.hidden), holes=True)
    repos = [Repo("acme/good", write_llama(root / "good")), Repo("acme/liar", root / "liar"),
             Repo("acme/big", root / "big")]
    with HubStandIn(repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield server


CHILD = """
import json, sys
from lineage_scanner.cli.main import main
def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) >> 10
main(sys.argv[1:4] + ["-q"])  # a warm-up scan: imports, compiled kernels, the Hub client, the store
open("/proc/self/clear_refs", "w").write("5")  # the peak starts again from here
base = vm("VmRSS")
code = main(sys.argv[4:])
print(json.dumps({"code": code, "base": base, "peak": vm("VmHWM")}))
"""


def scan_in_child(tmp_path, *argv: str) -> tuple[dict, list[str]]:
    """``lineage scan ARGV`` in a process of its own, after a warm-up scan of the stand-in's good model: (exit
    code, RSS before and peak RSS during it in MB), and its error lines."""
    import subprocess
    import sys

    warm = ["scan", "hf://acme/good", f"--db={tmp_path / 'warm-db'}"]
    child = subprocess.run([sys.executable, "-c", CHILD, *warm, "scan", *argv, "-q"], capture_output=True,
                           text=True, timeout=240, env=dict(os.environ))
    assert "Traceback" not in child.stderr, child.stderr
    return json.loads(child.stdout.strip().splitlines()[-1]), [line for line in child.stderr.splitlines()
                                                               if line.startswith("Error:")]


def test_gguf_tensor_claims_past_the_file_are_refused_before_allocation(gguf_hub, tmp_path):
    """Locally and on the Hub, a tensor table claiming a 4 GiB layer-0 Q in a 1 KB file is a one-line
    error before anything is sized by the claim; the batch goes on."""
    local = Path(gguf_hub.repos["acme/liar"].path) / "liar.gguf"
    started = time.monotonic()
    result, lines = scan_in_child(tmp_path, str(local), "hf://acme/liar", "hf://acme/good", "--db",
                                  str(tmp_path / "db"))
    assert time.monotonic() - started < 60
    assert result["code"] == 1 and result["peak"] - result["base"] < 64, result  # MB, against a 4 GiB claim
    claim = f"tensor 'blk.0.attn_q.weight' claims {4 << 30} bytes"
    assert len(lines) == 2 and all(claim in line and "past the end of the" in line for line in lines)
    assert any(line.startswith(f"Error: {local}:") for line in lines)
    assert any(line.startswith("Error: hf://acme/liar@") and "/liar.gguf:" in line for line in lines)
    rows = Store(tmp_path / "db").connect().execute("SELECT model, status FROM scans ORDER BY model").fetchall()
    assert rows == [("acme/good", "ok"), ("acme/liar", "bad_header"), ("liar.gguf", "bad_header")]
    assert gguf_hub.bytes_served["liar.gguf"] < 4096  # the header only


def test_hub_gguf_tensors_are_read_in_bounded_blocks(gguf_hub, tmp_path):
    """A real 256 MiB layer-0 Q on the Hub streams through a scan in blocks: the scanning process grows by
    a fraction of it (a reader that sized memory by the tensor grew by more than all of it: 379 MB)."""
    db = tmp_path / "db"
    result, lines = scan_in_child(tmp_path, "hf://acme/big", "hf://acme/good", "--db", str(db))
    assert result["code"] == 0 and not lines
    assert result["peak"] - result["base"] < 128, result  # MB, against a 256 MiB tensor (50 MB measured)
    assert gguf_hub.bytes_served["big.gguf"] >= 256 << 20  # the whole tensor did pass
    rows = Store(db).connect().execute("SELECT model, status FROM scans ORDER BY model").fetchall()
    assert rows == [("acme/big", "ok"), ("acme/good", "ok")]


def test_a_hub_gguf_shorter_than_its_stated_size_is_an_error(gguf_hub, monkeypatch):
    """A server whose file ends before the size it stated (here: cut after the header was read) gives a
    one-line error for the tensor read, never a short tensor."""
    from lineage_scanner.errors import RemoteError
    from lineage_scanner.readers.hub_gguf import HubGguf
    from lineage_scanner.readers.hub_http import HubClient

    reader = HubGguf(HubClient("hf://acme/big"), "acme/big", "main", "big.gguf")
    os.truncate(Path(gguf_hub.repos["acme/big"].path) / "big.gguf", reader.tensors()["blk.0.attn_k.weight"].end - 8)
    with pytest.raises(RemoteError, match="the file ends at byte .*, before byte .* that its stated size includes"):
        reader.read("blk.0.attn_k.weight")
    reader.close()
