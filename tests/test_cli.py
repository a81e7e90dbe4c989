"""The CLI in-process: exact exit codes, JSON shapes, read-only SQL, plots, the demo, help texts."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

import pytest

from lineage_scanner.cli.main import build_parser, main
from lineage_scanner.demo.zoo import read_truth
from lineage_scanner.lineage.verdict import REPARAMETRISED, ROTATED
from lineage_scanner.run.batch import run_batch
from lineage_scanner.store.store import Store
from tests.helpers import write_llama

#: The store's sketch key, fixed: the pairing and p-values asserted below are the same on every run (under a
#: process's random key, a dropped layer of the pruned copy was paired firmly by chance in one run of many).
KEY_HEX = b"tests/test_cli.py key".ljust(32, b".").hex()


@pytest.fixture(scope="module")
def db(zoo, tmp_path_factory):
    path = tmp_path_factory.mktemp("clidb")
    (path / "sketch.key").write_text(KEY_HEX + "\n")
    assert main(["scan", *[e.path for e in zoo], "--db", str(path), "-q"]) == 0
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_json_and_plot(capsys, db, zoo_by_name, tmp_path):
    png = tmp_path / "cmp.png"
    code, out, _ = run(
        capsys, "compare", "llama-a", zoo_by_name["llama-a-pruned"].path, "--db", db, "--json", "--plot", str(png)
    )
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"a", "b", "paper_score", "score", "p_value", "verdict", "decided_by", "sketch", "curves"}
    assert data["a"].startswith("llama-a@") and data["b"].startswith("llama-a-pruned@")
    assert 0.9 < data["paper_score"] <= 1 and set(data["per_role"]) == set("qkvo")
    # the deciding p is the robust test's (what no forgery of a few values can reach): far past 1e-6
    assert data["verdict"] == "derived" and data["decided_by"] == "sketch" and data["log10_p"] < -20
    assert data["kind"] == "pruned or depth up-scaled" and set(data["sketch"]["per_channel"]) == {
        "q", "k", "v", "o"}
    # the sketch pairs each of the pruned copy's 8 layers with the one it came from (every third one dropped)
    assert [(p["a"], p["b"]) for p in data["sketch"]["pairing"]] == [(0, 0), (2, 1), (3, 2), (5, 3), (6, 4),
                                                                      (8, 5), (9, 6), (11, 7)]
    curves = data["curves"]
    assert len(curves["alignment"]) == 8 and curves["p_value"] <= 0.01 and curves["null"]["size"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_compare_human(capsys, db):
    code, out, _ = run(capsys, "compare", "llama-a", "llama-b", "--db", db)
    assert code == 0 and "paper_score" in out and "  q  r = " in out
    verdicts = [line.split(":")[0].split() for line in out.splitlines() if line.strip().startswith("verdict ")]
    # "inconclusive" is the exact null's one-in-a-few-hundred chance agreement (tests.helpers.unrelated_by_chance)
    assert verdicts in ([["verdict", "unrelated"]], [["verdict", "inconclusive"]]), out


def test_compare_unknown_id(capsys, db):
    code, _, err = run(capsys, "compare", "llama-a", "no-such-model", "--db", db)
    assert code == 1 and err.strip() == f"Error: no-such-model: not in the store at {db}"


def test_match(capsys, db):
    code, out, _ = run(capsys, "match", "gpt2-a-ft", "--db", db, "--top", "3", "--json")
    data = json.loads(out)
    assert code == 0 and data["query"].startswith("gpt2-a-ft@") and len(data["matches"]) == 3
    assert all(m["model"].startswith("gpt2-a") for m in data["matches"])
    parent, *others = data["matches"]  # the parent first, then the nearest relatives: its siblings
    assert parent["model"] == "gpt2-a" and parent["relation"] == "parent" and parent["direction"] == "card"
    assert [m["relation"] for m in others] == ["sibling", "sibling"] and parent["decided_by"] == "sketch"
    assert parent["closeness"] >= max(m["closeness"] for m in others)


def test_sql_json_csv_and_table(capsys, db, zoo):
    q = "SELECT family, count(*) AS n FROM signatures GROUP BY family ORDER BY family"
    code, out, _ = run(capsys, "sql", q, "--db", db, "--json")
    rows = json.loads(out)
    assert code == 0 and {"family": "mixtral", "n": 4} in rows
    assert not any(r["family"] == "gguf" for r in rows)  # a GGUF export is judged as its family
    code, out, _ = run(capsys, "sql", "SELECT count(*) AS n FROM signatures WHERE format = 'gguf'", "--db", db,
                       "--json")
    assert code == 0 and json.loads(out) == [{"n": sum(any(Path(e.path).glob("*.gguf")) for e in zoo)}]
    code, out, _ = run(capsys, "sql", q, "--db", db, "--csv")
    assert list(csv.reader(io.StringIO(out)))[0] == ["family", "n"]
    code, out, _ = run(capsys, "sql", "SELECT count(*) AS models FROM signatures", "--db", db)
    assert out.splitlines()[2].strip() == str(len(zoo))


def test_sql_from_stdin(capsys, db, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("SELECT count(DISTINCT role) AS r FROM layers"))
    code, out, _ = run(capsys, "sql", "-", "--db", db, "--json")
    assert code == 0 and json.loads(out)[0]["r"] >= 8


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE x (a INT)",
        "COPY (SELECT 1) TO '/tmp/x.csv'",
        "SELECT 1; DROP VIEW signatures",
        "ATTACH '/tmp/other.db'",
    ],
)
def test_sql_is_read_only(capsys, db, statement):
    code, _, err = run(capsys, "sql", statement, "--db", db)
    assert code == 1 and err.startswith("Error: only SELECT queries are allowed")


def test_sql_error_is_one_line(capsys, db):
    code, _, err = run(capsys, "sql", "SELECT nope FROM signatures", "--db", db)
    assert code == 1 and err.count("\n") == 1 and err.startswith("Error: ")


def test_plot(capsys, db, tmp_path):
    out = tmp_path / "curves.png"
    code, _, _ = run(capsys, "plot", "qwen2-a", "qwen2-a-ct", "qwen2-a-moe", "--db", db, "--out", str(out))
    assert code == 0 and out.read_bytes()[:4] == b"\x89PNG"


def test_scan_json_and_skip(capsys, tmp_path):
    model = str(write_llama(tmp_path / "tiny"))
    code, out, _ = run(capsys, "scan", model, "--db", str(tmp_path / "db"), "--json", "-q")
    data = json.loads(out)
    assert code == 0 and data["scanned"][0]["status"] == "ok" and data["scanned"][0]["bytes_read"] > 0
    code, out, _ = run(capsys, "scan", model, "--db", str(tmp_path / "db"), "--json", "-q")
    again = json.loads(out)
    assert again["scanned"] == []
    assert again["skipped"] == [{"model": "tiny", "revision": data["scanned"][0]["revision"]}]


def test_scan_progress_rate_is_over_the_batchs_time(capsys, tmp_path):
    """The rate counts the batch's time from its start: a batch whose one unit brings every model at once
    once printed its bytes over the microsecond since that first result (100 GB/s on the demo)."""
    model = str(write_llama(tmp_path / "tiny"))
    planning_s = 0.3

    def slow_sources():
        time.sleep(planning_s)  # listing a catalog, say: part of the batch's time
        yield model

    summary = run_batch(slow_sources(), Store(tmp_path / "db"))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    rate = float(re.search(r"\(([\d.]+) MB/s\)", line).group(1))
    assert line.startswith("[lineage] done 1 ") and summary.bytes_read > 0
    assert rate <= summary.bytes_read / planning_s / 1e6 + 0.1, line


@pytest.mark.ray
def test_demo(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--out", str(tmp_path / "zoo"), "--db", str(tmp_path / "db"), "-q", "--json")
    data = json.loads(out)
    truth = read_truth(tmp_path / "zoo" / "lineage.csv")
    assert code == 0 and len(data["rows"]) == sum(1 for e in truth if e.parent)
    assert all(r["family_hit"] and r["verdict"] == "derived" for r in data["rows"])
    kinds = {"finetune": "fine-tune", "continued": "continued training", "pruned": "pruned or depth up-scaled",
             "moe_upcycle": "MoE upcycle", "quantized": "quantized copy",
             "permuted": REPARAMETRISED, "rotated": ROTATED}
    assert [r["kind"] for r in data["rows"]] == [kinds[r["relation"]] for r in data["rows"]]
    assert "derived" not in data["stranger_verdicts"]
    assert (tmp_path / "zoo" / "compare.png").is_file() and (tmp_path / "zoo" / "lineage.csv").is_file()


def test_every_command_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"scan", "catalog", "compare", "match", "report", "sql", "store", "plot", "graph",
                                "demo"}
    for action in sub._choices_actions:
        assert action.help, f"command {action.dest} has no help text"
