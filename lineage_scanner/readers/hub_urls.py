"""What the Hub's URLs and answers say, as pure functions: which rate-limited class a request counts
against, whether a URL is the Hub's own (the token may go there) or a file host's, when a signed URL
expires, how long a ``Retry-After`` asks to wait, which typed error a status is, and the file's size."""

from __future__ import annotations

import math
import random
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs, unquote, urlparse

from lineage_scanner.errors import GatedError, RemoteError, SourceError
from lineage_scanner.sources.hub import endpoint
from lineage_scanner.sources.names import REPO_PART

#: A signed URL whose expiry it does not state is kept this long.
UNSTATED_TTL_S = 300.0


def file_url(repo_id: str, sha: str, filename: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, filename, revision=sha, endpoint=endpoint())


def url_name(url: str) -> str:
    """The last path segment of a URL (a file name), for messages: never the query (a signature)."""
    return url.rpartition("/")[2].partition("?")[0]


def on_hub(url: str) -> bool:
    """Whether ``url`` is one of the Hub's own (API or resolve), not a file host's."""
    hub, there = urlparse(endpoint()), urlparse(url)
    return (there.scheme, there.netloc) == (hub.scheme, hub.netloc) and not there.path.startswith("/files/") \
        and ("/resolve/" in there.path or there.path.startswith("/api/"))


def request_class(url: str) -> str | None:
    """Which of the Hub's rate-limited classes a request to ``url`` counts against: "api", "resolve", or
    None (a file host's, or another server's)."""
    if not on_hub(url):
        return None
    return "resolve" if "/resolve/" in urlparse(url).path else "api"


def purpose_of(url: str) -> str:
    """What a request to the Hub is for, as a job's account of its requests names it: ``listing``,
    ``model_info``, ``query_file`` (config.json: each GET or HEAD is a download of the model on the Hub), or
    "" (another resolve)."""
    path = urlparse(url).path
    if path.rstrip("/") == "/api/models":
        return "listing"
    if path.startswith("/api/models/"):
        return "model_info"
    parts = path.strip("/").split("/")
    return "query_file" if parts[2:3] == ["resolve"] and parts[4:] == ["config.json"] else ""


def repo_of(url: str) -> str | None:
    """The repo id a Hub URL names (``/api/models/ORG/NAME…`` or ``/ORG/NAME/resolve/…``), if it is a
    well-formed one: a redirect between two such URLs announces a rename."""
    parts = [unquote(p) for p in urlparse(url).path.strip("/").split("/")]
    if parts[:2] == ["api", "models"]:
        parts = parts[2:]
    elif "resolve" not in parts[2:3]:
        return None
    if len(parts) < 2 or not all(REPO_PART.fullmatch(p) for p in parts[:2]):
        return None
    return f"{parts[0]}/{parts[1]}"


def without_token(headers: dict) -> dict:
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}


def expiry(url: str) -> float:
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


def retry_after(value: str, default: float, cap: float, jitter: float) -> float:
    """Seconds a 429/503 asks to wait (a number of seconds; dates are not trusted), at most ``cap`` plus
    ``jitter``; ``default`` when it says nothing usable."""
    try:
        seconds = float(value)
    except ValueError:
        return default
    if not math.isfinite(seconds) or seconds < 0:
        return default
    return min(seconds, cap) + random.random() * jitter


def raise_for_status(source: str, url: str, status: int, headers) -> None:
    """Typed errors for the statuses that retrying cannot fix (the Hub names its 404s in X-Error-Code)."""
    if status < 400:
        return
    name = url_name(url)
    code = {k.lower(): v for k, v in dict(headers).items()}.get("x-error-code", "")
    if status in (401, 403):
        raise GatedError(source, f"access to {name} refused (HTTP {status}): request access or set HF_TOKEN")
    if status == 404:
        what = {"RepoNotFound": "repository not found (or private without access)",
                "RevisionNotFound": "revision not found"}.get(code, f"{name} not found")
        raise SourceError(source, f"{what} (HTTP 404)")
    if status == 416:
        raise RemoteError(source, f"{name}: range not satisfiable (HTTP 416): the file is shorter than its header says")
    raise RemoteError(source, f"{name}: HTTP {status}")


def content_total(headers) -> str:
    """What follows the slash of a Content-Range ('bytes a-b/size'): the file's size, '*', or ''."""
    return {k.lower(): v for k, v in dict(headers).items()}.get("content-range", "").rpartition("/")[2]


def last_byte(headers, default: int) -> int:
    """Last byte index of the file, from Content-Range, for ranges that overrun it."""
    total = content_total(headers)
    return int(total) - 1 if total.isdigit() else default


def file_size(source: str, headers: dict, body: bytes) -> int:
    """The whole file's size from a range answer's Content-Range."""
    total = content_total(headers)
    if total.isdigit():
        return int(total)
    if total in ("", "*"):
        return len(body)
    raise RemoteError(source, f"malformed Content-Range {total!r}")
