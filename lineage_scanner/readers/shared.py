"""What the workers of one job share: the Hub's rate budget, and which commit holds which weight files.

A :class:`Shared` object is consulted the same way in one process (a plain object) and on Ray (one actor
for the job, made by the Ray executor, whose handle travels in the batch's configuration); a scanning
process hands it to its Hub scans (:class:`lineage_scanner.readers.open_hub.HubJob`), never through a
module-level global.

- :class:`RateBudget`: the Hub limits a token per class of request and per window (about 1,000 API calls
  and 5,000 ``/resolve/`` calls per 5 minutes for a free token) and says where a client stands in every
  answer: ``RateLimit: "api";r=REMAINING;t=SECONDS_TO_RESET``, and on a 429 a ``Retry-After``. The budget
  keeps, per class, what the last answer said, counts each request it admits against it, and tells a
  worker how long to wait when it is spent, so that only the first request past a window's end meets a
  429, not every worker's. Waits are bounded by the caller: a model whose wait would pass its cap is
  deferred, never slept on.
- :class:`CopyIndex`: weights digest -> the commit holding those weight files, seeded with the store's
  originals; the first commit of a new digest to be opened claims it, and every later one with the same
  weight files (a re-upload in the same night) is a copy of it, none of its bytes read.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

#: A 429 without a usable Retry-After or RateLimit header: the window is assumed to reset after this long.
DEFAULT_RESET_S = 60.0
#: Two answers whose windows reset within this many seconds of each other speak of the same window.
SAME_WINDOW_S = 2.0
_FIELD = re.compile(r"\b([rt])=(\d+)")

Key = tuple[str, str]


@dataclass
class _Window:
    remaining: int
    resets_at: float


class RateBudget:
    """The budget of each request class, as the server last described it (thread-safe)."""

    def __init__(self):
        self._windows: dict[str, _Window] = {}
        self._sent: dict[str, int] = {}
        self._lock = threading.Lock()

    def ask(self, kind: str, purpose: str = "") -> float:
        """Seconds until a request of ``kind`` may be sent: 0 to send it now (it is counted, under its
        ``purpose`` too: model info, a listing page, a query file), else how long until its window resets
        (nothing is counted; ask again then)."""
        now = time.time()
        with self._lock:
            window = self._windows.get(kind)
            if window is None or now >= window.resets_at:
                self._windows.pop(kind, None)
                self._count(kind, purpose)
                return 0.0  # nothing known, or a new window: the server's next answer says
            if window.remaining > 0:
                window.remaining -= 1
                self._count(kind, purpose)
                return 0.0
            return window.resets_at - now

    def _count(self, kind: str, purpose: str) -> None:
        for key in filter(None, (kind, purpose)):
            self._sent[key] = self._sent.get(key, 0) + 1

    def sent(self) -> dict[str, int]:
        """Requests admitted so far, by class (``api``, ``resolve``) and by purpose (``model_info``,
        ``listing``, ``query_file``): what a job spent of the Hub's budget."""
        with self._lock:
            return dict(self._sent)

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
            remaining, resets_at = int(fields["r"]), now + float(fields["t"])
            with self._lock:
                window = self._windows.get(kind)
                if window is not None and abs(window.resets_at - resets_at) <= SAME_WINDOW_S:
                    # answers arrive out of order, and requests admitted since are not in the server's count:
                    # within one window, what remains only ever goes down
                    remaining = min(remaining, window.remaining)
                self._windows[kind] = _Window(remaining, resets_at)


class CopyIndex:
    """Weights digest -> (model, revision) of the commit that holds those weight files (thread-safe)."""

    def __init__(self, known: dict[str, Key] | None = None):
        self._by = dict(known or {})
        self._opened: set[Key] = set()
        self._lock = threading.Lock()

    def first_visit(self, key: Key) -> bool:
        """Whether this job opens commit ``key`` for the first time (a renamed repo's commit can be listed
        under its old and its new name: it is scanned once)."""
        with self._lock:
            first = tuple(key) not in self._opened
            self._opened.add(tuple(key))
        return first

    def claim(self, digest: str, key: Key) -> Key | None:
        """The commit ``key`` holds weights ``digest``: None if it is the first to (scan it), else the
        commit it copies."""
        with self._lock:
            original = tuple(self._by.setdefault(digest, tuple(key)))
        return None if original == tuple(key) else original


class Shared:
    """One object the whole job consults: ``local`` in this process, or a Ray ``actor`` every worker asks."""

    def __init__(self, local=None, actor=None):
        self.local, self.actor = local, actor

    def call(self, method: str, *args):
        if self.actor is not None:
            import ray

            return ray.get(getattr(self.actor, method).remote(*args))
        return getattr(self.local, method)(*args)

    def tell(self, method: str, *args) -> None:
        """Like :meth:`call`, without waiting for the answer (on Ray)."""
        if self.actor is not None:
            getattr(self.actor, method).remote(*args)
        else:
            getattr(self.local, method)(*args)

