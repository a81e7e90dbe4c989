"""Nightly Hub scan: list the catalog, scan the commits not yet in the store, compact.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/nightly_scan.py --db s3://bucket/lineage --sort downloads --limit 5000

Each night repeats no finished work: (model, sha) pairs already stored are not scanned again, and a
night that died, ran out of ``--minutes`` or had models deferred by the Hub's rate limits is resumed by
the next run (deferred commits first).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when run by `ray job submit`

from lineage_scanner.measure.sampling import SamplePlan  # noqa: E402
from lineage_scanner.run.batch import ScanConfig, run_batch  # noqa: E402
from lineage_scanner.run.ray import RayExecutor  # noqa: E402
from lineage_scanner.sources.catalog import list_catalog  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402

#: Hub models each worker scans at once: a model's scan is mostly waiting on round trips.
IN_FLIGHT = 4
#: Signatures written per file: a night of thousands of models in few files keeps the store quick to open
#: (every lookup reads each file's footer) until the night's compaction.
FLUSH_EVERY = 256


def run_night(store: Store, minutes: float | None = None, workers: int | None = None,
              sample: SamplePlan | None = None, unit_bytes: int | None = None, in_flight: int = IN_FLIGHT,
              **listing):
    """List the catalog (``listing``: author, search, filter, sort, limit), then scan the commits the store
    lacks (deferred ones first) until ``minutes`` have passed; what is left waits for the next night.
    Returns (models listed, commits to scan, the batch summary)."""
    started = time.monotonic()
    listed = store.write_catalog(list_catalog(**listing))
    todo = store.todo()
    print(f"[lineage] catalog: {listed} models listed, {len(todo)} new commits to scan", flush=True)
    deadline = math.inf if minutes is None else started + minutes * 60

    def until_deadline():
        for source in todo:
            if time.monotonic() > deadline:
                return
            yield source

    options = {} if unit_bytes is None else {"unit_bytes": unit_bytes}
    summary = run_batch(until_deadline(), store, RayExecutor(workers, in_flight=in_flight),
                        config=ScanConfig(sample=sample), progress=True, keep_records=False,
                        flush_every=FLUSH_EVERY, **options)
    return listed, len(todo), summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="store directory or URI (s3://…, gs://…)")
    parser.add_argument("--author")
    parser.add_argument("--search")
    parser.add_argument("--filter")
    parser.add_argument("--sort", default="downloads")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--minutes", type=float, help="stop starting new models after this long (the night's budget)")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help="Hub models each worker scans at once")
    parser.add_argument("--sample-error", type=float, help="estimate large tensors to this relative error")
    args = parser.parse_args(argv)
    store = Store(args.db)
    sample = SamplePlan(target_se=args.sample_error) if args.sample_error else None
    _, _, summary = run_night(store, args.minutes, args.workers, sample, in_flight=args.in_flight,
                              author=args.author, search=args.search, filter=args.filter, sort=args.sort,
                              limit=args.limit)
    for table in ("signatures", "layers", "catalog"):
        store.compact(table)
    print(f"[lineage] nightly done: scanned {summary.scanned} ({summary.n_copies} copies), failed "
          f"{summary.n_failed}, deferred {summary.n_deferred}, {summary.bytes_read / 1e9:.2f} GB in "
          f"{summary.seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
