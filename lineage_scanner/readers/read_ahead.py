"""Tensors of one remote file fetched ahead of their reader: neighbours coalesced into one range request,
several requests in flight, a bounded number of bytes fetched and not yet released.

A scan reads a few hundred small tensors (a layer's Q, K, V, O, biases and norm) one after another; fetched
one request each, in turn, a remote scan costs a round trip per tensor. Told the order up front
(:meth:`ReadAhead.plan`), this fetches tensors that lie close together in one range (the bytes between
them cost less than a request) and keeps the next ranges in flight while the current one is measured.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

#: Two tensors closer than this share a request.
MAX_GAP = 64 << 10


@dataclass
class _Range:
    start: int
    end: int
    names: list[str]
    #: its tensors not yet released
    pending: set[str] = field(default_factory=set)
    future: Future | None = None
    released: bool = False


class ReadAhead:
    """Coalesced range reads over ``fetch(start, end) -> bytes`` (end exclusive), at most ``budget`` bytes
    in flight or held, no range larger than ``largest``."""

    def __init__(self, fetch: Callable[[int, int], bytes], budget: int, largest: int, workers: int = 4):
        self._fetch, self._budget, self._largest = fetch, budget, largest
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="read-ahead")
        self._ranges: list[_Range] = []
        self._of: dict[str, _Range] = {}

    def plan(self, spans: list[tuple[str, int, int]]) -> None:
        """Tensors (name, start, end) about to be read, in this order, after those already planned; one
        larger than ``largest`` is left to its reader."""
        spans = [s for s in spans if s[0] not in self._of and s[2] - s[1] <= self._largest]
        order = {name: i for i, (name, _, _) in enumerate(spans)}
        merged: list[_Range] = []
        for name, start, end in sorted(spans, key=lambda s: s[1]):
            last = merged[-1] if merged else None
            if last and start - last.end <= MAX_GAP and max(end, last.end) - last.start <= self._largest:
                last.end = max(end, last.end)
                last.names.append(name)
            else:
                merged.append(_Range(start, end, [name]))
        for r in merged:
            r.pending = set(r.names)
            self._of.update(dict.fromkeys(r.names, r))
        self._ranges += sorted(merged, key=lambda r: min(order[n] for n in r.names))
        self._fill()

    def _fill(self) -> None:
        """Start the next planned ranges while the bytes held stay within the budget (always one)."""
        held = sum(r.end - r.start for r in self._ranges if r.future is not None and not r.released)
        for r in self._ranges:
            if r.future is None and not r.released:
                if held and held + (r.end - r.start) > self._budget:
                    break
                r.future = self._pool.submit(self._fetch, r.start, r.end)
                held += r.end - r.start

    def take(self, name: str, start: int) -> tuple[bytes, int] | None:
        """The body holding the tensor that starts at ``start`` and where in it it starts; None when it was
        not planned or is already released (its reader fetches it itself)."""
        r = self._of.get(name)
        if r is None or r.released:
            return None
        if r.future is None:  # read before its turn: fetch it now
            r.future = self._pool.submit(self._fetch, r.start, r.end)
        return r.future.result(), start - r.start

    def release(self, name: str) -> None:
        """The tensor is measured: its range is dropped once all its tensors are, and the next ones start."""
        r = self._of.get(name)
        if r is None or r.released:
            return
        r.pending.discard(name)
        if not r.pending:
            r.released, r.future = True, None
            self._fill()

    def close(self) -> None:
        for r in self._ranges:
            if r.future is not None:
                r.future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
