"""Safetensors shards of one Hub commit, read by HTTP range requests: only the headers and the tensors asked.

Each shard's header is fetched with one request for its first 100 KB (a second one only for larger
headers) and validated as strictly as a local file. Tensor bytes are fetched as coalesced ranges (adjacent
tensors of a layer in one request), several at a time, a window bounded in bytes ahead of the consumer,
and dropped once measured; a tensor larger than a quarter of the reader's share of the read-ahead budget
is streamed in blocks of rows, one measured while the next is fetched. So a process's memory is bounded
by bytes (:class:`ReadAhead`), whatever the models' sizes.
"""

from __future__ import annotations

import hashlib
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np

from lineage_scanner.readers.arrays import numeric_dtype
from lineage_scanner.readers.base import TensorInfo
from lineage_scanner.readers.hub_http import HubClient
from lineage_scanner.readers.hub_urls import file_size, file_url
from lineage_scanner.readers.safetensors_header import header_length, parse_header

HEADER_PROBE = 100_000
#: Two tensors closer than this are fetched in one request (a layer's q/k/v/o are adjacent).
MAX_GAP = 64 * 1024
#: Tensor bytes the Hub readers of a process hold at once, fetched or in flight, shared equally by the
#: readers open (a worker may scan several models at once): half for whole tensors read ahead of the
#: consumer, half for a tensor larger than that quarter, streamed in blocks of rows (one measured, one
#: fetched).
READ_AHEAD_BYTES = 256 << 20
#: Sampled runs closer than this share one request: the bytes in between cost less than a request.
SAMPLE_GAP = 4096
WORKERS = 4
#: The content digest of a safetensors checkpoint: the first bytes of layer 0's first matrices.
CONTENT_TENSORS = 4
CONTENT_BYTES = 4096
_LAYER_0 = re.compile(r"(^|\.)(layers|h|blocks?|blk|decoder\.layers)\.0\.")


class ReadAhead:
    """The read-ahead budget of one process: READ_AHEAD_BYTES shared equally by the Hub readers open in it
    (one per model a worker scans at once)."""

    def __init__(self, total: int | None = None):
        self.total = READ_AHEAD_BYTES if total is None else total
        self._open = 0
        self._lock = threading.Lock()

    def join(self) -> None:
        with self._lock:
            self._open += 1

    def leave(self) -> None:
        with self._lock:
            self._open -= 1

    def share(self) -> int:
        """One reader's bytes."""
        return self.total // max(1, self._open)


class HubSafetensors:
    """Safetensors shards of one Hub commit, read by range requests."""

    format = "safetensors"

    def __init__(self, client: HubClient, repo_id: str, sha: str, shards: list[str], read_ahead: ReadAhead,
                 pool: ThreadPoolExecutor | None = None):
        self.path = client.source
        self.client = client
        self._urls: dict[str, str] = {}
        self._tensors: dict[str, TensorInfo] = {}
        self._headers: list[bytes] = []
        self._probes: dict[str, bytes] = {}  # each shard's first bytes: reads that fall in them cost no request
        for shard in shards:
            url = file_url(repo_id, sha, shard)
            name = f"{client.source}/{shard}"
            probe, headers = client.get(url, 0, HEADER_PROBE - 1)
            size = file_size(name, headers, probe)
            n = header_length(probe[:8], size, name)
            raw = probe[8 : 8 + n] if 8 + n <= len(probe) else client.get(url, 8, 7 + n)[0]
            tensors, _ = parse_header(raw, size, name)
            self._headers.append(shard.encode() + b"\0" + raw)
            self._probes[url] = bytes(probe)
            for t in tensors.values():
                self._urls[t.name] = url
                self._tensors[t.name] = t
        #: the worker's range threads (a pool shared by the models it scans at once), else this reader's own
        self._own_pool = pool is None
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="range") if pool is None else pool
        self._read_ahead = read_ahead
        read_ahead.join()
        self._closed = False
        self._plan: list[tuple[str, int, int, list[str]]] = []
        self._futures: dict[int, Future] = {}  # submitted ranges whose tensors are not all released
        self._submitted = 0  # ranges are submitted in plan order; a read can pull one forward
        self._range_of: dict[str, int] = {}
        self._pending: dict[int, int] = {}

    def tensors(self) -> dict[str, TensorInfo]:
        return self._tensors

    def prefetch(self, names: list[str]) -> None:
        """Plan coalesced ranges for ``names`` (in this order) after those already planned, and start the
        first few requests. A name read without being prefetched is planned on its own."""
        names = [n for n in names if n not in self._range_of]
        spans = sorted((self._urls[n], self._tensors[n].start, self._tensors[n].end, n) for n in names)
        order = {n: i for i, n in enumerate(names)}
        plan: list[tuple[str, int, int, list[str]]] = []
        for url, start, end, name in spans:
            if plan and plan[-1][0] == url and start - plan[-1][2] <= MAX_GAP \
                    and max(end, plan[-1][2]) - plan[-1][1] <= self.stream_over:
                plan[-1] = (url, plan[-1][1], max(end, plan[-1][2]), plan[-1][3] + [name])
            else:
                plan.append((url, start, end, [name]))
        plan.sort(key=lambda r: min(order[n] for n in r[3]))
        first = len(self._plan)
        self._plan += plan
        for i, (_, _, _, members) in enumerate(plan, start=first):
            self._pending[i] = len(members)
            for n in members:
                self._range_of[n] = i
        self._fill()

    def _get(self, url: str, start: int, end: int) -> bytes:
        """Bytes [start, end] (inclusive) of a shard: from its probe when they lie in it, else fetched."""
        probe = self._probes.get(url, b"")
        if end < len(probe):
            return probe[start : end + 1]
        return self.client.get(url, start, end)[0]

    def _submit(self, i: int) -> None:
        if i in self._futures or self._pending.get(i, 0) == 0:
            return
        url, start, end, _ = self._plan[i]
        self._futures[i] = self._pool.submit(self._get, url, start, end - 1) if end > start else _done(b"")

    def _fill(self) -> None:
        """Keep ranges in flight ahead of the reader, up to half the read-ahead budget in bytes (always one)."""
        held = sum(self._plan[i][2] - self._plan[i][1] for i in self._futures)
        while self._submitted < len(self._plan):
            url, start, end, _ = self._plan[self._submitted]
            if self._futures and held + (end - start) > self._read_ahead.share() // 2:
                break
            self._submit(self._submitted)
            held += end - start
            self._submitted += 1

    def content_digest(self) -> str | None:
        """SHA-256 over the first CONTENT_BYTES of each of layer 0's first CONTENT_TENSORS matrices (by name),
        with their dtypes and shapes: the same for a re-sharded or re-headed copy, whose files differ, at the
        cost of a few KB. None when no layer 0 is found. It only nominates a copy: a fixed, public part of
        the weights is easy to match, so the copy is verified before it is believed (see open_hub)."""
        first = sorted(n for n, t in self._tensors.items() if len(t.shape) == 2 and _LAYER_0.search(n))
        first = first[:CONTENT_TENSORS]
        if not first:
            return None
        heads = {n: (self._urls[n], self._tensors[n].start, self._tensors[n].start + min(CONTENT_BYTES,
                                                                                         self._tensors[n].nbytes))
                 for n in first}
        spans = _coalesced(sorted(heads.values()), SAMPLE_GAP * 4)  # a small model's four heads: one request
        bodies = dict(zip(spans, self._pool.map(lambda span: self._get(span[0], span[1], span[2] - 1), spans)))
        h = hashlib.sha256()
        for name in first:
            url, start, end = heads[name]
            span = next(sp for sp in spans if sp[0] == url and sp[1] <= start and end <= sp[2])
            t = self._tensors[name]
            h.update(f"{t.dtype}{list(t.shape)}".encode() + bytes(bodies[span][start - span[1] : end - span[1]]))
        return h.hexdigest()

    @property
    def stream_over(self) -> int:
        """Tensors larger than this are measured block by block (:meth:`read_blocks`), never held whole."""
        return self._read_ahead.share() // 4

    def read_blocks(self, name: str):
        """The tensor as consecutive blocks of whole rows, each at most :attr:`stream_over` bytes: yields
        (first row, block). The next block is fetched while the consumer measures this one."""
        info = self._tensors[name]
        dtype = numeric_dtype(info, self.path)
        rows = info.shape[0]
        row_bytes = info.nbytes // max(rows, 1)
        per = max(1, self.stream_over // max(row_bytes, 1))
        firsts = list(range(0, rows, per))

        def fetch(first: int):
            last = min(rows, first + per)
            return self._get(self._urls[name], info.start + first * row_bytes, info.start + last * row_bytes - 1)

        ahead = self._pool.submit(fetch, firsts[0]) if firsts else None
        for k, first in enumerate(firsts):
            body = ahead.result()
            ahead = self._pool.submit(fetch, firsts[k + 1]) if k + 1 < len(firsts) else None
            yield first, np.frombuffer(body, dtype=dtype).reshape(-1, *info.shape[1:])
            del body

    def read(self, name: str) -> np.ndarray:
        if name not in self._range_of:
            self.prefetch([name])
        i = self._range_of[name]
        self._submit(i)  # normally already in flight; a batched consumer may read past the window
        info = self._tensors[name]
        dtype = numeric_dtype(info, self.path)
        if info.numel == 0:
            return np.empty(info.shape, dtype=dtype)
        if i in self._futures:
            body = self._futures[i].result()
            offset = info.start - self._plan[i][1]
        else:  # read again after its range was released (a norm gain, say): fetch just this tensor
            body = self._get(self._urls[name], info.start, info.end - 1)
            offset = 0
        return np.frombuffer(body, dtype=dtype, offset=offset, count=info.numel).reshape(info.shape)

    def read_runs(self, name: str, starts, run: int) -> np.ndarray:
        """Runs fetched as range requests, runs closer than SAMPLE_GAP bytes sharing one request."""
        info = self._tensors[name]
        dtype = numeric_dtype(info, self.path)
        size = dtype.itemsize
        spans: list[list[int]] = []
        for s in sorted(int(x) for x in starts):
            a, b = info.start + s * size, info.start + (s + run) * size
            if spans and a - spans[-1][1] <= SAMPLE_GAP:
                spans[-1][1] = b
            else:
                spans.append([a, b])
        bodies = list(self._pool.map(lambda span: self._get(self._urls[name], span[0], span[1] - 1), spans))
        out = np.empty((len(starts), run), dtype=dtype)
        for row, s in enumerate(int(x) for x in starts):
            a = info.start + s * size
            k = next(i for i, span in enumerate(spans) if span[0] <= a < span[1])
            out[row] = np.frombuffer(bodies[k], dtype=dtype, count=run, offset=a - spans[k][0])
        return out

    def release(self, name: str) -> None:
        i = self._range_of.get(name)
        if i is None:
            return
        self._pending[i] -= 1
        if self._pending[i] == 0:
            self._futures.pop(i, None)
            self._fill()

    def fingerprint(self) -> bytes:
        return b"".join(self._headers)

    @property
    def bytes_read(self) -> int:
        return self.client.bytes_read

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        if self._own_pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        else:  # the shared pool goes on: wait only for this reader's ranges still running
            wait(list(self._futures.values()))
        if not self._closed:
            self._read_ahead.leave()
            self._closed = True


def _coalesced(spans: list[tuple[str, int, int]], gap: int) -> list[tuple[str, int, int]]:
    """(url, start, end) spans, sorted, with those less than ``gap`` apart merged into one."""
    out: list[tuple[str, int, int]] = []
    for url, start, end in spans:
        if out and out[-1][0] == url and start - out[-1][2] <= gap:
            out[-1] = (url, out[-1][1], max(end, out[-1][2]))
        else:
            out.append((url, start, end))
    return out


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
