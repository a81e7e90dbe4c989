"""A store that cannot be written (read-only, full) still answers every read command; a store holding rows
out of bounds is reported by `store check` and never sizes memory. End to end, through the `lineage`
command: exit codes, one-line errors, no temporary file left behind, nothing written into the store.

Root ignores permission bits, so where the tests run as root a read-only store is also a read-only bind
mount, and a full one is a small tmpfs; where neither can be made the test is skipped, not passed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lineage_scanner.run.batch import run_batch
from lineage_scanner.store.store import Store
from tests.helpers import unrelated_by_chance, write_llama

LINEAGE = str(Path(sys.executable).parent / "lineage")


def lineage(*args: str, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache.parent / "xdg")}
    return subprocess.run([LINEAGE, *args, "--cache", str(cache)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def leftovers(*folders: Path) -> list[str]:
    return [str(p) for folder in folders for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Three tiny llama checkpoints: two unrelated bases and a light fine-tune of the first."""
    root = tmp_path_factory.mktemp("models")
    for name, seed in (("base-a", 1), ("base-b", 2), ("base-c", 3)):
        write_llama(root / name, n_layers=4, seed=seed)
    return root


@pytest.fixture
def db(models, tmp_path) -> Path:
    db = tmp_path / "db"
    summary = run_batch([str(models / n) for n in ("base-a", "base-b")], Store(db), progress=False)
    assert summary.n_failed == 0
    return db


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` and all below it read-only: permission bits, and for root a read-only bind mount."""
    subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)],
                                                   capture_output=True).returncode == 0
    try:
        try:
            (folder / "probe").write_text("x")
        except OSError:
            pass
        else:
            pytest.skip("cannot make a directory read-only here")
        yield
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True)


@contextlib.contextmanager
def full_disk(folder: Path, size: str = "1m"):
    """A tmpfs of ``size`` at ``folder`` (which must be empty), left full for the caller to fill."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small filesystem here")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path) -> None:
    """Write to ``folder`` until its filesystem is full."""
    with open(folder / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(bytes(1 << 16))
            f.flush()


def test_read_commands_work_on_a_read_only_store(db, models, tmp_path):
    cache = tmp_path / "cache"
    before = snapshot(db)
    with read_only(db):
        out = lineage("sql", "SELECT model FROM signatures ORDER BY model", "--db", str(db), "--json", cache=cache)
        assert out.returncode == 0 and [r["model"] for r in json.loads(out.stdout)] == ["base-a", "base-b"], out.stderr
        out = lineage("compare", "base-a", "base-b", "--db", str(db), "--json", cache=cache)
        assert out.returncode == 0 and unrelated_by_chance(json.loads(out.stdout)), out.stdout + out.stderr
        out = lineage("match", "base-a", "--db", str(db), "--json", cache=cache)
        assert out.returncode == 0 and [m["model"] for m in json.loads(out.stdout)["matches"]] == ["base-b"], out.stderr
        out = lineage("report", "base-a", "base-b", "--db", str(db), "--out", str(tmp_path / "r.html"), cache=cache)
        assert out.returncode == 0 and (tmp_path / "r.html").stat().st_size > 1000, out.stderr
        out = lineage("graph", "--db", str(db), "--out", str(tmp_path / "g.json"), "--json", cache=cache)
        assert out.returncode == 0 and "the result is not stored" in out.stderr, out.stderr
        assert json.loads(out.stdout)["disagreements"] == []
        out = lineage("store", "check", "--db", str(db), cache=cache)
        assert out.returncode == 0, out.stderr
        # a path to compare is scanned, and the store's refusal to keep it is a note, not a failure
        out = lineage("compare", str(models / "base-c"), "base-a", "--db", str(db), "--json", cache=cache)
        assert out.returncode == 0 and "not stored" in out.stderr, out.stderr
        # a scan must write: one line, exit 1
        out = lineage("scan", str(models / "base-c"), "--db", str(db), "-q", cache=cache)
        assert out.returncode == 1 and out.stderr.startswith("Error: ") and len(out.stderr.splitlines()) == 1
        assert str(db) in out.stderr and "Traceback" not in out.stderr
    assert snapshot(db) == before, "a read command wrote into the store"
    assert list((cache / "match-index").rglob("*.duckdb")), "the match index is in the cache"
    assert not leftovers(db, cache)


def test_a_full_store_and_a_full_cache(db, models, tmp_path):
    disk = tmp_path / "disk"
    with full_disk(disk):
        store = disk / "db"
        shutil.copytree(db, store)
        cache = disk / "cache"
        cache.mkdir()
        fill(disk)
        before = snapshot(store)
        # the cache cannot hold the match index: it is built in memory, and nothing is left behind
        out = lineage("match", "base-a", "--db", str(store), "--json", cache=cache)
        assert out.returncode == 0 and [m["model"] for m in json.loads(out.stdout)["matches"]] == ["base-b"], out.stderr
        out = lineage("compare", "base-a", "base-b", "--db", str(store), cache=cache)
        assert out.returncode == 0, out.stderr
        out = lineage("scan", str(models / "base-c"), "--db", str(store), "-q", cache=cache)
        assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
        assert "No space left" in out.stderr and "Traceback" not in out.stderr
        assert snapshot(store) == before and not leftovers(store, cache)


def test_rows_out_of_bounds_are_reported_and_never_size_memory(db, tmp_path):
    """A row claiming 2e9 layers (or infinite curves) is listed by `store check` and kept out of the views:
    compare treats it as absent, at once, instead of allocating by it; repair moves its file aside."""
    good = next((db / "signatures").glob("*.parquet"))
    rows = pq.read_table(good).to_pylist()
    bad = [{**rows[0], "model": "huge", "scan_id": "huge-scan", "n_layers": 2_000_000_000},
           {**rows[0], "model": "inf", "scan_id": "inf-scan",
            "curves": {**rows[0]["curves"], "q": [float("inf")] * len(rows[0]["curves"]["q"])}}]
    pq.write_table(pa.Table.from_pylist(bad, schema=pq.read_schema(good)), db / "signatures" / "lying.parquet")
    cache = tmp_path / "cache"
    out = lineage("store", "check", "--db", str(db), "--json", cache=cache)
    assert out.returncode == 1, out.stderr
    problems = json.loads(out.stdout)
    assert [Path(p["file"]).name for p in problems] == ["lying.parquet"]
    assert "2 row(s) out of bounds" in problems[0]["problem"]
    assert "n_layers 2000000000 outside 1..4096" in problems[0]["problem"]
    out = lineage("compare", "huge", "base-a", "--db", str(db), cache=cache, timeout=60)
    assert out.returncode == 1 and "huge" in out.stderr and "not in the store" in out.stderr
    out = lineage("sql", "SELECT model FROM signatures ORDER BY model", "--db", str(db), "--json", cache=cache)
    assert [r["model"] for r in json.loads(out.stdout)] == ["base-a", "base-b", "inf"]
    assert lineage("store", "repair", "--db", str(db), cache=cache).returncode == 0
    assert (db / "quarantine" / "signatures" / "lying.parquet").exists()
    assert lineage("store", "check", "--db", str(db), cache=cache).returncode == 0
