"""The positional weight sketch: each attention matrix's values at positions fixed by its shape alone.

Independently trained models have uncorrelated weights at any given position, whatever their era or
recipe; a fine-tune, continued training, a quantized copy, a merge or an upcycle keeps them strongly
correlated. So a few hundred values per matrix, taken at the same positions in every model of that shape,
decide lineage for the commonest case on the Hub (equal shapes) far more firmly than curves of moments
can (the test is :mod:`lineage_scanner.lineage.sketch`).

Positions: the matrix (``[out, in]`` as ``nn.Linear`` holds it, a fused tensor's part on its own) is cut
into SKETCH_RUNS equal bands of rows; each band has one *anchor row*, and a run of SKETCH_RUN consecutive
elements in it, row and column drawn by a generator seeded with the shape. A run never crosses a row, so
a fused tensor's part, a head-interleaved packing and a split checkpoint give the same positions.

Two kinds of sketch come from those rows:

- ``values``: the runs themselves. Moved by any change of basis, kept by anything that keeps the weights.
- ``gram`` (Q/K/V): the inner products of the anchor rows with each other (the off-diagonal of
  W·diag(γ)²·Wᵀ on them). A rotation of the residual stream (W·Rᵀ, as SliceGPT- and QuaRot-style edits
  do) leaves them exactly as they were, so a rotated copy still correlates.

A sampled scan reads each anchor row whole as one of its runs (see :mod:`lineage_scanner.measure.sampling`),
so the sketch costs it no request of its own. 16 runs of 25 values for Q/K/V/O plus 120 Gram entries for
Q/K/V, as int8, keep a 32-layer model's sketch under 64 KB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

SKETCH_RUNS = 16
SKETCH_RUN = 25
#: Mixed into every shape's seed, so that the positions are this project's own and stable across versions.
POSITION_SEED = 0x5E7C4
#: Roles the sketch covers: the attention projections the curves are made of; and those with a Gram sketch
#: (their input is the residual stream, whose rotation the Gram ignores).
SKETCHED_ROLES = ("q", "k", "v", "o")
GRAM_ROLES = ("q", "k", "v")


@cache
def anchors(rows: int, cols: int) -> tuple[np.ndarray, int]:
    """Flat (row-major) starts of the sketch's runs in a ``rows`` x ``cols`` matrix, and their length."""
    run = min(SKETCH_RUN, cols)
    rng = np.random.default_rng((rows, cols, POSITION_SEED))
    band = rows / SKETCH_RUNS
    row = ((np.arange(SKETCH_RUNS) + rng.random(SKETCH_RUNS)) * band).astype(np.int64)
    col = rng.integers(0, cols - run + 1, size=SKETCH_RUNS)
    starts = np.minimum(row, rows - 1) * cols + col
    starts.setflags(write=False)
    return starts, run


def anchor_rows(rows: int, cols: int) -> np.ndarray:
    """The anchor row of each band (distinct when the matrix has at least SKETCH_RUNS rows)."""
    return anchors(rows, cols)[0] // cols


def gram(rows: np.ndarray) -> np.ndarray:
    """The off-diagonal inner products of the anchor rows ([SKETCH_RUNS, in]), upper triangle row by row."""
    products = rows.astype(np.float64) @ rows.T.astype(np.float64)
    return products[np.triu_indices(len(rows), 1)].astype(np.float32)


def bands(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat [low, high) of each run's band of rows: a sampled run stays inside its band (its stratum)."""
    edges = (np.arange(SKETCH_RUNS + 1) * (rows / SKETCH_RUNS)).astype(np.int64) * cols
    return edges[:-1], edges[1:]


def positions(rows: int, cols: int) -> np.ndarray:
    """Every flat index the sketch holds, run after run."""
    starts, run = anchors(rows, cols)
    return (starts[:, None] + np.arange(run)).reshape(-1)


def rope_row(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Where llama.cpp's converter puts each row of a Q or K projection: within a head, the two rotary
    halves interleaved (row ``b·d/2 + a`` of a head goes to ``2a + b``)."""
    head, within = np.divmod(rows, head_dim)
    half, offset = np.divmod(within, head_dim // 2)
    return head * head_dim + 2 * offset + half


@dataclass(frozen=True)
class SketchPart:
    """One sketch of one attention matrix (``kind`` "values" or "gram", see the module docstring); for Q/K/V
    with the layer's input-norm gain folded in, so that a model published with its gains folded has the
    same sketch. ``rows`` x ``cols`` is the matrix's shape, [out, in]."""

    layer: int
    role: str
    rows: int
    cols: int
    values: np.ndarray  # float32: at :func:`positions`, run after run, or :func:`gram`'s upper triangle
    kind: str = "values"

    def codes(self) -> tuple[float, bytes]:
        """The values as stored: one float scale and int8 codes (rounding costs a correlation < 1e-4)."""
        peak = float(np.abs(self.values).max()) if self.values.size else 0.0
        scale = peak / 127.0 if peak > 0 and math.isfinite(peak) else 1.0
        return scale, np.round(self.values / scale).astype(np.int8).tobytes()

    @classmethod
    def from_codes(cls, layer: int, role: str, rows: int, cols: int, scale: float, codes: bytes,
                   kind: str = "values") -> SketchPart:
        values = np.frombuffer(codes, dtype=np.int8).astype(np.float32) * np.float32(scale)
        return cls(layer, role, rows, cols, values, kind)

    @property
    def channel(self) -> str:
        """What a sketch is compared with in another model: the same role and kind."""
        return self.role if self.kind == "values" else f"{self.role}:{self.kind}"
