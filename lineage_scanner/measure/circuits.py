"""Circuit sketches: what attention computes, which no function-preserving reparametrisation can move.

A model thief can keep every output of a model while rewriting every weight: per KV group, V's rows mixed
by any invertible B and the matching columns of O by B⁻¹; per RoPE frequency pair, Q's pair multiplied by
a complex number c and K's by 1/conj(c) (it commutes with the rotation, so every q·k stays); heads
permuted; Q and K, or V and O, rescaled against each other; the norm gains folded into the matrices they
feed; the residual stream rotated by an orthogonal R. What such maps leave alone are the circuits:

- OV = Σ_h O_h V_g(h) diag(γ): how the layer writes what it reads (D x D), and
- QK = diag(γ) Σ_h Q_hᵀ K_g(h) diag(γ): what it attends with (D x D),

summed over heads, so a head permutation changes nothing either (a per-head map cancels inside each
product, a RoPE-commuting map inside each rotary pair). Only a residual rotation moves them, as R·X·Rᵀ.

Two sketches are taken from them, both per layer, from slices read while the matrices pass:

- ``circuit`` (roles "ov", "qk"): entries at residual positions (i, j) of a matching drawn by the store's
  key (each coordinate used once), the same in every layer, both ways round: [X[i, j]..., X[j, i]...]. A
  residual coordinate's sign flip (a symmetry of training) multiplies entry (i, j) by s_i·s_j, so for two
  models trained apart each matched pair is a fair coin, the same in every layer: the exact test of
  :mod:`lineage_scanner.lineage.circuits`. An entry costs one dot product; no D x D product is formed.
- ``circuit_gram``: the cosines between every two circuits of the model, which a residual rotation leaves
  exactly as they were. Role "heads" where every head's own circuits (O_h V_g(h) and Q_hᵀ K_g(h), which the
  per-head and RoPE-commuting maps leave as they were too) are few (MAX_HEAD_UNITS) and fit in the key's
  ``gram_bytes``: a shallow model then has L·2H units rather than 2L, which a shallow model needs (4 layers
  give 8 layer sums, too few to decide anything once their shared trend is removed; their 64 heads give
  2,016 cosines); where heads are too many, each KV group's (its heads summed). A head permutation only
  reorders a layer's units: the test matches heads first (:mod:`lineage_scanner.lineage.circuits`). Else
  role "units": each layer's summed OV and QK, over every layer while they fit (models up to about a billion
  parameters for a store's key), else a subset of layers the key draws; deep verification reads with a
  larger budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lineage_scanner.measure.sketch import SketchKey, SketchPart
from lineage_scanner.readers.arrays import floats

CIRCUIT_ROLES = ("q", "k", "v", "o")


def matching(width: int, key: SketchKey) -> tuple[np.ndarray, np.ndarray]:
    """The residual pairs (i, j) the circuit sketch reads: disjoint, so their sign flips are independent."""
    perm = key.rng("circuit pairs", width).permutation(width)
    pairs = min(key.circuit_pairs, width // 2)
    return perm[:pairs], perm[pairs : 2 * pairs]


#: Fewer layers than this say too little in a Gram sketch to be worth its cost.
MIN_GRAM_LAYERS = 3


def gram_layers(n_layers: int, width: int, key: SketchKey) -> frozenset[int]:
    """The layers whose circuits enter the Gram sketch: all of them where they fit in the key's budget, else
    as many as fit, drawn by the key (the same for every model of one depth and width)."""
    fit = key.gram_bytes // (2 * 4 * width * width) if width else 0
    if fit >= n_layers:
        return frozenset(range(n_layers))
    if fit < MIN_GRAM_LAYERS:
        return frozenset()
    return frozenset(int(i) for i in key.rng("gram layers", n_layers, width).choice(n_layers, fit, replace=False))


#: The most units a Gram sketch by heads may have: 8,128 cosines, 16 KB stored. Shallow models need them
#: (their layer sums are too few); deep ones have layer sums enough, and a stored sketch stays small.
MAX_HEAD_UNITS = 128


def units_per_layer(n_layers: int, width: int, heads: int, groups: int, key: SketchKey) -> int:
    """How many units of each circuit a layer gives the Gram sketch: its query heads' own circuits, else its
    KV groups' (the heads of a group summed), whichever first has at most MAX_HEAD_UNITS in all within the
    key's budget; else 1, the layer's sum."""
    for units in (heads, groups):
        total = 2 * units * n_layers
        if units > 1 and total <= MAX_HEAD_UNITS and total * 4 * width * width <= key.gram_bytes:
            return units
    return 1


@dataclass
class _Layer:
    """What one layer's matrices left behind, until all four are in."""

    o_rows: np.ndarray | None = None  # [2P, groups·d]: O's rows at the matched coordinates, heads summed
    v_cols: np.ndarray | None = None  # [groups·d, 2P]: V's columns there
    q_cols: np.ndarray | None = None  # [groups·d, 2P]: Q's columns there, heads summed per group
    k_cols: np.ndarray | None = None
    o_side: np.ndarray | None = None  # O whole [D, heads, d], for the Gram sketch
    v_side: np.ndarray | None = None  # V·diag(γ) whole [groups, d, D]
    q_side: np.ndarray | None = None
    k_side: np.ndarray | None = None


@dataclass
class CircuitAccumulator:
    """Collects a model's circuit sketches from its Q/K/V/O matrices as they pass, in any order of layers
    and roles (each layer's input-norm gain must be given before its matrices). Memory: a few slices per
    layer in flight, and for the Gram sketch the circuits themselves (``n_layers`` tells whether they fit)."""

    width: int
    head_dim: int
    key: SketchKey
    n_layers: int = 0
    gains: dict[int, np.ndarray] = field(default_factory=dict)
    _layers: dict[int, _Layer] = field(default_factory=dict)
    _entries: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    _units: dict[tuple, np.ndarray] = field(default_factory=dict)
    #: units of each circuit per layer in the Gram sketch (:func:`units_per_layer`; 0 until a layer tells)
    _per_layer: int = 0

    def __post_init__(self):
        i, j = matching(self.width, self.key)
        self._at = np.concatenate([i, j])
        self._gram = gram_layers(self.n_layers, self.width, self.key)

    def gain(self, layer: int, gain: np.ndarray) -> None:
        if gain.size == self.width:
            self.gains[layer] = np.asarray(gain, dtype=np.float64).reshape(-1)

    def add(self, layer: int, role: str, matrix: np.ndarray) -> None:
        """One projection whole, [out, in] as ``nn.Linear`` holds it, in any dtype :func:`floats` decodes."""
        sink = self.begin(layer, role, matrix.shape)
        if sink is not None:
            sink.take(0, matrix)
            sink.close()

    def begin(self, layer: int, role: str, shape: tuple[int, ...]) -> RowSink | None:
        """A projection of ``shape`` ([out, in]) that arrives in blocks of rows (a tensor streamed through
        memory); None where it cannot be a circuit's (its shape does not fit the model's width and heads)."""
        rows, cols = shape
        fits = (rows == self.width and cols % self.head_dim == 0) if role == "o" else \
            (cols == self.width and rows % self.head_dim == 0)
        if role not in ("q", "k", "v", "o") or not fits:
            return None
        return RowSink(self, layer, role, rows, cols, layer in self._gram)

    def _store(self, layer: int, role: str, sliced: np.ndarray, whole: np.ndarray | None) -> None:
        """A finished projection's slices (O: its rows at the matched coordinates; Q/K/V: its columns there,
        the gain folded in) and, for the Gram, all of it."""
        d = self.head_dim
        slot = self._layers.setdefault(layer, _Layer())
        if role == "o":  # heads summed once V tells how many KV groups there are
            slot.o_rows = sliced.reshape(len(self._at), -1, d)
            slot.o_side = whole.reshape(self.width, -1, d) if whole is not None else None
        else:  # [heads, d, columns]
            heads = sliced.shape[0] // d
            cols = sliced.reshape(heads, d, len(self._at))
            side = whole.reshape(heads, d, self.width) if whole is not None else None
            setattr(slot, f"{role}_cols", cols)
            setattr(slot, f"{role}_side", side)
        self._finish(layer)

    def _finish(self, layer: int) -> None:
        s = self._layers[layer]
        pairs = len(self._at) // 2
        i, j = np.arange(pairs), np.arange(pairs, 2 * pairs)
        if s.o_rows is not None and s.v_cols is not None:
            groups = s.v_cols.shape[0]
            rows = _group_sum(s.o_rows, groups).reshape(2 * pairs, -1)  # [2P, groups·d]
            cols = s.v_cols.reshape(-1, 2 * pairs).T  # [2P, groups·d]
            # OV[i_k, j_k], then OV[j_k, i_k]: one dot product each
            self._entries[(layer, "ov")] = np.concatenate([_dots(rows[i], cols[j]), _dots(rows[j], cols[i])])
            if s.o_side is not None and s.v_side is not None:  # O_u V_g(u) for each unit u
                o = self._units_of(s.o_side, groups, axis=1)
                self._unit_products(layer, "ov", [o[:, u] for u in range(o.shape[1])], s.v_side)
            s.o_rows = s.v_cols = s.o_side = s.v_side = None
        if s.q_cols is not None and s.k_cols is not None:
            groups = s.k_cols.shape[0]
            q = _group_sum(s.q_cols, groups, axis=0).reshape(-1, 2 * pairs).T  # [2P, groups·d]
            k = s.k_cols.reshape(-1, 2 * pairs).T
            # QK[i_k, j_k], then QK[j_k, i_k]
            self._entries[(layer, "qk")] = np.concatenate([_dots(q[i], k[j]), _dots(q[j], k[i])])
            if s.q_side is not None and s.k_side is not None:  # Q_uᵀ K_g(u) for each unit u
                q = self._units_of(s.q_side, groups, axis=0)
                self._unit_products(layer, "qk", [q[u].T for u in range(q.shape[0])], s.k_side)
            s.q_cols = s.k_cols = s.q_side = s.k_side = None

    def _units_of(self, side: np.ndarray, groups: int, axis: int) -> np.ndarray:
        """O [D, heads, d] or Q [heads, d, D] as the Gram's units: per query head, or summed per KV group
        (also where the units are the layer's sum: :meth:`_unit_products` adds the groups up)."""
        if not self._per_layer:
            self._per_layer = units_per_layer(self.n_layers, self.width, side.shape[axis], groups, self.key)
        return side if self._per_layer == side.shape[axis] else _group_sum(side, groups, axis=axis)

    def _unit_products(self, layer: int, circuit: str, left: list[np.ndarray], right: np.ndarray) -> None:
        """Each unit's circuit, left[u] [D, d] times its KV group's right side [d, D]; summed where the units
        are the layer's sum."""
        per = len(left) // right.shape[0]
        products = [left[u].astype(np.float32) @ right[u // per].astype(np.float32) for u in range(len(left))]
        if self._per_layer == 1:
            products = [np.sum(products, axis=0)]
        for u, x in enumerate(products):
            self._units[(layer, circuit, u)] = x

    def parts(self) -> tuple[SketchPart, ...]:
        """The circuit sketches: per layer whose circuits are complete, and the Gram of all of them (units in
        depth order; in each layer OV before QK; role "heads" where they are heads' or KV groups' own,
        ``cols`` the units of one layer)."""
        out = [SketchPart(layer, role, self.width, self.width, v.astype(np.float32), "circuit")
               for (layer, role), v in sorted(self._entries.items())]
        units = [v.reshape(-1) for _, v in sorted(self._units.items())]
        if len(units) >= 2:
            x = np.stack(units)
            norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
            cos = (x @ x.T).astype(np.float64) / np.maximum(np.outer(norms, norms), np.finfo(float).tiny)
            n = len(units)
            role, cols = ("heads", 2 * self._per_layer) if self._per_layer > 1 else ("units", n)
            out.append(SketchPart(-1, role, n, cols, cos[np.triu_indices(n, 1)].astype(np.float32), "circuit_gram"))
        return tuple(out)


@dataclass
class RowSink:
    """One projection arriving in blocks of rows: keeps only what the circuit sketches need of each block
    (O's rows at the matched coordinates, Q/K/V's columns there, everything for a layer the Gram covers)."""

    owner: CircuitAccumulator
    layer: int
    role: str
    rows: int
    cols: int
    whole: bool

    def __post_init__(self):
        at = self.owner._at
        self._gain = self.owner.gains.get(self.layer, np.ones(self.owner.width))
        # float32: the slices of a 8192-wide model's Q and O are 32 MB each, where float64 doubled a scan's peak
        self._sliced = np.zeros((len(at), self.cols) if self.role == "o" else (self.rows, len(at)), np.float32)
        self._all = np.zeros((self.rows, self.cols), np.float32) if self.whole else None

    def take(self, first: int, block: np.ndarray) -> None:
        """Rows ``first`` .. ``first + len(block)`` of the projection."""
        at, last = self.owner._at, first + block.shape[0]
        if self.role == "o":
            here = (at >= first) & (at < last)
            self._sliced[here] = floats(block[at[here] - first])
        else:
            self._sliced[first:last] = floats(np.take(block, at, axis=1)) * self._gain[at]  # take: 5x fancy indexing
        if self._all is not None:
            self._all[first:last] = floats(block) * (self._gain if self.role != "o" else 1.0)

    def close(self) -> None:
        self.owner._store(self.layer, self.role, self._sliced, self._all)


def _dots(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise dot products, summed in float64."""
    return np.einsum("ij,ij->i", x, y, dtype=np.float64)


def _group_sum(x: np.ndarray, groups: int, axis: int = 1) -> np.ndarray:
    """Heads summed within each KV group: query heads come in groups of (heads / groups) per K/V head, in
    order, so a [.., heads, d] array becomes [.., groups, d]."""
    heads = x.shape[axis]
    if heads % groups:
        raise ValueError(f"{heads} query heads do not split into {groups} KV groups")
    shape = list(x.shape)
    shape[axis : axis + 1] = [groups, heads // groups]
    return x.reshape(shape).sum(axis=axis + 1)
