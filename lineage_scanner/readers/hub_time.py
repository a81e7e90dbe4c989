"""How long the Hub and its file host may take, and how a body that trickles is told from a slow one.

A server can stall a scan without ever failing a request: answer nothing, send headers and no body, or
send a byte every few seconds. :class:`Timeouts` bounds each of these (to connect, for each next byte, for
the slowest throughput over a window) and the whole scan of a model; :class:`Throughput` watches a body as
it arrives. The defaults are stated in the README's security model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

#: A model's whole scan, by default: a 7B model's exact attention (2.7 GB) at 10 MB/s takes under 5 minutes.
DEFAULT_DEADLINE_S = 1800.0


@dataclass(frozen=True)
class Timeouts:
    """How long the Hub and its file host may take: to connect, to send the next byte, the slowest a body
    may arrive (``min_rate`` bytes/s, judged over ``stall_window_s``), and a model's whole scan."""

    connect_s: float = 10.0
    read_s: float = 10.0
    stall_window_s: float = 15.0
    min_rate: float = 16 << 10
    model_s: float = DEFAULT_DEADLINE_S


class Stalled(Exception):
    """A body arriving slower than the minimum rate."""


class Throughput:
    """Bytes per window of a body as it arrives: a window with less than the minimum rate is a stall."""

    def __init__(self, timeouts: Timeouts, name: str):
        self.window, self.rate, self.name = timeouts.stall_window_s, timeouts.min_rate, name
        self.since, self.count = time.monotonic(), 0

    def add(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.since >= self.window:
            if self.count < self.window * self.rate:
                raise Stalled(f"{self.name} trickled {self.count} bytes in {now - self.since:.0f} s, under the "
                              f"minimum of {self.rate / 1024:.0f} KiB/s over {self.window:.0f} s")
            self.since, self.count = now, 0
