"""CPU moments throughput: ``lineage_scanner.measure.kernels.cpu`` next to ``torch.std`` on the same bf16 tensor, and a
plain copy of that tensor as the machine's memory-bandwidth yardstick, all in one run.

GB/s are bytes of input per second (a copy's figure is the bytes it reads per second). Best of 5.

    python bench/kernel_cpu.py [--mib 256]
"""

from __future__ import annotations

import argparse
import time


def throughput(mib: int = 256) -> dict:
    import torch

    from lineage_scanner.measure.kernels.cpu import CpuBackend

    x = torch.randn(mib << 19, dtype=torch.float32).mul_(0.02).bfloat16()
    nbytes = x.numel() * 2
    backend = CpuBackend()
    backend.partials([x[:1000]])  # load the compiled kernel before timing

    def best(fn, reps: int = 5) -> float:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return nbytes / min(times) / 1e9

    return {"moments_gbps": best(lambda: backend.partials([x])), "torch_std_gbps": best(lambda: x.std()),
            "copy_gbps": best(lambda: x.clone()), "threads": torch.get_num_threads(), "mib": mib}


def report(t: dict) -> None:
    print(f"{'bf16 tensor, ' + str(t['mib']) + ' MiB, ' + str(t['threads']) + ' threads':40} {'GB/s':>7}")
    print(f"{'lineage_scanner.measure.kernels.cpu (all moments)':40} {t['moments_gbps']:7.2f}")
    print(f"{'torch.std':40} {t['torch_std_gbps']:7.2f}")
    print(f"{'copy (x.clone())':40} {t['copy_gbps']:7.2f}")
    print(f"moments: {t['moments_gbps'] / t['torch_std_gbps']:.1f}x torch.std, "
          f"{t['moments_gbps'] / t['copy_gbps']:.0%} of the copy bandwidth")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    report(throughput(parser.parse_args().mib))
