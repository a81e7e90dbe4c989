"""The pages an analyst hands on, checked in a real browser: headless Chromium (Debian's package) renders
the pair report and the lineage map; the tests read the rendered DOM, the console and every request.

Set LINEAGE_SCREENSHOTS=docs to refresh the README's screenshots from these renders.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import html5lib
import pytest

from lineage_scanner.cli.main import main
from lineage_scanner.demo.writers import write_card
from lineage_scanner.report.figures import evidence_figure
from lineage_scanner.report.lineage_map import ALL_LIMIT, lineage_map
from tests.helpers import write_llama

MODELS = ("llama-a", "llama-a-ft", "llama-a-pruned", "llama-a-ct", "llama-a-q8_0", "llama-b", "llama-b-ft", "qwen2-a")
HOSTILE = "evil<img src=x onerror=alert(1)>"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI"):
        pytest.fail("no Chromium: .ci/run installs Debian's chromium package")
    pytest.skip("no Chromium here (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


class Visit:
    """One page load: what the console said, which scripts failed, every request the page made."""

    def __init__(self, browser, path: Path, width: int = 1280):
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.console, self.errors, self.requests, self.failed, self.dialogs = [], [], [], [], []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.failed.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)

    def assert_clean(self):
        """No script error, no console error, nothing failed to load, nothing fetched beyond the file."""
        assert not self.errors and not [m for m in self.console if m[0] in ("error", "warning")], self.console
        assert not self.failed and not self.dialogs
        assert [u for u in self.requests if not u.startswith("data:")] == [self.url]

    def screenshot(self, tmp_path: Path, name: str) -> Path:
        out = tmp_path / name
        self.page.screenshot(path=str(out), full_page=False)
        if os.environ.get("LINEAGE_SCREENSHOTS"):
            Path(os.environ["LINEAGE_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(out, Path(os.environ["LINEAGE_SCREENSHOTS"]) / name)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
        return out


def valid_html(path: Path) -> None:
    html5lib.HTMLParser(strict=True).parse(path.read_text(encoding="utf-8"))  # raises on any parse error


@pytest.fixture(scope="module")
def store(zoo_by_name, tmp_path_factory):
    """A store of a few demo models, one of them under a hostile name whose card falsely claims a base."""
    root = tmp_path_factory.mktemp("report")
    hostile = shutil.copytree(zoo_by_name["llama-b"].path, root / "models" / HOSTILE)
    write_card(hostile, "llama-a")  # declared, and the weights will not back it
    narrow = write_llama(root / "models" / "narrow", n_layers=8, hidden=64)  # no shape in common with the zoo
    db = root / "db"
    assert main(["scan", *[zoo_by_name[m].path for m in MODELS], str(hostile), str(narrow), "--db", str(db), "-q"]) == 0
    return db


@pytest.mark.browser
def test_pair_report_reads_top_to_bottom(browser, store, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", "llama-a", "llama-a-pruned", "--db", str(store), "--out", str(out), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    valid_html(out)
    visit = Visit(browser, out)
    visit.assert_clean()
    page = visit.page
    assert verdict["verdict"] == "derived"
    assert "Derived" in page.text_content("#verdict") and verdict["kind"] in page.text_content("#verdict")
    assert page.locator("figure svg").count() == 3  # the deciding sketch, the curves, the seed curves
    assert "exact null" in page.text_content("table")
    assert page.locator("figure").first.locator("text=weight sketch").count() >= 1  # the sketch decided, first
    identities = page.text_content("#identities")
    assert "model.safetensors" in identities and "exact (every element)" in identities
    assert "lineage report llama-a@" in page.text_content("#commands")
    assert "Consistent" in page.text_content("#agreement") or "agree" in page.text_content("#agreement")
    visit.screenshot(tmp_path, "report.png")


@pytest.mark.browser
def test_report_of_hostile_names_runs_nothing(browser, store, tmp_path):
    out = tmp_path / "hostile.html"
    assert main(["report", HOSTILE, "llama-a", "--db", str(store), "--out", str(out), "-q"]) == 0
    valid_html(out)
    visit = Visit(browser, out)
    visit.assert_clean()  # the onerror never ran (no dialog) and no image was requested
    assert HOSTILE in visit.page.text_content("h1") and visit.page.locator("img").count() == 0
    assert "disagree" in visit.page.text_content("#agreement")  # the card claims llama-a; the weights do not


def test_compare_plot_draws_the_deciding_evidence(store, tmp_path):
    from lineage_scanner.lineage.null import null_for
    from lineage_scanner.lineage.verdict import decide
    from lineage_scanner.store.store import Store

    st = Store(store)
    titles = {}
    for other, decided_by in (("llama-a-pruned", "sketch"), ("narrow", "curves")):
        a, b = st.load("llama-a"), st.load(other)
        v = decide(a, b, null_for(st, a, b))
        assert v.decided_by == decided_by
        fig = evidence_figure(a, b, v)
        titles[other] = [ax.get_title() for f in fig.subfigs for ax in f.axes] + [
            f.get_suptitle() for f in fig.subfigs]
    assert any("weight sketch" in t for t in titles["llama-a-pruned"])  # decided by the sketch
    assert any("feature curves" in t for t in titles["narrow"])  # no shape in common: the curves decided
    assert all(any("projection" in t for t in ts) for ts in titles.values())  # the seed curves below


@pytest.fixture(scope="module")
def lineage_page(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("map") / "map.html"
    graph = tmp_path_factory.mktemp("map") / "graph.json"
    assert main(["graph", "--db", str(store), "--out", str(graph), "--html", str(out), "-q"]) == 0
    return out, json.loads(graph.read_text())


@pytest.mark.browser
def test_lineage_map_in_the_browser(browser, lineage_page, tmp_path):
    out, graph = lineage_page
    valid_html(out)
    visit = Visit(browser, out)
    visit.assert_clean()
    page = visit.page
    svg = page.locator("#canvas svg")
    assert int(svg.get_attribute("data-nodes")) == len(graph["nodes"]) == len(MODELS) + 2
    assert page.locator("#canvas .node").count() == len(graph["nodes"])
    assert HOSTILE in [page.locator("#canvas .node").nth(i).get_attribute("data-model")
                       for i in range(len(graph["nodes"]))]
    edges = page.locator("#canvas line.edge")
    assert edges.count() == int(svg.get_attribute("data-edges")) >= 5
    # the disagreements: llama-a-ct is detected, undeclared; the hostile copy of llama-b claims llama-a
    undeclared = page.locator("#canvas line.edge.undeclared").count()
    assert undeclared >= 1 and page.locator("#canvas line.edge.unconfirmed").count() == 1
    total = edges.count()
    page.check("#disagreements")
    assert page.locator("#canvas line.edge").count() == undeclared + 1 < total
    page.uncheck("#disagreements")
    # a family on the map joins detected and declared edges: the false claim ties llama-b's family to llama-a's
    detected = {tuple(f) for f in graph["families"] if len(f) > 1}
    joined = sum(len(f) for f in detected if "llama-a" in f or "llama-b" in f)
    page.select_option("#family", "0")
    assert int(page.locator("#canvas svg").get_attribute("data-nodes")) == joined == 8
    visit.assert_clean()
    visit.screenshot(tmp_path, "map.png")


@pytest.mark.browser
def test_lineage_map_of_thousands_draws_a_family_at_a_time(browser, tmp_path):
    nodes, edges = [], []
    for f in range(40):  # 40 families of 80: 3,200 models, past the all-at-once limit
        for k in range(80):
            nodes.append({"model": f"org{f}/m{k}", "revision": "0" * 40, "family": "llama", "architecture": "llama",
                          "declared_base": [f"org{f}/m0"] if k else []})
            if k:
                edges.append({"a": f"org{f}/m0", "b": f"org{f}/m{k}", "score": 0.9, "p_value": 1e-9,
                              "kind": "fine-tune", "detected": True, "declared": True})
    assert len(nodes) > ALL_LIMIT
    out = tmp_path / "big.html"
    out.write_text(lineage_map({"nodes": nodes, "edges": edges, "families": []}))
    visit = Visit(browser, out)
    visit.assert_clean()
    page = visit.page
    assert page.locator("#family option").count() == 40  # no "all families" past the limit
    assert int(page.locator("#canvas svg").get_attribute("data-nodes")) == 80
    assert page.locator("#canvas line.edge.agree").count() == 79
    page.select_option("#family", "7")
    assert page.locator("#canvas .node").count() == 80
