"""The evidence behind a verdict, drawn: what ``compare --plot``, ``plot`` and ``report`` show.

Each ``draw_*`` function fills a matplotlib (sub)figure, so one drawing serves a single PNG, a panel of a
composite and an inline SVG of the HTML report alike:

- :func:`draw_sketch`: the same-shape test, the mean |r| of every layer pair as a heat map with the
  layer pairing marked, and each channel's median |r|; where the circuits decided (a copy reparametrised
  so that its values correlate nowhere), the heat map is of the circuit sketches and their pairing.
- :func:`draw_features`: the invariant feature curves the curve score used, both models z-scored over
  depth, with the alignment's layer pairs joined.
- :func:`draw_seed`: the seed method's per-role std curves, for reference.

matplotlib is imported on first use (a lookup that draws nothing never pays for it). Names are drawn as
plain text: mathtext is off (a model called ``$x^2$`` is shown as typed) and control characters are
escaped (they are not valid in an SVG). Legends sit outside the axes, so they never cover data, and the
second model of a pair is drawn dashed with open markers, so curves that coincide still show both.
"""

from __future__ import annotations

import io
import math

import numpy as np

from lineage_scanner.curves import zscore
from lineage_scanner.layouts.families import CURVE_ROLES
from lineage_scanner.lineage.closeness import channel_grid
from lineage_scanner.measure.sketch import SKETCH_RUN, SKETCH_RUNS
from lineage_scanner.printable import p_is, printable

#: The circuit channels a figure draws, and the tests that read them.
CIRCUIT_CHANNELS = ("ov:circuit", "qk:circuit")
CIRCUIT_TESTS = ("circuits", "circuit gram")

#: How each model of a figure is drawn: the second dashed with open markers, over the first.
STYLES = ({"linestyle": "-", "marker": "o"}, {"linestyle": "--", "marker": "s", "markerfacecolor": "none"})


def new_figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text in an SVG: selectable, searchable, small
    plt.rcParams["text.parse_math"] = False  # a name holding "$...$" is text, not TeX
    return plt.figure(figsize=(width, height), layout="constrained")


def close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def draw_sketch(fig, verdict, a=None, b=None) -> None:
    """The sketch's layer-pair correlations (heat map, pairing as circles) and its channels (bars); with
    the signatures ``a`` and ``b`` of a pair the circuits decided, the circuit sketches' instead."""
    s, c = verdict.sketch, verdict.circuits
    heat, bars = fig.subplots(1, 2, width_ratios=[3, 2])
    by_circuits = a is not None and b is not None and c is not None and verdict.decided_by in CIRCUIT_TESTS
    found = channel_grid(a.sketch, b.sketch, CIRCUIT_CHANNELS) if by_circuits else None
    if found is not None:
        grid, layers, pairing = found.grid, (found.layers_a, found.layers_b), c.pairing
        gram = "" if c.gram_r is None else f"; Gram r {c.gram_r:.3f}, {p_is(None, c.gram_log10_p)}"
        what, title = "OV/QK circuit entries", f"circuit sketches: {p_is(None, c.log10_p)}{gram}"
    elif s is not None and s.grid is not None:
        grid, layers, pairing = s.grid, s.layers, s.pairing
        what, title = "Q/K/V/O values", f"weight sketch: {p_is(None, s.log10_p)} (exact, values)"
    else:  # circuits without a layer grid both models share (read from stored ids alone)
        grid, layers, pairing = np.zeros((1, 1)), ((), ()), ()
        what, title = "nothing drawable", "no layer grid both models share"
    image = heat.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", origin="lower", aspect="auto",
                        interpolation="nearest")
    fig.colorbar(image, ax=heat, label=f"mean |r| over {what}")
    index_a, index_b = ({layer: k for k, layer in enumerate(ids)} for ids in layers)
    pairs = [(index_a[i], index_b[j]) for i, j in pairing if i in index_a and j in index_b]
    if pairs:
        ya, xb = zip(*pairs)
        heat.scatter(xb, ya, s=14, facecolors="none", edgecolors="white", linewidths=1.0)
    heat.set_xlabel(f"layer of {_short(verdict.b)}")
    heat.set_ylabel(f"layer of {_short(verdict.a)}")
    heat.set_title(f"{title}; circles: the layer pairing", fontsize=10)
    per_channel = (s.per_channel if s is not None else None) or {}
    channels = sorted(per_channel)
    bars.barh(range(len(channels)), [per_channel[ch] for ch in channels], color="tab:blue")
    bars.set_yticks(range(len(channels)), [c.upper() for c in channels])
    bars.invert_yaxis()
    bars.set_xlim(0, 1)
    bars.axvline(2.0 / math.sqrt(SKETCH_RUNS * SKETCH_RUN), color="tab:red", linewidth=0.8, linestyle="--",
                 label="~2σ if unrelated")
    bars.set_xlabel("median |r| of the values")
    bars.set_title("per channel" if s is None else f"per channel: values {p_is(None, s.log10_p)}", fontsize=10)
    bars.legend(loc="upper right", bbox_to_anchor=(1.0, -0.16), fontsize=7, frameon=False)


def sketch_drawn(verdict) -> bool:
    """Whether a weight test decided and there is a grid of layer pairs to draw for it."""
    s = verdict.sketch
    return (verdict.decided_by == "sketch" and s is not None and s.grid is not None) or (
        verdict.decided_by in CIRCUIT_TESTS and verdict.circuits is not None)


def draw_features(fig, a, b, verdict) -> None:
    """Each feature the curve score used: both models' z-scored curves, aligned layers joined."""
    ev = verdict.evidence
    names = [f for f in ev.features if f in (a.invariants or {}) and f in (b.invariants or {})] or ["qk"]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        za, zb = (_z((s.invariants or {}).get(name)) for s in (a, b))
        if za is None or zb is None:
            ax.set_title(f"{name}: flat or missing", fontsize=9)
            continue
        xa, xb = np.linspace(0, 1, len(za)), np.linspace(0, 1, len(zb))
        ax.plot(xa, za, markersize=3, label=_short(verdict.a), **STYLES[0])
        ax.plot(xb, zb, markersize=3, label=_short(verdict.b), **STYLES[1])
        for i, j in ev.alignment:
            if i < len(za) and j < len(zb):
                ax.plot([xa[i], xb[j]], [za[i], zb[j]], color="grey", linewidth=0.5, alpha=0.5, zorder=0)
        r = ev.per_feature.get(name)
        ax.set_title(f"{name}   r = {r:.3f}" if r is not None and math.isfinite(r) else name, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    _legend(fig, axes[0])
    fig.suptitle(f"feature curves over relative depth: score {ev.score:.3f}, {p_is(verdict.p_curves)}",
                 fontsize=10)


def draw_seed(fig, signatures, alignment=None, per_role: dict[str, float] | None = None) -> None:
    """The seed method's picture: z-scored std of each attention projection over relative depth."""
    axes = fig.subplots(2, 2, sharex=True)
    for ax, role in zip(axes.flat, CURVE_ROLES):
        for k, sig in enumerate(signatures):
            z = _z(sig.curves.get(role))
            if z is not None:
                ax.plot(np.linspace(0, 1, len(z)), z, markersize=3, label=f"{printable(sig.model)} ({len(z)} layers)",
                        **STYLES[k % 2])
        if alignment and len(signatures) == 2:
            za, zb = (_z(s.curves.get(role)) for s in signatures)
            if za is not None and zb is not None:
                for i, j in alignment:
                    if i < len(za) and j < len(zb):
                        ax.plot([i / max(len(za) - 1, 1), j / max(len(zb) - 1, 1)], [za[i], zb[j]], color="grey",
                                linewidth=0.6, alpha=0.6, zorder=0)
        heading = f"{role.upper()} projection"
        if per_role and role in per_role and math.isfinite(per_role[role]):
            heading += f"   r = {per_role[role]:.3f}"
        ax.set_title(heading, fontsize=10)
        ax.set_ylabel("z-scored std")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("relative depth")
    _legend(fig, axes.flat[0])


def _legend(fig, ax) -> None:
    """One legend for the (sub)figure, below its axes: it never covers a curve or a title."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize=8,
                   frameon=False)


def draw_deciding(fig, a, b, verdict) -> None:
    """The evidence the verdict rests on: the weight test that decided (values, or circuits), else the
    feature curves."""
    if sketch_drawn(verdict):
        draw_sketch(fig, verdict, a, b)
    else:
        draw_features(fig, a, b, verdict)


def evidence_figure(a, b, verdict, title: str | None = None):
    """``compare --plot``: the deciding evidence on top, the seed method's curves below."""
    fig = new_figure(11, 11)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.1])
    draw_deciding(top, a, b, verdict)
    draw_seed(bottom, [a, b], verdict.evidence.alignment, verdict.paper.per_role)
    bottom.suptitle(f"seed method (paper_score {verdict.paper.score:.3f}), for reference", fontsize=10)
    if title:
        fig.suptitle(printable(title))
    return fig


def svg(fig) -> str:
    """The figure as an ``<svg>`` element to inline in HTML (no XML prolog, no DOCTYPE), and closed."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _z(values) -> np.ndarray | None:
    if not values:
        return None
    z = zscore(np.asarray(values, dtype=np.float64))
    return None if z is None or not np.all(np.isfinite(z)) else z


def _short(model_at_revision: str) -> str:
    model, _, revision = model_at_revision.rpartition("@")
    return printable(f"{model or revision}@{revision[:8]}" if model else model_at_revision)
