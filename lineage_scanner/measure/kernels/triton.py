"""GPU moments backend: one Triton launch over every segment of a batch, from native dtype.

A batch (a model's attention tensors, or their heads) is laid end to end in one device buffer per dtype,
described by a block table: each program reads one block of at most ``BLOCK`` elements of one segment,
converts to fp32 right after the load, and writes shifted power sums around the block's own mean (so a
mean of 1e3 cannot swamp a std of 1e-2), plus min, max and the count of non-finite values it skipped.
The second stage converts each block to central moments in float64 and merges blocks in order with
:func:`lineage_scanner.measure.kernels.stats.reduce_partials`: no atomics, so the same input gives the
same bits every run.

Host-to-device staging is double-buffered through pinned memory on a copy stream, so the copy of the
next chunk of tensors overlaps the kernel on the current one.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from lineage_scanner.measure.kernels.cpu import CpuBackend
from lineage_scanner.measure.kernels.stats import reduce_partials

BLOCK = 4096
#: Input dtypes read natively by the kernel; anything else goes through the CPU backend.
NATIVE = (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2)
#: Pinned staging chunk: large enough to keep the copy engine busy, small enough to double-buffer.
CHUNK_BYTES = 256 << 20


@triton.jit
def _block_moments_kernel(
    x_ptr,  # flat input buffer, native dtype
    start_ptr,  # int64 [n_blocks]: index of each block's first element in x
    length_ptr,  # int32 [n_blocks]: elements in each block, 1..BLOCK
    out_ptr,  # fp32 [n_blocks, 8]: count, shift, S1, S2, S3, S4, min, max
    bad_ptr,  # int32 [n_blocks]: non-finite values skipped
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    start = tl.load(start_ptr + b)
    n = tl.load(length_ptr + b)
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
    finite = mask & (x == x) & (tl.abs(x) < float("inf"))
    count = tl.sum(finite.to(tl.float32), axis=0)
    shift = tl.sum(tl.where(finite, x, 0.0), axis=0) / tl.maximum(count, 1.0)
    d = tl.where(finite, x - shift, 0.0)
    d2 = d * d
    row = out_ptr + b * 8
    tl.store(row + 0, count)
    tl.store(row + 1, shift)
    tl.store(row + 2, tl.sum(d, axis=0))
    tl.store(row + 3, tl.sum(d2, axis=0))
    tl.store(row + 4, tl.sum(d2 * d, axis=0))
    tl.store(row + 5, tl.sum(d2 * d2, axis=0))
    tl.store(row + 6, tl.min(tl.where(finite, x, float("inf")), axis=0))
    tl.store(row + 7, tl.max(tl.where(finite, x, -float("inf")), axis=0))
    tl.store(bad_ptr + b, tl.sum((mask & ~finite).to(tl.int32), axis=0))


def block_table(lengths: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split segments laid end to end into blocks: (block starts, block lengths, blocks per segment)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    per_segment = -(-lengths // block)
    seg = np.repeat(np.arange(len(lengths)), per_segment)
    first = np.concatenate([[0], np.cumsum(per_segment)[:-1]])
    k = np.arange(int(per_segment.sum())) - np.repeat(first, per_segment)
    starts = offsets[seg] + k * block
    sizes = np.minimum(block, lengths[seg] - k * block)
    return starts, sizes.astype(np.int32), per_segment


def central(raw: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Shifted power sums of each block (float64 from here on) -> partial rows of central moments."""
    n, c, s1, s2, s3, s4, lo, hi = (raw[:, i].astype(np.float64) for i in range(8))
    safe = np.maximum(n, 1.0)
    a = s1 / safe
    m2 = s2 - s1 * a
    m3 = s3 - 3.0 * a * s2 + 2.0 * a * a * s1
    m4 = s4 - 4.0 * a * s3 + 6.0 * a * a * s2 - 3.0 * a * a * a * s1
    return np.stack([n, c + a, m2, m3, m4, lo, hi, bad.astype(np.float64)], axis=1)


def launch(buffer: torch.Tensor, lengths: np.ndarray) -> list[tuple[float, ...]]:
    """Moments of consecutive segments of ``buffer`` (flat, on the kernel's device) in one launch."""
    starts, sizes, per_segment = block_table(lengths)
    out_rows: list[tuple[float, ...]] = []
    if len(starts):
        device = buffer.device
        raw = torch.empty((len(starts), 8), dtype=torch.float32, device=device)
        bad = torch.empty(len(starts), dtype=torch.int32, device=device)
        _block_moments_kernel[(len(starts),)](
            buffer, torch.from_numpy(starts).to(device), torch.from_numpy(sizes).to(device), raw, bad, BLOCK=BLOCK
        )
        rows = central(raw.cpu().numpy(), bad.cpu().numpy())
    else:
        rows = np.empty((0, 8))
    first = 0
    for count in per_segment:
        out_rows.append(reduce_partials(rows[first : first + count]))
        first += count
    return out_rows


class TritonBackend:
    """Moments of a whole batch of tensors per dtype in one kernel launch, on CUDA (or the interpreter).

    ``device`` is where the kernel runs: "cuda" on a GPU; "cpu" under ``TRITON_INTERPRET=1`` in tests.
    """

    name = "triton"
    batched = True

    def __init__(self, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._cpu = CpuBackend()
        self._stager = PinnedStager(self.device) if self.device.type == "cuda" else None

    def partials(self, tensors: list[torch.Tensor]) -> list[tuple[float, ...]]:
        results: list[tuple[float, ...] | None] = [None] * len(tensors)
        groups: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(t.dtype, []).append(i)
        for dtype, idx in groups.items():
            if dtype not in NATIVE:
                for i, row in zip(idx, self._cpu.partials([tensors[i] for i in idx])):
                    results[i] = row
                continue
            flats = [tensors[i].reshape(-1) for i in idx]
            for i, row in zip(idx, self._run(flats)):
                results[i] = row
        return results  # type: ignore[return-value]

    def _run(self, flats: list[torch.Tensor]) -> list[tuple[float, ...]]:
        if self._stager is None or flats[0].device == self.device:  # interpreter, or already on the GPU
            return launch(torch.cat(flats).to(self.device), np.array([f.numel() for f in flats]))
        rows: list[tuple[float, ...]] = []
        for chunk, on_device in self._stager.stream(flats):
            rows.extend(launch(on_device, np.array([f.numel() for f in chunk])))
        return rows


class PinnedStager:
    """Double-buffered host->GPU staging: mmap'd bytes -> pinned buffer -> device, on a copy stream.

    While the kernel works on chunk i (default stream), chunk i+1 is packed into the other pinned buffer
    and copied on ``copy_stream``; an event orders each launch after its copy.
    """

    def __init__(self, device: torch.device, chunk_bytes: int = CHUNK_BYTES):
        self.device = device
        self.chunk_bytes = chunk_bytes
        self.copy_stream = torch.cuda.Stream(device)
        self._pinned: list[torch.Tensor | None] = [None, None]
        self._done: list[torch.cuda.Event | None] = [None, None]

    def _chunks(self, flats: list[torch.Tensor]):
        chunk, size = [], 0
        for f in flats:
            nbytes = f.numel() * f.element_size()
            if chunk and size + nbytes > self.chunk_bytes:
                yield chunk
                chunk, size = [], 0
            chunk.append(f)
            size += nbytes
        if chunk:
            yield chunk

    def stream(self, flats: list[torch.Tensor]):
        for slot, chunk in enumerate(self._chunks(flats)):
            slot %= 2
            n = sum(f.numel() for f in chunk)
            if self._done[slot] is not None:
                self._done[slot].synchronize()  # the copy that last used this pinned buffer is finished
            pinned = self._pinned[slot]
            if pinned is None or pinned.dtype != chunk[0].dtype or pinned.numel() < n:
                pinned = self._pinned[slot] = torch.empty(n, dtype=chunk[0].dtype, pin_memory=True)
            torch.cat(chunk, out=pinned[:n])
            with torch.cuda.stream(self.copy_stream):
                on_device = pinned[:n].to(self.device, non_blocking=True)
                event = self._done[slot] = torch.cuda.Event()
                event.record(self.copy_stream)
            torch.cuda.current_stream(self.device).wait_event(event)
            on_device.record_stream(torch.cuda.current_stream(self.device))
            yield chunk, on_device
