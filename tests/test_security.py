"""The trust boundary: SQL that can read only the store, no secret in anything Ray writes, store paths
with any characters, and one error row (never a stopped batch) for whatever goes wrong in a model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lineage_scanner.cli.main import main
from lineage_scanner.run.batch import run_batch
from lineage_scanner.store.store import Store
from lineage_scanner.testing.hub_server import HubStandIn, Repo
from tests.helpers import run_cli_process, write_llama

LINEAGE = str(Path(sys.executable).parent / "lineage")


@pytest.fixture(scope="module")
def db(zoo, tmp_path_factory):
    """A store whose path holds a quote, a space and a semicolon: no path is ever pasted into SQL."""
    path = tmp_path_factory.mktemp("sec") / "it's a; db"
    run_batch([e.path for e in zoo[:6]], Store(path), progress=False)
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("query, problem", [
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{db}/signatures/evil.parquet'", "not COPY"),
    ("EXPLAIN /* hidden */ ANALYZE COPY (SELECT 1) TO '{tmp}/evil.csv'", "not COPY"),
    ("COPY (SELECT 1) TO '{tmp}/evil.csv'", "not COPY"),
    ("EXPLAIN ANALYZE INSTALL httpfs", "not LOAD"),
    ("LOAD httpfs", "not LOAD"),
    ("EXPLAIN ANALYZE SET enable_external_access = true", "not SET"),
    ("SELECT 1; SELECT 2", "one statement at a time"),
    ("ATTACH '{tmp}/other.duckdb' AS o", "not ATTACH"),
    ("SELECT * FROM read_text('/etc/passwd')", "reaches outside the store"),
    ("SELECT * FROM read_blob('/etc/hostname')", "reaches outside the store"),
    ("SELECT * FROM read_csv('/etc/passwd')", "reaches outside the store"),
    ("SELECT * FROM glob('/etc/*')", "reaches outside the store"),
    ("SELECT * FROM read_parquet('{db}/../*/*.parquet')", "reaches outside the store"),
    ("EXPLAIN (FORMAT JSON) SELECT 1", "EXPLAIN [ANALYZE] SELECT"),
])
def test_sql_reads_only_the_store(capsys, db, tmp_path, query, problem):
    before = sorted(p for p in Path(db).rglob("*"))
    code, out, err = run(capsys, "sql", query.format(db=db.replace("'", "''"), tmp=tmp_path), "--db", db)
    assert code == 1 and out == "" and err.startswith("Error: ") and problem in err, err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p for p in Path(db).rglob("*")) == before and not list(tmp_path.iterdir())


@pytest.mark.parametrize("query, limit, problem", [
    ("SELECT count(*) FROM range(1e11::BIGINT)", ("--timeout", "2"), "time limit of 2 s"),
    ("SELECT length(repeat('a', 3000000000))", ("--memory-limit", "512MB"), "memory limit of 0.5 GiB"),
    ("SELECT list(range) FROM range(300000000)", ("--memory-limit", "512MB"), "memory limit of 0.5 GiB"),
])
def test_sql_stops_at_its_limits(db, query, limit, problem):
    """A query that would run for hours, or take gigabytes (one string DuckDB's own limit does not track
    among them), stops at its limit with a one-line error, in bounded time and memory."""
    report, errors, out = run_cli_process("sql", query, "--db", db, *limit, timeout=60)
    assert report["code"] == 1 and out == "" and len(errors) == 1 and problem in errors[0], errors
    assert report["rss"] < 1 << 30


def test_sql_output_carries_no_progress_bar(capsys, db):
    """DuckDB draws a progress bar on standard output once a query passes two seconds (seen under load, in
    the middle of the output the limits above expect empty): the store's connections turn it off."""
    code, out, _ = run(capsys, "sql", "SELECT current_setting('enable_progress_bar') AS bar", "--db", db)
    assert code == 0 and "false" in out.lower() and "true" not in out.lower(), out


def test_sql_select_explain_and_bound_parameters(capsys, db, zoo):
    model = zoo[0].model
    code, out, _ = run(capsys, "sql", "SELECT model FROM signatures WHERE model = ?", "-p", model, "--db", db, "--json")
    assert code == 0 and json.loads(out) == [{"model": model}]
    code, out, _ = run(capsys, "sql", "SELECT count(*) AS n FROM layers WHERE model = $m AND layer < $k::INT",
                       "-p", "m", model, "-p", "k", "2", "--db", db, "--json")
    assert code == 0 and json.loads(out)[0]["n"] > 0
    code, out, _ = run(capsys, "sql", "SELECT ? AS v", "-p", "x'); DROP VIEW signatures; --", "--db", db, "--json")
    assert code == 0 and json.loads(out) == [{"v": "x'); DROP VIEW signatures; --"}]
    code, out, _ = run(capsys, "sql", "EXPLAIN ANALYZE SELECT count(*) FROM signatures", "--db", db)
    assert code == 0 and "analyzed_plan" in out
    code, _, err = run(capsys, "sql", "SELECT ? , $a", "-p", "1", "-p", "a", "2", "--db", db)
    assert code == 1 and "not both" in err


@pytest.mark.slow
def test_commands_work_on_a_store_path_with_quotes(capsys, db, zoo):
    a, b = zoo[0].model, zoo[1].model
    code, out, _ = run(capsys, "compare", a, b, "--db", db, "--json")
    assert code == 0 and json.loads(out)["verdict"] in ("derived", "unrelated", "inconclusive")
    code, out, _ = run(capsys, "match", a, "--db", db, "--json", "--top", "2")
    assert code == 0 and len(json.loads(out)["matches"]) == 2
    code, out, _ = run(capsys, "graph", "--db", db, "--json", "--out", str(Path(db) / "graph.json"))
    assert code == 0 and {n["model"] for n in json.loads(out)["nodes"]} >= {a, b}


def test_an_unexpected_exception_is_an_internal_error_row(tmp_path, monkeypatch):
    good = write_llama(tmp_path / "good", seed=1)
    bad = write_llama(tmp_path / "bad", seed=2)
    from lineage_scanner.signature import build

    real = build.measure

    def exploding(reader, layout, backend, *rest):
        if "bad" in reader.path:
            raise KeyError("surprise")
        return real(reader, layout, backend, *rest)

    monkeypatch.setattr(build, "measure", exploding)
    summary = run_batch([str(bad), str(good)], Store(tmp_path / "db"), progress=False)
    (failed,) = summary.failed
    assert failed.status == "internal_error" and "KeyError: 'surprise'" in failed.error
    assert "signature/build.py" in failed.error and str(bad) in failed.error
    assert [r.model for r in summary.records if r.status == "ok"] == ["good"]


@pytest.mark.ray
@pytest.mark.hub
def test_no_secret_in_anything_ray_writes(zoo_by_name, tmp_path):
    """A canary token scans a gated repo through a local Ray; no file Ray's session holds contains it."""
    canary = "hf_canary_" + os.urandom(8).hex()
    repos = [Repo("acme/locked", Path(zoo_by_name["llama-b"].path), gated=True),
             Repo("acme/open", Path(zoo_by_name["llama-a"].path))]
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must stay short
    db = tmp_path / "db"
    try:
        with HubStandIn(repos, token=canary) as hub:
            env = {**os.environ, "HF_TOKEN": canary, "HF_ENDPOINT": hub.endpoint, "RAY_TMPDIR": ray_tmp,
                   "HF_HUB_DISABLE_TELEMETRY": "1"}
            env.pop("RAY_ADDRESS", None)
            done = subprocess.run([LINEAGE, "scan", "hf://acme/locked", "hf://acme/open", "--workers", "1",
                                   "--db", str(db), "--json", "-q"], env=env, capture_output=True, text=True,
                                  timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        scanned = json.loads(done.stdout)["scanned"]
        assert {r["model"]: r["status"] for r in scanned} == {"acme/locked": "ok", "acme/open": "ok"}
        assert canary not in done.stdout + done.stderr
        files = [p for p in Path(ray_tmp).rglob("*") if p.is_file() and not p.is_symlink()]
        assert files, "Ray wrote no session files where it was told to"
        leaks = [str(p) for p in files + [p for p in db.rglob("*") if p.is_file()]
                 if canary.encode() in p.read_bytes()]
        assert not leaks
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_an_unexpected_error_is_one_line_unless_debugging(capsys, tmp_path, monkeypatch):
    from lineage_scanner.store import store as store_module

    def broken(self, *args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(store_module.Store, "load", broken)
    code = main(["compare", "x", "y", "--db", str(tmp_path / "db")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("Error: ") and "ZeroDivisionError: boom" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        main(["compare", "x", "y", "--db", str(tmp_path / "db"), "--debug"])


def test_json_output_stays_json_when_something_writes_to_stdout(tmp_path):
    """A command whose work writes to file descriptor 1 (as Ray's workers and C libraries do) still
    prints nothing but its JSON on stdout."""
    code = ("import os, sys\nimport lineage_scanner.store.sql as sql\nreal = sql.run_sql\n"
            "def noisy(*args, **kwargs):\n    os.write(1, b'noise from a C library\\n')\n"
            "    return real(*args, **kwargs)\n"
            "sql.run_sql = noisy\nfrom lineage_scanner.cli.main import main\n"
            f"sys.exit(main(['sql', 'select 42 as x', '--db', {str(tmp_path / 'db')!r}, '--json']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"x": 42}] and "noise from a C library" in done.stderr
