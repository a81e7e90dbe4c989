"""CPU moments backend: one compiled, multi-threaded pass per tensor, read in its native dtype.

Each block of ``BLOCK`` elements is decoded once into a small float32 scratch (bf16: two values per 32-bit
word, by shifts, which vectorize; fp16: a 65,536-entry table; fp32/fp64: no decode) and then read twice
while it sits in L1: once for its sum, min and max, once for its central powers around the block mean,
which keeps precision when the mean dwarfs the spread (mean 1e3, std 1e-2). Blocks run in parallel and
are merged in block order with :func:`lineage_scanner.measure.kernels.stats.reduce_partials`: results are
bit-identical run to run.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange, types
from numba.extending import overload

from lineage_scanner.measure.kernels.stats import Moments, reduce_partials

BLOCK = 4096  # even, so bf16 blocks start on a 32-bit word


def _bits_table(dtype: torch.dtype) -> np.ndarray:
    """float32 value of each of the 65,536 bit patterns of a 16-bit float type."""
    codes = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)
    return codes.to(torch.float32).numpy()


_FP16 = _bits_table(torch.float16)
_NO_TABLE = np.zeros(1, dtype=np.float32)


def _decode(values, table, lo, hi, scratch):  # pragma: no cover - replaced by the overload in compiled code
    raise NotImplementedError


@overload(_decode, inline="always")
def _decode_impl(values, table, lo, hi, scratch):
    """Elements [lo, hi) as a float array: decoded into ``scratch`` (uint32 words) or a plain slice."""
    if values.dtype == types.uint32:  # bf16 pairs: element 2j is the low half-word, 2j+1 the high one

        def bf16(values, table, lo, hi, scratch):
            n = hi - lo
            for j in range(n // 2):
                w = values[lo // 2 + j]
                scratch[2 * j] = w << np.uint32(16)
                scratch[2 * j + 1] = w & np.uint32(0xFFFF0000)
            return scratch[:n].view(np.float32)

        return bf16
    if values.dtype == types.uint16:  # fp16 through the table

        def fp16(values, table, lo, hi, scratch):
            out = scratch[: hi - lo].view(np.float32)
            for i in range(hi - lo):
                out[i] = table[values[lo + i]]
            return out

        return fp16
    return lambda values, table, lo, hi, scratch: values[lo:hi]


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _block_partial(f, out):
    """Central moments of the float array ``f`` into ``out`` (a partial row); non-finite values skipped."""
    total = 0.0
    vmin = np.inf
    vmax = -np.inf
    for i in range(f.shape[0]):
        x = np.float64(f[i])
        total += x
        vmin = min(vmin, x)
        vmax = max(vmax, x)
    n = f.shape[0]
    bad = 0
    if not np.isfinite(total):  # rare: recount over the finite values only
        total = 0.0
        vmin = np.inf
        vmax = -np.inf
        for i in range(f.shape[0]):
            x = np.float64(f[i])
            if np.isfinite(x):
                total += x
                vmin = min(vmin, x)
                vmax = max(vmax, x)
            else:
                bad += 1
        n -= bad
    mean = total / n if n > 0 else 0.0
    m2 = 0.0
    m3 = 0.0
    m4 = 0.0
    for i in range(f.shape[0]):
        x = np.float64(f[i])
        if bad == 0 or np.isfinite(x):
            d = x - mean
            d2 = d * d
            m2 += d2
            m3 += d2 * d
            m4 += d2 * d2
    out[0] = n
    out[1] = mean
    out[2] = m2
    out[3] = m3
    out[4] = m4
    out[5] = vmin
    out[6] = vmax
    out[7] = bad


@numba.njit(cache=True, parallel=True, nogil=True)
def _tensor_partial(values, table, n, block):
    """Moments of the first ``n`` elements held in ``values`` (raw words, codes or floats)."""
    n_blocks = (n + block - 1) // block
    partials = np.empty((n_blocks, 8), dtype=np.float64)
    for b in prange(n_blocks):
        lo = b * block
        hi = min(n, lo + block)
        scratch = np.empty(block, dtype=np.uint32)
        _block_partial(_decode(values, table, lo, hi, scratch), partials[b])
    return reduce_partials(partials)


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _add_columns(f, lo, cols, by_column, powers):
    """Adds the block ``f`` (flat elements from ``lo`` on) to per-column (or per-row) power sums
    ``powers[k - 1] += x**k`` for k = 1..4, in runs that stay within one matrix row so loops vectorize."""
    i = 0
    while i < f.shape[0]:
        col = (lo + i) % cols
        run = min(cols - col, f.shape[0] - i)
        if by_column:
            p1, p2 = powers[0, col : col + run], powers[1, col : col + run]
            p3, p4 = powers[2, col : col + run], powers[3, col : col + run]
            x = f[i : i + run]
            for j in range(run):
                v = np.float64(x[j])
                v2 = v * v
                p1[j] += v
                p2[j] += v2
                p3[j] += v2 * v
                p4[j] += v2 * v2
        else:
            s1 = s2 = s3 = s4 = 0.0
            for j in range(run):
                v = np.float64(f[i + j])
                v2 = v * v
                s1 += v
                s2 += v2
                s3 += v2 * v
                s4 += v2 * v2
            row = (lo + i) // cols
            powers[0, row] += s1
            powers[1, row] += s2
            powers[2, row] += s3
            powers[3, row] += s4
        i += run


@numba.njit(cache=True, parallel=True, nogil=True)
def _tensor_partial_columns(values, table, n, block, cols, by_column, chunks):
    """:func:`_tensor_partial` of a row-major [n / cols, cols] matrix plus, in the same pass, the sums of
    x, x², x³ and x⁴ (float64) of each column (``by_column``) or each row. The blocks, and so the moments,
    are exactly those of :func:`_tensor_partial`; runs of blocks are split into ``chunks`` that keep their
    own sums, added in chunk order at the end."""
    n_blocks = (n + block - 1) // block
    width = cols if by_column else n // cols
    partials = np.empty((n_blocks, 8), dtype=np.float64)
    powers = np.zeros((chunks, 4, width))
    per = (n_blocks + chunks - 1) // chunks
    for c in prange(chunks):
        scratch = np.empty(block, dtype=np.uint32)
        for b in range(c * per, min(n_blocks, (c + 1) * per)):
            lo = b * block
            hi = min(n, lo + block)
            f = _decode(values, table, lo, hi, scratch)
            _block_partial(f, partials[b])
            _add_columns(f, lo, cols, by_column, powers[c])
    return reduce_partials(partials), powers.sum(axis=0)


def moments_and_columns(matrix: torch.Tensor, input_axis: int) -> tuple[tuple[float, ...], np.ndarray]:
    """One compiled pass over a 2-D tensor: its moments partial and, per input column (``input_axis`` 1,
    nn.Linear's [out, in]) or input row (0, Conv1D's [in, out]), the sums of x, x², x³, x⁴ over the other
    axis in float64 ([4, inputs]): what folding a norm gain into the matrix needs (see
    lineage_scanner.measure.moments.ColumnSums)."""
    m = matrix.detach()
    if not m.is_contiguous():
        m = m.contiguous()
    if m.dtype == torch.bfloat16 and m.numel() % 2:
        m = m.to(torch.float32)  # bf16 is decoded two values per 32-bit word
    cols = m.shape[1]
    chunks = max(1, min(-(-m.numel() // BLOCK), 4 * numba.get_num_threads()))
    values, table = _words(m.reshape(-1))
    return _tensor_partial_columns(values, table, m.numel(), BLOCK, cols, input_axis == 1, chunks)


def column_sums(matrix: torch.Tensor, input_axis: int) -> np.ndarray:
    """The column power sums of :func:`moments_and_columns` alone (for backends that take moments elsewhere)."""
    return moments_and_columns(matrix, input_axis)[1]


def _words(flat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """What the compiled decoders read: bf16 as 32-bit words, fp16 as codes with their table, else floats."""
    if flat.dtype == torch.bfloat16:
        return flat.view(torch.int16).numpy().view(np.uint32), _NO_TABLE
    if flat.dtype == torch.float16:
        return flat.view(torch.int16).numpy().view(np.uint16), _FP16
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.to(torch.float32)  # fp8 and friends: small tensors, converted once
    return flat.numpy(), _NO_TABLE


def _partial(tensor: torch.Tensor) -> tuple[float, ...]:
    flat = tensor.detach().reshape(-1)
    n = flat.numel()
    if flat.dtype == torch.bfloat16 and n % 2:  # odd length: the even prefix as words, the last value apart
        head, tail = _partial(flat[:-1]), Moments.of_value(float(flat[-1]))
        return (Moments.from_partial(head) + tail).as_partial()
    values, table = _words(flat)
    return _tensor_partial(values, table, n, BLOCK)


class CpuBackend:
    """Moments of each tensor with a compiled, multi-threaded single read of its bytes."""

    name = "cpu"
    batched = False

    def partials(self, tensors: list[torch.Tensor]) -> list[tuple[float, ...]]:
        return [_partial(t) for t in tensors]

    def partials_with_columns(self, tensors: list[torch.Tensor], input_axis: int
                              ) -> list[tuple[tuple[float, ...], np.ndarray]]:
        """Moments and per-input-column power sums of 2-D tensors, both from one read of each."""
        return [moments_and_columns(t, input_axis) for t in tensors]
