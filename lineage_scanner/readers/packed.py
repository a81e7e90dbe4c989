"""The record of one packed quantized weight, apart from both its detection and its decoding.

:mod:`lineage_scanner.readers.quantized` finds packed weights in a checkpoint's tensor names and shapes and
describes each as a :class:`Packed`; :mod:`lineage_scanner.readers.packed_decoders` turns one into floats (in
torch, imported only for such a checkpoint). Both import this module; the decoders never import the
detection, so the two form no cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Column order of AWQ's packing: nibble i of a word holds column AWQ_ORDER[i] of its 8.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


@dataclass(frozen=True)
class Packed:
    """One quantized linear weight: its scheme, its stored tensors by role, its float shape [out, in]."""

    scheme: str  # a key of packed_decoders.DECODERS
    parts: dict[str, str]
    shape: tuple[int, int]
    label: str
    bits: int = 4
    group: int = 0
    state: dict | None = None
