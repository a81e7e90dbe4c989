"""Helpers the test modules share (imported as ``tests.helpers``; conftest.py holds only fixtures)."""

from __future__ import annotations

import os
from pathlib import Path


def crashing_worker(rules: str) -> type:
    """A Ray scan worker that dies abruptly (``os._exit``, as a crash or the OOM killer would end it) on a
    unit holding a source that contains SUBSTRING: ``"MARKER_FILE:SUBSTRING"`` once (it creates MARKER_FILE,
    which every later attempt sees), ``"always:SUBSTRING"`` every time; rules are joined by commas. Hand it
    to ``RayExecutor(worker=...)``. Defined in a function, the class travels to Ray's workers by value."""
    from lineage_scanner.run.ray import ScanWorker

    parsed = [rule.partition(":")[::2] for rule in filter(None, rules.split(","))]

    class CrashingWorker(ScanWorker):
        def scan(self, unit):
            for source in unit.sources:
                for marker, needle in parsed:
                    if needle in source and (marker == "always" or not os.path.exists(marker)):
                        if marker != "always":
                            Path(marker).touch()
                        os._exit(13)
            return super().scan(unit)

    return CrashingWorker
