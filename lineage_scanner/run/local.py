"""The in-process executor: units scanned one after another in this process, by one Scanner."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from lineage_scanner.run.base import HEARTBEAT_S, Known, ScanConfig, Scanner, UnitResult, WorkUnit


class InProcess:
    """No start-up cost and no copies: the right executor for one machine's batch (see the README).

    Each unit is scanned on a helper thread while this one yields an empty result every HEARTBEAT_S, so
    the batch loop writes what finished on time even while a slow model (a stalling server, up to its
    deadline) is still being scanned."""

    retried_units = 0

    def run(self, units: Iterator[WorkUnit], config: ScanConfig, known: Known) -> Iterator[UnitResult]:
        scanner = Scanner(config, known)
        for unit in units:
            done, outcome = threading.Event(), {}

            def scan(unit=unit, done=done, outcome=outcome) -> None:
                try:
                    outcome["result"] = scanner.scan(unit)
                except BaseException as exc:  # noqa: BLE001 - raised again on this thread
                    outcome["error"] = exc
                finally:
                    done.set()

            threading.Thread(target=scan, name="scan", daemon=True).start()
            while not done.wait(HEARTBEAT_S):
                yield UnitResult()
            if "error" in outcome:
                raise outcome["error"]
            yield outcome["result"]
