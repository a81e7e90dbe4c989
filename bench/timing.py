"""What the benchmarks share: the best wall time of a few runs of a function."""

from __future__ import annotations

import time


def best_seconds(fn, reps: int = 5) -> float:
    """The fastest of ``reps`` runs: the figure least disturbed by whatever else the machine is doing."""
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)
