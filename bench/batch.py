"""The batch path against the seed recipe, whole processes; in-process against Ray; per-model overhead.

    python bench/batch.py [--data bench/data] [--runs 3] [--busy 0]

Checkpoints come from the demo generator (``lineage.generator.base_model``: heavy-tailed, head- and
row-scaled weights with depth curves, written as bf16 llama safetensors) and are kept under ``--data``:

- four distinct 1.14 GB models (hidden 2048, 16 layers, GQA 4 of 16 heads, MLP 4096; 336 MB of attention
  each): a base and three continued-training children, so no scan can skip one as a copy of another;
- one model with 2 GiB of attention (hidden 4096, 26 layers, GQA 8 of 32 heads, no MLP).

Reported, each a ratio measured in this run, page cache warm (every command runs once before timing),
median of ``--runs`` alternating runs, wall time and peak RSS of whole processes (wait4):

1. the 4 models: the seed recipe in one process (``load_file`` + ``torch.std`` per attention matrix)
   against ``lineage scan`` of the same 4 (its default, in-process executor);
2. the 2 GiB checkpoint: ``safe_open`` + ``torch.std`` per attention tensor against ``lineage scan``;
3. in this process, once Ray is up: the in-process executor against a local Ray with 2 workers on the
   4 models (total, and time to the first result), and both on the demo zoo's small models (models/s,
   ms per model: the per-model overhead); Ray twice: a new executor (its workers start with the batch)
   and the same executor's next batch (``keep_workers``: processes, imports and kernels already there);
4. ``lineage demo`` end to end (a fresh zoo, store and local Ray), whole process.

``--busy N`` keeps N other processes spinning on the CPU throughout (a machine shared with other work).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import process_cost  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ATTENTION = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")

SEED_LOAD_FILE = f"""
import sys, torch
from safetensors.torch import load_file
for path in sys.argv[1:]:
    sd = load_file(path + "/model.safetensors")
    stds = [sd[k].std().item() for k in sd if k.endswith({ATTENTION!r})]
"""

SEED_SAFE_OPEN = f"""
import sys, torch
from safetensors import safe_open
with safe_open(sys.argv[1] + "/model.safetensors", framework="pt") as f:
    stds = [f.get_tensor(k).std().item() for k in f.keys() if k.endswith({ATTENTION!r})]
"""


def generate(data: Path) -> tuple[list[Path], Path]:
    """The four 1.14 GB models and the 2 GiB-of-attention one, generated once and kept."""
    from lineage_scanner.demo.derive import drift
    from lineage_scanner.demo.writers import write_hf
    from lineage_scanner.lineage.generator import base_model

    four = [data / f"batch-{i}" for i in range(4)]
    if not all((p / "model.safetensors").is_file() for p in four):
        base = base_model("batch-0", "llama", seed=1, n_layers=16, hidden=2048, n_heads=16, n_kv_heads=4)
        write_hf(base, four[0])
        for i in range(1, 4):
            write_hf(drift(base, f"batch-{i}", seed=10 + i, noise=0.05, layer_scale=0.02), four[i])
    big = data / "attention-2gib"
    if not (big / "model.safetensors").is_file():
        model = base_model("attention-2gib", "llama", seed=2, n_layers=26, hidden=4096, n_heads=32, n_kv_heads=8,
                           mlp=False)
        write_hf(model, big)
    return four, big


def compare(commands: dict[str, list[str]], runs: int) -> dict[str, tuple[float, float]]:
    """Median wall time and peak RSS of each command, runs alternating, after one warm-up run each."""
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as cwd:
        for argv in commands.values():
            process_cost(argv, cwd)
        for _ in range(runs):
            for name, argv in commands.items():
                results[name].append(process_cost(argv, cwd))
                subprocess.run(["rm", "-rf", os.path.join(cwd, "db")], check=True)
    return {name: (statistics.median(w for w, _ in r), statistics.median(m for _, m in r))
            for name, r in results.items()}


def lineage(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "lineage"), *args]  # the installed command, as users run it


def table(title: str, rows: dict[str, tuple[float, float]], baseline: str) -> None:
    base_wall, base_rss = rows[baseline]
    print(f"\n{title}\n| command | wall s | peak RSS MB | speed-up | RSS ratio |\n| --- | ---: | ---: | ---: | ---: |")
    for name, (wall, rss) in rows.items():
        print(f"| {name} | {wall:.2f} | {rss:.0f} | {base_wall / wall:.2f}x | {rss / base_rss:.2f} |")


def executors(four: list[Path], zoo: list[str]) -> None:
    from lineage_scanner.run.batch import Known, ScanConfig, plan_units
    from lineage_scanner.run.local import InProcess
    from lineage_scanner.run.ray import RayExecutor, connect

    def timed(sources: list[str], executor) -> tuple[float, float]:
        """(total seconds, seconds to the first result) of one batch, units of one model each."""
        started = time.perf_counter()
        first = None
        for result in executor.run(plan_units(sources, 1), ScanConfig(), Known()):
            assert result.scanned, "every model is scanned"
            first = first or time.perf_counter() - started
        return time.perf_counter() - started, first or 0.0

    batches = {"4 x 1.14 GB": [str(p) for p in four], "demo zoo": zoo}
    for sources in batches.values():
        timed(sources, InProcess())  # every kernel the batch needs loaded, the page cache warm
    local = {name: timed(sources, InProcess()) for name, sources in batches.items()}
    started = time.perf_counter()
    connect(num_cpus=2)
    ray_up = time.perf_counter() - started
    cold, kept = {}, {}
    for name, sources in batches.items():
        executor = RayExecutor(2, keep_workers=True)
        cold[name] = timed(sources, executor)  # a fresh executor: its workers start with the batch
        kept[name] = timed(sources, executor)  # the same executor's next batch: workers kept
        executor.close()
    print(f"\nIn this process (Ray start-up, ray.init with 2 CPUs: {ray_up:.1f} s, not counted below; "
          "s = total, first = first result)")
    print("| batch | models | in-process s | first | models/s | Ray, new workers s | first | ratio "
          "| Ray, kept workers s | first | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, sources in batches.items():
        (lo, lo_first), (co, co_first), (ke, ke_first) = local[name], cold[name], kept[name]
        print(f"| {name} | {len(sources)} | {lo:.2f} | {lo_first:.2f} | {len(sources) / lo:.1f} | {co:.2f} | "
              f"{co_first:.2f} | {co / lo:.2f} | {ke:.2f} | {ke_first:.2f} | {ke / lo:.2f} |")
    n = len(zoo)
    print(f"per-model cost on the demo zoo: {1000 * local['demo zoo'][0] / n:.0f} ms in-process, "
          f"{1000 * kept['demo zoo'][0] / n:.0f} ms on Ray (kept workers)")


@contextlib.contextmanager
def busy(n: int):
    """``n`` processes spinning on the CPU while the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "data")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="other processes spinning on the CPU meanwhile")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    four, big = generate(args.data)
    with busy(args.busy):
        measure_all(args, four, big)


def measure_all(args, four: list[Path], big: Path) -> None:
    if args.busy:
        print(f"(with {args.busy} other processes spinning on the CPU throughout)")
    paths = [str(p) for p in four]
    table("4 models of 1.14 GB (bf16, 336 MB of attention each), whole processes",
          compare({"seed recipe (load_file + torch.std)": [sys.executable, "-c", SEED_LOAD_FILE, *paths],
                   "lineage scan (in-process)": lineage("scan", *paths, "--db", "db", "-q")}, args.runs),
          "seed recipe (load_file + torch.std)")
    table("one checkpoint with 2 GiB of attention (bf16), whole processes",
          compare({"safe_open + torch.std": [sys.executable, "-c", SEED_SAFE_OPEN, str(big)],
                   "lineage scan": lineage("scan", str(big), "--db", "db", "-q")}, args.runs),
          "safe_open + torch.std")
    with tempfile.TemporaryDirectory() as tmp:
        from lineage_scanner.demo.zoo import build_zoo

        zoo = [e.path for e in build_zoo(Path(tmp) / "zoo")]
        executors(four, zoo)
    with tempfile.TemporaryDirectory() as cwd:
        wall, rss = process_cost(lineage("demo", "--out", "zoo", "--db", "db"), cwd)
    print(f"\n`lineage demo` end to end (generate the zoo, scan it on a local Ray, judge): {wall:.1f} s, "
          f"peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
