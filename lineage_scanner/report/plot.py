"""PNG files of the figures in :mod:`lineage_scanner.report.figures`: ``lineage plot`` (the seed method's
curves of any number of models) and ``compare --plot`` (the evidence that decided, then the seed curves)."""

from __future__ import annotations

from pathlib import Path

from lineage_scanner.printable import printable
from lineage_scanner.report.figures import close, draw_seed, evidence_figure, new_figure


def plot_curves(signatures, out: str | Path, title: str | None = None,
                per_role: dict[str, float] | None = None, alignment: list[tuple[int, int]] | None = None) -> Path:
    """A 2×2 PNG of the z-scored Q/K/V/O std curves of ``signatures`` over relative depth; with two
    signatures and an ``alignment`` (layer pairs), grey lines join the layers it pairs."""
    fig = new_figure(10, 7)
    draw_seed(fig, signatures, alignment, per_role)
    if title:
        fig.suptitle(printable(title))
    return _save(fig, out)


def plot_evidence(a, b, verdict, out: str | Path, title: str | None = None) -> Path:
    """A PNG of the evidence the verdict of ``a`` and ``b`` rests on, with the seed curves below it."""
    return _save(evidence_figure(a, b, verdict, title), out)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    close(fig)
    return out
