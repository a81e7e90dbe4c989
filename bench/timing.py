"""What the benchmarks share: the best wall time of a few runs of a function, and the wall time and peak
RSS of a whole process."""

from __future__ import annotations

import os
import subprocess
import time


def best_seconds(fn, reps: int = 5) -> float:
    """The fastest of ``reps`` runs: the figure least disturbed by whatever else the machine is doing."""
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def process_cost(argv: list[str], cwd: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one process, from wait4 (ru_maxrss of the child alone)."""
    started = time.perf_counter()
    pid = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{argv} exited with {status}")
    return wall, usage.ru_maxrss / 1024
