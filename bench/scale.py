"""Ray scaling on this machine: models per minute and MB/s against worker count (1, 2), and the driver's
memory over a synthetic work list of 1,000,000 entries.

Throughput: a larger demo zoo (two families, hidden 384; 12 safetensors models, 34 MB of attention each)
scanned through a local Ray with 1 and then 2 workers, into fresh stores, in one run.
Driver memory: ``run_batch`` over a streamed list of 1,000,000 sources naming files that do not exist, so
every unit is cheap (an error row each); peak RSS is sampled as the list is consumed. A flat line means
the list, the units in flight and the summary all stay bounded.

    python bench/scale.py [--entries 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lineage_scanner.demo.zoo import FAMILIES, build_zoo  # noqa: E402
from lineage_scanner.run.batch import run_batch
from lineage_scanner.run.ray import RayExecutor, connect  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def throughput(zoo_dir: Path) -> list[tuple[int, float, float]]:
    sources = [e.path for e in build_zoo(zoo_dir, hidden=384, families=FAMILIES[:2]) if e.relation != "quantized"]
    rows = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as db:
            summary = run_batch(sources, Store(db), RayExecutor(workers), progress=False, unit_bytes=64 << 20)
        rows.append((workers, summary.scanned / summary.seconds * 60, summary.bytes_read / summary.seconds / 1e6))
    return rows


def driver_memory(entries: int) -> list[tuple[int, float]]:
    samples: list[tuple[int, float]] = []
    consumed = 0

    def stream():
        nonlocal consumed
        for i in range(entries):
            consumed = i
            yield f"/nonexistent/model-{i:07d}"

    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((consumed, rss_mb()))
            time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as db:
        # 5,000 entries a unit: the per-model cost here is the error row, not a scan
        run_batch(stream(), Store(db), RayExecutor(2), progress=False, unit_bytes=5000 << 30, keep_records=False)
    stop.set()
    sampler.join()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--zoo", default="bench/data/zoo384")
    args = parser.parse_args()
    connect(num_cpus=2)
    print(f"{'workers':>7} {'models/min':>11} {'MB/s':>8}")
    for workers, per_minute, mbps in throughput(Path(args.zoo)):
        print(f"{workers:7d} {per_minute:11.1f} {mbps:8.1f}")
    t = time.perf_counter()
    samples = driver_memory(args.entries)
    elapsed = time.perf_counter() - t
    print(f"driver over {args.entries:,} streamed entries: {elapsed:.0f} s")
    print(f"{'entries consumed':>17} {'driver RSS MB':>14}")
    step = max(1, len(samples) // 8)
    for consumed, rss in samples[::step] + samples[-1:]:
        print(f"{consumed:17,d} {rss:14.0f}")


if __name__ == "__main__":
    main()
