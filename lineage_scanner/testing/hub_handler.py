"""The Hub stand-in's request handler: the Hub's routes, answered from :class:`HubStandIn`'s public API.

Routes: ``GET /api/models`` (the listing), ``GET /api/models/ORG/NAME[/revision/REV]`` (model info),
``GET|HEAD /ORG/NAME/resolve/REV/FILE`` (a weight file redirects to the file host, a small file is served
here) and ``GET|HEAD /files/ORG/NAME/SHA/FILE?Expires=…&Signature=…`` (the file host). Every request is
counted and admitted per class first; a renamed repo's old id answers 307 to its new one; each answer
meets the fault ``inject`` queued for its target (see :data:`lineage_scanner.testing.hub_server.FAULTS`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlencode, urlparse

from lineage_scanner.testing.hub_repos import LFS_SUFFIXES

#: Body bytes written at a time (and throttled at a time, under a bandwidth cap).
CHUNK = 256 * 1024
#: What the listing's entries carry when no ``expand`` is asked for (a few of the Hub's defaults).
DEFAULT_EXPAND = ("downloads", "lastModified")


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def hub(self):
        return self.server.hub

    def log_message(self, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head: bool = False):
        url = urlparse(self.path)
        if self.hub.latency_s:
            time.sleep(self.hub.latency_s)
        kind = "file" if url.path.startswith("/files/") else "resolve" if "/resolve/" in url.path else "api"
        allowed, self.limit_headers = self.hub.admit(kind)
        if not allowed:
            return self._empty(429, self.limit_headers)
        if kind == "file":
            return self._file_host(url, head)
        for old, new in self.hub.renames.items():
            if f"/{old}/" in url.path + "/":
                return self._empty(307, {"Location": self.path.replace(f"/{old}", f"/{new}", 1)})
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) == 2:
            return self._list(parse_qs(url.query))
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._info("/".join(parts[2:4]), parts[5] if len(parts) > 5 and parts[4] == "revision" else None,
                              parse_qs(url.query).get("blobs", ["false"])[0].lower() == "true")
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
        return self._error(404, "EntryNotFound")

    # ---- answers ------------------------------------------------------------------------------------

    def _empty(self, status: int, headers: dict) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _error(self, status: int, code: str, message: str = "error") -> None:
        self._send(status, {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"},
                   json.dumps({"error": message}).encode())

    def _json(self, data, target: str, headers: dict | None = None) -> None:
        fault = self.hub.take_fault(target)
        if fault == "huge":  # valid JSON, far larger than any real answer; streamed, never held
            return self._huge(data)
        self._send(200, {"Content-Type": "application/json", **self.limit_headers, **(headers or {})},
                   json.dumps(data).encode(), fault)

    def _huge(self, data) -> None:
        """``data`` padded to ``huge_bytes`` of valid JSON, sent without a Content-Length (the body runs to
        the connection's close): the client cannot refuse it from a header, only by counting."""
        head = json.dumps(data if isinstance(data, dict) else {"items": data})[:-1].encode() + b', "padding": "'
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        left, pad = self.hub.huge_bytes - len(head) - 2, b"a" * CHUNK
        try:
            self.wfile.write(head)
            while left > 0:
                self.wfile.write(pad[: min(left, CHUNK)])
                left -= CHUNK
            self.wfile.write(b'"}')
        except OSError:  # the client hung up once it had read its cap: what it should do
            pass

    def _send(self, status: int, headers: dict, body: bytes, fault: str | None = None, announced: int | None = None,
              count: str | None = None) -> None:
        """An answer, meeting ``fault``; ``announced`` is the Content-Length (the body's own by default);
        ``count``: the file whose served bytes are counted."""
        if fault in ("429", "503", "429-forever"):
            return self._empty(int(fault[:3]), {"Retry-After": "100000" if fault == "429-forever" else "0"})
        if fault == "hang":  # not a byte: the client's read timeout must end it
            self.hub.wait(3600)
            self.close_connection = True
            return
        if fault == "short":
            body = body[: len(body) // 2]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if announced is None or fault == "short" else announced))
        self.end_headers()
        if fault in ("drop", "stall", "trickle"):
            self._misbehave(fault, body)
            return
        view = memoryview(body)
        for at in range(0, len(body), CHUNK):
            self.hub.throttle(len(view[at : at + CHUNK]))
            self.wfile.write(view[at : at + CHUNK])
        if count:
            self.hub.count("bytes_served", count, len(body))

    def _misbehave(self, fault: str, body: bytes) -> None:
        """Half the body then a closed connection ('drop'); no body ('stall'); a byte at a time ('trickle')."""
        self.close_connection = True
        try:
            if fault == "drop":
                self.wfile.write(body[: len(body) // 2])
            elif fault == "stall":
                self.wfile.flush()
                self.hub.wait(3600)
            else:
                for at in range(len(body)):
                    self.wfile.write(body[at : at + 1])
                    self.wfile.flush()
                    if self.hub.wait(self.hub.trickle_s):
                        return
        except OSError:  # the client gave up on it: what it should do
            pass

    # ---- routes -------------------------------------------------------------------------------------

    def _authorised(self) -> bool:
        return self.hub.token is not None and self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _list(self, query: dict) -> None:
        hub = self.hub
        models = sorted(hub.repos.values(), key=lambda r: r.repo_id)
        author, search = query.get("author", [None])[0], query.get("search", [None])[0]
        models = [r for r in models if (not author or r.repo_id.startswith(author + "/"))
                  and (not search or search.lower() in r.repo_id.lower())]
        sort = query.get("sort", [None])[0]
        if sort == "downloads":
            models.sort(key=lambda r: -r.downloads)
        elif sort == "lastModified":
            models.sort(key=lambda r: (r.last_modified, r.repo_id), reverse=True)
        start = int(query.get("cursor", ["0"])[0])
        page = min(int(query.get("limit", [str(hub.page_size)])[0]), hub.page_size)
        chunk = models[start : start + page]
        fault = hub.take_fault("list")
        headers = {}
        if fault == "flood":  # past the end, pages of models nobody made, forever
            chunk = [self._made_up(n) for n in range(start, start + page)] if start >= len(models) else chunk
        if start + page < len(models) or fault in ("endless", "flood"):
            rest = {k: v for k, v in query.items() if k != "cursor"}
            headers["Link"] = f'<{hub.endpoint}/api/models?{urlencode(rest, doseq=True)}&cursor={start + page}>; ' \
                              'rel="next"'
        hub.count("requests", "/api/models")
        expand = query.get("expand", []) or DEFAULT_EXPAND
        entries = [r if isinstance(r, dict) else hub.entry(r, expand) for r in chunk]
        if fault == "huge":
            return self._huge(entries)
        self._send(200, {"Content-Type": "application/json", **self.limit_headers, **headers},
                   json.dumps(entries).encode(), None if fault in ("endless", "flood") else fault)

    @staticmethod
    def _made_up(n: int) -> dict:
        """A listing entry of a repo that does not exist (a flooding listing's)."""
        return {"id": f"spam/model-{n}", "sha": hashlib.sha1(str(n).encode()).hexdigest(), "siblings": [],
                "lastModified": "2020-01-01T00:00:00.000Z"}

    def _info(self, repo_id: str, revision: str | None, blobs: bool) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or repo.deleted:
            return self._error(404, "RepoNotFound", "Repository not found")
        self.hub.count("requests", f"api:{repo_id}")
        if revision not in (None, "main", repo.sha):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        self._json(self.hub.info(repo, blobs), f"info:{repo_id}")

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
        hub = self.hub
        repo = hub.repos.get(repo_id)
        if repo is None or repo.deleted:
            return self._error(404, "RepoNotFound", "Repository not found")
        if filename == "config.json":  # the default query file: each GET or HEAD is a download of the model
            hub.count("query_files", repo_id)
        if repo.gated and not self._authorised():
            return self._error(403, "GatedRepo", "Access to model is restricted")
        if revision not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        if not repo.has(filename):
            return self._error(404, "EntryNotFound", "Entry not found")
        if hub.redirect and filename.endswith(LFS_SUFFIXES):  # weights live on the file host
            hub.count("resolves", filename)
            return self._empty(302, {"Location": hub.signed_url(repo_id, repo.sha, filename),
                                     "X-Repo-Commit": repo.sha, "X-Linked-Size": str(repo.size(filename)),
                                     "X-Linked-Etag": f'"{repo.sha256(filename)}"', **self.limit_headers})
        return self._serve(repo, filename, head)

    def _file_host(self, url, head: bool) -> None:
        """The file host: a signed URL, checked and not expired, serves the file."""
        hub = self.hub
        if self.headers.get("Authorization"):
            with hub.lock:
                hub.file_host_tokens += 1
        query = parse_qs(url.query)
        expires, signature = query.get("Expires", ["0"])[0], query.get("Signature", [""])[0]
        good = expires.isdigit() and hmac.compare_digest(signature, hub.sign(url.path, int(expires)))
        if not good or int(expires) < time.time():
            return self._error(403, "AccessDenied", "Request has expired" if good else "Bad signature")
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        repo_id, sha, filename = "/".join(parts[1:3]), parts[3], "/".join(parts[4:])
        repo = hub.repos.get(repo_id)
        if repo is None or repo.sha != sha or not repo.has(filename):
            return self._error(404, "NoSuchKey", "The specified key does not exist")
        return self._serve(repo, filename, head)

    def _serve(self, repo, filename: str, head: bool) -> None:
        hub = self.hub
        hub.count("requests", filename)
        fault = hub.take_fault(f"{repo.repo_id}/{filename}") or hub.take_fault(filename)
        size = repo.size(filename)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and not head and fault != "no-range":
            lo, _, hi = rng.removeprefix("bytes=").partition("-")
            start, end, status = int(lo), min(int(hi) if hi else size - 1, size - 1), 206
        body = b"" if head else repo.read(filename, start, end)
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{hashlib.sha1(repo.head(filename)).hexdigest()}"',
                   "Accept-Ranges": "bytes"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(status, headers, body, fault, announced=size if head else None, count=filename)
