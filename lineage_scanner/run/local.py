"""The in-process executor: units scanned one after another in this process, by one Scanner."""

from __future__ import annotations

from collections.abc import Iterator

from lineage_scanner.run.base import Known, ScanConfig, Scanner, UnitResult, WorkUnit


class InProcess:
    """No start-up cost and no copies: the right executor for one machine's batch (see the README)."""

    retried_units = 0

    def run(self, units: Iterator[WorkUnit], config: ScanConfig, known: Known) -> Iterator[UnitResult]:
        scanner = Scanner(config, known)
        for unit in units:
            yield scanner.scan(unit)
