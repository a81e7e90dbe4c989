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
        b = p.chromium.launch(executable_path=executable, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                "--disable-background-networking"])
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

    def screenshot(self, tmp_path: Path, name: str, until: str | None = None) -> Path:
        """The page as the window shows it, or from the top down to the end of the element ``until``
        (a whole figure, never cut in the middle)."""
        out = tmp_path / name
        if until is None:
            self.page.screenshot(path=str(out), full_page=False)
        else:
            box = self.page.locator(until).first.bounding_box()
            width = self.page.viewport_size["width"]
            self.page.screenshot(path=str(out), full_page=True,
                                 clip={"x": 0, "y": 0, "width": width, "height": box["y"] + box["height"] + 16})
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
    visit.screenshot(tmp_path, "report.png", until="figure")


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
    # curves alone never decide "derived" (they can be forged): where no shape is shared they are drawn
    for other, decided_by in (("llama-a-pruned", "sketch"), ("narrow", None)):
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


#: Every text box of the map against every other on its rows: none may overlap (in CSS pixels, a quarter
#: pixel of slack for rounding), and all must be drawn.
OVERLAPS = """() => {
  const boxes = Array.from(document.querySelectorAll("#canvas svg text")).map((t) => t.getBoundingClientRect())
    .filter((b) => b.width > 0).sort((a, b) => a.top - b.top);
  let overlaps = 0;
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length && boxes[j].top < boxes[i].bottom - 0.25; j++) {
      if (boxes[j].left < boxes[i].right - 0.25 && boxes[i].left < boxes[j].right - 0.25) overlaps++;
    }
  }
  return [boxes.length, overlaps];
}"""
#: Whether everything drawn lies inside the canvas (the view was fitted to the window).
INSIDE = """() => {
  const frame = document.querySelector("#canvas").getBoundingClientRect();
  return Array.from(document.querySelectorAll("#canvas svg .node, #canvas svg .group")).every((g) => {
    const b = g.getBoundingClientRect();
    return b.left >= frame.left - 1 && b.right <= frame.right + 1 && b.top >= frame.top - 1 &&
      b.bottom <= frame.bottom + 1;
  });
}"""


def rows_of(page) -> list[tuple[str, float]]:
    return page.eval_on_selector_all("#canvas svg .node", "gs => gs.map(g => [g.dataset.model, "
                                     "g.getBoundingClientRect().top])")


@pytest.mark.browser
def test_lineage_map_in_the_browser(browser, lineage_page, tmp_path):
    out, graph = lineage_page
    valid_html(out)
    visit = Visit(browser, out)
    visit.assert_clean()
    page = visit.page
    svg = page.locator("#canvas svg")
    assert int(svg.get_attribute("data-nodes")) == len(graph["nodes"]) == len(MODELS) + 2
    assert HOSTILE in [m for m, _ in rows_of(page)]  # drawn as text, never as markup
    labels, overlaps = page.evaluate(OVERLAPS)
    assert labels >= 2 * len(graph["nodes"]) and overlaps == 0  # every name and its tag, none over another
    assert page.evaluate(INSIDE)  # all families fit the window
    names = page.eval_on_selector_all("#canvas svg text.name", "ts => ts.map(t => t.textContent)")
    assert "llama-a-q8_0" in names and all(n in names for n in MODELS)  # no label cut short
    # each model under the one it was made from: llama-a-ct, which claims nothing, is the undeclared one
    edges = {e["child"]: e for e in graph["edges"] if e["detected"]}
    assert edges["llama-a-ct"]["parent"] == "llama-a" and edges["llama-a-ct"]["disagreement"]
    assert edges["llama-a-q8_0"]["direction"] == "quantized" and edges["llama-a-pruned"]["direction"] == "fewer layers"
    assert page.locator("#canvas path.link.undeclared").count() == sum(bool(e["disagreement"]) for e in edges.values())
    # the hostile copy of llama-b claims llama-a: a red tag on it, and a dotted line to llama-a
    assert HOSTILE in page.text_content("#canvas") and page.locator("#canvas text.claim").count() == 1
    assert page.locator("#canvas path.link.claim").count() == 1
    tops = dict(rows_of(page))
    page.check("#disagreements")  # laid out again: only the disagreeing models and what places them
    shown = rows_of(page)
    assert 0 < len(shown) < len(graph["nodes"]) and {"llama-a-ct", HOSTILE} <= {m for m, _ in shown}
    tops_shown = sorted(top for _, top in shown)
    gaps = sorted(b - a for a, b in zip(tops_shown, tops_shown[1:]))
    assert gaps[len(gaps) // 2] < 40 and page.evaluate(OVERLAPS)[1] == 0  # no holes where filtered rows were
    assert dict(shown) != {m: tops[m] for m, _ in shown}
    page.uncheck("#disagreements")
    page.select_option("#family", "0")
    assert int(svg.get_attribute("data-nodes")) == len(graph["families"][0])
    before = page.get_attribute("#canvas svg > g", "transform")
    page.click("#zoom-in")
    assert page.get_attribute("#canvas svg > g", "transform") != before
    page.click("#fit")
    assert page.evaluate(INSIDE)
    page.select_option("#family", "all")
    visit.assert_clean()
    visit.screenshot(tmp_path, "map.png")


def generated_store(root: Path, size: int = 5000) -> Path:
    """A store of one family of ``size`` models, as a base with thousands of derivatives on the Hub has:
    quantized copies, fine-tunes (some with fine-tunes and quantized copies of their own), merges of
    them; edges written as a graph run writes them."""
    from lineage_scanner.lineage.tree import TreeEdge
    from lineage_scanner.signature.record import Signature
    from lineage_scanner.store.store import Store

    store = Store(root)
    names = ["org/base"] + [f"user{k % 97}/model-{k}" for k in range(1, size)]
    kinds = ["quantized copy", "fine-tune", "fine-tune", "continued training", "MoE upcycle", "pruned"]
    edges = []
    for k, name in enumerate(names[1:], start=1):
        parent = names[0] if k < 4000 or k % 5 else names[1 + k % 40]
        kind = kinds[k % len(kinds)]
        edges.append(TreeEdge(parent, name, kind, "quantized" if kind == "quantized copy" else "card", "", 0.99,
                              "weights", 0.0, -600.0, family=names[0]))
    store.write([Signature(n, f"{k:040x}", n, family="llama", architecture="LlamaForCausalLM", n_layers=32,
                           declared_base=[names[0]] if k % 7 else []) for k, n in enumerate(names)])
    store.write_edges(edges)
    return root


def pan_to(page, target) -> None:
    """Drag the map with the mouse until ``target`` is in the middle of the window."""
    frame, box = page.locator("#canvas").bounding_box(), target.bounding_box()
    x, y = frame["x"] + frame["width"] / 2, frame["y"] + frame["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - (box["x"] - x) + 40, y - (box["y"] - y), steps=5)
    page.mouse.up()


@pytest.mark.browser
def test_lineage_map_of_a_family_of_thousands(browser, tmp_path):
    from lineage_scanner.lineage.graph import graph_data
    from lineage_scanner.store.store import Store

    graph = graph_data(Store(generated_store(tmp_path / "db")))
    assert len(graph["nodes"]) == 5000 and len(graph["families"]) == 1
    out = tmp_path / "big.html"
    out.write_text(lineage_map(graph, "one family of 5,000"), encoding="utf-8")
    visit = Visit(browser, out)
    visit.assert_clean()
    page = visit.page
    svg = page.locator("#canvas svg")
    assert page.locator("#family option").count() == 1 + (len(graph["nodes"]) <= ALL_LIMIT)
    first = float(svg.get_attribute("data-render-ms"))
    assert int(svg.get_attribute("data-nodes")) < 60  # the base's children wait in groups, by kind
    groups = page.locator("#canvas .group")
    assert groups.count() >= 5 and page.evaluate(OVERLAPS)[1] == 0 and page.evaluate(INSIDE)
    page.locator("#canvas .group text.name").first.click()  # the largest group opens a page at a time
    assert int(svg.get_attribute("data-nodes")) > 500
    while page.locator("#canvas .group text.name", has_text="more of").count():
        more = page.locator("#canvas .group text.name", has_text="more of").first
        pan_to(page, more)  # the next page's row lies below the window: drag the map up to it
        more.click()
    opened = int(svg.get_attribute("data-nodes"))
    assert opened > 800
    labels, overlaps = page.evaluate(OVERLAPS)
    assert labels >= 2 * opened and overlaps == 0
    page.fill("#find", "model-4005")  # a grandchild, under a child inside a group still closed
    page.dispatch_event("#find", "change")
    found = page.locator("#canvas .node.found")
    assert found.count() == 1 and found.get_attribute("data-model") == "user28/model-4005"
    visit.assert_clean()
    print(f"5,000 models: first render {first:.0f} ms; {opened} rows open, re-rendered in "
          f"{float(svg.get_attribute('data-render-ms')):.0f} ms")
