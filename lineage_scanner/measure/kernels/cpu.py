"""CPU moments backend: one compiled, multi-threaded pass over a tensor's bytes in its native dtype.

Every tensor is read as a row-major matrix (a 2-D weight as it is; anything else as rows of ``WIDTH``
elements) and each element is used once, the moment it is loaded: it is decoded in registers (bf16 by a
shift, fp16 by LLVM's exact half-to-float conversion, F16C's vcvtph2ps here, wider types as they are),
shifted by one scalar near the tensor's mean, and its powers d, d², d³, d⁴ are added to
per-column float32 accumulators; min and max are kept per column too. Per-column accumulation is what
makes the loop vectorize (a scalar min, max or sum would serialise it), and it is what folding a norm
gain needs anyway, so a Q/K/V matrix's column sums cost nothing extra. Rows go by tiles of ``TILE_ROWS``,
walked inside the column loop so that each column's float32 sums, min and max stay in registers for the
tile, then move into float64 column sums: no float32 sum ever holds more than ``TILE_ROWS`` terms. The
shift keeps a mean of 1e3 from swamping a spread of 1e-2. Rows are split into chunks run in
parallel and merged in chunk order. No fast-math flags: every loop that vectorizes does so across
columns, where nothing needs reordering, so the arithmetic is IEEE to the letter and a tensor gives the
same bits however its array was made (read-only or not, from a file or a Hub body).

A tensor holding NaN or Inf (or values whose fourth power overflows float32) gives non-finite sums; it
is measured again by :func:`_careful`, which skips and counts those values in float64.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from lineage_scanner.measure.kernels.stats import Moments, central
from lineage_scanner.readers.arrays import BFLOAT16, as_numpy, floats
from lineage_scanner.readers.floatbits import as_float32, half_to_float

#: Row length a tensor that is not a matrix is read in (and the columns its sums are spread over).
WIDTH = 2048
#: Rows whose powers a float32 tile adds up before they move to the float64 column sums.
TILE_ROWS = 8
#: Matrices smaller than this are measured on the calling thread (waking the kernel's threads costs more).
SERIAL_BELOW = 1 << 18
#: Elements the careful path converts to float64 at a time.
CAREFUL_CHUNK = 1 << 20


def element(values, i):  # pragma: no cover - replaced by the overload in compiled code
    raise NotImplementedError


@overload(element, inline="always")
def _element_impl(values, i):
    """Element ``i`` of the raw buffer as a float: int16 holds bf16 codes, uint16 fp16 codes."""
    if values.dtype == types.int16:
        return lambda values, i: as_float32(np.uint32(np.int32(values[i]) << np.int32(16)))
    if values.dtype == types.uint16:
        return lambda values, i: half_to_float(values[i])
    return lambda values, i: values[i]


@numba.njit(nogil=True, cache=True)
def _chunk(values, first, last, cols, shift, sums, extremes, row_sums, tile_rows):
    """Rows [first, last) into ``sums`` (float64 [4, cols]: Σd, Σd², Σd³, Σd⁴ per column, d = x - shift,
    ``shift`` typed as the decoded values are) and ``extremes`` ([2, cols]: min, max). With ``row_sums``
    ([4, rows]) each row's own sums are kept too (Conv1D's [in, out] layout, whose input is the row),
    which needs one-row tiles. Whole tiles of TILE_ROWS rows go through :func:`_tiles`."""
    if tile_rows == TILE_ROWS:
        whole = first + (last - first) // TILE_ROWS * TILE_ROWS
        _tiles(values, first, whole, cols, shift, sums, extremes)
        first = whole
    tile = np.empty((4, cols), extremes.dtype)
    lo = extremes[0]
    hi = extremes[1]
    s = shift
    for top in range(first, last, tile_rows):
        tile[:] = 0.0
        t1, t2, t3, t4 = tile[0], tile[1], tile[2], tile[3]
        for r in range(top, min(last, top + tile_rows)):
            base = r * cols
            for j in range(cols):
                x = element(values, base + j)
                lo[j] = min(lo[j], x)
                hi[j] = max(hi[j], x)
                d = x - s
                d2 = d * d
                t1[j] += d
                t2[j] += d2
                t3[j] += d2 * d
                t4[j] += d2 * d2
        for k in range(4):
            acc, t = sums[k], tile[k]
            for j in range(cols):
                acc[j] += np.float64(t[j])
            if row_sums.shape[1]:
                row_total = 0.0
                for j in range(cols):
                    row_total += np.float64(t[j])
                row_sums[k, top] = row_total


@numba.njit(nogil=True, cache=True)
def _tiles(values, first, last, cols, shift, sums, extremes):
    """Whole tiles of TILE_ROWS rows, [first, last): the same sums as :func:`_chunk`'s loop, with the tile's
    rows walked inside the column loop. That inner loop has a constant trip count, so it unrolls, and each
    column's running sums, min and max stay in registers for the whole tile: memory sees one load of each
    element and one update of each column per tile, instead of six per element."""
    lo = extremes[0]
    hi = extremes[1]
    s = shift
    zero = s - s
    for top in range(first, last, TILE_ROWS):
        base = top * cols
        for j in range(cols):
            a1 = a2 = a3 = a4 = zero
            mn, mx = lo[j], hi[j]
            for r in range(TILE_ROWS):
                x = element(values, base + r * cols + j)
                mn = min(mn, x)
                mx = max(mx, x)
                d = x - s
                d2 = d * d
                a1 += d
                a2 += d2
                a3 += d2 * d
                a4 += d2 * d2
            lo[j], hi[j] = mn, mx
            sums[0, j] += np.float64(a1)
            sums[1, j] += np.float64(a2)
            sums[2, j] += np.float64(a3)
            sums[3, j] += np.float64(a4)


@numba.njit(parallel=True, nogil=True, cache=True)
def _chunks(values, rows, cols, shift, sums, extremes, row_sums, tile_rows):
    """:func:`_chunk` over ``len(sums)`` runs of rows in parallel, each into its own buffers."""
    chunks = sums.shape[0]
    per = (rows + chunks - 1) // chunks
    for c in prange(chunks):
        _chunk(values, c * per, min(rows, (c + 1) * per), cols, shift, sums[c], extremes[c], row_sums, tile_rows)


def _matrix_pass(values: np.ndarray, rows: int, cols: int, shift, kept: np.dtype, by_row: bool
                 ) -> tuple[np.ndarray, float, float, np.ndarray]:
    """Power sums per column ([4, cols]), min, max and, ``by_row``, power sums per row ([4, rows]) of a
    [rows, cols] matrix. Small matrices run on this thread: waking the kernel's threads costs more."""
    chunks = 1 if rows * cols < SERIAL_BELOW else max(1, min(rows, 4 * numba.get_num_threads()))
    sums = np.zeros((chunks, 4, cols))
    extremes = np.empty((chunks, 2, cols), kept)
    extremes[:, 0], extremes[:, 1] = np.inf, -np.inf
    row_sums = np.zeros((4, rows if by_row else 0))
    tile_rows = 1 if by_row else TILE_ROWS
    if chunks == 1:
        _chunk(values, 0, rows, cols, shift, sums[0], extremes[0], row_sums, tile_rows)
    else:
        _chunks(values, rows, cols, shift, sums, extremes, row_sums, tile_rows)
    total = sums[0].copy()
    for c in range(1, chunks):  # in chunk order: the same bits every run
        total += sums[c]
    lo = float(extremes[:, 0].min()) if rows else np.inf
    hi = float(extremes[:, 1].max()) if rows else -np.inf
    return total, lo, hi, row_sums


def _raw(flat: np.ndarray) -> tuple[np.ndarray, np.dtype]:
    """What the compiled pass reads (bf16 as int16 codes, fp16 as uint16 codes, fp32/fp64 as they are),
    and the dtype its decoded values are kept in."""
    if flat.dtype == BFLOAT16:
        return flat.view(np.int16), np.dtype(np.float32)
    if flat.dtype == np.float16:
        return flat.view(np.uint16), np.dtype(np.float32)
    if flat.dtype not in (np.float32, np.float64):
        flat = floats(flat)  # fp8 and friends: small tensors, converted once
    return flat, flat.dtype


def _shift(flat: np.ndarray) -> float:
    """What the powers are taken around: zero for a tensor centred near zero (every weight matrix: its
    values then enter the powers exactly), else the mean of its first elements, so that float32 powers
    of a tensor with mean 1e3 and spread 1e-2 keep the spread's digits."""
    head = floats(flat[:WIDTH], np.float64)
    if head.size < 2:
        return 0.0
    mean, spread = float(head.mean()), float(head.std())
    return mean if np.isfinite(mean) and abs(mean) > spread else 0.0


def _raw_powers(shifted: np.ndarray, count: np.ndarray | int, shift: float) -> np.ndarray:
    """Σd^k (d = x - s) -> Σx^k, k = 1..4, by the binomial expansion (exact algebra; s is near zero for
    weights, where it changes nothing)."""
    if shift == 0.0:
        return shifted
    s1, s2, s3, s4 = shifted
    s = shift
    return np.stack([s1 + count * s,
                     s2 + 2 * s * s1 + count * s**2,
                     s3 + 3 * s * s2 + 3 * s**2 * s1 + count * s**3,
                     s4 + 4 * s * s3 + 6 * s**2 * s2 + 4 * s**3 * s1 + count * s**4])


def _careful(flat: np.ndarray, cols: int, by_row: bool) -> tuple[tuple[float, ...], np.ndarray]:
    """Moments of the finite values, non-finite ones counted, and power sums that leave them out: float64,
    a chunk of rows at a time (a tensor like this is rejected by the scan, so speed does not matter)."""
    total = Moments()
    rows = flat.size // cols
    powers = np.zeros((4, rows if by_row else cols))
    step = max(1, CAREFUL_CHUNK // cols)
    for top in range(0, rows, step):
        block = floats(flat[top * cols : min(rows, top + step) * cols], np.float64).reshape(-1, cols)
        total = total + Moments.of_array(block)
        finite = np.where(np.isfinite(block), block, 0.0)
        for k in range(4):
            if by_row:
                powers[k, top : top + block.shape[0]] = (finite ** (k + 1)).sum(axis=1)
            else:
                powers[k] += (finite ** (k + 1)).sum(axis=0)
    return total.as_partial(), powers


def _measure(flat: np.ndarray, cols: int, by_row: bool) -> tuple[tuple[float, ...], np.ndarray]:
    """Moments partial and power sums (per column, or per row) of ``flat`` read as rows of ``cols``."""
    rows = flat.size // cols
    values, kept = _raw(flat)
    shift = kept.type(_shift(flat))
    sums, lo, hi, row_sums = _matrix_pass(values, rows, cols, shift, kept, by_row)
    totals = sums.sum(axis=1)
    if not (np.isfinite(totals).all() and np.isfinite(lo) and np.isfinite(hi)):
        return _careful(flat, cols, by_row)
    row = central(np.array([[rows * cols, float(shift), *totals, lo, hi]]), np.zeros(1))[0]
    partial = tuple(float(v) for v in row)
    powers = _raw_powers(row_sums, cols, float(shift)) if by_row else _raw_powers(sums, rows, float(shift))
    return partial, powers


def moments_and_columns(matrix, input_axis: int) -> tuple[tuple[float, ...], np.ndarray]:
    """One compiled pass over a 2-D tensor: its moments partial and, per input column (``input_axis`` 1,
    nn.Linear's [out, in]) or input row (0, Conv1D's [in, out]), the sums of x, x², x³, x⁴ over the other
    axis in float64 ([4, inputs]): what folding a norm gain into the matrix needs (see
    lineage_scanner.measure.records.ColumnSums)."""
    m = np.ascontiguousarray(as_numpy(matrix))
    if m.size == 0:
        return Moments().as_partial(), np.zeros((4, m.shape[1 - input_axis]))
    return _measure(m.reshape(-1), m.shape[1], input_axis == 0)


def _partial(tensor) -> tuple[float, ...]:
    """Moments of any tensor: its whole rows of ``WIDTH`` through the compiled pass, the rest in float64."""
    flat = np.ascontiguousarray(as_numpy(tensor)).reshape(-1)
    whole = flat.size - flat.size % WIDTH
    total = Moments.from_partial(_measure(flat[:whole], WIDTH, False)[0]) if whole else Moments()
    if whole < flat.size:
        total = total + Moments.of_array(floats(flat[whole:], np.float64))
    return total.as_partial()


class CpuBackend:
    """Moments of each tensor with a compiled, multi-threaded single read of its bytes."""

    name = "cpu"
    batched = False

    def partials(self, tensors: list) -> list[tuple[float, ...]]:
        """Tensors are numpy arrays (see :mod:`lineage_scanner.readers.arrays`) or torch tensors."""
        return [_partial(t) for t in tensors]

    def partials_with_columns(self, tensors: list, input_axis: int
                              ) -> list[tuple[tuple[float, ...], np.ndarray]]:
        """Moments and per-input-column power sums of 2-D tensors, both from one read of each."""
        return [moments_and_columns(t, input_axis) for t in tensors]
