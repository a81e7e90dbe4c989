"""GPU moments backend: one Triton launch over every segment of a batch, from native dtype, with the
per-column power sums that fold a norm gain into Q/K/V computed in the same launch.

A batch (a model's attention tensors, or their heads) is laid end to end in one device buffer per dtype
and read as matrices: a 2-D segment whose column sums are wanted keeps its own columns, any other is read
as rows of ``BLOCK_COLS`` elements. A tile table lists, for each program, its segment and the
``BLOCK_ROWS * TILES`` rows by ``BLOCK_COLS`` columns it covers. Each program converts to fp32 right after
the load and writes (a) shifted power sums of its elements around its first tile's mean (so a mean of
1e3 cannot swamp a std of 1e-2), min, max and the count of non-finite values it skipped, and (b) when
the segment wants them, the sums of x, x², x³, x⁴ of each of its columns over its rows. The host turns
(a) into central moments in float64 and merges programs in order with
:func:`lineage_scanner.measure.kernels.stats.reduce_partials`, and adds (b) over a segment's row programs
in float64: no atomics, so the same input gives the same bits every run.

Host tensors are staged through two pinned buffers on a copy stream: chunk i+1 is packed and its copy
queued while the kernel on chunk i runs, and chunk i's results are fetched only after that (see
:meth:`TritonBackend._run`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from lineage_scanner.measure.kernels.cpu import CpuBackend
from lineage_scanner.measure.kernels.stats import central, reduce_partials
from lineage_scanner.readers.arrays import to_torch

BLOCK_ROWS = 64
BLOCK_COLS = 64
#: Row tiles per program: a program covers BLOCK_ROWS * TILES rows of one column strip.
TILES = 4
#: Input dtypes read natively by the kernel; anything else goes through the CPU backend.
NATIVE = (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2)
#: Pinned staging chunk: large enough to keep the copy engine busy, small enough to double-buffer.
CHUNK_BYTES = 256 << 20


@triton.jit
def _tile_moments_kernel(
    x_ptr,  # flat input buffer, native dtype
    table_ptr,  # int64 [n_programs, 6]: segment start, length, columns, first row, first column, column-sum offset
    out_ptr,  # fp32 [n_programs, 8]: count, shift, S1, S2, S3, S4, min, max
    bad_ptr,  # int32 [n_programs]: non-finite values skipped
    colsum_ptr,  # fp32: per wanted segment [row programs, 4, columns]; offset -1 in the table: none
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
    TILES: tl.constexpr,
):
    p = tl.program_id(0)
    row = table_ptr + p * 6
    start = tl.load(row + 0)
    length = tl.load(row + 1)
    cols = tl.load(row + 2)
    first_row = tl.load(row + 3)
    first_col = tl.load(row + 4)
    colsum_at = tl.load(row + 5)
    c = first_col + tl.arange(0, BLOCK_COLS)
    in_cols = c < cols
    zero = tl.zeros((BLOCK_COLS,), dtype=tl.float32)
    c1, c2, c3, c4 = zero, zero, zero, zero
    count = 0.0
    shift = 0.0
    s1, s2, s3, s4 = 0.0, 0.0, 0.0, 0.0
    lo, hi = float("inf"), -float("inf")
    bad = 0
    for t in tl.static_range(TILES):
        r = first_row + t * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        index = r[:, None] * cols + c[None, :]
        mask = in_cols[None, :] & (index < length)
        x = tl.load(x_ptr + start + index, mask=mask, other=0.0).to(tl.float32)
        finite = mask & (x == x) & (tl.abs(x) < float("inf"))
        n = tl.sum(tl.sum(finite.to(tl.float32), axis=1), axis=0)
        xf = tl.where(finite, x, 0.0)
        if t == 0:
            shift = tl.sum(tl.sum(xf, axis=1), axis=0) / tl.maximum(n, 1.0)
        count += n
        d = tl.where(finite, x - shift, 0.0)
        d2 = d * d
        s1 += tl.sum(tl.sum(d, axis=1), axis=0)
        s2 += tl.sum(tl.sum(d2, axis=1), axis=0)
        s3 += tl.sum(tl.sum(d2 * d, axis=1), axis=0)
        s4 += tl.sum(tl.sum(d2 * d2, axis=1), axis=0)
        lo = tl.minimum(lo, tl.min(tl.min(tl.where(finite, x, float("inf")), axis=1), axis=0))
        hi = tl.maximum(hi, tl.max(tl.max(tl.where(finite, x, -float("inf")), axis=1), axis=0))
        bad += tl.sum(tl.sum((mask & ~finite).to(tl.int32), axis=1), axis=0)
        x2 = xf * xf
        c1 += tl.sum(xf, axis=0)
        c2 += tl.sum(x2, axis=0)
        c3 += tl.sum(x2 * xf, axis=0)
        c4 += tl.sum(x2 * x2, axis=0)
    out = out_ptr + p * 8
    tl.store(out + 0, count)
    tl.store(out + 1, shift)
    tl.store(out + 2, s1)
    tl.store(out + 3, s2)
    tl.store(out + 4, s3)
    tl.store(out + 5, s4)
    tl.store(out + 6, lo)
    tl.store(out + 7, hi)
    tl.store(bad_ptr + p, bad)
    wanted = in_cols & ((colsum_at + c * 0) >= 0)  # a block-shaped mask (a scalar one is not a mask)
    at = colsum_ptr + tl.maximum(colsum_at, 0) + c
    tl.store(at, c1, mask=wanted)
    tl.store(at + cols, c2, mask=wanted)
    tl.store(at + 2 * cols, c3, mask=wanted)
    tl.store(at + 3 * cols, c4, mask=wanted)


@dataclass(frozen=True)
class TileTable:
    """Where each program of one launch works (``rows``: int64 [programs, 6], the kernel's table), how many
    programs each segment has (in order), and where each segment's column sums go (-1: none)."""

    rows: np.ndarray
    per_segment: np.ndarray
    colsum_at: np.ndarray
    colsum_size: int


def tile_table(lengths: np.ndarray, cols: np.ndarray) -> TileTable:
    """Programs for segments laid end to end: segment i has ``lengths[i]`` elements read as rows of
    ``cols[i]`` (0: read as rows of BLOCK_COLS, no column sums)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if (lengths < 0).any() or (cols < 0).any():
        raise ValueError("segment lengths and column counts must be non-negative")
    wanted = cols > 0
    if (lengths[wanted] % cols[wanted]).any():
        raise ValueError("a segment with column sums must be whole rows of its columns")
    width = np.where(wanted, cols, BLOCK_COLS)
    n_rows = -(-lengths // width)
    row_programs = -(-n_rows // (BLOCK_ROWS * TILES))
    strips = -(-width // BLOCK_COLS)
    per_segment = row_programs * strips
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    sizes = np.where(wanted, row_programs * 4 * cols, 0)
    colsum_at = np.where(wanted, np.concatenate([[0], np.cumsum(sizes)[:-1]]), -1)
    seg = np.repeat(np.arange(len(lengths)), per_segment)
    k = np.arange(int(per_segment.sum())) - np.repeat(np.cumsum(per_segment) - per_segment, per_segment)
    row_program, strip = np.divmod(k, strips[seg])
    rows = np.stack([offsets[seg], lengths[seg], width[seg], row_program * BLOCK_ROWS * TILES,
                     strip * BLOCK_COLS, np.where(wanted[seg], colsum_at[seg] + row_program * 4 * cols[seg], -1)],
                    axis=1).astype(np.int64)
    return TileTable(rows.reshape(-1, 6), per_segment, colsum_at, int(sizes.sum()))


@dataclass
class Launched:
    """A launch in flight: its device outputs, read back (which waits for the kernel) by :meth:`collect`."""

    table: TileTable
    cols: np.ndarray
    raw: torch.Tensor
    bad: torch.Tensor
    colsums: torch.Tensor

    def collect(self) -> list[tuple[tuple[float, ...], np.ndarray | None]]:
        rows = central(self.raw.cpu().numpy(), self.bad.cpu().numpy())
        sums = self.colsums.cpu().numpy()
        out, first = [], 0
        for i, count in enumerate(self.table.per_segment):
            partial = reduce_partials(rows[first : first + count])
            first += count
            powers = None
            if self.cols[i] > 0:
                at, n = self.table.colsum_at[i], self.cols[i]
                block = sums[at : at + count // -(-n // BLOCK_COLS) * 4 * n].astype(np.float64)
                powers = block.reshape(-1, 4, n).sum(axis=0)
            out.append((partial, powers))
        return out


def launch(buffer: torch.Tensor, lengths: np.ndarray, cols: np.ndarray | None = None) -> Launched:
    """Start one launch over consecutive segments of ``buffer`` (flat, contiguous, on the kernel's device,
    a NATIVE dtype); ``cols`` as in :func:`tile_table`. Nothing waits for the kernel here."""
    lengths = np.asarray(lengths, dtype=np.int64)
    cols = np.zeros(len(lengths), dtype=np.int64) if cols is None else np.asarray(cols, dtype=np.int64)
    if buffer.dim() != 1 or not buffer.is_contiguous():
        raise ValueError(f"the buffer must be flat and contiguous, got shape {tuple(buffer.shape)}")
    if buffer.dtype not in NATIVE:
        raise TypeError(f"the kernel reads {', '.join(str(d) for d in NATIVE)}, not {buffer.dtype}")
    if len(cols) != len(lengths):
        raise ValueError(f"{len(lengths)} segments but {len(cols)} column counts")
    if int(lengths.sum()) != buffer.numel():
        raise ValueError(f"segments of {int(lengths.sum())} elements do not tile a buffer of {buffer.numel()}")
    device = buffer.device
    table = tile_table(lengths, cols)
    programs = len(table.rows)
    raw = torch.empty((programs, 8), dtype=torch.float32, device=device)
    bad = torch.empty(programs, dtype=torch.int32, device=device)
    colsums = torch.empty(max(table.colsum_size, 1), dtype=torch.float32, device=device)
    if programs:
        _tile_moments_kernel[(programs,)](buffer, torch.from_numpy(table.rows).to(device), raw, bad, colsums,
                                          BLOCK_ROWS=BLOCK_ROWS, BLOCK_COLS=BLOCK_COLS, TILES=TILES)
    return Launched(table, cols, raw, bad, colsums)


class TritonBackend:
    """Moments of a whole batch of tensors per dtype in one kernel launch, on CUDA (or the interpreter).

    ``device`` is where the kernel runs: "cuda" on a GPU; "cpu" under ``TRITON_INTERPRET=1`` in tests.
    Host tensors are staged ``chunk_bytes`` at a time.
    """

    name = "triton"
    batched = True

    def __init__(self, device: str | None = None, chunk_bytes: int = CHUNK_BYTES):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._cpu = CpuBackend()
        self._stager = PinnedStager(self.device, chunk_bytes) if self.device.type == "cuda" else None

    def partials(self, tensors: list) -> list[tuple[float, ...]]:
        return [partial for partial, _ in self._measure(tensors, None)]

    def partials_with_columns(self, tensors: list, input_axis: int
                              ) -> list[tuple[tuple[float, ...], np.ndarray]]:
        """Moments and per-input-column power sums of 2-D tensors, in the same launch. Conv1D's [in, out]
        layout (``input_axis`` 0: sums per row) and empty matrices go through the CPU backend."""
        for t in tensors:
            if len(t.shape) != 2:
                raise ValueError(f"column sums need 2-D tensors, got shape {tuple(t.shape)}")
        if input_axis == 0 or any(0 in t.shape for t in tensors):
            return self._cpu.partials_with_columns(tensors, input_axis)
        return self._measure(tensors, [t.shape[1] for t in tensors])  # type: ignore[return-value]

    def _measure(self, tensors: list, cols: list[int] | None) -> list[tuple[tuple[float, ...], np.ndarray | None]]:
        """Tensors are torch tensors (on the device or the host) or numpy arrays from a reader."""
        tensors = [t if isinstance(t, torch.Tensor) else to_torch(np.ascontiguousarray(t)) for t in tensors]
        results: list = [None] * len(tensors)
        groups: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(t.dtype, []).append(i)
        for dtype, idx in groups.items():
            if dtype not in NATIVE:
                for i in idx:
                    t = tensors[i]
                    results[i] = (self._cpu.partials_with_columns([t], 1)[0] if cols else
                                  (self._cpu.partials([t])[0], None))
                continue
            flats = [tensors[i].reshape(-1) for i in idx]
            widths = [cols[i] if cols else 0 for i in idx]
            for i, row in zip(idx, self._run(flats, widths)):
                results[i] = row
        return results

    def _run(self, flats: list[torch.Tensor], widths: list[int]) -> list:
        """Launch per staged chunk; a chunk's results are read back only after the next chunk's copy is
        queued, so packing and copying chunk i+1 overlap the kernel on chunk i."""
        if self._stager is None or flats[0].device == self.device:  # interpreter, or already on the GPU
            return launch(torch.cat(flats).to(self.device), [f.numel() for f in flats], widths).collect()
        out: list = []
        pending: Launched | None = None
        for chunk, on_device in self._stager.stream(list(zip(flats, widths))):
            launched = launch(on_device, [f.numel() for f, _ in chunk], [w for _, w in chunk])
            if pending is not None:
                out.extend(pending.collect())
            pending = launched
        if pending is not None:
            out.extend(pending.collect())
        return out


class PinnedStager:
    """Double-buffered host->GPU staging: mmap'd bytes -> pinned buffer -> device, on a copy stream.

    :meth:`stream` yields (chunk, device buffer) pairs; the next pair is packed and its copy queued when
    the consumer asks for it, i.e. after it has launched (not waited for) the kernel on the current one.
    An event orders each launch after its copy; a pinned buffer is refilled only once its previous copy
    has completed.
    """

    def __init__(self, device: torch.device, chunk_bytes: int = CHUNK_BYTES):
        self.device = device
        self.chunk_bytes = chunk_bytes
        self.copy_stream = torch.cuda.Stream(device)
        self._pinned: list[torch.Tensor | None] = [None, None]
        self._done: list[torch.cuda.Event | None] = [None, None]

    def _chunks(self, items: list[tuple[torch.Tensor, int]]):
        chunk, size = [], 0
        for item in items:
            nbytes = item[0].numel() * item[0].element_size()
            if chunk and size + nbytes > self.chunk_bytes:
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += nbytes
        if chunk:
            yield chunk

    def stream(self, items: list[tuple[torch.Tensor, int]]):
        for slot, chunk in enumerate(self._chunks(items)):
            slot %= 2
            flats = [f for f, _ in chunk]
            n = sum(f.numel() for f in flats)
            if self._done[slot] is not None:
                self._done[slot].synchronize()  # the copy that last used this pinned buffer is finished
            pinned = self._pinned[slot]
            if pinned is None or pinned.dtype != flats[0].dtype or pinned.numel() < n:
                pinned = self._pinned[slot] = torch.empty(n, dtype=flats[0].dtype, pin_memory=True)
            torch.cat(flats, out=pinned[:n])
            with torch.cuda.stream(self.copy_stream):
                on_device = pinned[:n].to(self.device, non_blocking=True)
                event = self._done[slot] = torch.cuda.Event()
                event.record(self.copy_stream)
            torch.cuda.current_stream(self.device).wait_event(event)
            on_device.record_stream(torch.cuda.current_stream(self.device))
            yield chunk, on_device
