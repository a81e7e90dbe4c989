"""Where Ray starts to pay: the same batches in this process and on a local Ray with 2 workers.

    python bench/batch.py

Two batches, each scanned into a fresh store by each executor: the demo zoo (34 small checkpoints: the
cost is per-model overhead) and 4 checkpoints of 1.26 GB (bench/scan_local.py's model, hard-linked under
four names: the cost is bytes). Ray's start-up divided by what it saves per model (per byte) gives the
batch size where it starts to pay (on the 2-core development machine: never, so ``lineage scan`` uses Ray
only when asked).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scan_local import make_checkpoint  # noqa: E402

from lineage_scanner.demo.zoo import build_zoo  # noqa: E402
from lineage_scanner.run.batch import run_batch, source_bytes  # noqa: E402
from lineage_scanner.run.local import InProcess  # noqa: E402
from lineage_scanner.run.ray import RayExecutor, connect  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402


def timed(sources: list[str], executor, db: Path) -> float:
    started = time.perf_counter()
    summary = run_batch(sources, Store(db), executor, progress=False)
    assert not summary.failed, summary.failed[0].error
    return time.perf_counter() - started


def large_batch(tmp: Path) -> list[str]:
    first = make_checkpoint(tmp / "large-0", layers=12)
    out = [str(first)]
    for i in range(1, 4):
        copy = tmp / f"large-{i}"
        copy.mkdir()
        for f in first.iterdir():
            os.link(f, copy / f.name)
        out.append(str(copy))
    return out


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        batches = {"demo zoo": [e.path for e in build_zoo(tmp / "zoo")], "4 x 1.26 GB": large_batch(tmp)}
        timed(batches["demo zoo"][:2], InProcess(), tmp / "warm")  # numba's compiled kernels, the page cache
        timed(batches["4 x 1.26 GB"][:1], InProcess(), tmp / "warm")
        local = {name: timed(sources, InProcess(), tmp / f"local-{i}") for i, (name, sources) in
                 enumerate(batches.items())}
        started = time.perf_counter()
        connect(num_cpus=2)
        ray_start = time.perf_counter() - started
        ray = {name: timed(sources, RayExecutor(2), tmp / f"ray-{i}") for i, (name, sources) in
               enumerate(batches.items())}
        for name, sources in batches.items():
            rows.append((name, len(sources), sum(source_bytes(s) for s in sources), local[name], ray[name]))
    print("| batch | models | GB | in-process s | Ray, 2 workers s (Ray up) | in-process ms/model | Ray ms/model |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, n, nbytes, lo, ra in rows:
        print(f"| {name} | {n} | {nbytes / 1e9:.2f} | {lo:.2f} | {ra:.2f} | {1000 * lo / n:.0f} "
              f"| {1000 * ra / n:.0f} |")
    print(f"Ray start-up (ray.init, 2 CPUs): {ray_start:.1f} s")
    for name, n, nbytes, lo, ra in rows:
        saved = lo - ra
        if saved <= 0:
            print(f"{name}: Ray saves nothing here")
        else:
            print(f"{name}: Ray pays from {ray_start / (saved / n):.0f} models "
                  f"or {ray_start / (saved / nbytes) / 1e9:.1f} GB")


if __name__ == "__main__":
    main()
