"""A local stand-in for the Hugging Face Hub, on 127.0.0.1, for the real ``huggingface_hub`` client.

It serves directories of checkpoints as repos: model info (per revision; with ``blobs=true`` each file's
size and LFS SHA-256, as ``files_metadata=True`` asks), model listing with cursor pagination, and
``resolve`` with HEAD and single-range GET, with the commit and ETag headers the client reads. Gated and
missing repos answer with the Hub's error codes. Faults can be queued per file (429 with Retry-After, 503,
a connection dropped mid-body, a body shorter than announced), and bytes and requests are counted per file,
so tests can assert byte budgets and retries.

Where cost is decided it behaves like the Hub: ``/resolve/`` answers a redirect to a separate file host
(``/files/…``) with a signed URL that expires (``Expires`` and ``Signature`` query parameters, 403 once
expired or altered); requests are counted per class (``api``, ``resolve``, ``file``); each class can be
rate-limited per fixed window (429 with ``Retry-After`` and the ``RateLimit`` / ``RateLimit-Policy``
headers the Hub sends, whose ``r`` and ``t`` say what remains and when the window resets); and every
answer can be delayed (latency) and every body throttled (one bandwidth shared by all connections).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlparse

#: Files the Hub keeps in LFS: ``/resolve/`` redirects them to the file host (small git files it serves).
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
#: Body bytes written at a time (and throttled at a time, under a bandwidth cap).
CHUNK = 256 * 1024


@dataclass
class Repo:
    """A repo served from a directory of files."""

    repo_id: str
    path: Path
    gated: bool = False
    card: dict = field(default_factory=dict)
    downloads: int = 0
    #: listed, but gone by the time it is scanned (model info answers 404)
    deleted: bool = False

    @property
    def sha(self) -> str:
        h = hashlib.sha1(self.repo_id.encode())
        for f in sorted(self.files()):
            h.update(f.encode() + self.head(f))
        return h.hexdigest()

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file())

    def has(self, filename: str) -> bool:
        return (self.path / filename).is_file()

    def size(self, filename: str) -> int:
        return (self.path / filename).stat().st_size

    def read(self, filename: str, start: int, end: int) -> bytes:
        """Bytes [start, end] (inclusive) of a file."""
        with open(self.path / filename, "rb") as f:
            f.seek(start)
            return f.read(end - start + 1)

    def head(self, filename: str) -> bytes:
        return self.read(filename, 0, 4095)

    def sha256(self, filename: str) -> str:
        """A file's SHA-256 (the LFS oid), computed once per file version."""
        st = (self.path / filename).stat()
        key = (str(self.path / filename), st.st_mtime, st.st_size)
        if key not in _SHA256:
            h = hashlib.sha256()
            with open(self.path / filename, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            _SHA256[key] = h.hexdigest()
        return _SHA256[key]

    def params(self) -> int:
        """Parameter count from the safetensors headers, as the Hub's listing reports it."""
        total = 0
        for f in self.files():
            if f.endswith(".safetensors"):
                length = int.from_bytes(self.read(f, 0, 7), "little")
                header = json.loads(self.read(f, 8, 7 + length))
                total += sum(math.prod(e["shape"]) for name, e in header.items() if name != "__metadata__")
        return total

    def config(self) -> dict:
        return json.loads(self.read("config.json", 0, self.size("config.json") - 1)) if self.has("config.json") else {}


_SHA256: dict[tuple[str, float, int], str] = {}


class GeneratedRepo(Repo):
    """A repo whose files are made on request by ``make(key)`` (``{name: bytes}``) and kept while the shared
    ``cache`` holds them (the oldest 512 file sets are dropped): a catalog of thousands of repos drawn from
    a few hundred weight sets costs no disk, and repos that share a key (exact re-uploads) share bytes."""

    def __init__(self, repo_id: str, key, make, cache: dict, names: list[str], config: dict | None = None,
                 params: int = 0, **options):
        super().__init__(repo_id, Path("/nonexistent"), **options)
        self.key, self._make, self._cache = key, make, cache
        # what a listing shows, without making the files
        self._names, self._config, self._params = sorted(names), config or {}, params

    @property
    def sha(self) -> str:
        return hashlib.sha1(f"{self.repo_id}\0{self.key!r}".encode()).hexdigest()

    def config(self) -> dict:
        return self._config

    def params(self) -> int:
        return self._params

    def _files(self) -> dict[str, bytes]:
        if self.key not in self._cache:
            if len(self._cache) >= 512:
                self._cache.pop(next(iter(self._cache)))
            files = self._make(self.key)
            self._cache[self.key] = (files, {n: hashlib.sha256(b).hexdigest() for n, b in files.items()})
        return self._cache[self.key][0]

    def files(self) -> list[str]:
        return self._names

    def has(self, filename: str) -> bool:
        return filename in self._names

    def size(self, filename: str) -> int:
        return len(self._files()[filename])

    def read(self, filename: str, start: int, end: int) -> bytes:
        return self._files()[filename][start : end + 1]

    def sha256(self, filename: str) -> str:
        self._files()
        return self._cache[self.key][1][filename]


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
    together."""

    def __init__(self, repos: list[Repo], page_size: int = 2, token: str | None = None, *, redirect: bool = True,
                 url_ttl_s: float = 3600.0, limits: Limits | None = None, latency_s: float = 0.0,
                 bandwidth: float | None = None):
        self.repos = {r.repo_id: r for r in repos}
        #: a token that may read gated repos (``Authorization: Bearer TOKEN``); without one none may
        self.token = token
        self.page_size = page_size
        self.redirect, self.url_ttl_s, self.limits = redirect, url_ttl_s, limits or Limits()
        self.latency_s, self.bandwidth = latency_s, bandwidth
        self.faults: dict[str, deque[str]] = defaultdict(deque)
        self.renames: dict[str, str] = {}  # old repo id -> new: answered with a redirect, as the Hub does
        self.bytes_served: dict[str, int] = defaultdict(int)
        #: data requests per file (whichever host served them), and per-repo or listing API calls
        self.requests: dict[str, int] = defaultdict(int)
        #: ``/resolve/`` calls per file, requests per class, and 429s per class
        self.resolves: dict[str, int] = defaultdict(int)
        self.by_class: dict[str, int] = defaultdict(int)
        self.rejected: dict[str, int] = defaultdict(int)
        #: file-host requests that carried an Authorization header (a signed URL needs none: a leak)
        self.file_host_tokens = 0
        self.lock = threading.Lock()
        self._shas = {r.repo_id: r.sha for r in repos}
        self._key = hashlib.sha256(str(id(self)).encode() + str(time.time()).encode()).digest()
        self._started = time.monotonic()
        self._window_counts: dict[tuple[str, int], int] = defaultdict(int)
        self._free_at = 0.0  # when the shared link is next free (bandwidth)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, filename: str, *faults: str) -> None:
        """Queue faults for the next requests of ``filename``: '429', '503', 'drop', 'short', '429-forever'
        (Retry-After: 100000), 'no-range' (the whole file with 200, as a server that ignores Range)."""
        self.faults[filename].extend(faults)

    def reset_counts(self) -> None:
        for counts in (self.bytes_served, self.requests, self.resolves, self.by_class, self.rejected):
            counts.clear()
        self.file_host_tokens = 0

    def rename(self, old: str, new: str) -> None:
        """Rename a repo as the Hub does: its commits stay, and the old id answers with a redirect."""
        repo = self.repos.pop(old)
        repo.repo_id = new
        self.repos[new] = repo
        self._shas[new] = self._shas.pop(old)
        self.renames[old] = new

    def revoke_urls(self) -> None:
        """Invalidate every signed URL handed out so far (the file host answers 403 to them)."""
        self._key = hashlib.sha256(self._key).digest()

    def signed_url(self, repo_id: str, sha: str, filename: str, now: float | None = None) -> str:
        """The file host's URL for a file, valid for ``url_ttl_s`` from ``now``."""
        expires = int((time.time() if now is None else now) + self.url_ttl_s)
        path = f"/files/{quote(repo_id)}/{sha}/{quote(filename)}"
        return f"{self.endpoint}{path}?Expires={expires}&Signature={self._sign(path, expires)}"

    def _sign(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}|{expires}".encode(), hashlib.sha256).hexdigest()

    def _admit(self, kind: str) -> tuple[bool, dict[str, str]]:
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

    def _throttle(self, nbytes: int) -> None:
        """Wait for ``nbytes`` of the shared bandwidth."""
        if not self.bandwidth or nbytes <= 0:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + nbytes / self.bandwidth
            wait = self._free_at - now
        time.sleep(wait)

    def _sibling(self, repo: Repo, filename: str, blobs: bool) -> dict:
        """A file entry of model info; with ``blobs``, its size, and for weights the LFS SHA-256."""
        entry: dict = {"rfilename": filename}
        if blobs:
            entry["size"] = repo.size(filename)
            entry["blobId"] = hashlib.sha1(repo.head(filename)).hexdigest()
            if filename.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"sha256": repo.sha256(filename), "size": entry["size"], "pointerSize": 134}
        return entry

    def info(self, repo: Repo, blobs: bool = False) -> dict:
        config = repo.config()
        return {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": self._shas[repo.repo_id],
            "author": repo.repo_id.split("/")[0],
            "private": False,
            "gated": "manual" if repo.gated else False,
            "downloads": repo.downloads,
            "likes": 0,
            "tags": [],
            "lastModified": "2026-11-01T00:00:00.000Z",
            "siblings": [self._sibling(repo, f, blobs) for f in repo.files()],
            "cardData": repo.card,
            "config": {k: config.get(k) for k in ("model_type", "architectures")},
            "safetensors": {"parameters": {"BF16": repo.params()}, "total": repo.params()},
        }

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _json(self, data, status=200, headers=None):
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status, code, message="error"):
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                return hub.token is not None and self.headers.get("Authorization") == f"Bearer {hub.token}"

            def do_HEAD(self):
                self.do_GET(head=True)

            def _rate_limited(self, headers: dict[str, str]) -> None:
                self.send_response(429)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self, head=False):
                url = urlparse(self.path)
                if hub.latency_s:
                    time.sleep(hub.latency_s)
                kind = "file" if url.path.startswith("/files/") else "resolve" if "/resolve/" in url.path else "api"
                allowed, self._limit_headers = hub._admit(kind)
                if not allowed:
                    return self._rate_limited(self._limit_headers)
                if kind == "file":
                    return self._file_host(url, head)
                for old, new in hub.renames.items():
                    if f"/{old}/" in url.path + "/":
                        self.send_response(307)
                        self.send_header("Location", self.path.replace(f"/{old}", f"/{new}", 1))
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                if parts[:2] == ["api", "models"] and len(parts) == 2:
                    return self._list(parse_qs(url.query))
                if parts[:2] == ["api", "models"]:
                    repo_id = "/".join(parts[2:4])
                    repo = hub.repos.get(repo_id)
                    if repo is None or repo.deleted:
                        return self._error(404, "RepoNotFound", "Repository not found")
                    with hub.lock:
                        hub.requests[f"api:{repo_id}"] += 1
                    if len(parts) > 5 and parts[4] == "revision" and parts[5] not in ("main", hub._shas[repo_id]):
                        return self._error(404, "RevisionNotFound", "Invalid rev id")
                    blobs = parse_qs(url.query).get("blobs", ["false"])[0].lower() == "true"
                    return self._json(hub.info(repo, blobs), headers=self._limit_headers)
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
                return self._error(404, "EntryNotFound")

            def _list(self, query):
                models = sorted(hub.repos.values(), key=lambda r: r.repo_id)
                author, search = query.get("author", [None])[0], query.get("search", [None])[0]
                models = [
                    r
                    for r in models
                    if (not author or r.repo_id.startswith(author + "/"))
                    and (not search or search.lower() in r.repo_id.lower())
                ]
                if query.get("sort", [None])[0] == "downloads":
                    models.sort(key=lambda r: -r.downloads)
                start = int(query.get("cursor", ["0"])[0])
                limit = int(query.get("limit", [str(hub.page_size)])[0])
                page = min(limit, hub.page_size)
                chunk = models[start : start + page]
                headers = {}
                if start + page < len(models):
                    q = "&".join(f"{k}={v}" for k, vals in query.items() if k != "cursor" for v in vals)
                    headers["Link"] = f'<{hub.endpoint}/api/models?{q}&cursor={start + page}>; rel="next"'
                with hub.lock:
                    hub.requests["/api/models"] += 1
                return self._json([hub.info(r) for r in chunk], headers=headers)

            def _resolve(self, repo_id, revision, filename, head):
                repo = hub.repos.get(repo_id)
                if repo is None or repo.deleted:
                    return self._error(404, "RepoNotFound", "Repository not found")
                if repo.gated and not self._authorised():
                    return self._error(403, "GatedRepo", "Access to model is restricted")
                if revision not in ("main", hub._shas[repo_id]):
                    return self._error(404, "RevisionNotFound", "Invalid rev id")
                if not repo.has(filename):
                    return self._error(404, "EntryNotFound", "Entry not found")
                if hub.redirect and filename.endswith(LFS_SUFFIXES):  # weights live on the file host
                    with hub.lock:
                        hub.resolves[filename] += 1
                    self.send_response(302)
                    self.send_header("Location", hub.signed_url(repo_id, hub._shas[repo_id], filename))
                    self.send_header("X-Repo-Commit", hub._shas[repo_id])
                    self.send_header("X-Linked-Size", str(repo.size(filename)))
                    self.send_header("X-Linked-Etag", f'"{repo.sha256(filename)}"')
                    for k, v in self._limit_headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                return self._serve(repo, filename, head)

            def _file_host(self, url, head):
                """The file host: a signed URL, checked and not expired, serves the file."""
                if self.headers.get("Authorization"):
                    with hub.lock:
                        hub.file_host_tokens += 1
                query = parse_qs(url.query)
                expires, signature = query.get("Expires", ["0"])[0], query.get("Signature", [""])[0]
                good = expires.isdigit() and hmac.compare_digest(signature, hub._sign(url.path, int(expires)))
                if not good or int(expires) < time.time():
                    return self._error(403, "AccessDenied", "Request has expired" if good else "Bad signature")
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                repo_id, sha, filename = "/".join(parts[1:3]), parts[3], "/".join(parts[4:])
                repo = hub.repos.get(repo_id)
                if repo is None or hub._shas[repo_id] != sha or not repo.has(filename):
                    return self._error(404, "NoSuchKey", "The specified key does not exist")
                return self._serve(repo, filename, head)

            def _serve(self, repo, filename, head):
                repo_id = repo.repo_id
                with hub.lock:
                    hub.requests[filename] += 1
                    fault = hub.faults[filename].popleft() if hub.faults[filename] else None
                if fault in ("429", "503", "429-forever"):
                    self.send_response(int(fault[:3]))
                    self.send_header("Retry-After", "100000" if fault == "429-forever" else "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = repo.size(filename)
                start, end = 0, size - 1
                status = 200
                rng = self.headers.get("Range")
                if rng and not head and fault != "no-range":
                    lo, _, hi = rng.removeprefix("bytes=").partition("-")
                    start, end, status = int(lo), min(int(hi) if hi else size - 1, size - 1), 206
                body = b"" if head else repo.read(filename, start, end)
                announced = len(body) if not head else size
                if fault == "short":
                    body = body[: len(body) // 2]
                    announced = len(body)
                self.send_response(status)
                self.send_header("X-Repo-Commit", hub._shas[repo_id])
                self.send_header("ETag", f'"{hashlib.sha1(repo.head(filename)).hexdigest()}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(announced))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                view = memoryview(body)
                for at in range(0, len(body), CHUNK):
                    hub._throttle(len(view[at : at + CHUNK]))
                    self.wfile.write(view[at : at + CHUNK])
                with hub.lock:
                    hub.bytes_served[filename] += len(body)

        return Handler
