"""Family trees: closeness as an effect size, the direction of a derivation, and the tree built from them.

Unit tests on hand-made sketches and links (fast), then the whole path on the demo zoo: `lineage graph`
hangs every model under the model it was made from, `match` ranks the parent first, the `edges` and
`disagreements` views hold derivations.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import math
import os
import re
import shlex
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lineage_scanner.cli.main import main
from lineage_scanner.lineage.closeness import TIER_STEP, Closeness, closeness, measured
from lineage_scanner.lineage.direction import UNKNOWN, Direction, direction
from lineage_scanner.lineage.sketch import sketch_evidence
from lineage_scanner.lineage.tree import Link, build
from lineage_scanner.measure.sketch import SketchPart
from lineage_scanner.store.store import Store


def model(name, *, fmt="safetensors", dtype="BF16", family="llama", layers=12, hidden=128, base=(), sketch=()):
    return SimpleNamespace(model=name, format=fmt, dtype=dtype, family=family, n_layers=layers, hidden_size=hidden,
                           declared_base=list(base), sketch=tuple(sketch))


def parts(values: np.ndarray) -> tuple[SketchPart, ...]:
    """Sketch parts from a layers × roles × 400 array (Q/K/V/O values of 64 × 64 matrices)."""
    return tuple(SketchPart(layer, role, 64, 64, values[layer, k].astype(np.float32))
                 for layer in range(values.shape[0]) for k, role in enumerate("qkvo"))


def drifted(values: np.ndarray, noise: float, seed: int) -> np.ndarray:
    return values + noise * np.random.default_rng(seed).standard_normal(values.shape)


# ---- closeness ----------------------------------------------------------------------------------------

def test_closeness_is_the_mean_r_of_the_weights_and_orders_a_chain():
    base = np.random.default_rng(0).standard_normal((12, 4, 400))
    child = drifted(base, 0.3, 1)
    grandchild = drifted(child, 0.3, 2)
    sigs = {name: model(name, sketch=parts(v)) for name, v in (("base", base), ("child", child),
                                                                 ("grandchild", grandchild))}

    def near(a, b):
        s = sketch_evidence(sigs[a].sketch, sigs[b].sketch)
        return closeness(sigs[a], sigs[b], s, math.nan)

    c = near("base", "child")
    assert c.evidence == "weights" and c.value == pytest.approx(1 / math.sqrt(1 + 0.09), abs=0.005)
    # -log r adds up along the chain: base -> child -> grandchild
    far = near("base", "grandchild")
    assert far.distance == pytest.approx(c.distance + near("child", "grandchild").distance, abs=0.004)
    assert far.distance > c.distance
    # the same numbers without a verdict's exact test
    fast, grid = measured(sigs["base"], sigs["child"])
    assert fast.value == pytest.approx(c.value, abs=1e-9) and grid.pairing == [(i, i) for i in range(12)]
    assert measured(sigs["base"], model("stranger", sketch=parts(np.random.default_rng(9).standard_normal(
        (12, 4, 400))))) is None


def test_tiers_never_mix():
    assert Closeness(0.2, "weights").distance < Closeness(0.9999, "circuits").distance
    assert Closeness(0.9999, "circuits").distance < Closeness(1.0, "curves").distance <= 2 * TIER_STEP
    assert math.isfinite(Closeness(math.nan, "curves").distance)


# ---- direction ----------------------------------------------------------------------------------------

def test_direction_from_what_the_weights_show():
    base = model("base")
    gguf = direction(base, model("base-q4", fmt="gguf", dtype="Q4_0"))
    assert gguf.upstream == "base" and gguf.basis == "quantized" and "gguf" in gguf.note
    assert direction(model("moe", family="mixtral"), base).upstream == "base"
    narrow = direction(model("small", hidden=64), base)
    assert narrow.upstream == "base" and narrow.basis == "narrower"
    same = direction(model("a"), model("b"))
    assert same == Direction(None, UNKNOWN, same.note) and same.downstream("a", "b") is None


def test_pruned_and_up_scaled_are_told_apart_by_their_layers():
    deep, shallow = model("deep", layers=6), model("shallow", layers=4)
    eye = np.eye(6) * 0.99 + 0.05
    pruned = eye[:, [0, 2, 3, 5]]  # rows: the deeper model's layers; 1 and 4 match nothing
    found = direction(deep, shallow, pruned, 0.99)
    assert found.upstream == "deep" and found.basis == "fewer layers" and "2 of deep's" in found.note
    repeated = eye[[0, 1, 2, 3], :][:, [0, 1, 2, 3]][[0, 1, 1, 2, 2, 3]]  # 6 layers, two of them repeats
    up = direction(model("up", layers=6), model("small", layers=4), repeated, 0.99)
    assert up.upstream == "small" and up.basis == "more layers"
    assert direction(shallow, deep, pruned.T, 0.99).upstream == "deep"  # either order


def test_cards_give_a_direction_the_weights_do_not_overrule():
    base, tuned = model("base"), model("tuned", base=["base"])
    assert direction(tuned, base) == Direction("base", "card", "the card of tuned declares base as its base")
    # quantizing keeps the shape: a quantized dense model did not come from a float MoE one, nor it from that
    apart = direction(model("q", fmt="gguf", dtype="Q4_0"), model("moe", family="mixtral"))
    assert apart.upstream is None and apart.basis == "apart"
    liar = model("base-q8", fmt="gguf", dtype="Q8_0")
    claims = model("base", base=["base-q8"])  # a float model claiming to come from a quantized one
    found = direction(claims, liar)
    assert found.upstream == "base" and found.basis == "quantized" and "declares the opposite" in found.note


# ---- the tree -----------------------------------------------------------------------------------------

def link(a, b, r, upstream=None, basis=UNKNOWN, evidence="weights", kind="fine-tune"):
    return Link(a, b, kind, 1e-300, -700.0, Closeness(r, evidence), Direction(upstream, basis, ""))


def family_links():
    """A base, its quantized copy (closer to everything than anything else), a declared fine-tune, a
    continued-training child that declares nothing, and its own fine-tune: all pairs linked, as verdicts
    link them."""
    return [
        link("base", "base-q8", 0.99990, "base", "quantized", kind="quantized copy"),
        link("base", "ft", 0.9986, "base", "card"),
        link("base", "ct", 0.9550),
        link("base", "ct-ft", 0.9537),
        link("base-q8", "ft", 0.99855, "ft", "quantized"),
        link("base-q8", "ct", 0.95502, "ct", "quantized"),  # as close as the parent: only the format tells
        link("base-q8", "ct-ft", 0.9536, "ct-ft", "quantized"),
        link("ft", "ct", 0.9539),
        link("ft", "ct-ft", 0.9525),
        link("ct", "ct-ft", 0.9986, "ct", "card"),
    ]


def test_each_model_hangs_under_what_it_was_made_from():
    forest = build(["base", "base-q8", "ft", "ct", "ct-ft", "alone"], family_links(), quantized=["base-q8"],
                   declared={"ft": ["base"], "ct-ft": ["ct"]})
    parent = {e.child: e.parent for e in forest.edges}
    assert parent == {"base-q8": "base", "ft": "base", "ct": "base", "ct-ft": "ct"}
    assert [(f.root, len(f.members)) for f in forest.families] == [("base", 5), ("alone", 1)]
    edge = {e.child: e for e in forest.edges}
    assert edge["ct"].direction == UNKNOWN and edge["ft"].direction == "card" and edge["ft"].declared
    assert edge["base-q8"].direction == "quantized" and edge["ct-ft"].family == "base"
    assert edge["ct"].runner_up == "ft"  # the sibling came next; the quantized copy is no parent
    assert forest.relation("ct-ft", "ct") == "parent" and forest.relation("ct", "ct-ft") == "child"
    assert forest.relation("ct", "ft") == "sibling" and forest.relation("ct-ft", "base") == "ancestor"
    assert forest.relation("base", "ct-ft") == "descendant" and forest.relation("ct-ft", "ft") == "relative"
    assert forest.relation("base", "alone") is None


def test_a_model_something_says_is_derived_is_never_the_root():
    links = [link("pruned", "base", 0.9986, "base", "fewer layers", kind="pruned or depth up-scaled"),
             link("base", "tuned", 0.9985)]
    forest = build(["pruned", "base", "tuned"], links)
    assert forest.families[0].root == "base" and forest.parent("pruned").kind == "pruned"


def test_min_arborescence_costs_what_networkx_finds():
    import networkx as nx

    from lineage_scanner.lineage.tree import min_arborescence

    rng = np.random.default_rng(7)
    for _ in range(150):
        n = int(rng.integers(2, 9))
        arcs = [(0, v, 50.0 + rng.random()) for v in range(1, n)]  # every node reachable from the root
        arcs += [(int(u), int(v), float(rng.integers(0, 5)) + rng.random()) for u, v in rng.integers(1, n, (3 * n, 2))
                 if u != v]
        chosen = min_arborescence(n, arcs, 0)
        assert chosen[0] is None and all(arcs[a][1] == v for v, a in enumerate(chosen) if a is not None)
        g = nx.DiGraph()
        for u, v, w in arcs:
            if not g.has_edge(u, v) or g.edges[u, v]["weight"] > w:
                g.add_edge(u, v, weight=w)
        best = nx.minimum_spanning_arborescence(g)
        assert sum(arcs[a][2] for a in chosen if a is not None) == pytest.approx(best.size(weight="weight"))
        tree = nx.DiGraph((arcs[a][0], arcs[a][1]) for a in chosen if a is not None)
        assert nx.is_arborescence(tree) and tree.number_of_nodes() == n


def test_a_family_of_thousands_is_built_in_seconds():
    rng = np.random.default_rng(3)
    n = 3000
    parent = [0] * n  # a base, 2,400 children, and grandchildren under the first 40 of them
    parent[int(0.8 * n):] = list(rng.integers(1, 41, n - int(0.8 * n)))
    depth = [0] + [1 + (parent[k] != 0) for k in range(1, n)]
    links = [link(f"m{parent[k]}", f"m{k}", 0.999, f"m{parent[k]}", "card") for k in range(1, n)]
    for k in range(1, n):  # and the candidates a graph run judges: siblings, cousins, the root
        for other in rng.integers(0, n, 20):
            if other != k and other != parent[k] and parent[other] != k:
                hops = depth[k] + depth[other] - 2 * (parent[k] == parent[other] != 0)
                links.append(link(f"m{k}", f"m{other}", 0.999 ** hops - 1e-5 * rng.random()))
    started = time.perf_counter()
    forest = build([f"m{k}" for k in range(n)], links)
    assert time.perf_counter() - started < 60
    assert all(forest.parent(f"m{k}").parent == f"m{parent[k]}" for k in range(1, n))


def test_between_a_parent_and_its_exact_copy_the_card_decides():
    links = [link("base", "copy", 1.0, kind="identical weights"), link("base", "tuned", 0.9985, "base", "card"),
             link("copy", "tuned", 0.9985)]
    for order in (links, links[::-1]):
        assert build(["copy", "base", "tuned"], order, declared={"tuned": ["base"]}).parent("tuned").parent == "base"


def test_weights_tie_before_curves():
    links = [link("a", "b", 0.9999, evidence="curves"), link("a", "c", 0.30), link("b", "c", 0.31)]
    forest = build(["a", "b", "c"], links)
    # c's weights tie it to a and to b; a and b share only curves, however alike
    assert {frozenset((e.parent, e.child)) for e in forest.edges} == {frozenset("ac"), frozenset("bc")}


def test_tree_scores_count_edges_three_ways():
    from sklearn.metrics import adjusted_rand_score

    from lineage_scanner.lineage.treescore import Edge, adjusted_rand_index, score

    truth = [Edge("a", "b", "fine-tune"), Edge("b", "c", "quantized"), Edge("x", "y", "pruned")]
    found = [Edge("b", "a", "fine-tune", evidenced=False), Edge("b", "c", "quantized"), Edge("x", "y", "fine-tune")]
    result = score(found, truth, ["a", "b", "c", "x", "y", "z"])
    assert result.untyped == (1.0, 1.0, 1.0) and result.typed[2] == pytest.approx(2 / 3)
    assert result.directed[2] == pytest.approx(2 / 3) and result.top1_parent == pytest.approx(2 / 3)
    assert result.ari == 1.0 and (result.evidenced, result.evidenced_right) == (2, 2)
    assert result.wrong_parents == [("b", None, "a")]
    rng = np.random.default_rng(1)
    for _ in range(20):
        t, f = rng.integers(0, 4, 30), rng.integers(0, 5, 30)
        parts = [[[str(i) for i in range(30) if labels[i] == k] for k in set(labels)] for labels in (t, f)]
        assert adjusted_rand_index(*parts) == pytest.approx(adjusted_rand_score(t, f))


# ---- the demo zoo, end to end, as the README shows it ---------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"
#: The demo store's scan and one `lineage graph` (40 models: about 2 minutes on 2 idle cores) come with the
#: first test that asks for them.
SLOW = pytest.mark.timeout(1800)


@contextlib.contextmanager
def working_directory(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def lineage(*argv) -> tuple[int, str]:
    """One command in this process, as the README runs it; its exit code and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


#: The operator's sketch key the README's figures were made with (``LINEAGE_SKETCH_KEY``): a store's own key
#: is random, and with it the last digits of every closeness.
README_KEY = "5eed" * 16


@pytest.fixture(scope="module")
def demo(zoo, tmp_path_factory):
    """The README's setting: ./lineage-demo holds the zoo and ./lineage-db its scans; then every command the
    README shows the output of runs there (one `lineage graph`, whose derivations the other tests read)."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(Path(zoo[0].path).parent, root / "lineage-demo")
    with working_directory(root), pytest.MonkeyPatch.context() as env:
        env.setenv("LINEAGE_SKETCH_KEY", README_KEY)
        assert lineage("scan", *sorted(str(p) for p in Path("lineage-demo").iterdir() if p.is_dir()), "-q")[0] == 0
        before = sorted(os.listdir(root))
        shown = {command: lineage(*shlex.split(command)[1:]) for command, _ in output_blocks()}
        assert sorted(os.listdir(root)) == before  # graph wrote no file: none was asked for
    return root, shown


def output_blocks() -> list[tuple[str, list[str]]]:
    """The README's ```text blocks that show a command (``$ lineage ...``) and what it prints."""
    blocks = re.findall(r"```text\n\$ (lineage [^\n]+)\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    return [(command, body.rstrip("\n").split("\n")) for command, body in blocks]


def example_commands() -> list[str]:
    """The commands of the README's block that says every one of them runs as shown."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"runs every command of this block.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("lineage ")]


@SLOW
@pytest.mark.slow
def test_the_readme_shows_what_the_commands_print(demo):
    _, shown = demo
    blocks = output_blocks()
    assert [c for c, _ in blocks] == ["lineage graph", "lineage match llama-a-ct --top 5"]
    for command, expected in blocks:
        code, out = shown[command]
        assert code == 0, command
        if command == "lineage graph":
            assert out.splitlines() == expected  # the trees, line for line
        else:  # the same models in the same order with the same relations; the figures may move
            got = [line.split()[:2] for line in out.splitlines()[3:]]
            assert got == [line.split()[:2] for line in expected[3:]] and out.splitlines()[1] == expected[1]


@SLOW
@pytest.mark.slow
def test_every_readme_example_runs(demo):
    root, _ = demo
    commands = example_commands()
    assert len(commands) >= 6
    with working_directory(root):
        for command in commands:  # as a shell runs them: globs expanded
            argv = [m for arg in shlex.split(command)[1:] for m in (sorted(glob.glob(arg)) if "*" in arg else [arg])]
            assert lineage(*argv)[0] == 0, command
        assert Path("pruned.png").stat().st_size > 10_000 and Path("map.html").is_file()


@SLOW
@pytest.mark.slow
def test_every_model_hangs_under_the_one_it_was_made_from(demo, zoo):
    root, _ = demo
    store = Store(root / "lineage-db")
    with store.connect() as con:
        edges = {child: (parent, kind, way) for parent, child, kind, way in
                 con.execute("SELECT parent, child, kind, direction FROM edges").fetchall()}
        problems = con.execute("SELECT model, other, problem FROM disagreements ORDER BY ALL").fetchall()
    truth = {e.model: e for e in zoo if e.parent}
    assert {child: parent for child, (parent, _, _) in edges.items()} == {m: e.parent for m, e in truth.items()}
    expected = {"quantized": "quantized", "pruned": "fewer layers", "moe_upcycle": "experts", "finetune": "card",
                "continued": "unknown", "permuted": "unknown", "rotated": "unknown"}
    assert {m: way for m, (_, _, way) in edges.items()} == {m: expected[e.relation] for m, e in truth.items()}
    assert edges["llama-a-pruned"][1] == "pruned" and edges["llama-a-ct-ft"][1] == "fine-tune"
    # the views hold derivations: one disagreement per model whose card claims training from scratch
    undeclared = {e.model: e.parent for e in zoo if e.relation in ("continued", "permuted", "rotated")}
    assert {(m, other) for m, other, _ in problems} == set(undeclared.items())
    assert {p for _, _, p in problems} == {"derivation the weights show but no card declares"}


@SLOW
@pytest.mark.slow
def test_graph_files_are_directed(demo, tmp_path):
    import networkx as nx

    from lineage_scanner.lineage.graph import graph_data, write

    root, _ = demo
    graph = graph_data(Store(root / "lineage-db"))
    g = nx.read_graphml(write(graph, tmp_path / "g.graphml"))
    assert g.is_directed() and g.has_edge("llama-a-ct", "llama-a-ct-ft")
    assert not g.has_edge("llama-a-ct-ft", "llama-a-ct")
    assert g.edges["llama-a", "llama-a-q8_0"]["direction"] == "quantized" and g.number_of_nodes() == len(graph["nodes"])
    data = json.loads(write(graph, tmp_path / "g.json").read_text())
    assert data["families"] == graph["families"] and len(data["families"]) == 5


@SLOW
@pytest.mark.slow
def test_match_ranks_a_grandchild_under_its_parent(demo):
    root, _ = demo
    with working_directory(root):
        code, out = lineage("match", "llama-a-ft-q4_0", "--top", "3", "--prefilter", "12", "--json")
    parent, *rest = json.loads(out)["matches"]
    assert code == 0 and parent["model"] == "llama-a-ft" and parent["relation"] == "parent"
    assert parent["direction"] == "quantized" and {m["relation"] for m in rest} <= {"ancestor", "relative"}


def test_a_missing_local_path_is_an_error_not_a_row(tmp_path, capsys):
    code = main(["scan", str(tmp_path / "no-such-model"), "--db", str(tmp_path / "db")])
    assert code == 1 and capsys.readouterr().err == f"Error: {tmp_path / 'no-such-model'}: no such file or directory\n"
    assert not (tmp_path / "db").exists()  # nothing was stored, not even an error row
