"""Two checkpoints compared at positions nobody could know in advance.

Anything fixed and public (the first bytes of a tensor, positions seeded by its shape, a digest of a part)
is a target an adversary can match while the rest of the weights differ. Positions drawn at the moment of
the comparison from the operating system's secret random source (:func:`secret_generator`) cannot be
aimed at: a checkpoint that differs from another in a share ``f`` of some tensor's values escapes a check
of ``k`` runs in that tensor only with probability about ``(1 - f)^k``.

:func:`compare_at_fresh_positions` reads runs of consecutive values at fresh positions in every tensor
named, from both readers (local files by mmap, Hub files by range requests: any
:class:`lineage_scanner.readers.base.Reader`), and compares them bit for bit. It is the building block of
every check that must not trust a fixed choice: a Hub repo nominated as a copy by its content digest is
recorded as one only if it passes (:mod:`lineage_scanner.readers.open_hub`); a verdict can be verified the
same way, with its own comparison of the values read.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lineage_scanner.readers.base import Reader

#: Values compared in all, spread evenly over the tensors, in runs of RUN consecutive values (a run costs
#: one range request over the Hub; runs close together share one).
VALUES = 4096
RUN = 16


@dataclass(frozen=True)
class FreshComparison:
    """What a comparison at fresh positions found: tensors and values compared, values that differ (bit
    for bit, or in shape or dtype: then every value of the tensor counts), and the first tensor that did."""

    tensors: int
    values: int
    differing: int
    first_difference: str | None = None

    @property
    def equal(self) -> bool:
        return self.tensors > 0 and self.differing == 0


def secret_generator() -> np.random.Generator:
    """A generator seeded with 128 bits of the OS's secret random source: its draws are known to nobody
    before they are made (never a fixed seed, a shape, a name or a digest)."""
    return np.random.default_rng(secrets.randbits(128))


def fresh_starts(numel: int, runs: int, run: int, rng: np.random.Generator) -> np.ndarray:
    """``runs`` starts (sorted) of ``run`` consecutive values each, uniform over a tensor of ``numel``."""
    return np.sort(rng.integers(0, max(numel - run, 0) + 1, size=runs))


def compare_at_fresh_positions(a: Reader, b: Reader, names: Sequence[str | tuple[str, str]], values: int = VALUES,
                               run: int = RUN, rng: np.random.Generator | None = None) -> FreshComparison:
    """Read ``values`` values of ``a`` and ``b`` at the same fresh positions, spread evenly over the tensors
    ``names`` (a name both readers hold, or a pair: the name in ``a``, the name in ``b``), and compare them
    exactly. Tensors of other shapes or dtypes count as wholly different (and are not read)."""
    rng = rng or secret_generator()
    pairs = [(n, n) if isinstance(n, str) else n for n in names]
    per_tensor = max(1, values // max(1, run * len(pairs)))
    compared = differing = 0
    first: str | None = None
    for name_a, name_b in pairs:
        ia, ib = a.tensors()[name_a], b.tensors()[name_b]
        if (ia.dtype, tuple(ia.shape)) != (ib.dtype, tuple(ib.shape)):
            differing += max(ia.numel, ib.numel)
            first = first or name_a
            continue
        if ia.numel == 0:
            continue
        length = min(run, ia.numel)
        starts = fresh_starts(ia.numel, per_tensor, length, rng)
        va, vb = a.read_runs(name_a, starts, length), b.read_runs(name_b, starts, length)
        size = va.dtype.itemsize
        bits_a = np.frombuffer(np.ascontiguousarray(va).tobytes(), np.uint8).reshape(-1, size)
        bits_b = np.frombuffer(np.ascontiguousarray(vb).tobytes(), np.uint8).reshape(-1, size)
        unequal = int(np.count_nonzero((bits_a != bits_b).any(axis=1)))
        compared += len(bits_a)
        differing += unequal
        if unequal and first is None:
            first = name_a
    return FreshComparison(len(pairs), compared, differing, first)
