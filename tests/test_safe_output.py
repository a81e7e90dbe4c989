"""Names are chosen by whoever publishes a model: printed, drawn or exported, they must stay text.

Two hostile models end to end through every command that shows a name: one whose name holds terminal
escape sequences (clear the screen, set the window title, colour), a bell, a bidirectional override and
matplotlib mathtext (``$x^2$``); one whose name a spreadsheet would run as a formula. Nothing raw reaches
a terminal, a CSV cell starts no formula, figures draw the names as typed, GraphML stays valid XML.
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from lineage_scanner.cli.main import main
from lineage_scanner.lineage.verdict import NEAR_IDENTICAL
from lineage_scanner.printable import printable, pvalue, xml_safe
from tests.helpers import write_llama

ESCAPES = "evil\x1b[2J\x1b]0;owned\x07 $x^2$ \u202egnp.exe"
FORMULA = '=HYPERLINK("http:x","y") $a$'
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    hostile = write_llama(root / "models" / ESCAPES, n_layers=6, seed=3)
    shutil.copytree(hostile, root / "models" / FORMULA)  # the same weights: the two are related
    write_llama(root / "models" / "plain", n_layers=6, seed=4)
    db = root / "db"
    assert main(["scan", str(hostile), str(root / "models" / FORMULA), str(root / "models" / "plain"), "--db",
                 str(db), "-q"]) == 0
    return db


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    # nothing raw reaches the terminal (a CSV's lines end in CR LF, as the format says)
    assert not RAW.search(out.replace("\r\n", "\n")) and not RAW.search(err), (out, err)
    return code, out, err


def test_printable_escapes_what_acts_on_a_terminal():
    assert printable(ESCAPES) == "evil\\x1b[2J\\x1b]0;owned\\x07 $x^2$ \\u202egnp.exe"
    assert printable("llama-3.1-8b/ü") == "llama-3.1-8b/ü" and printable(None) == ""
    assert printable("bad\udcff") == "bad\\udcff"  # an undecodable file name prints, not raises
    assert xml_safe("a\\x1b") != xml_safe("a\x1b")  # one to one: GraphML ids stay distinct


def test_p_values_read_as_numbers():
    assert pvalue(0.0342) == "0.0342" and pvalue(1.0) == "1" and pvalue(1.23e-5) == "1.2e-5"
    assert pvalue(None, -658.24) == "< 1e-300 (log10 p = -658.2)" and pvalue(0.0) == "< 1e-300"
    assert pvalue(None) == "n/a" and pvalue(None, -4.5) == "3.2e-5"


def test_terminal_tables_and_messages(capsys, store):
    code, out, _ = run(capsys, "sql", "SELECT model FROM signatures ORDER BY model", "--db", store)
    assert code == 0 and printable(ESCAPES) in out and FORMULA in out
    code, out, _ = run(capsys, "compare", ESCAPES, FORMULA, "--db", store)
    assert code == 0 and "identical weights" in out and printable(ESCAPES) in out
    code, out, _ = run(capsys, "match", ESCAPES, "--db", store)
    assert code == 0 and printable(FORMULA) in out
    code, _, err = run(capsys, "compare", ESCAPES + "-missing", "plain", "--db", store)
    assert code == 1 and err.startswith("Error: ") and printable(ESCAPES) in err


def test_csv_cells_run_no_formula(capsys, store):
    code, out, _ = run(capsys, "sql", "SELECT model, -1 AS n, '@SUM(A1)' AS at FROM signatures ORDER BY model",
                       "--db", store, "--csv")
    rows = out.splitlines()
    assert code == 0 and rows[0] == "model,n,at"
    assert any(r.startswith('"\'=HYPERLINK(') for r in rows) and all(",-1,'@SUM(A1)" in r for r in rows[1:])


def test_graph_terminal_and_graphml(capsys, store, tmp_path):
    out_file = tmp_path / "g.graphml"
    code, out, _ = run(capsys, "graph", "--db", store, "--out", out_file)
    assert code == 0 and printable(ESCAPES) in out and NEAR_IDENTICAL in out  # a graph verifies nothing
    root = ET.parse(out_file).getroot()  # a strict XML parser: control characters would fail it
    ids = {n.get("id") for n in root.iter("{http://graphml.graphdrawing.org/xmlns}node")}
    assert xml_safe(ESCAPES) in ids and xml_safe(FORMULA) in ids
    code, out, _ = run(capsys, "graph", "--db", store, "--json")
    assert ESCAPES in {n["model"] for n in json.loads(out)["nodes"]}  # JSON keeps the name exactly


def test_figures_draw_names_as_typed(capsys, store, tmp_path):
    png = tmp_path / "cmp.png"
    code, _, _ = run(capsys, "compare", ESCAPES, FORMULA, "--db", store, "--plot", png)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    code, _, _ = run(capsys, "plot", ESCAPES, FORMULA, "plain", "--db", store, "--out", tmp_path / "curves.png")
    assert code == 0 and (tmp_path / "curves.png").stat().st_size > 10_000
    html = tmp_path / "report.html"
    code, _, _ = run(capsys, "report", ESCAPES, FORMULA, "--db", store, "--out", html)
    text = html.read_text(encoding="utf-8")
    assert code == 0 and not RAW.search(text) and "$x^2$" in text  # in the SVG too: text, not mathtext
