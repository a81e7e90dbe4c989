"""The positional weight sketch: each attention matrix's values at positions a secret key chooses.

Independently trained models have uncorrelated weights at any given position, whatever their era or
recipe; a fine-tune, continued training, a quantized copy, a merge or an upcycle keeps them strongly
correlated. So a few hundred values per matrix, taken at the same positions in every model a store holds,
decide lineage for the commonest case on the Hub (equal shapes) far more firmly than curves of moments
can (the test is :mod:`lineage_scanner.lineage.positional`).

Positions are drawn by a :class:`SketchKey`: the store's own secret (made when the store is made, or given
by the operator), never a fixed public choice. An adversary who has read this code still does not know
where a store looks, so copying a famous model's values at "the sketch's positions" into an unrelated
model, or scrubbing a copy there, is not possible; whoever holds the key can still be second-guessed by
deep verification at positions drawn afresh at query time (:mod:`lineage_scanner.run.verify`).

Where: the matrix (``[out, in]`` as ``nn.Linear`` holds it, a fused tensor's part on its own) is cut into
SKETCH_RUNS equal bands of rows; each band has one *anchor row*, and a run of SKETCH_RUN consecutive
elements in it, row and column drawn by the key's generator for the matrix's shape. 64 rows and 64 column
windows per matrix spread the sketch over the whole matrix, so that replacing a few whole rows touches a
few of its values only. A run never crosses a row, so a fused tensor's part, a head-interleaved packing and
a split checkpoint give the same positions. A sampled scan reads one run per band over the anchor run (see
:mod:`lineage_scanner.measure.sampling`), so the sketch costs it no request of its own. 64 runs of 8 values
as int8 keep a 32-layer model's sketch at 64 KB.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SKETCH_RUNS = 64
SKETCH_RUN = 8
#: Roles the sketch covers: the attention projections the curves are made of.
SKETCHED_ROLES = ("q", "k", "v", "o")


#: Matched residual pairs of a stored circuit sketch (each coordinate at most once; fewer where the model
#: is narrower): 512 pairs give a copy a t near 20.
CIRCUIT_PAIRS = 512
#: The most memory a model's whole circuits may take for its Gram sketch (float32, D x D each); beyond, the
#: Gram covers a keyed subset of layers that fits.
GRAM_BYTES = 256 << 20


@dataclass(frozen=True)
class SketchKey:
    """The secret that places a store's sketches, and how much it reads. Two signatures' sketches compare
    only when they were taken with the same key (``id``, a one-way digest of the secret and the sizes, is
    stored beside every sketch); the secret itself never leaves the store's key file and the scanning
    processes. A store's key reads at the default sizes; deep verification draws a fresh one that reads
    far more (more runs per matrix, every residual pair, a larger Gram, a digest of every attention value)."""

    secret: bytes
    runs: int = SKETCH_RUNS
    run: int = SKETCH_RUN
    circuit_pairs: int = CIRCUIT_PAIRS
    gram_bytes: int = GRAM_BYTES
    #: also hash every attention value read (what "identical weights" needs: a check that read them all)
    digest: bool = False

    @property
    def id(self) -> str:
        sizes = (self.runs, self.run, self.circuit_pairs, self.gram_bytes)
        default = sizes == (SKETCH_RUNS, SKETCH_RUN, CIRCUIT_PAIRS, GRAM_BYTES)
        label = b"lineage-scanner sketch key" + (b"" if default else repr(sizes).encode())
        return hmac.new(self.secret, label, hashlib.sha256).hexdigest()[:16]

    def rng(self, *labels: object) -> np.random.Generator:
        """A generator for one use of the key (``labels`` name it: a matrix shape, a layer), independent of
        every other use."""
        digest = hmac.new(self.secret, repr(labels).encode(), hashlib.sha256).digest()
        return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))

    @classmethod
    def fresh(cls, **sizes) -> SketchKey:
        """A key nobody can know in advance (the operating system's random source): deep verification draws
        one per query."""
        return cls(secrets.token_bytes(32), **sizes)

    @classmethod
    def of_process(cls) -> SketchKey:
        """The key of a scan that names none (no store behind it): the operator's (``LINEAGE_SKETCH_KEY``),
        else random, drawn once per process, so that what one process scans compares with itself and nothing
        else can aim at it."""
        return _process_key(os.environ.get(KEY_ENV) or None)

    @classmethod
    def from_hex(cls, text: str) -> SketchKey:
        secret = bytes.fromhex(text.strip())
        if len(secret) < 16:
            raise ValueError("a sketch key needs at least 16 bytes (32 hex digits)")
        return cls(secret)

    def __repr__(self) -> str:  # never print the secret
        return f"SketchKey(id={self.id})"


#: The operator's key, in hex, for every store and every scan of this process (see lineage_scanner.store.key).
KEY_ENV = "LINEAGE_SKETCH_KEY"


@lru_cache(maxsize=2)
def _process_key(given: str | None) -> SketchKey:
    return SketchKey.from_hex(given) if given else SketchKey.fresh()


@lru_cache(maxsize=4096)
def anchors(rows: int, cols: int, key: SketchKey) -> tuple[np.ndarray, int]:
    """Flat (row-major) starts of the sketch's runs in a ``rows`` x ``cols`` matrix, and their length."""
    run = min(key.run, cols)
    rng = key.rng("values", rows, cols)
    runs = min(key.runs, rows)
    band = rows / runs
    row = ((np.arange(runs) + rng.random(runs)) * band).astype(np.int64)
    col = rng.integers(0, cols - run + 1, size=runs)
    starts = np.minimum(row, rows - 1) * cols + col
    starts.setflags(write=False)
    return starts, run


def anchor_rows(rows: int, cols: int, key: SketchKey) -> np.ndarray:
    """The anchor row of each band (distinct: a band holds at least one row)."""
    return anchors(rows, cols, key)[0] // cols


def bands(rows: int, cols: int, key: SketchKey) -> tuple[np.ndarray, np.ndarray]:
    """Flat [low, high) of each run's band of rows: a sampled run stays inside its band (its stratum)."""
    runs = min(key.runs, rows)
    edges = (np.arange(runs + 1) * (rows / runs)).astype(np.int64) * cols
    return edges[:-1], edges[1:]


def positions(rows: int, cols: int, key: SketchKey) -> np.ndarray:
    """Every flat index the sketch holds, run after run."""
    starts, run = anchors(rows, cols, key)
    return (starts[:, None] + np.arange(run)).reshape(-1)


def rope_row(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Where llama.cpp's converter puts each row of a Q or K projection: within a head, the two rotary
    halves interleaved (row ``b·d/2 + a`` of a head goes to ``2a + b``)."""
    head, within = np.divmod(rows, head_dim)
    half, offset = np.divmod(within, head_dim // 2)
    return head * head_dim + 2 * offset + half


#: Sketches stored with finer codes than int8.
_CODES = {"circuit_gram": np.int16}


@dataclass(frozen=True)
class SketchPart:
    """One sketch of one model: ``kind`` "values" (one attention matrix's values at the key's positions,
    Q/K/V with the layer's input-norm gain folded in, so that a model published with its gains folded has
    the same sketch; ``rows`` x ``cols`` is the matrix's shape, [out, in]), or one of the circuit sketches of
    :mod:`lineage_scanner.measure.circuits` (``role`` "ov"/"qk" kind "circuit", ``role`` "units" or "heads"
    kind "circuit_gram")."""

    layer: int
    role: str
    rows: int
    cols: int
    values: np.ndarray  # float32
    kind: str = "values"

    def codes(self) -> tuple[float, bytes]:
        """The values as stored: one float scale and integer codes, int8 (rounding costs a correlation <
        1e-4), int16 for a Gram sketch, whose agreement "to rounding" is itself a finding."""
        dtype = _CODES.get(self.kind, np.int8)
        peak = float(np.abs(self.values).max()) if self.values.size else 0.0
        scale = peak / np.iinfo(dtype).max if peak > 0 and math.isfinite(peak) else 1.0
        return scale, np.round(self.values / scale).astype(dtype).tobytes()

    @classmethod
    def from_codes(cls, layer: int, role: str, rows: int, cols: int, scale: float, codes: bytes,
                   kind: str = "values") -> SketchPart:
        values = np.frombuffer(codes, dtype=_CODES.get(kind, np.int8)).astype(np.float32) * np.float32(scale)
        return cls(layer, role, rows, cols, values, kind)

    @property
    def channel(self) -> str:
        """What a sketch is compared with in another model: the same role and kind."""
        return self.role if self.kind == "values" else f"{self.role}:{self.kind}"
