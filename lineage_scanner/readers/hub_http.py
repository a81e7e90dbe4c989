"""The HTTP transport to the Hub and its file host: every request bounded in time, size and retries.

One :class:`HubClient` per model scan, on the ``huggingface_hub`` client's own HTTP session (so
``HF_ENDPOINT``, ``HF_TOKEN`` and a saved login apply):

- **Time.** Every request has a connect and a read timeout (:class:`Timeouts`); a body that trickles in
  (less than ``min_rate`` bytes/s over ``stall_window_s``) is cut; a request that times out or stalls is
  tried TIMEOUT_ATTEMPTS times in all; and the whole scan of a model has a deadline (``model_s``) that every
  request and every wait checks. Each is a :class:`DeadlineError` (a ``timeout`` row).
- **Size.** Every body is streamed and cut at the bytes asked for: a range is never more than its span,
  a file read whole (model info, a listing page, config, index) never more than its cap, whatever the
  server announces or sends.
- **Retries.** 429 (honouring Retry-After up to MAX_RETRY_AFTER_S, MAX_WAIT_S per model in all: past that
  the model is ``deferred``), 5xx, dropped connections and short bodies are retried with exponential
  backoff and jitter, RETRIES times; then :class:`RemoteError`.
- **Budget.** Before every request to the Hub (API or resolve) the client asks the job's rate budget
  (:class:`lineage_scanner.readers.shared.RateBudget`) and tells it what each answer said.
- **Redirects.** ``/resolve/`` of an LFS file answers a redirect to its file host, a signed URL that
  expires, with the file's SHA-256 and size (``X-Linked-Etag``, ``X-Linked-Size``): the client remembers
  both and reads every range of that file from the signed URL until it is about to expire or the host
  answers 403, then resolves again. A redirect between two Hub URLs is a renamed repo (:attr:`renamed`).
  The token goes to the Hub only, never to a file host.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin

from lineage_scanner.errors import DeadlineError, DeferredError, RemoteError
from lineage_scanner.readers.hub_time import Stalled, Throughput, Timeouts
from lineage_scanner.readers.hub_urls import (
    expiry,
    last_byte,
    on_hub,
    purpose_of,
    raise_for_status,
    repo_of,
    request_class,
    retry_after,
    url_name,
    without_token,
)
from lineage_scanner.readers.jsonfile import MAX_JSON_BYTES, parse_object

RETRIES = 5
BACKOFF_S = 0.2
#: The longest single wait a server's Retry-After gets, and the most a model waits in all.
MAX_RETRY_AFTER_S = 30.0
MAX_WAIT_S = 120.0
#: The longest the job pauses for its rate budget's window to reset (the Hub's windows are 5 minutes).
MAX_BUDGET_WAIT_S = 600.0
#: A request that timed out or stalled is tried this many times in all (a stalling server tends to stall).
TIMEOUT_ATTEMPTS = 2
#: A signed URL is dropped this long before it expires (a quarter of its life if that is shorter).
EXPIRY_MARGIN_S = 30.0
REDIRECTS = 5
_SHA256 = re.compile(r'(?:W/)?"?([0-9a-f]{64})"?')


@dataclass(frozen=True)
class Linked:
    """What a resolve's redirect says of an LFS file: its SHA-256 (the LFS oid) and size."""

    sha256: str
    size: int | None


class _Retry(Exception):
    """An answer worth asking again (a short body)."""


class HubClient:
    """Requests for one model's scan, with its deadline, byte and request counts (see the module)."""

    def __init__(self, source: str, budget=None, timeouts: Timeouts | None = None):
        self.source = source
        self.budget = budget
        self.timeouts = timeouts = timeouts or Timeouts()
        self.deadline = time.monotonic() + timeouts.model_s
        self.bytes_read = 0
        self.requests = 0
        #: requests to the Hub's ``/resolve/`` (its file quota); the rest went to a file host or the API
        self.resolves = 0
        self.waited = 0.0
        #: the repo id a Hub redirect announced (a renamed repo), if one did
        self.renamed: str | None = None
        self._lock = threading.Lock()
        self._signed: dict[str, tuple[str, float]] = {}  # resolve URL -> (signed URL, drop at)
        self._linked: dict[str, Linked] = {}  # resolve URL -> what its redirect said of the file
        self._hf_headers: dict | None = None

    # ---- the public requests ------------------------------------------------------------------------

    def get(self, url: str, start: int | None = None, end: int | None = None,
            limit: int | None = None) -> tuple[bytes, dict]:
        """Bytes [start, end] (inclusive) of ``url``, or the whole body of at most ``limit`` bytes; verified
        against the range asked."""
        headers = self._headers()
        if start is not None:
            headers["Range"] = f"bytes={start}-{end}"
        cap = end - start + 1 if start is not None else limit
        return self._retrying(url, headers, lambda response: self._body(response, url_name(url), cap, start, end))

    def get_json(self, url: str, what: str, limit: int = MAX_JSON_BYTES, expect: type = dict):
        """An API answer (an object, or a list), streamed under ``limit`` bytes; (value, headers). ``what`` it
        is names it in errors. Its bytes are not the checkpoint's: :attr:`bytes_read` counts files only."""
        body, headers = self._retrying(url, self._headers(),
                                       lambda response: self._body(response, what, limit, None, None, False), what=what)
        return parse_object(body, f"{self.source} ({what})", RemoteError, expect), headers

    def locate(self, url: str) -> Linked | None:
        """Resolve a file without reading it (HEAD, the file host not asked): its SHA-256 and size where the
        Hub's redirect states them (an LFS file), and its signed URL kept for the reads to come."""
        with self._lock:
            if url in self._linked and self._signed.get(url, ("", 0.0))[1] > time.time():
                return self._linked[url]
        self._retrying(url, self._headers(), lambda response: None, method="HEAD", to_file_host=False)
        with self._lock:
            return self._linked.get(url)

    def _headers(self) -> dict:
        """The client library's headers (user agent, the token where there is one), built once per scan."""
        if self._hf_headers is None:
            from huggingface_hub.utils import build_hf_headers

            self._hf_headers = build_hf_headers()
        return dict(self._hf_headers)

    def remaining(self) -> float:
        """Seconds left before the model's deadline."""
        return self.deadline - time.monotonic()

    def check_deadline(self, what: str) -> None:
        if self.remaining() <= 0:
            raise DeadlineError(self.source, f"{what}: past the model's {self.timeouts.model_s:.0f} s scan deadline")

    # ---- one request, retried -----------------------------------------------------------------------

    def _retrying(self, url: str, headers: dict, take, method: str = "GET", to_file_host: bool = True,
                  what: str | None = None):
        import httpx2

        what = what or url_name(url)
        problem, limited, timeouts = "", False, 0
        for attempt in range(RETRIES + 1):
            self.check_deadline(what)
            wait = BACKOFF_S * 2**attempt * (0.5 + random.random())
            try:
                response = self._open(url, headers, method, to_file_host)
                if response is None:  # located: the redirect said what was asked
                    return None
                with contextlib.closing(response):
                    status = response.status_code
                    if status == 429 or status >= 500:
                        problem, limited = f"HTTP {status}", status == 429
                        if status == 429 and request_class(str(response.url)) and self.budget is not None:
                            wait = 0.0  # the budget learnt the window's reset: the next admission waits for it
                        else:
                            wait = retry_after(response.headers.get("Retry-After", ""), wait, MAX_RETRY_AFTER_S,
                                               BACKOFF_S)
                            if wait > MAX_RETRY_AFTER_S:
                                raise DeferredError(self.source, f"{what}: the server asks to wait "
                                                                 f"{wait:.0f} s; left for the next run")
                    else:
                        raise_for_status(self.source, url, status, response.headers)
                        return take(response)
            except _Retry as exc:
                problem = str(exc)
            except (httpx2.TimeoutException, Stalled) as exc:
                timeouts += 1
                problem = str(exc) if isinstance(exc, Stalled) else \
                    f"no answer within {self.timeouts.read_s:.0f} s ({exc.__class__.__name__})"
                if timeouts >= TIMEOUT_ATTEMPTS:
                    raise DeadlineError(self.source, f"{what}: {problem}, {timeouts} attempts") from None
            except (httpx2.TransportError, httpx2.DecodingError) as exc:
                problem = exc.__class__.__name__
            if attempt < RETRIES:
                if self.waited + wait > MAX_WAIT_S or (limited and wait >= self.remaining()):
                    break
                if wait >= self.remaining():
                    raise DeadlineError(self.source, f"{what}: {problem}; the model's scan deadline passes before "
                                                     "it could be asked again")
                self.waited += wait
                time.sleep(wait)
        if limited:
            raise DeferredError(self.source, f"rate limited after {self.waited:.0f} s of waiting ({problem}); "
                                             "left for the next run")
        raise RemoteError(self.source, f"giving up after {attempt + 1} attempts: {problem}")

    def _admit(self, kind: str, url: str) -> None:
        """Wait until the job's budget admits a request of ``kind`` ("api" or "resolve"). This is the job
        pausing for its window to reset, coordinated by the budget (every worker waits for the same reset,
        and only one request meets the window's 429), so it is not capped like a request's own Retry-After:
        only a reset further away than MAX_BUDGET_WAIT_S or the model's deadline defers the model."""
        if self.budget is None:
            return
        while (wait := self.budget.call("ask", kind, purpose_of(url))) > 0:
            if wait > min(MAX_BUDGET_WAIT_S, self.remaining()):
                raise DeferredError(self.source, f"the Hub's {kind} budget is spent for {wait:.0f} s more; "
                                                 "left for the next run")
            time.sleep(wait)

    def _timeout(self) -> tuple[float, float, float, float]:
        """(connect, read, write, pool) for the next request: never past the model's deadline."""
        left = max(self.remaining(), 0.001)
        t = self.timeouts
        return min(t.connect_s, left), min(t.read_s, left), min(t.read_s, left), min(t.connect_s, left)

    def _open(self, url: str, headers: dict, method: str, to_file_host: bool):
        """The streamed response for ``url``: from the file's signed URL while it lasts, else through the Hub,
        its redirects followed here (a rename's with the token, a file host's without it, remembered). With
        ``to_file_host`` False, None once the file host's URL is known."""
        from huggingface_hub.utils import get_session

        session = get_session()
        with self._lock:
            signed, drop_at = self._signed.get(url, ("", 0.0))
        target, send = (signed, without_token(headers)) if drop_at > time.time() else (url, headers)
        if target != url and not to_file_host:
            return None
        for _ in range(REDIRECTS):
            kind = request_class(target)
            if kind:
                self._admit(kind, target)
            response = session.send(session.build_request(method, target, headers=send, timeout=self._timeout()),
                                    stream=True, follow_redirects=False)
            with self._lock:
                self.requests += 1
                self.resolves += kind == "resolve"
            if kind and self.budget is not None:
                self.budget.tell("observe", kind, response.status_code, _limit_headers(response.headers))
            location = response.headers.get("Location")
            if response.status_code in (301, 302, 303, 307, 308) and location:
                response.close()
                following = urljoin(target, location)
                if on_hub(following):  # a renamed repo: the same request under its new name
                    self._note_rename(target, following)
                    target = following
                    continue
                self._remember(url, following, response.headers)
                if not to_file_host:
                    return None
                target, send = following, without_token(headers)
                continue
            if response.status_code == 403 and target != url and not on_hub(target):
                response.close()  # the signed URL expired early or was revoked: resolve again
                with self._lock:
                    self._signed.pop(url, None)
                target, send = url, headers
                continue
            return response
        raise RemoteError(self.source, f"{url_name(url)}: more than {REDIRECTS} redirects")

    def _note_rename(self, before: str, after: str) -> None:
        old, new = repo_of(before), repo_of(after)
        if old and new and old != new:
            self.renamed = new

    def _remember(self, url: str, signed: str, headers) -> None:
        """A file host's signed URL for ``url``, dropped a little before it expires (a quarter of its life, at
        most the margin), and what the redirect said of the file."""
        now, expires = time.time(), expiry(signed)
        lower = {k.lower(): v for k, v in dict(headers).items()}
        sha = _SHA256.fullmatch(lower.get("x-linked-etag", "").strip())
        size = lower.get("x-linked-size", "")
        with self._lock:
            self._signed[url] = (signed, expires - min(EXPIRY_MARGIN_S, (expires - now) / 4))
            if sha:
                self._linked[url] = Linked(sha.group(1), int(size) if size.isdigit() else None)

    def _body(self, response, name: str, cap: int | None, start: int | None, end: int | None,
              counted: bool = True) -> tuple[bytes, dict]:
        """The body (of the file or answer ``name``), streamed into place and cut at ``cap``; a range checked
        against the span asked; ``counted`` in :attr:`bytes_read`."""
        announced = response.headers.get("Content-Length", "")
        if start is None and cap is not None and announced.isdigit() and int(announced) > cap:
            raise RemoteError(self.source, f"{name} is {announced} bytes, over the {cap >> 20} MiB cap for a "
                                           "file read whole")
        if start is not None and response.status_code != 206:
            if not (announced.isdigit() and int(announced) <= cap):
                raise RemoteError(self.source, f"the server ignored the range request for bytes {start}-{end} "
                                               f"(HTTP {response.status_code}): refusing to read the whole file")
        body, size = bytearray(cap if start is not None else 0), 0  # a range lands in place: one copy
        watch = Throughput(self.timeouts, name)
        for chunk in response.iter_bytes():
            if counted:
                with self._lock:
                    self.bytes_read += len(chunk)
            if cap is not None and size + len(chunk) > cap:
                if start is None:
                    raise RemoteError(self.source, f"{name} is over the {cap >> 20} MiB cap for a file read whole")
                raise RemoteError(self.source, f"the server sent more than the {cap} bytes asked for")
            if start is not None:
                body[size : size + len(chunk)] = chunk
            else:
                body += chunk
            size += len(chunk)
            watch.add(len(chunk))
            self.check_deadline(name)
        del body[size:]
        if start is not None and size != min(end, last_byte(response.headers, end)) - start + 1:
            raise _Retry(f"short body ({size} bytes for range {start}-{end})")
        return body, dict(response.headers)


def _limit_headers(headers) -> dict[str, str]:
    """What the rate budget reads of an answer's headers."""
    return {k: v for k, v in dict(headers).items() if k.lower() in ("ratelimit", "retry-after")}
