"""GPU benchmark for the fused moments kernel: one prepared script for a lent GPU (see bench/RESULTS.md).

1. Correctness: fresh random batches of varied scales, offsets and sizes (odd, empty, single-element,
   mean 1e3 / std 1e-2) against float64 on the device; outputs poisoned first; every count exact.
2. Timing (``triton.testing.do_bench``, median): the kernel over the attention tensors of a 7B-class model
   (bf16, laid end to end as the scanner stages them; Q/K/V with their per-column x..x⁴ sums in the same
   launch, as a scan asks), next to a device-to-device copy of the same bytes and to ``torch.std`` on
   each tensor; then the whole backend call from device tensors, and from host tensors through the
   pinned double buffer (whose copies overlap the kernel), against the bare host->device copy.

    python bench/kernel_gpu.py [--layers 32] [--hidden 4096] [--kv-dim 1024]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def check(backend) -> None:
    from lineage_scanner.measure.kernels.stats import Moments

    gen = torch.Generator(device="cuda").manual_seed(int(torch.randint(0, 2**31, (1,))))
    sizes = [0, 1, 2, 4095, 4096, 4097, 1823 * 781, 3_000_017]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for loc, scale in ((0.0, 0.02), (1e3, 1e-2), (-3.0, 5.0)):
            if dtype != torch.float32 and loc == 1e3:
                continue  # 16-bit floats cannot represent a 1e-2 spread at 1e3
            xs = [(torch.randn(n, generator=gen, device="cuda", dtype=torch.float64) * scale + loc).to(dtype)
                  for n in sizes]
            for x, row in zip(xs, backend.partials(xs)):
                m, ref = Moments.from_partial(row), x.to(torch.float64)
                assert m.count == x.numel(), (dtype, x.numel(), m.count)
                if x.numel() > 1:
                    err = abs(m.std / ref.std().item() - 1)
                    assert err <= 1e-6, (dtype, loc, scale, x.numel(), err)
    print("correctness: ok (std within 1e-6 of float64; counts exact)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--kv-dim", type=int, default=1024)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU")
    import triton
    from triton.testing import do_bench

    from lineage_scanner.measure.kernels.triton import (
        BLOCK_COLS,
        BLOCK_ROWS,
        TILES,
        TritonBackend,
        _tile_moments_kernel,
        tile_table,
    )

    backend = TritonBackend("cuda")
    check(backend)

    h, kv = args.hidden, args.kv_dim
    shapes = [(h, h), (kv, h), (kv, h), (h, h)] * args.layers
    tensors = [torch.randn(s, device="cuda", dtype=torch.bfloat16) * 0.02 for s in shapes]
    lengths = np.array([t.numel() for t in tensors])
    cols = np.array([0 if i % 4 == 3 else h for i in range(len(tensors))])  # O: moments only
    buffer = torch.cat([t.reshape(-1) for t in tensors])
    nbytes = buffer.numel() * buffer.element_size()
    table = tile_table(lengths, cols)
    programs = len(table.rows)
    rows = torch.from_numpy(table.rows).cuda()
    raw = torch.empty((programs, 8), device="cuda")
    bad = torch.empty(programs, device="cuda", dtype=torch.int32)
    colsums = torch.empty(table.colsum_size, device="cuda")

    def kernel():
        _tile_moments_kernel[(programs,)](buffer, rows, raw, bad, colsums, BLOCK_ROWS=BLOCK_ROWS,
                                          BLOCK_COLS=BLOCK_COLS, TILES=TILES)

    dst = torch.empty_like(buffer)
    t_kernel = do_bench(kernel, warmup=100, rep=1000, return_mode="median")
    t_copy = do_bench(lambda: dst.copy_(buffer), warmup=100, rep=1000, return_mode="median")
    t_std = do_bench(lambda: [t.std() for t in tensors], warmup=100, rep=1000, return_mode="median")
    qkv = [t for i, t in enumerate(tensors) if i % 4 != 3]
    t_full = do_bench(lambda: backend.partials_with_columns(qkv, 1), warmup=20, rep=200, return_mode="median")
    host = [t.cpu() for t in qkv]
    host_bytes = sum(t.numel() * 2 for t in host)
    t_staged = do_bench(lambda: backend.partials_with_columns(host, 1), warmup=2, rep=20, return_mode="median")
    pinned = torch.cat([t.reshape(-1) for t in host]).pin_memory()
    t_h2d = do_bench(lambda: pinned.to("cuda", non_blocking=True), warmup=5, rep=50, return_mode="median")

    kernel_gbps = nbytes / t_kernel / 1e6
    copy_gbps = 2 * nbytes / t_copy / 1e6  # a copy reads and writes every byte
    print(f"device: {torch.cuda.get_device_name()}  triton {triton.__version__}  torch {torch.__version__}")
    print(f"batch: {len(tensors)} bf16 tensors, {nbytes / 1e9:.2f} GB, {programs} programs of "
          f"{BLOCK_ROWS * TILES}x{BLOCK_COLS}")
    print(f"{'what':52} {'ms':>9} {'GB/s':>9}")
    print(f"{'fused kernel: moments, Q/K/V column sums (1 launch)':52} {t_kernel:9.3f} {kernel_gbps:9.1f}")
    print(f"{'device-to-device copy (read + write)':52} {t_copy:9.3f} {copy_gbps:9.1f}")
    print(f"{'torch.std per tensor':52} {t_std:9.3f} {nbytes / t_std / 1e6:9.1f}")
    print(f"{'partials_with_columns, Q/K/V on the device':52} {t_full:9.3f} {host_bytes / t_full / 1e6:9.1f}")
    print(f"{'partials_with_columns, Q/K/V from host (staged)':52} {t_staged:9.3f} {host_bytes / t_staged / 1e6:9.1f}")
    print(f"{'bare pinned host->device copy of the same bytes':52} {t_h2d:9.3f} {host_bytes / t_h2d / 1e6:9.1f}")
    print(f"kernel: {kernel_gbps / copy_gbps:.0%} of copy bandwidth, {t_std / t_kernel:.1f}x faster than torch.std; "
          f"staged scan at {t_h2d / t_staged:.0%} of the bare host->device copy (100%: the kernel hides entirely)")

if __name__ == "__main__":
    main()
