"""Nightly Hub scan: list what changed on the Hub, scan the commits not yet in the store, compact.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/nightly_scan.py --db s3://bucket/lineage --minutes 480

The night itself is :func:`lineage_scanner.run.nightly.run_night`: each night lists only what changed
since the previous complete listing (its high-water mark is in the store) and repeats no finished work; a
night that died, ran out of ``--minutes``, or had models deferred or timed out is resumed by the next run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when run by `ray job submit`

from lineage_scanner.measure.sampling import SamplePlan  # noqa: E402
from lineage_scanner.readers.hub_time import DEFAULT_DEADLINE_S  # noqa: E402
from lineage_scanner.run.nightly import IN_FLIGHT, run_night  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="store directory or URI (s3://…, gs://…)")
    parser.add_argument("--author")
    parser.add_argument("--search")
    parser.add_argument("--filter")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--full", action="store_true", help="list everything, not only what changed since the "
                                                            "last complete listing")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--minutes", type=float, help="stop starting new models after this long (the night's budget)")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help="Hub models each worker scans at once")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S,
                        help="seconds one model's scan may take (then a timeout row, taken again next night)")
    parser.add_argument("--sample-error", type=float, help="estimate large tensors to this relative error")
    args = parser.parse_args(argv)
    store = Store(args.db)
    sample = SamplePlan(target_se=args.sample_error) if args.sample_error else None
    night = run_night(store, args.minutes, args.workers, sample=sample, in_flight=args.in_flight,
                      deadline_s=args.deadline, incremental=not args.full, author=args.author, search=args.search,
                      filter=args.filter, limit=args.limit)
    for table in ("signatures", "layers", "catalog"):
        store.compact(table)
    print(f"[lineage] nightly done: {night.line()}", flush=True)
    if night.listing.stopped:  # what was listed is kept and scanned; the listing is incomplete
        print(f"Error: {night.listing.where}: {night.listing.stopped}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
