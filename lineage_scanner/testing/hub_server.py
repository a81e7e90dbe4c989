"""A local stand-in for the Hugging Face Hub, on 127.0.0.1, for the real ``huggingface_hub`` client.

It serves directories of checkpoints as repos: model info (per revision), model listing with cursor
pagination, and ``resolve`` with HEAD and single-range GET, with the commit and ETag headers the client
reads. Gated and missing repos answer with the Hub's error codes. Faults can be queued per file (429 with
Retry-After, 503, a connection dropped mid-body, a body shorter than announced), and bytes and requests
are counted per file, so tests can assert byte budgets and retries.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Repo:
    repo_id: str
    path: Path
    gated: bool = False
    card: dict = field(default_factory=dict)
    downloads: int = 0

    @property
    def sha(self) -> str:
        h = hashlib.sha1(self.repo_id.encode())
        for f in sorted(self.files()):
            h.update(f.encode() + _head(self.path / f))
        return h.hexdigest()

    def params(self) -> int:
        """Parameter count from the safetensors headers, as the Hub's listing reports it."""
        total = 0
        for f in self.path.glob("*.safetensors"):
            with open(f, "rb") as fh:
                header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
            for name, entry in header.items():
                if name != "__metadata__":
                    n = 1
                    for d in entry["shape"]:
                        n *= d
                    total += n
        return total

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file())


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4096)


class HubStandIn:
    """Start with ``with HubStandIn(repos) as hub:``; ``hub.endpoint`` goes into HF_ENDPOINT."""

    def __init__(self, repos: list[Repo], page_size: int = 2, token: str | None = None):
        self.repos = {r.repo_id: r for r in repos}
        #: a token that may read gated repos (``Authorization: Bearer TOKEN``); without one none may
        self.token = token
        self.page_size = page_size
        self.faults: dict[str, deque[str]] = defaultdict(deque)
        self.renames: dict[str, str] = {}  # old repo id -> new: answered with a redirect, as the Hub does
        self.bytes_served: dict[str, int] = defaultdict(int)
        self.requests: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        self._shas = {r.repo_id: r.sha for r in repos}
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
        self.bytes_served.clear()
        self.requests.clear()

    def info(self, repo: Repo) -> dict:
        config_path = repo.path / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
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
            "siblings": [{"rfilename": f} for f in repo.files()],
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

            def do_GET(self, head=False):
                url = urlparse(self.path)
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
                    if repo is None:
                        return self._error(404, "RepoNotFound", "Repository not found")
                    with hub.lock:
                        hub.requests[f"api:{repo_id}"] += 1
                    if len(parts) > 5 and parts[4] == "revision" and parts[5] not in ("main", hub._shas[repo_id]):
                        return self._error(404, "RevisionNotFound", "Invalid rev id")
                    return self._json(hub.info(repo))
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
                if repo is None:
                    return self._error(404, "RepoNotFound", "Repository not found")
                if repo.gated and not self._authorised():
                    return self._error(403, "GatedRepo", "Access to model is restricted")
                if revision not in ("main", hub._shas[repo_id]):
                    return self._error(404, "RevisionNotFound", "Invalid rev id")
                path = repo.path / filename
                if not path.is_file():
                    return self._error(404, "EntryNotFound", "Entry not found")
                with hub.lock:
                    hub.requests[filename] += 1
                    fault = hub.faults[filename].popleft() if hub.faults[filename] else None
                if fault in ("429", "503", "429-forever"):
                    self.send_response(int(fault[:3]))
                    self.send_header("Retry-After", "100000" if fault == "429-forever" else "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = path.stat().st_size
                start, end = 0, size - 1
                status = 200
                rng = self.headers.get("Range")
                if rng and not head and fault != "no-range":
                    lo, _, hi = rng.removeprefix("bytes=").partition("-")
                    start, end, status = int(lo), min(int(hi) if hi else size - 1, size - 1), 206
                with open(path, "rb") as f:
                    f.seek(start)
                    body = b"" if head else f.read(end - start + 1)
                announced = len(body) if not head else size
                if fault == "short":
                    body = body[: len(body) // 2]
                    announced = len(body)
                self.send_response(status)
                self.send_header("X-Repo-Commit", hub._shas[repo_id])
                self.send_header("ETag", f'"{hashlib.sha1(_head(path)).hexdigest()}"')
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
                self.wfile.write(body)
                with hub.lock:
                    hub.bytes_served[filename] += len(body)

        return Handler
