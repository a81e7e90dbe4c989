"""Scan every source listed in a file (one per line; '#' comments) into a store, on Ray.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/batch_scan.py sources.txt --db s3://bucket/lineage

The list is streamed, not loaded, so it may hold millions of lines. Models already in the store are
skipped, so a job that died can simply be submitted again. Ends by compacting the store's small files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when run by `ray job submit`

from lineage_scanner.run.batch import ScanConfig, run_batch
from lineage_scanner.run.ray import RayExecutor  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402


def read_sources(path: str):
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources_file")
    parser.add_argument("--db", required=True, help="store directory or URI (s3://…, gs://…)")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--backend", default="auto", choices=["auto", "cpu", "triton"])
    parser.add_argument("--no-compact", action="store_true")
    args = parser.parse_args(argv)
    store = Store(args.db)
    summary = run_batch(read_sources(args.sources_file), store, RayExecutor(args.workers),
                        config=ScanConfig(args.backend), progress=True, keep_records=False)
    if not args.no_compact:
        for table in ("signatures", "layers"):
            store.compact(table)
    print(f"[lineage] batch done: scanned {summary.scanned}, skipped {summary.n_skipped}, "
          f"failed {summary.n_failed}, {summary.bytes_read / 1e9:.2f} GB in {summary.seconds:.1f} s", flush=True)
    for record in summary.failed:
        print(f"[lineage] failed {record.model}: {record.error}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
