"""Bytes and requests of remote scans, served by the local Hub stand-in on 127.0.0.1
(lineage_scanner/testing/hub_server.py).

The checkpoint is the one ``bench/scan_local.py`` generates (1.26 GB bf16, 12 layers, hidden 2048). For an
exact remote scan and sampled ones, it reports bytes fetched and range requests against the file's size
and the attention tensors' bytes, and the sampled std's worst error against the exact scan.

    python bench/hub_scan.py [--dir bench/data/llama-1b]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scan_local import make_checkpoint  # noqa: E402

from lineage_scanner.measure.kernels import get_backend  # noqa: E402
from lineage_scanner.measure.sampling import SamplePlan  # noqa: E402
from lineage_scanner.run.scan import scan_strict  # noqa: E402
from lineage_scanner.testing.hub_server import HubStandIn, Repo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="bench/data/llama-1b")
    args = parser.parse_args()
    model = make_checkpoint(Path(args.dir), 12)
    size = (model / "model.safetensors").stat().st_size
    backend = get_backend("cpu")
    _, local = scan_strict(str(model), backend, set())
    attention = local.bytes_read
    exact_std = {(s.layer, s.role): s.moments.std for s in local.layers}
    rows = []
    with HubStandIn([Repo("bench/llama-1b", model)]) as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint
        plans = [("exact", None), ("--sample 0.02", SamplePlan(fraction=0.02)),
                 ("--sample-error 0.01", SamplePlan(target_se=0.01)),
                 ("--sample-error 0.005", SamplePlan(target_se=0.005))]
        for label, plan in plans:
            hub.reset_counts()
            t = time.perf_counter()
            _, sig = scan_strict("hf://bench/llama-1b", backend, set(), sample=plan)
            seconds = time.perf_counter() - t
            worst = max(abs(s.moments.std / exact_std[(s.layer, s.role)] - 1) for s in sig.layers if s.role in "qkvo")
            rows.append((label, sum(hub.bytes_served.values()), sum(hub.requests.values()), worst, seconds))
    print(f"checkpoint {size / 1e9:.2f} GB; attention + norms + header {attention / 1e6:.1f} MB "
          f"({attention / size:.1%} of the file)")
    print(f"{'scan':32} {'MB fetched':>11} {'% of file':>10} {'requests':>9} {'worst std err':>14} {'seconds':>8}")
    for label, nbytes, requests, worst, seconds in rows:
        print(f"{label:32} {nbytes / 1e6:11.2f} {nbytes / size:10.2%} {requests:9d} {worst:14.4%} {seconds:8.2f}")


if __name__ == "__main__":
    main()
