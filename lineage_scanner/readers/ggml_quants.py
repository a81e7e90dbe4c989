"""GGML block quantizations decoded by compiled, multi-threaded kernels.

A quantized GGUF tensor is a run of fixed-size blocks (32 weights, or 256 for the K-quants), each with
its own fp16 scale(s) and packed integer codes. Each decoder below turns one block into float32 with the
very operations, in the very order, of the ``gguf`` package's numpy reference (``gguf.quants``, itself
llama.cpp's ``dequantize_row_*``): scale × code, or scale × code − min, with no fused multiply-add, so
the values are bit-identical to the reference (the tests compare them on random blocks of every type)
while running two orders of magnitude faster. Types without a decoder here go through the ``gguf``
package (:data:`DECODED` lists those that do not).

Bit layouts, per block (codes little-endian, ``e`` the weight's index in the block):

- Q4_0 (d, 16 B): code = nibble e%16 of byte e%16, low nibble for e<16; w = d·(code−8).
- Q4_1 (d, m, 16 B): as Q4_0 without the −8; w = d·code + m.
- Q5_0 / Q5_1: a 32-bit ``qh`` adds bit e as the code's fifth bit; −16 for Q5_0, + m for Q5_1.
- Q8_0 (d, 32 int8): w = code·d.
- Q2_K (16 scale bytes, 64 B codes, d, dmin): 2-bit codes, 16 groups of 16 with 4-bit scale and min.
- Q3_K (32 B high bits, 64 B low codes, 12 B of 6-bit scales, d): code = low − 4 when the high bit is 0.
- Q4_K / Q5_K (d, dmin, 12 B of 6-bit scales and mins for 8 groups of 32, [32 B high bits], 128 B).
- Q6_K (128 B low nibbles, 64 B high pairs, 16 int8 scales, d): code − 32, 16 groups of 16.
- IQ4_NL / IQ4_XS: nibbles index a fixed non-linear table; IQ4_XS adds 6-bit scales per group of 32.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from lineage_scanner.readers.floatbits import half_to_float

#: name -> (kind code used by the kernel, weights per block, bytes per block)
DECODED: dict[str, tuple[int, int, int]] = {
    "Q4_0": (0, 32, 18),
    "Q4_1": (1, 32, 20),
    "Q5_0": (2, 32, 22),
    "Q5_1": (3, 32, 24),
    "Q8_0": (4, 32, 34),
    "Q2_K": (5, 256, 84),
    "Q3_K": (6, 256, 110),
    "Q4_K": (7, 256, 144),
    "Q5_K": (8, 256, 176),
    "Q6_K": (9, 256, 210),
    "IQ4_NL": (10, 32, 18),
    "IQ4_XS": (11, 256, 136),
}
#: The non-linear 4-bit code book of IQ4_NL and IQ4_XS (llama.cpp's ``kvalues_iq4nl``).
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)


@numba.njit(inline="always")
def _f16(raw, at):
    return half_to_float(np.uint16(np.uint16(raw[at]) | (np.uint16(raw[at + 1]) << np.uint16(8))))


@numba.njit(inline="always")
def _u32(raw, at):
    return (np.uint32(raw[at]) | (np.uint32(raw[at + 1]) << np.uint32(8)) | (np.uint32(raw[at + 2]) << np.uint32(16))
            | (np.uint32(raw[at + 3]) << np.uint32(24)))


@numba.njit(inline="always")
def _scale_min_k4(raw, at, j):
    """Scale and min of group ``j`` (0..7) from the 12 packed bytes of Q4_K / Q5_K."""
    if j < 4:
        return raw[at + j] & np.uint8(63), raw[at + j + 4] & np.uint8(63)
    sc = (raw[at + j + 4] & np.uint8(15)) | ((raw[at + j - 4] >> np.uint8(6)) << np.uint8(4))
    mn = (raw[at + j + 4] >> np.uint8(4)) | ((raw[at + j] >> np.uint8(6)) << np.uint8(4))
    return sc, mn


@numba.njit(inline="always")
def _signed6(low, high):
    """A 6-bit scale from its low nibble and high pair, minus 32, as float32 (Q3_K, IQ4_XS)."""
    return np.float32(np.int8(low | (high << np.uint8(4))) - np.int8(32))


# Each decoder writes one block. Inner loops run over 16 or 32 consecutive weights that share their
# scale and bit position, so they compile to straight vector code.


@numba.njit(inline="always")
def _q4_0(raw, at, out, o, table, nonlinear):
    d = _f16(raw, at)
    for i in range(16):
        byte = raw[at + 2 + i]
        lo, hi = byte & np.uint8(15), byte >> np.uint8(4)
        if nonlinear:  # IQ4_NL: the nibble indexes the code book
            out[o + i] = d * table[lo]
            out[o + 16 + i] = d * table[hi]
        else:
            out[o + i] = d * np.float32(np.int8(lo) - np.int8(8))
            out[o + 16 + i] = d * np.float32(np.int8(hi) - np.int8(8))


@numba.njit(inline="always")
def _q4_1(raw, at, out, o):
    d, m = _f16(raw, at), _f16(raw, at + 2)
    for i in range(16):
        byte = raw[at + 4 + i]
        out[o + i] = d * np.float32(byte & np.uint8(15)) + m
        out[o + 16 + i] = d * np.float32(byte >> np.uint8(4)) + m


@numba.njit(inline="always")
def _q5(raw, at, out, o, with_min):
    """Q5_0 (d, qh, qs: w = d·(q − 16)) and Q5_1 (d, m, qh, qs: w = d·q + m)."""
    d = _f16(raw, at)
    m = _f16(raw, at + 2) if with_min else np.float32(0.0)
    head = at + 4 if with_min else at + 2
    qh = _u32(raw, head)
    for i in range(16):
        byte = raw[head + 4 + i]
        lo = (byte & np.uint8(15)) | (np.uint8((qh >> np.uint32(i)) & np.uint32(1)) << np.uint8(4))
        hi = (byte >> np.uint8(4)) | (np.uint8((qh >> np.uint32(i + 16)) & np.uint32(1)) << np.uint8(4))
        if with_min:
            out[o + i] = d * np.float32(lo) + m
            out[o + 16 + i] = d * np.float32(hi) + m
        else:
            out[o + i] = d * np.float32(np.int8(lo) - np.int8(16))
            out[o + 16 + i] = d * np.float32(np.int8(hi) - np.int8(16))


@numba.njit(inline="always")
def _q8_0(raw, at, out, o):
    d = _f16(raw, at)
    for i in range(32):
        out[o + i] = np.float32(np.int8(raw[at + 2 + i])) * d


@numba.njit(inline="always")
def _q2_k(raw, at, out, o):
    """scales[16] (low nibble scale, high nibble min), qs[64] (2-bit codes), d, dmin."""
    d, dmin = _f16(raw, at + 80), _f16(raw, at + 82)
    for half in range(2):
        for s in range(4):
            shift = np.uint8(2 * s)
            for sub in range(2):
                g = half * 8 + s * 2 + sub
                sc = raw[at + g]
                dl = d * np.float32(sc & np.uint8(15))
                ml = dmin * np.float32(sc >> np.uint8(4))
                src, dst = at + 16 + half * 32 + sub * 16, o + g * 16
                for i in range(16):
                    out[dst + i] = dl * np.float32((raw[src + i] >> shift) & np.uint8(3)) - ml


@numba.njit(inline="always")
def _q3_k(raw, at, out, o):
    """hmask[32] (high bit, set means no −4), qs[64] (low 2 bits), scales[12] (6-bit, −32), d."""
    d = _f16(raw, at + 108)
    for half in range(2):
        for s in range(4):
            shift, bit = np.uint8(2 * s), np.uint8(half * 4 + s)
            for sub in range(2):
                g = half * 8 + s * 2 + sub
                low = (raw[at + 96 + g % 8] >> np.uint8(4 * (g // 8))) & np.uint8(15)
                high = (raw[at + 104 + g % 4] >> np.uint8(2 * (g // 4))) & np.uint8(3)
                dl = d * _signed6(low, high)
                src, dst = at + 32 + half * 32 + sub * 16, o + g * 16
                for i in range(16):
                    ql = (raw[src + i] >> shift) & np.uint8(3)
                    qh = ((raw[at + sub * 16 + i] >> bit) & np.uint8(1)) ^ np.uint8(1)
                    out[dst + i] = dl * np.float32(np.int8(ql) - np.int8(qh << np.uint8(2)))


@numba.njit(inline="always")
def _q45_k(raw, at, out, o, five):
    """Q4_K (d, dmin, scales[12], qs[128]) and Q5_K (the same with qh[32] before qs: the fifth bit)."""
    d, dmin = _f16(raw, at), _f16(raw, at + 2)
    qs = at + 48 if five else at + 16
    for j in range(8):
        sc, mn = _scale_min_k4(raw, at + 4, j)
        dj = d * np.float32(sc)
        mj = dmin * np.float32(mn)
        shift, src, dst = np.uint8(4 * (j % 2)), qs + (j // 2) * 32, o + j * 32
        for i in range(32):
            q = (raw[src + i] >> shift) & np.uint8(15)
            if five:
                q |= ((raw[at + 16 + i] >> np.uint8(j)) & np.uint8(1)) << np.uint8(4)
            out[dst + i] = dj * np.float32(q) - mj


@numba.njit(inline="always")
def _q6_k(raw, at, out, o):
    """ql[128] (low nibbles), qh[64] (high pairs), scales[16] (int8), d: w = d·scale·(q − 32)."""
    d = _f16(raw, at + 208)
    for h in range(2):
        for s in range(4):
            low_src = at + h * 64 + (s % 2) * 32
            low_shift, high_shift = np.uint8(4 * (s // 2)), np.uint8(2 * s)
            for sub in range(2):
                g = h * 8 + s * 2 + sub
                dg = d * np.float32(np.int8(raw[at + 192 + g]))
                dst = o + g * 16
                for i in range(sub * 16, sub * 16 + 16):
                    low = (raw[low_src + i] >> low_shift) & np.uint8(15)
                    high = (raw[at + 128 + h * 32 + i] >> high_shift) & np.uint8(3)
                    out[dst + i - sub * 16] = dg * np.float32(np.int8(low | (high << np.uint8(4))) - np.int8(32))


@numba.njit(inline="always")
def _iq4_xs(raw, at, out, o, table):
    """d, scales_h (16 bits: 2 per group), scales_l[4] (nibbles), qs[128]: w = d·(scale − 32)·book[q]."""
    d = _f16(raw, at)
    scales_h = np.uint16(np.uint16(raw[at + 2]) | (np.uint16(raw[at + 3]) << np.uint16(8)))
    for j in range(8):
        low = (raw[at + 4 + j // 2] >> np.uint8(4 * (j % 2))) & np.uint8(15)
        high = np.uint8((scales_h >> np.uint16(2 * j)) & np.uint16(3))
        dl = d * _signed6(low, high)
        src, dst = at + 8 + j * 16, o + j * 32
        for i in range(16):
            byte = raw[src + i]
            out[dst + i] = dl * table[byte & np.uint8(15)]
            out[dst + 16 + i] = dl * table[byte >> np.uint8(4)]


@numba.njit(nogil=True)
def _block(kind, raw, at, out, o, table):
    """Decode the block whose bytes start at ``raw[at]`` into ``out[o:o + block]``."""
    if kind == 0:
        _q4_0(raw, at, out, o, table, False)
    elif kind == 1:
        _q4_1(raw, at, out, o)
    elif kind == 2:
        _q5(raw, at, out, o, False)
    elif kind == 3:
        _q5(raw, at, out, o, True)
    elif kind == 4:
        _q8_0(raw, at, out, o)
    elif kind == 5:
        _q2_k(raw, at, out, o)
    elif kind == 6:
        _q3_k(raw, at, out, o)
    elif kind == 7:
        _q45_k(raw, at, out, o, False)
    elif kind == 8:
        _q45_k(raw, at, out, o, True)
    elif kind == 9:
        _q6_k(raw, at, out, o)
    elif kind == 10:
        _q4_0(raw, at, out, o, table, True)
    else:
        _iq4_xs(raw, at, out, o, table)


@numba.njit(parallel=True, nogil=True, cache=True)
def _decode(kind, raw, block, type_size, n_blocks, out, table):
    for b in prange(n_blocks):
        _block(kind, raw, b * type_size, out, b * block, table)


def dequantize(raw: np.ndarray, qtype: str, count: int) -> np.ndarray:
    """The first ``count`` weights (a whole number of blocks) encoded in ``raw`` (uint8) as float32."""
    kind, block, type_size = DECODED[qtype]
    n_blocks = count // block
    if count % block or raw.size < n_blocks * type_size:
        raise ValueError(f"{raw.size} bytes do not hold {count} {qtype} weights")
    out = np.empty(count, np.float32)
    _decode(kind, np.ascontiguousarray(raw).reshape(-1).view(np.uint8), block, type_size, n_blocks, out,
            IQ4_VALUES)
    return out


def row_bytes(qtype: str, cols: int) -> int:
    """Bytes of one row of ``cols`` weights (a row is always a whole number of blocks in GGUF)."""
    _, block, type_size = DECODED[qtype]
    return cols // block * type_size
