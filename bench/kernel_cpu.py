"""CPU moments throughput against the machine's copy bandwidth and ``torch.std``, all in one run.

For bf16, fp16 and fp32, one [rows, cols] matrix (default 8192 x 8192): the moments alone
(``CpuBackend.partials``), the moments with the per-column x..x⁴ sums that fold a norm gain in (one pass:
``moments_and_columns``, what a Q/K/V matrix costs in a scan), ``torch.std``, and a plain copy of the
same bytes (``x.clone()``) as the memory-bandwidth yardstick. GB/s are bytes of input read per second
(a copy's figure is the bytes it reads per second). Best of 5.

    python bench/kernel_cpu.py [--rows 8192] [--cols 8192]
"""

from __future__ import annotations

import argparse

from timing import best_seconds

DTYPES = ("bfloat16", "float16", "float32")


def throughput(rows: int = 8192, cols: int = 8192) -> list[dict]:
    import torch

    from lineage_scanner.measure.kernels.cpu import CpuBackend, moments_and_columns

    backend = CpuBackend()
    out = []
    for name in DTYPES:
        x = torch.randn(rows, cols).mul_(0.02).to(getattr(torch, name))
        nbytes = x.numel() * x.element_size()
        backend.partials([x[:2]])  # load the compiled kernels before timing
        moments_and_columns(x[:2], 1)

        runs = {"moments": lambda x=x: backend.partials([x]), "columns": lambda x=x: moments_and_columns(x, 1),
                "torch_std": x.std, "copy": x.clone}
        out.append({"dtype": name, "threads": torch.get_num_threads(),
                    **{what: nbytes / best_seconds(fn) / 1e9 for what, fn in runs.items()}})
    return out


def report(rows: list[dict], shape: str) -> None:
    print(f"{shape}, {rows[0]['threads']} threads, GB/s of input")
    print("| dtype | moments | moments + column sums | torch.std | copy | moments+columns / copy "
          "| moments+columns / torch.std |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['dtype']} | {r['moments']:.2f} | {r['columns']:.2f} | {r['torch_std']:.2f} | {r['copy']:.2f} "
              f"| {r['columns'] / r['copy']:.0%} | {r['columns'] / r['torch_std']:.1f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=8192)
    args = parser.parse_args()
    report(throughput(args.rows, args.cols), f"{args.rows} x {args.cols}")
