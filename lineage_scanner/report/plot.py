"""Per-layer curve plots, as in the seed paper's figure: one panel per role, z-scored std over depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lineage_scanner.curves import zscore
from lineage_scanner.layouts.families import CURVE_ROLES


def plot_curves(signatures, out: str | Path, title: str | None = None,
                per_role: dict[str, float] | None = None, alignment: list[tuple[int, int]] | None = None) -> Path:
    """Write a 2×2 PNG of the z-scored Q/K/V/O std curves of ``signatures`` over relative depth.

    With two signatures and an ``alignment`` (layer pairs), grey lines join the layers it pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, role in zip(axes.flat, CURVE_ROLES):
        for sig in signatures:
            z = zscore(sig.curves[role]) if role in sig.curves else None
            if z is not None:
                ax.plot(np.linspace(0, 1, len(z)), z, marker="o", markersize=3, label=f"{sig.model} ({len(z)} layers)")
        if alignment and len(signatures) == 2:
            za, zb = (zscore(s.curves.get(role, [])) for s in signatures)
            if za is not None and zb is not None:
                for i, j in alignment:
                    ax.plot([i / max(len(za) - 1, 1), j / max(len(zb) - 1, 1)], [za[i], zb[j]], color="grey",
                            linewidth=0.6, alpha=0.6, zorder=0)
        heading = f"{role.upper()} projection"
        if per_role and role in per_role:
            heading += f"   r = {per_role[role]:.3f}"
        ax.set_title(heading)
        ax.set_ylabel("z-scored std")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("relative depth")
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
