"""Hugging Face Hub checkpoints, read by HTTP range requests: only the headers and the needed tensors.

``hf://org/name[@revision]`` resolves to the commit SHA through the real ``huggingface_hub`` client
(``HF_ENDPOINT`` and ``HF_TOKEN`` honoured, as the client does). Each safetensors shard's header is
fetched with one request for its first 100 KB (a second one only for larger headers) and validated as
strictly as a local file. Tensor bytes are fetched as coalesced ranges (adjacent tensors of a layer in one
request), several at a time, a window bounded in bytes (READ_AHEAD_BYTES) ahead of the consumer, and
dropped once measured; a tensor larger than a quarter of that is streamed in blocks of rows.

Each weight file is resolved once: the Hub answers ``/resolve/`` for an LFS file with a redirect to its
file host, a signed URL that expires; every range of that file is then read from the signed URL until it
is about to expire (or the host answers 403), and only then resolved again. Resolves count against the
Hub's file quota; the file host's reads do not. The token goes to the Hub only: a signed URL carries its
own authorisation, and a redirect target never gets the token.

Before every request to the Hub (API or resolve) the client asks the job's rate budget
(:mod:`lineage_scanner.readers.shared`), and tells it what each answer said of the budget; a wait longer
than MAX_RETRY_AFTER_S, or past the model's MAX_WAIT_S in all, is not slept: the model is deferred.

Every request retries 429 (honouring Retry-After), 5xx, dropped connections and short bodies with
exponential backoff and jitter, a bounded number of times; then :class:`RemoteError`. The token travels
only in request headers, never in messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from urllib.parse import parse_qs, quote, urljoin, urlparse

import numpy as np

from lineage_scanner.errors import DeferredError, GatedError, RemoteError, SourceError
from lineage_scanner.readers.arrays import numeric_dtype
from lineage_scanner.readers.base import TensorInfo
from lineage_scanner.readers.jsonfile import MAX_JSON_BYTES, parse_object
from lineage_scanner.readers.safetensors_header import header_length, parse_header
from lineage_scanner.readers.shared import budget
from lineage_scanner.sources.hub import HubRef, endpoint

HEADER_PROBE = 100_000
#: Two tensors closer than this are fetched in one request (a layer's q/k/v/o are adjacent).
MAX_GAP = 64 * 1024
RETRIES = 5
BACKOFF_S = 0.2
#: The longest single wait a server's Retry-After gets, and the most a model waits in all.
MAX_RETRY_AFTER_S = 30.0
MAX_WAIT_S = 120.0
#: The longest the job pauses for its rate budget's window to reset (the Hub's windows are 5 minutes).
MAX_BUDGET_WAIT_S = 600.0
#: Tensor bytes the Hub readers of a process hold at once, fetched or in flight, shared equally by the
#: readers open (a worker may scan several models at once): half for whole tensors read ahead of the
#: consumer, half for a tensor larger than that quarter, streamed in blocks of rows (one measured, one
#: fetched). So a worker's memory is bounded by bytes, whatever the models' sizes.
READ_AHEAD_BYTES = 256 << 20
_open_readers = [0]
_open_lock = threading.Lock()
#: Sampled runs closer than this share one request: the bytes in between cost less than a request.
SAMPLE_GAP = 4096
WORKERS = 4
#: The content digest of a safetensors checkpoint: the first bytes of layer 0's first matrices.
CONTENT_TENSORS = 4
CONTENT_BYTES = 4096
_LAYER_0 = re.compile(r"(^|\.)(layers|h|blocks?|blk|decoder\.layers)\.0\.")
#: A signed URL is dropped this long before it expires (a quarter of its life if that is shorter); one whose
#: expiry it does not state is kept this long.
EXPIRY_MARGIN_S = 30.0
UNSTATED_TTL_S = 300.0
REDIRECTS = 5


class HubClient:
    """Range reads with retries, bounds and byte/request accounting, on the client library's HTTP session.

    Every body is read as a stream and cut off at the bytes asked for: a server that ignores ``Range`` (or
    sends more than it announced) is an error after one buffer, never a download of the whole file. Waits
    are bounded too: a ``Retry-After`` is honoured up to MAX_RETRY_AFTER_S, and a model that has waited
    MAX_WAIT_S in all is ``deferred`` (the next ``scan --catalog`` takes it first)."""

    def __init__(self, source: str):
        self.source = source
        self.bytes_read = 0
        self.requests = 0
        #: requests to the Hub's ``/resolve/`` (its file quota), the rest went to a file host or the API
        self.resolves = 0
        self.waited = 0.0
        self._lock = threading.Lock()
        self._signed: dict[str, tuple[str, float]] = {}  # resolve URL -> (signed URL, expires at)

    def get(self, url: str, start: int | None = None, end: int | None = None,
            limit: int | None = None) -> tuple[bytes, dict]:
        """Bytes [start, end] (inclusive) of ``url``, or the whole body of at most ``limit`` bytes; verified
        against the range asked."""
        import httpx2 as httpx
        from huggingface_hub.utils import build_hf_headers, get_session

        headers = build_hf_headers()
        if start is not None:
            headers["Range"] = f"bytes={start}-{end}"
        cap = end - start + 1 if start is not None else limit
        problem, limited = "", False
        for attempt in range(RETRIES + 1):
            wait = BACKOFF_S * 2**attempt * (0.5 + random.random())
            try:
                with contextlib.closing(self._open(get_session(), url, headers)) as response:
                    status = response.status_code
                    if status == 429 or status >= 500:
                        problem, limited = f"HTTP {status}", status == 429
                        if status == 429 and _request_class(str(response.url)):
                            wait = 0.0  # the budget learnt the window's reset: the next admission waits for it
                        else:
                            wait = _retry_after(response.headers.get("Retry-After", ""), wait)
                            if wait > MAX_RETRY_AFTER_S:
                                raise DeferredError(self.source, f"{url_name(url)}: the server asks to wait "
                                                                 f"{wait:.0f} s; left for the next run")
                    else:
                        _raise_for_status(self.source, url, status)
                        body = self._read(response, cap, start, end)
                        if start is not None and len(body) != min(end, _last_byte(response, end)) - start + 1:
                            problem = f"short body ({len(body)} bytes for range {start}-{end})"
                        else:
                            return body, dict(response.headers)
            except (httpx.TransportError, httpx.DecodingError) as exc:
                problem = f"{exc.__class__.__name__}"
            if attempt < RETRIES:
                if self.waited + wait > MAX_WAIT_S:
                    break
                self.waited += wait
                time.sleep(wait)
        if limited:
            raise DeferredError(self.source, f"rate limited after {self.waited:.0f} s of waiting ({problem}); "
                                             "left for the next run")
        raise RemoteError(self.source, f"giving up after {attempt + 1} attempts: {problem}")

    def admit(self, kind: str) -> None:
        """Wait until the job's budget admits a request of ``kind`` ("api" or "resolve"). This is the job
        pausing for its window to reset, coordinated by the budget (every worker waits for the same reset,
        and only one request meets the window's 429), so it is not capped like a request's own Retry-After:
        only a reset further away than MAX_BUDGET_WAIT_S (no real window is) defers the model."""
        while (wait := budget().call("ask", kind)) > 0:
            if wait > MAX_BUDGET_WAIT_S:
                raise DeferredError(self.source, f"the Hub's {kind} budget is spent for {wait:.0f} s more; "
                                                 "left for the next run")
            time.sleep(wait)

    def _open(self, session, url: str, headers: dict):
        """The streamed response for ``url``: from the file's signed URL while it lasts, else through the Hub,
        its redirects followed here (a rename's with the token, a file host's without it, remembered)."""
        with self._lock:
            signed, expires = self._signed.get(url, ("", 0.0))
        target, send = (signed, _without_token(headers)) if expires > time.time() else (url, headers)
        for _ in range(REDIRECTS):
            kind = _request_class(target)
            if kind:
                self.admit(kind)
            response = session.send(session.build_request("GET", target, headers=send), stream=True,
                                     follow_redirects=False)
            with self._lock:
                self.requests += 1
                self.resolves += kind == "resolve"
            if kind:
                budget().tell("observe", kind, response.status_code, _limit_headers(response.headers))
            location = response.headers.get("Location")
            if response.status_code in (301, 302, 303, 307, 308) and location:
                response.close()
                following = urljoin(target, location)
                if _on_hub(following):  # a renamed repo: the same request under its new name
                    target = following
                    continue
                now, expires = time.time(), _expiry(following)
                with self._lock:  # dropped a little before it expires: a quarter of its life, at most the margin
                    self._signed[url] = (following, expires - min(EXPIRY_MARGIN_S, (expires - now) / 4))
                target, send = following, _without_token(headers)
                continue
            if response.status_code == 403 and target != url and not _on_hub(target):
                response.close()  # the signed URL expired early or was revoked: resolve again
                with self._lock:
                    self._signed.pop(url, None)
                target, send = url, headers
                continue
            return response
        raise RemoteError(self.source, f"{url_name(url)}: more than {REDIRECTS} redirects")

    def _read(self, response, cap: int | None, start: int | None, end: int | None) -> bytes:
        announced = response.headers.get("Content-Length", "")
        if start is None and cap is not None and announced.isdigit() and int(announced) > cap:
            raise RemoteError(self.source, f"{url_name(str(response.url))} is {announced} bytes, over the "
                                           f"{cap >> 20} MiB cap for a file read whole")
        if start is not None and response.status_code != 206:
            if not (announced.isdigit() and int(announced) <= cap):
                raise RemoteError(self.source, f"the server ignored the range request for bytes {start}-{end} "
                                               f"(HTTP {response.status_code}): refusing to read the whole file")
        body, size = bytearray(cap if start is not None else 0), 0  # a range lands in place: one copy
        for chunk in response.iter_bytes():
            with self._lock:
                self.bytes_read += len(chunk)
            if cap is not None and size + len(chunk) > cap:
                raise RemoteError(self.source, f"the server sent more than the {cap} bytes asked for")
            if start is not None:
                body[size : size + len(chunk)] = chunk
            else:
                body += chunk
            size += len(chunk)
        del body[size:]
        return body


def _limit_headers(headers) -> dict[str, str]:
    """What the rate budget reads of an answer's headers."""
    return {k: v for k, v in dict(headers).items() if k.lower() in ("ratelimit", "retry-after")}


def _request_class(url: str) -> str | None:
    """Which of the Hub's rate-limited classes a request to ``url`` counts against: "api", "resolve", or
    None (a file host's, or another server's)."""
    if not _on_hub(url):
        return None
    return "resolve" if "/resolve/" in urlparse(url).path else "api"


def _on_hub(url: str) -> bool:
    """Whether ``url`` is one of the Hub's own (API or resolve), not a file host's."""
    hub, there = urlparse(endpoint()), urlparse(url)
    return (there.scheme, there.netloc) == (hub.scheme, hub.netloc) and not there.path.startswith("/files/") \
        and ("/resolve/" in there.path or there.path.startswith("/api/"))


def _without_token(headers: dict) -> dict:
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}


def _expiry(url: str) -> float:
    """When a signed URL stops working: CloudFront's ``Expires`` (epoch seconds) or S3's ``X-Amz-Date`` +
    ``X-Amz-Expires``; UNSTATED_TTL_S from now when it says neither."""
    query = {k.lower(): v[0] for k, v in parse_qs(urlparse(url).query).items()}
    try:
        if query.get("expires", "").isdigit():
            return float(query["expires"])
        if "x-amz-date" in query and query.get("x-amz-expires", "").isdigit():
            signed = datetime.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            return signed.timestamp() + float(query["x-amz-expires"])
    except ValueError:
        pass
    return time.time() + UNSTATED_TTL_S


def _retry_after(value: str, default: float) -> float:
    """Seconds a 429/503 asks to wait (a number of seconds; dates are not trusted), capped."""
    try:
        seconds = float(value)
    except ValueError:
        return default
    if not math.isfinite(seconds) or seconds < 0:
        return default
    return min(seconds, MAX_RETRY_AFTER_S) + random.random() * BACKOFF_S


def _raise_for_status(source: str, url: str, status: int) -> None:
    """Typed errors for the statuses that retrying cannot fix."""
    if status < 400:
        return
    name = url_name(url)
    if status in (401, 403):
        raise GatedError(source, f"access to {name} refused (HTTP {status}): request access or set HF_TOKEN")
    if status == 404:
        raise SourceError(source, f"{name} not found (HTTP 404)")
    if status == 416:
        raise RemoteError(source, f"{name}: range not satisfiable (HTTP 416): the file is shorter than its header says")
    raise RemoteError(source, f"{name}: HTTP {status}")


def url_name(url: str) -> str:
    return url.rpartition("/")[2].partition("?")[0]


def _content_total(headers) -> str:
    """What follows the slash of a Content-Range ('bytes a-b/size'): the file's size, '*', or ''."""
    return {k.lower(): v for k, v in headers.items()}.get("content-range", "").rpartition("/")[2]


def _last_byte(response, default: int) -> int:
    """Last byte index of the file, from Content-Range, for ranges that overrun it."""
    total = _content_total(response.headers)
    return int(total) - 1 if total.isdigit() else default


def file_size(source: str, headers: dict, body: bytes) -> int:
    """The whole file's size from a range answer's Content-Range."""
    total = _content_total(headers)
    if total.isdigit():
        return int(total)
    if total in ("", "*"):
        return len(body)
    raise RemoteError(source, f"malformed Content-Range {total!r}")


def resolve(ref: HubRef, client: HubClient):
    """Model info at the pinned commit, with every file's size and SHA-256, in one admitted API call (a 429
    is retried once the budget's window allows); Hub errors become typed scan errors."""
    import httpx2 as httpx
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.hf_api import ModelInfo
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    # HfApi.model_info's own request (blobs: each file's size and LFS SHA-256, by which copies are found),
    # made here so that its RateLimit header reaches the job's budget: the budget then knows what remains
    # of the window before it is spent, not only after a 429
    path = f"{endpoint()}/api/models/{ref.repo_id}"
    if ref.revision is not None:
        path += f"/revision/{quote(ref.revision, safe='')}"
    for attempt in range(RETRIES + 1):
        client.admit("api")
        try:
            response = get_session().get(path, headers=build_hf_headers(), params={"blobs": True})
            budget().tell("observe", "api", response.status_code, _limit_headers(response.headers))
            hf_raise_for_status(response)
            return ModelInfo(**response.json())
        except HfHubHTTPError as exc:
            if exc.response is None or exc.response.status_code != 429 or attempt == RETRIES:
                raise _info_error(client, ref, exc) from None
        except httpx.TransportError as exc:
            raise RemoteError(client.source, f"cannot reach {endpoint()} ({exc.__class__.__name__})") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteError(client.source, f"malformed model-info answer ({exc.__class__.__name__})") from None
    raise AssertionError("unreachable: the last attempt raises")


def _info_error(client: HubClient, ref: HubRef, exc: Exception) -> Exception:
    """A model-info failure as a typed scan error."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        return GatedError(client.source, "gated or private repo: request access or set HF_TOKEN")
    if isinstance(exc, RevisionNotFoundError):
        return SourceError(client.source, f"revision {ref.revision!r} not found")
    if isinstance(exc, RepositoryNotFoundError):
        return SourceError(client.source, "repository not found (or private without access)")
    status = exc.response.status_code if getattr(exc, "response", None) is not None else None
    kind = DeferredError if status == 429 else RemoteError
    return kind(client.source, f"the Hub answered HTTP {status} to the model-info request")


def file_url(repo_id: str, sha: str, filename: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, filename, revision=sha, endpoint=endpoint())


def fetch_json(client: HubClient, repo_id: str, sha: str, filename: str) -> dict:
    """A JSON file of the repo, read whole but never past MAX_JSON_BYTES."""
    body, _ = client.get(file_url(repo_id, sha, filename), limit=MAX_JSON_BYTES)
    return parse_object(body, f"{client.source}/{filename}")


class HubSafetensors:
    """Safetensors shards of one Hub commit, read by range requests."""

    format = "safetensors"

    def __init__(self, client: HubClient, repo_id: str, sha: str, shards: list[str]):
        self.path = client.source
        self.client = client
        self._urls: dict[str, str] = {}
        self._tensors: dict[str, TensorInfo] = {}
        self._headers: list[bytes] = []
        for shard in shards:
            url = file_url(repo_id, sha, shard)
            name = f"{client.source}/{shard}"
            probe, headers = client.get(url, 0, HEADER_PROBE - 1)
            size = file_size(name, headers, probe)
            n = header_length(probe[:8], size, name)
            raw = probe[8 : 8 + n] if 8 + n <= len(probe) else client.get(url, 8, 7 + n)[0]
            tensors, _ = parse_header(raw, size, name)
            self._headers.append(shard.encode() + b"\0" + raw)
            for t in tensors.values():
                self._urls[t.name] = url
                self._tensors[t.name] = t
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="range")
        with _open_lock:
            _open_readers[0] += 1
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

    def _submit(self, i: int) -> None:
        if i in self._futures or self._pending.get(i, 0) == 0:
            return
        url, start, end, _ = self._plan[i]
        self._futures[i] = self._pool.submit(self.client.get, url, start, end - 1) if end > start else _done((b"", {}))

    def _fill(self) -> None:
        """Keep ranges in flight ahead of the reader, up to half the read-ahead budget in bytes (always one)."""
        held = sum(self._plan[i][2] - self._plan[i][1] for i in self._futures)
        while self._submitted < len(self._plan):
            url, start, end, _ = self._plan[self._submitted]
            if self._futures and held + (end - start) > self._budget // 2:
                break
            self._submit(self._submitted)
            held += end - start
            self._submitted += 1

    def content_digest(self) -> str | None:
        """SHA-256 over the first CONTENT_BYTES of each of layer 0's first CONTENT_TENSORS matrices (by name),
        with their dtypes and shapes: the same for a re-sharded or re-headed copy, whose files differ, at the
        cost of a few KB. None when no layer 0 is found."""
        first = sorted(n for n, t in self._tensors.items() if len(t.shape) == 2 and _LAYER_0.search(n))
        first = first[:CONTENT_TENSORS]
        if not first:
            return None

        def head(name: str) -> bytes:
            t = self._tensors[name]
            return bytes(self.client.get(self._urls[name], t.start, t.start + min(CONTENT_BYTES, t.nbytes) - 1)[0])

        h = hashlib.sha256()
        for name, body in zip(first, self._pool.map(head, first)):
            t = self._tensors[name]
            h.update(f"{t.dtype}{list(t.shape)}".encode() + body)
        return h.hexdigest()

    @property
    def stream_over(self) -> int:
        """Tensors larger than this are measured block by block (:meth:`read_blocks`), never held whole."""
        return self._budget // 4

    @property
    def _budget(self) -> int:
        """This reader's share of the process's read-ahead budget."""
        return READ_AHEAD_BYTES // max(1, _open_readers[0])

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
            return self.client.get(self._urls[name], info.start + first * row_bytes, info.start + last * row_bytes - 1)

        ahead = self._pool.submit(fetch, firsts[0]) if firsts else None
        for k, first in enumerate(firsts):
            body, _ = ahead.result()
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
            body, _ = self._futures[i].result()
            offset = info.start - self._plan[i][1]
        else:  # read again after its range was released (a norm gain, say): fetch just this tensor
            body, _ = self.client.get(self._urls[name], info.start, info.end - 1)
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
        bodies = list(self._pool.map(lambda span: self.client.get(self._urls[name], span[0], span[1] - 1)[0], spans))
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
        self._pool.shutdown(wait=True, cancel_futures=True)
        with _open_lock:
            _open_readers[0] -= 0 if self._closed else 1
            self._closed = True


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
