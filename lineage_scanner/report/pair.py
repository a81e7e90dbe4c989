"""``lineage report A B``: one HTML file that an analyst can hand on, read top to bottom.

The verdict in a sentence; how sure, and which test says so; the evidence that decided, drawn, then the
other evidence and the seed method's curves; what the model cards declare and whether the weights agree;
both models' identities (commit, files, bytes read, sampled or exact, scanner version); and the commands
that reproduce it all.
"""

from __future__ import annotations

import math
import shlex

from lineage_scanner.printable import p_is, pvalue
from lineage_scanner.report.figures import draw_features, draw_seed, draw_sketch, new_figure, sketch_drawn, svg
from lineage_scanner.report.page import esc, page, table


def pair_report(a, b, verdict) -> str:
    """The report of ``verdict`` (from :func:`lineage_scanner.lineage.verdict.decide`) on signatures ``a``
    and ``b``, as a complete HTML document."""
    v = verdict
    body = [
        f"<h1>{esc(a.model)} <span class=\"muted\">vs</span> {esc(b.model)}</h1>",
        f'<p class="sub">Lineage report: revisions <code>{esc(a.revision)}</code> and '
        f"<code>{esc(b.revision)}</code></p>",
        f'<p class="verdict {esc(v.verdict)}" id="verdict">{sentence(v)}</p>',
        f"<p>{esc(v.reason)}.</p>",
        "<h2>How sure</h2>", table(_confidence(v)),
        "<h2>The evidence that decided</h2>", _deciding(a, b, v),
    ]
    other = _other(a, b, v)
    if other:
        body += ["<h2>The other evidence</h2>", other]
    seed = new_figure(10, 6.5)
    draw_seed(seed, [a, b], v.evidence.alignment, v.paper.per_role)
    body += ["<h2>The seed method's curves, for reference</h2>",
             _figure(svg(seed), f"Per-layer std of each attention projection, z-scored over relative depth "
                                f"(paper_score {_num(v.paper.score)}). Models of one era share these shapes, so "
                                "they are shown, never trusted on their own.")]
    body += ["<h2>Declared lineage</h2>", _declared(a, b, v)]
    body += ["<h2>The models</h2>", _identities(a, b)]
    body += ["<h2>Reproduce</h2>", f"<pre id=\"commands\">{esc(chr(10).join(commands(a, b)))}</pre>"]
    return page(f"Lineage report: {a.model} vs {b.model}", "\n".join(body))


def sentence(v) -> str:
    """The verdict in one sentence (escaped HTML)."""
    a, b = esc(v.a), esc(v.b)
    if v.verdict == "derived":
        kind = f" The kind: <strong>{esc(v.kind)}</strong>." if v.kind else ""
        return f"<strong>Derived</strong>: one of {a} and {b} was made from the other.{kind}"
    if v.verdict == "unrelated":
        return f"<strong>Unrelated</strong>: nothing in the weights of {a} and {b} says one came from the other."
    return f"<strong>Inconclusive</strong>: the weights of {a} and {b} neither prove nor rule out lineage."


def commands(a, b) -> list[str]:
    """The commands that rebuild this report from the models' sources."""
    ids = [shlex.quote(f"{s.model}@{s.revision}") for s in (a, b)]
    sources = " ".join(shlex.quote(s.source) for s in (a, b))
    sample = " --sample 0.05" if a.sampled or b.sampled else ""
    return [f"lineage scan {sources}{sample}",
            f"lineage compare {ids[0]} {ids[1]} --json",
            f"lineage report {ids[0]} {ids[1]} --out report.html"]


def _confidence(v) -> list[tuple[str, str]]:
    rows = [("decided by", esc(_test_name(v))),
            ("p-value", f"<strong>{esc(pvalue(v.p_value, v.log10_p))}</strong>")]
    s = v.sketch
    if s is not None:
        pairs = f"{len(s.pairing)} layer pair{'s' if len(s.pairing) != 1 else ''}"
        rows.append(("weight sketch (values)", esc(f"median |r| {_num(s.score)} over {pairs}, "
                                                   f"{p_is(None, s.log10_p)}: exact null, self-normalised per "
                                                   "position")))
    else:
        rows.append(("weight sketch", "does not apply: no attention matrix has the same shape in both"))
    c = v.circuits
    if c is not None:
        gram = "" if c.gram_r is None else (f"; their Gram (unchanged by a rotated residual stream) r "
                                            f"{_num(c.gram_r)}, {p_is(None, c.gram_log10_p)}")
        rows.append(("circuit sketches", esc(f"OV/QK entries r {_num(c.score)} over {len(c.pairing)} layer pairs, "
                                             f"{p_is(None, c.log10_p)} (robust {p_is(None, c.robust_log10_p)}): "
                                             f"exact null, sign symmetry{gram}")))
    if v.conflict:
        rows.append(("disagreement", esc(v.conflict)))
    if v.verification:
        ver = v.verification
        rows.append(("verified", esc(f"read again under a fresh key: {ver['values_per_matrix']} values per matrix, "
                                     f"{ver['bytes_read'] / 1e6:.1f} MB; the stored evidence said "
                                     f"{ver['stored_verdict']}" if ver.get("ran") else f"not possible: {ver['why']}")))
    null = f"{v.null_size} unrelated pairs from the {v.null.source} null" if v.null else "no reference null"
    surrogate = ("not run: the reference null alone puts the pair among unrelated ones"
                 if v.evidence.surrogate_p is None else p_is(v.evidence.surrogate_p))
    rows.append(("feature curves", esc(f"score {_num(v.evidence.score)}, {p_is(v.p_curves)} (the larger of: "
                                       f"{null}, {p_is(v.p_null)}; surrogates with each model's own depth "
                                       f"trend: {surrogate})")))
    rows.append(("seed method", esc(f"paper_score {_num(v.paper.score)} (not calibrated; for reference)")))
    return rows


def _test_name(v) -> str:
    names = {"sketch": "the weight sketch's same-shape test (exact null: independent weights)",
             "circuits": "the circuit sketches' exact test (outputs a reparametrisation keeps)",
             "circuit gram": "the circuits' Gram (unchanged by a rotated residual stream; calibrated null)",
             "curves": "the feature curves (reference null and surrogates)"}
    return names.get(v.decided_by, "nothing: no unforgeable evidence is firm")


def _deciding(a, b, v) -> str:
    if sketch_drawn(v):
        return _sketch_figure(v, a, b)
    return _features_figure(a, b, v)


def _other(a, b, v) -> str:
    """The evidence that did not decide: the curves (and where the circuits decided, the values too), or
    the sketch where the curves decided."""
    if sketch_drawn(v):
        values = _sketch_figure(v) if v.decided_by != "sketch" and v.sketch is not None and v.sketch.grid is not None \
            else ""
        return values + _features_figure(a, b, v)
    if v.sketch is not None and v.sketch.grid is not None:
        return _sketch_figure(v)
    return ""


def _sketch_figure(v, a=None, b=None) -> str:
    """The sketch's figure: of the values, or with ``a`` and ``b`` of a pair the circuits decided, of the
    circuit sketches."""
    fig = new_figure(11, 4.8)
    draw_sketch(fig, v, a, b)
    what = ("the circuit sketches (OV and QK entries, which every map that keeps a model's outputs keeps)"
            if a is not None and v.decided_by != "sketch" else
            "the weight sketches (values at positions the store's secret key chose)")
    return _figure(svg(fig), f"Left: mean |r| of {what} for every pair of layers; circles mark the pairing the "
                             "test chose. Right: each channel's median |r|; models trained apart sit near 0, "
                             "derived ones near 1.")


def _features_figure(a, b, v) -> str:
    fig = new_figure(11, 7)
    draw_features(fig, a, b, v)
    return _figure(svg(fig), "The invariant feature curves (unchanged by rescaling and norm folding) of both "
                             "models over relative depth; grey lines join the layers the alignment paired.")


def _figure(svg_text: str, caption: str) -> str:
    return f"<figure>{svg_text}<figcaption>{esc(caption)}</figcaption></figure>"


def _declared(a, b, v) -> str:
    """What each card names as its base, and whether the weights agree with it."""
    rows = [(s.model, ", ".join(s.declared_base) or "nothing") for s in (a, b)]
    claims = [(s, other) for s, other in ((a, b), (b, a)) if other.model in (s.declared_base or [])]
    if claims and v.verdict == "derived":
        note = f'<p class="agree" id="agreement">The weights agree: {esc(claims[0][0].model)} declares ' \
               f"{esc(claims[0][1].model)} as its base, and the weights say derived.</p>"
    elif claims:
        note = f'<p class="disagree" id="agreement">The weights disagree: {esc(claims[0][0].model)} declares ' \
               f"{esc(claims[0][1].model)} as its base, but the weights say {esc(v.verdict)}.</p>"
    elif v.verdict == "derived":
        note = '<p class="disagree" id="agreement">Undeclared: neither card names the other, yet the weights say ' \
               "derived.</p>"
    else:
        note = '<p class="agree" id="agreement">Consistent: neither card names the other, and the weights show no ' \
               "lineage.</p>"
    return table([(f"{m} declares", esc(base)) for m, base in rows]) + note


def _identities(a, b) -> str:
    def cells(s) -> list[str]:
        files = ", ".join(s.files) if s.files else "(not recorded by this scanner version)"
        return [esc(s.model), f"<code>{esc(s.revision)}</code>", esc(s.source), esc(s.format),
                esc(f"{s.family} ({s.architecture})"), esc(s.n_layers), esc(s.hidden_size), esc(s.dtype),
                esc(files), esc(f"{s.bytes_read:,}"), "sampled" if s.sampled else "exact (every element)",
                esc(s.scanner_version), esc(s.scanned_at)]

    headings = ["model", "revision (commit)", "source", "format", "family (architecture)", "layers", "hidden size",
                "weight dtype", "files", "bytes read", "scan", "scanner version", "scanned at"]
    ca, cb = cells(a), cells(b)
    rows = "".join(f"<tr><th>{esc(h)}</th><td>{x}</td><td>{y}</td></tr>" for h, x, y in zip(headings, ca, cb))
    return f"<table id=\"identities\">{rows}</table>"


def _num(x) -> str:
    if x is None:
        return "n/a"
    return "n/a" if isinstance(x, float) and not math.isfinite(x) else f"{x:.4g}"
