"""A local stand-in for the Hugging Face Hub, on 127.0.0.1, for the real ``huggingface_hub`` client.

It serves repos (:mod:`lineage_scanner.testing.hub_repos`): model info (per revision; with ``blobs=true``
each file's size and LFS SHA-256), the model listing with ``expand`` fields, sorting and cursor pagination,
and ``resolve`` with HEAD and single-range GET, with the headers the client reads. Gated and missing repos
answer with the Hub's error codes; a renamed repo's old id answers with a redirect.

Where cost is decided it behaves like the Hub: ``/resolve/`` of a weight file answers a redirect to a
separate file host (``/files/…``) with a signed URL that expires (403 once expired or altered), and with the
file's LFS SHA-256 and size (``X-Linked-Etag``, ``X-Linked-Size``); requests are counted per class
(``api``, ``resolve``, ``file``) and per query file (``config.json``: each GET or HEAD of it counts as a
download of the model on the Hub); each class can be rate-limited per fixed window (429 with
``Retry-After`` and the ``RateLimit`` / ``RateLimit-Policy`` headers); every answer can be delayed and
every body throttled to one shared bandwidth.

The public API, used by tests and benchmarks: :class:`HubStandIn` (the repos, the counters, ``inject``
for faults, ``claims`` for lying identities, ``rename``, ``sha_of``), :class:`Limits`, and the request
handler :class:`lineage_scanner.testing.hub_handler.HubHandler`, which reads only this API.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from urllib.parse import quote

from lineage_scanner.testing.hub_handler import HubHandler
from lineage_scanner.testing.hub_repos import LFS_SUFFIXES, GeneratedRepo, Repo

__all__ = ["FAULTS", "GeneratedRepo", "HubStandIn", "Limits", "Repo"]

#: What ``inject`` can make a request meet. Data and JSON answers: '429', '503', '429-forever' (Retry-After:
#: 100000), 'drop' (the connection closed mid-body), 'short' (a body shorter than announced), 'no-range'
#: (the whole file with 200), 'hang' (no answer at all), 'stall' (headers, then no body), 'trickle' (headers,
#: then one byte every ``trickle_s``), 'huge' (a valid JSON answer of ``huge_bytes``, streamed without a
#: Content-Length), 'endless' (the listing: empty next pages, forever), 'flood' (the listing: next pages of
#: made-up models, forever).
FAULTS = ("429", "503", "429-forever", "drop", "short", "no-range", "hang", "stall", "trickle", "huge", "endless",
          "flood")


class _Server(ThreadingHTTPServer):
    """One thread per connection, none waited for at shutdown; a client that hangs up mid-answer (a scan
    cutting a stalled body, a retry) is what clients do, not an error to print."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


@dataclass(frozen=True)
class Limits:
    """Requests allowed per fixed window for each class (None: unlimited), as the Hub limits a token: a free
    one gets about 1,000 API calls and 5,000 resolves per 5 minutes. The file host is not limited."""

    api: int | None = None
    resolve: int | None = None
    window_s: float = 300.0

    def of(self, kind: str) -> int | None:
        return {"api": self.api, "resolve": self.resolve}.get(kind)


class HubStandIn:
    """Start with ``with HubStandIn(repos) as hub:``; ``hub.endpoint`` goes into HF_ENDPOINT.

    ``redirect`` sends data reads through the file host with signed URLs valid ``url_ttl_s``; ``limits``
    rate-limits the classes; ``latency_s`` delays every answer; ``bandwidth`` (bytes/s) caps all bodies
    together; ``page_size`` is the listing's largest page."""

    def __init__(self, repos: list[Repo], page_size: int = 2, token: str | None = None, *, redirect: bool = True,
                 url_ttl_s: float = 3600.0, limits: Limits | None = None, latency_s: float = 0.0,
                 bandwidth: float | None = None):
        self.repos = {r.repo_id: r for r in repos}
        #: a token that may read gated repos (``Authorization: Bearer TOKEN``); without one none may
        self.token = token
        self.page_size = page_size
        self.redirect, self.url_ttl_s, self.limits = redirect, url_ttl_s, limits or Limits()
        self.latency_s, self.bandwidth = latency_s, bandwidth
        #: old repo id -> new: answered with a redirect, as the Hub does
        self.renames: dict[str, str] = {}
        #: repo id -> fields its model info and listing entry claim instead of the truth (``id``, ``sha``)
        self.claims: dict[str, dict] = {}
        self.trickle_s, self.huge_bytes = 2.0, 200 << 20
        self.lock = threading.Lock()
        self._faults: dict[str, deque[str]] = defaultdict(deque)
        self._forever: dict[str, str] = {}
        self._key = os.urandom(32)
        self._started = time.monotonic()
        self._window_counts: dict[tuple[str, int], int] = defaultdict(int)
        self._free_at = 0.0  # when the shared link is next free (bandwidth)
        self._closing = threading.Event()
        self.reset_counts()
        self._server = _Server(("127.0.0.1", 0), HubHandler)
        self._server.hub = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ---- life ---------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()  # answers held back ('hang', 'stall', 'trickle') end now
        self._server.shutdown()
        self._server.server_close()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when the stand-in is closing (a held-back answer should end)."""
        return self._closing.wait(seconds)

    # ---- counters -----------------------------------------------------------------------------------

    def reset_counts(self) -> None:
        #: body bytes per file; data requests per file (whichever host served them), and ``api:REPO`` model
        #: info and ``/api/models`` listing calls
        self.bytes_served: dict[str, int] = defaultdict(int)
        self.requests: dict[str, int] = defaultdict(int)
        #: ``/resolve/`` calls per file, requests per class, and 429s per class
        self.resolves: dict[str, int] = defaultdict(int)
        self.by_class: dict[str, int] = defaultdict(int)
        self.rejected: dict[str, int] = defaultdict(int)
        #: GETs and HEADs of each repo's query file (config.json): downloads of the model, as the Hub counts
        self.query_files: dict[str, int] = defaultdict(int)
        #: file-host requests that carried an Authorization header (a signed URL needs none: a leak)
        self.file_host_tokens = 0

    def count(self, counter: str, key: str, amount: int = 1) -> None:
        with self.lock:
            getattr(self, counter)[key] += amount

    # ---- repos --------------------------------------------------------------------------------------

    def sha_of(self, repo_id: str) -> str:
        return self.repos[repo_id].sha

    def rename(self, old: str, new: str) -> None:
        """Rename a repo as the Hub does: its commits stay, and the old id answers with a redirect."""
        repo = self.repos.pop(old)
        repo.repo_id = new  # its SHA hashes the id it was made under: the commit stays
        self.repos[new] = repo
        self.renames = {k: new if v == old else v for k, v in self.renames.items()}
        self.renames[old] = new

    def add(self, repo: Repo) -> None:
        self.repos[repo.repo_id] = repo

    def remove(self, repo_id: str) -> None:
        del self.repos[repo_id]

    # ---- faults -------------------------------------------------------------------------------------

    def inject(self, target: str, *faults: str, forever: bool = False) -> None:
        """Queue ``faults`` (see FAULTS) for the next requests of ``target``: a file (``ORG/NAME/FILE``, or a
        file name, of any repo), a repo's model info (``info:ORG/NAME``) or the listing (``list``).
        ``forever``: every request meets the (one) fault until :meth:`clear`."""
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}")
        with self.lock:
            if forever:
                (self._forever[target],) = faults
            else:
                self._faults[target].extend(faults)

    def clear(self) -> None:
        with self.lock:
            self._faults.clear()
            self._forever.clear()

    def pending_faults(self, target: str) -> int:
        """Faults still queued for ``target`` (a test checks its retries used them all)."""
        return len(self._faults[target])

    def take_fault(self, target: str) -> str | None:
        with self.lock:
            if target in self._forever:
                return self._forever[target]
            queue = self._faults[target]
            return queue.popleft() if queue else None

    # ---- the Hub's behaviour --------------------------------------------------------------------------

    def revoke_urls(self) -> None:
        """Invalidate every signed URL handed out so far (the file host answers 403 to them)."""
        self._key = hashlib.sha256(self._key).digest()

    def signed_url(self, repo_id: str, sha: str, filename: str, now: float | None = None) -> str:
        """The file host's URL for a file, valid for ``url_ttl_s`` from ``now``."""
        expires = int((time.time() if now is None else now) + self.url_ttl_s)
        path = f"/files/{quote(repo_id)}/{sha}/{quote(filename)}"
        return f"{self.endpoint}{path}?Expires={expires}&Signature={self.sign(path, expires)}"

    def sign(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}|{expires}".encode(), hashlib.sha256).hexdigest()

    def admit(self, kind: str) -> tuple[bool, dict[str, str]]:
        """Count a request of ``kind`` in its window; whether it is allowed, and the rate-limit headers."""
        limit = self.limits.of(kind)
        elapsed = time.monotonic() - self._started
        window = int(elapsed // self.limits.window_s)
        reset = max(1, math.ceil((window + 1) * self.limits.window_s - elapsed))
        with self.lock:
            self.by_class[kind] += 1
            if limit is None:
                return True, {}
            used = self._window_counts[(kind, window)]
            allowed = used < limit
            if allowed:
                self._window_counts[(kind, window)] = used + 1
            else:
                self.rejected[kind] += 1
        headers = {"RateLimit": f'"{kind}";r={max(limit - used - 1, 0) if allowed else 0};t={reset}',
                   "RateLimit-Policy": f'"fixed window";"{kind}";q={limit};w={int(self.limits.window_s)}'}
        if not allowed:
            headers["Retry-After"] = str(reset)
        return allowed, headers

    def throttle(self, nbytes: int) -> None:
        """Wait for ``nbytes`` of the shared bandwidth."""
        if not self.bandwidth or nbytes <= 0:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + nbytes / self.bandwidth
            wait = self._free_at - now
        time.sleep(wait)

    def info(self, repo: Repo, blobs: bool = False) -> dict:
        """A repo's model info, as ``/api/models/ID`` answers it (what ``claims`` says, where it lies)."""
        fields = self.entry(repo, ("sha", "siblings", "cardData", "config", "safetensors", "gated", "downloads",
                                   "lastModified"))
        fields |= {"modelId": fields["id"], "author": repo.repo_id.split("/")[0], "private": False, "likes": 0,
                   "tags": [], "siblings": [self._sibling(repo, f, blobs) for f in repo.files()]}
        return fields | self.claims.get(repo.repo_id, {})

    def entry(self, repo: Repo, expand: tuple[str, ...] | list[str]) -> dict:
        """A listing entry: the id and the ``expand`` fields asked for, as the Hub's listing gives them."""
        values = {"sha": lambda: repo.sha, "siblings": lambda: [{"rfilename": f} for f in repo.files()],
                  "cardData": lambda: repo.card, "config": repo.listed_config, "gated": lambda: repo.gated and "manual",
                  "safetensors": lambda: {"parameters": {"BF16": repo.params()}, "total": repo.params()}
                  if any(f.endswith(".safetensors") for f in repo.files()) else None,
                  "downloads": lambda: repo.downloads,
                  "lastModified": lambda: repo.last_modified.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
        fields = {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id}
        fields |= {k: values[k]() for k in expand if k in values}
        return fields | {k: v for k, v in self.claims.get(repo.repo_id, {}).items() if k in fields}

    def _sibling(self, repo: Repo, filename: str, blobs: bool) -> dict:
        """A file entry of model info; with ``blobs``, its size, and for weights the LFS SHA-256."""
        entry: dict = {"rfilename": filename}
        if blobs:
            entry["size"] = repo.size(filename)
            entry["blobId"] = hashlib.sha1(repo.head(filename)).hexdigest()
            if filename.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"sha256": repo.sha256(filename), "size": entry["size"], "pointerSize": 134}
        return entry

