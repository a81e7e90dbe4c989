"""compare's curve evidence at great depth (issue 22 item 5): time and peak memory of one related pair's
alignment and surrogate test at 80, 200, 800 and 4,096 layers (the most the scanner accepts).

Each depth runs in a process of its own (peak RSS from /proc's VmHWM, which exec resets); the ratio column
is against the 80-layer run of the same invocation. The pair: a random walk over depth (every curve feature) and
the same walk with noise, a layer dropped every tenth (a pruned copy), so the alignment has gaps to find.

    python bench/deep_compare.py [--depths 80,200,800,4096]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ONE = """
import json, sys, time
import numpy as np
from lineage_scanner.lineage.score import evidence
from lineage_scanner.signature.record import FEATURES
depth = int(sys.argv[1])
rng = np.random.default_rng(depth)
walk = np.cumsum(rng.standard_normal((depth, len(FEATURES))), axis=0)
child = np.delete(walk + 0.3 * rng.standard_normal(walk.shape), np.arange(5, depth, 10), axis=0)
names = list(FEATURES)
a = {n: walk[:, k].tolist() for k, n in enumerate(names)}
b = {n: child[:, k].tolist() for k, n in enumerate(names)}
started = time.perf_counter()
ev = evidence(a, b)
seconds = time.perf_counter() - started
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) << 10
print(json.dumps({"depth": depth, "seconds": seconds, "peak": peak, "score": ev.score, "p": ev.surrogate_p,
                  "pairs": len(ev.alignment)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="80,200,800,4096")
    args = parser.parse_args()
    print("| layers | evidence s | x first depth | peak RSS MB | aligned pairs | score | surrogate p |")
    print("|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    base = None
    for depth in map(int, args.depths.split(",")):
        done = subprocess.run([sys.executable, "-c", ONE, str(depth)], capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        base = base or r["seconds"]
        p = "-" if r["p"] is None else f"{r['p']:.4f}"
        print(f"| {r['depth']} | {r['seconds']:.1f} | {r['seconds'] / base:.1f} | {r['peak'] / 2**20:.0f} | "
              f"{r['pairs']} | {r['score']:.3f} | {p} |", flush=True)


if __name__ == "__main__":
    main()
