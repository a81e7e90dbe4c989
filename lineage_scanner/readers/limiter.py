"""One view of the Hub's rate limits for a whole job, so that workers spend a token's budget together.

The Hub limits a token per class of request and per window (about 1,000 API calls and 5,000 ``/resolve/``
calls per 5 minutes for a free token) and says where a client stands in every answer: ``RateLimit:
"api";r=REMAINING;t=SECONDS_TO_RESET``, and on a 429 a ``Retry-After``. A :class:`RateBudget` keeps, per
class, what the last answer said (the remaining count and when the window resets), counts each request
it admits against it, and tells a worker how long to wait when the budget is spent, so that only the first
request past a window's end meets a 429, not every worker's.

In one process the budget is a plain object (:func:`local`); on Ray one actor holds it for the job and
every worker asks it (``ray.remote(RateBudget)``, made by the Ray executor). Waits are bounded by the
caller: a model whose wait would pass its cap is deferred, never slept on.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

#: A 429 without a usable Retry-After or RateLimit header: the window is assumed to reset after this long.
DEFAULT_RESET_S = 60.0
_FIELD = re.compile(r"\b([rt])=(\d+)")


@dataclass
class _Window:
    remaining: int
    resets_at: float


class RateBudget:
    """The budget of each request class, as the server last described it (thread-safe)."""

    def __init__(self):
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def ask(self, kind: str) -> float:
        """Seconds until a request of ``kind`` may be sent: 0 to send it now (it is counted), else how long
        until its window resets (nothing is counted; ask again then)."""
        now = time.time()
        with self._lock:
            window = self._windows.get(kind)
            if window is None or now >= window.resets_at:
                self._windows.pop(kind, None)
                return 0.0  # nothing known, or a new window: the server's next answer says
            if window.remaining > 0:
                window.remaining -= 1
                return 0.0
            return window.resets_at - now

    def observe(self, kind: str, status: int, headers: dict[str, str]) -> None:
        """Learn from an answer: its RateLimit header's remaining count and reset, or a 429's Retry-After."""
        lower = {k.lower(): v for k, v in headers.items()}
        fields = dict(_FIELD.findall(lower.get("ratelimit", "")))
        retry = lower.get("retry-after", "")
        now = time.time()
        if status == 429:
            wait = float(fields["t"]) if "t" in fields else float(retry) if retry.isdigit() else DEFAULT_RESET_S
            with self._lock:
                self._windows[kind] = _Window(0, now + wait)
        elif "r" in fields and "t" in fields:
            with self._lock:
                self._windows[kind] = _Window(int(fields["r"]), now + float(fields["t"]))


class Limiter:
    """What a Hub client asks: a local budget, or the job's actor on Ray (its handle travels in the batch's
    configuration)."""

    def __init__(self, budget: RateBudget | None = None, actor=None):
        self.budget, self.actor = budget, actor

    def ask(self, kind: str) -> float:
        if self.actor is not None:
            import ray

            return ray.get(self.actor.ask.remote(kind))
        return self.budget.ask(kind)

    def observe(self, kind: str, status: int, headers) -> None:
        slim = {k: v for k, v in dict(headers).items() if k.lower() in ("ratelimit", "retry-after")}
        if self.actor is not None:
            if slim or status == 429:
                self.actor.observe.remote(kind, status, slim)
            return
        self.budget.observe(kind, status, slim)


_LOCAL = Limiter(RateBudget())
_current = _LOCAL


def current() -> Limiter:
    """The limiter this process's Hub clients ask."""
    return _current


def use(limiter: Limiter | None) -> None:
    """Make ``limiter`` this process's (None: the process's own local budget)."""
    global _current
    _current = limiter or _LOCAL
