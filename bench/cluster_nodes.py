"""Models per second of a night on a Ray cluster of 1, 2 and 3 nodes, all on this machine.

Each run starts a fresh cluster of N nodes on 127.0.0.1 (``lineage_scanner.testing.local_cluster``: the
head and N-1 worker nodes, one CPU each), scans the same catalog of tiny models from the Hub stand-in
(with --latency per answer) into a fresh prefix of a store in an S3-compatible server (moto), the workers
writing their units there, and times the batch from the driver (worker start included, as a night pays
it). On one machine extra nodes add processes, not cores: the figure is the overhead of more nodes, not a
speed-up.

    python bench/cluster_nodes.py [--models 160] [--copies 40] [--latency 0.02] [--nodes 1 2 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lineage_scanner.run.batch import run_batch  # noqa: E402
from lineage_scanner.run.ray import RayExecutor  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402
from lineage_scanner.testing.hub_server import HubStandIn  # noqa: E402
from lineage_scanner.testing.local_cluster import LocalCluster  # noqa: E402
from lineage_scanner.testing.night import night_catalog  # noqa: E402
from lineage_scanner.testing.s3_server import S3Server  # noqa: E402


def one_run(nodes: int, sources: list[str], run: int) -> dict:
    import ray

    cluster = LocalCluster(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    try:
        cluster.start(num_cpus=1, dashboard=False)
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait()
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        store = Store(f"s3://bench/{nodes}-nodes-{run}")
        started = time.perf_counter()
        summary = run_batch(sources, store, RayExecutor(in_flight=4), progress=False, keep_records=False)
        seconds = time.perf_counter() - started
        assert summary.n_failed == 0 and summary.scanned == len(sources), summary
        return {"nodes": nodes, "seconds": seconds, "models_per_s": len(sources) / seconds,
                "copies": summary.n_copies, "files": len(store.files("signatures"))}
    finally:
        ray.shutdown()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=160)
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-nodes-"))
    repos = night_catalog(folder / "repos", args.models, args.copies)
    with HubStandIn(repos, page_size=100, latency_s=args.latency) as hub, S3Server(folder / "moto.log") as s3:
        s3.bucket("bench")
        os.environ.update({**s3.env, "HF_ENDPOINT": hub.endpoint, "RAY_worker_niceness": "0"})
        os.environ.pop("RAY_ADDRESS", None)
        sources = [f"hf://{r.repo_id}" for r in repos]
        results = [one_run(n, sources, r) for r in range(args.repeat) for n in args.nodes]
    base = min(r["seconds"] for r in results if r["nodes"] == args.nodes[0])
    print(f"{len(sources)} models ({args.copies} exact re-uploads), Hub latency {args.latency * 1000:.0f} ms, "
          f"in flight 4 per worker; one CPU per node")
    print("| nodes | seconds | models/s | time vs 1 node | signature files |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['nodes']} | {r['seconds']:.1f} | {r['models_per_s']:.1f} | {r['seconds'] / base:.2f}x "
              f"| {r['files']} |")


if __name__ == "__main__":
    main()
