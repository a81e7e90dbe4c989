"""The Triton backend on a real GPU (skipped without CUDA; elsewhere the same kernel runs in Triton's
interpreter through tests/test_kernels.py and tests/test_stats.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lineage_scanner.measure.kernels.stats import Moments

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def backend():
    from lineage_scanner.measure.kernels.triton import TritonBackend

    return TritonBackend("cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_moments_and_column_sums_on_the_device(backend, dtype):
    gen = torch.Generator(device="cuda").manual_seed(11)
    mats = [(torch.randn(s, generator=gen, device="cuda") * 0.02 + 0.001).to(dtype)
            for s in [(4096, 4096), (1024, 4096), (513, 130), (1, 1)]]
    for m, (partial, powers) in zip(mats, backend.partials_with_columns(mats, 1)):
        ref = m.double()
        got = Moments.from_partial(partial)
        assert got.count == m.numel() and got.min == ref.min().item() and got.max == ref.max().item()
        if m.numel() > 1:
            assert got.std == pytest.approx(ref.std().item(), rel=1e-6)
        exact = torch.stack([(ref**k).sum(0) for k in range(1, 5)]).cpu().numpy()
        scale = torch.stack([(ref.abs() ** k).sum(0) for k in range(1, 5)]).cpu().numpy()
        assert (np.abs(powers - exact) <= 1e-6 * scale).all()


def test_staged_host_tensors_match_device_tensors_bit_for_bit(backend):
    """Host tensors go through the pinned double buffer in several chunks (each its own launch): programs
    never cross segments, so every segment's result has the same bits as one launch on the device."""
    from lineage_scanner.measure.kernels.triton import TritonBackend

    gen = torch.Generator().manual_seed(12)
    host = [(torch.randn(n, 2048, generator=gen) * 0.02).to(torch.bfloat16) for n in (512, 300, 1024, 7, 900)]
    device = [t.cuda() for t in host]
    expected = backend.partials_with_columns(device, 1)
    staged = TritonBackend("cuda", chunk_bytes=2 << 20).partials_with_columns(host, 1)  # 5 chunks, 2 buffers
    for (p, c), (q, d) in zip(expected, staged):
        assert p == q and np.array_equal(c, d)
