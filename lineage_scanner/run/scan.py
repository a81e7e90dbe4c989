"""One source scanned in this process, outside any batch: what tests, benchmarks and one-off tools call."""

from __future__ import annotations

from collections.abc import Set

from lineage_scanner.measure.kernels import MomentsBackend
from lineage_scanner.measure.sampling import SamplePlan
from lineage_scanner.measure.sketch import SketchKey
from lineage_scanner.readers.open_hub import HubJob
from lineage_scanner.run.base import Key, Known, ScanConfig, Scanner
from lineage_scanner.signature.record import Signature


def scan_strict(source: str, backend: MomentsBackend, done: Set[Key] = frozenset(), *, force: bool = False,
                sample: SamplePlan | None = None, hub: HubJob | None = None, sketch_key: SketchKey | None = None
                ) -> tuple[Key, Signature | None]:
    """:meth:`Scanner.strict` with a backend the caller holds (and ``hub``, a Hub job's state shared by several
    such scans; ``sketch_key``, where the sketches are taken: a store's key, else this process's own): the
    signature, or None when (model, revision) is in ``done`` and not forced. Raises
    :class:`lineage_scanner.errors.ScanError` on bad input."""
    scanner = Scanner(ScanConfig(force=force, sample=sample, key=sketch_key), Known(frozenset(done)), backend=backend,
                      hub=hub)
    return scanner.strict(source)
