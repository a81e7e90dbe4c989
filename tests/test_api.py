"""The library functions the commands print (lineage_scanner.api): what a job or a test gets by calling them
is exactly what ``--json`` prints."""

from __future__ import annotations

import json
import shutil

import pytest

from lineage_scanner import api
from lineage_scanner.cli.main import main
from lineage_scanner.cli.output import clean
from lineage_scanner.errors import UsageError
from lineage_scanner.store.store import Store
from tests.helpers import write_llama


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    base = write_llama(root / "base", n_layers=4, seed=0)
    shutil.copytree(base, root / "copy")
    write_llama(root / "stranger", n_layers=4, seed=1)
    store = Store(root / "db")
    summary = api.scan([str(root / n) for n in ("base", "copy", "stranger")], store, progress=False)
    assert summary.scanned == 3 and not summary.failed
    return store


def cli_json(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_is_what_the_command_prints(store, capsys):
    pair = api.compare("base", "copy", store, verify="never")  # a verification draws a fresh key each time
    assert pair.verdict.verdict == "derived" and pair.verdict.decided_by == "sketch"
    assert (pair.a.model, pair.b.model) == ("base", "copy")
    printed = cli_json(capsys, "compare", "base", "copy", "--db", store.root, "--no-verify")
    assert printed == clean(pair.verdict.to_dict())


def test_match_is_what_the_command_prints(store, capsys):
    found = api.match("base", store, top=5)
    assert found.matches[0]["model"] == "copy" and found.matches[0]["verdict"] == "derived"
    assert found.matches[0]["relation"] in ("parent", "child")  # a copy: its card decides which way
    assert {m["model"] for m in found.matches} == {"copy", "stranger"}
    printed = cli_json(capsys, "match", "base", "--db", store.root, "--top", "5")
    assert printed == {"query": f"base@{found.query.revision}",
                       "matches": clean(found.matches)}


def test_graph_is_what_the_command_prints(store, tmp_path, capsys):
    found = api.graph(store, tmp_path / "g.json")
    assert [{e.parent, e.child} for e in found.edges] == [{"base", "copy"}] and found.written == tmp_path / "g.json"
    printed = cli_json(capsys, "graph", "--db", store.root, "--out", str(tmp_path / "h.json"))
    assert printed == clean({**found.graph, "disagreements": [dict(zip(("model", "other", "problem"), d))
                                                              for d in found.disagreements]})


def test_backend_only_where_something_is_scanned(capsys):
    with pytest.raises(SystemExit):
        main(["sql", "select 1", "--backend", "cpu"])
    assert "unrecognized arguments: --backend" in capsys.readouterr().err


def test_nothing_to_scan_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="nothing to scan"):
        api.scan([], Store(tmp_path / "db"))
