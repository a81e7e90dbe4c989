"""The Hub catalog: the model listing, page by page, into checked :class:`HubCommit` records.

One listing call per page of up to 1,000 models returns, with ``expand``, what a scan needs before it reads
a weight byte: commit SHA, file names, card data (declared base and relation), the config fields the Hub
extracts, parameter counts, gated status and last modification. So a work list of thousands of models
costs a handful of API calls, and each listed commit is scanned without a model-info call of its own.

Incremental: with ``since`` (the previous listing's high-water mark, kept in the store), the listing runs
newest first by last modification and stops at the first model not modified since; a night then lists
only what changed.

Bounded whatever the server does: pages, models and seconds are capped (:class:`ListingCaps`), each page is
streamed under a byte cap, a run of pages that bring no new model (an endless or looping ``Link``) ends
the listing, a next page is only followed on the Hub itself, and every entry's id and SHA are checked
(:func:`commit_from`); refused entries are counted, never stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

from lineage_scanner.errors import DeadlineError, IdentityError, RemoteError
from lineage_scanner.readers.hub_http import HubClient
from lineage_scanner.readers.hub_info import commit_from
from lineage_scanner.readers.hub_time import Timeouts
from lineage_scanner.readers.hub_urls import on_hub
from lineage_scanner.sources.hub import HubCommit, endpoint

EXPAND = ["sha", "lastModified", "siblings", "config", "safetensors", "cardData", "gated", "downloads"]
#: The CLI's sort names, as the Hub's API spells them.
SORTS = {"last_modified": "lastModified", "created_at": "createdAt", "trending_score": "trendingScore"}
#: The largest page the Hub serves.
PAGE = 1000
#: Pages in a row that may list no model not seen before (an endless or looping listing stops there).
BARREN_PAGES = 3
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True)
class ListingCaps:
    """How far a listing may go: the whole Hub (about 2.5 million models) is some 2,500 pages."""

    pages: int = 5_000
    models: int = 5_000_000
    seconds: float = 3600.0
    page_bytes: int = 64 << 20


@dataclass
class Listing:
    """What a listing returned: the commits, how many entries were refused (a bad id or SHA, or another
    author's), the newest last modification seen (the next listing's high-water mark), and why it stopped
    early, if it did (a cap: the listing is then incomplete and sets no mark)."""

    commits: list[HubCommit] = field(default_factory=list)
    refused: int = 0
    pages: int = 0
    newest: datetime | None = None
    stopped: str | None = None

    @property
    def where(self) -> str:
        return f"{endpoint()}/api/models"


def list_catalog(author: str | None = None, search: str | None = None, filter: str | None = None,
                 sort: str | None = None, limit: int | None = None, since: datetime | None = None,
                 caps: ListingCaps = ListingCaps(), budget=None) -> Listing:
    """List models (``since``: only those modified after it, newest first); see the module."""
    params: dict = {k: v for k, v in (("author", author), ("search", search), ("filter", filter)) if v}
    params["sort"] = "lastModified" if since is not None else SORTS.get(sort, sort)
    params = {k: v for k, v in params.items() if v is not None}
    wanted = min(limit if limit is not None else caps.models, caps.models)
    listing, seen, barren = Listing(), set(), 0
    client = HubClient(f"{endpoint()}/api/models", budget, Timeouts(model_s=caps.seconds))
    url: str | None = f"{endpoint()}/api/models?" + urlencode(
        {**params, "limit": min(PAGE, max(wanted, 1)), "expand": EXPAND}, doseq=True)
    while url is not None and len(listing.commits) < wanted:
        if listing.pages >= caps.pages:
            listing.stopped = f"listing stopped at the {caps.pages}-page cap"
            break
        if client.remaining() <= 0:
            listing.stopped = f"listing stopped at the {caps.seconds:.0f} s cap"
            break
        try:
            page, headers = client.get_json(url, "listing page", limit=caps.page_bytes, expect=list)
        except DeadlineError:
            if client.remaining() > 0:
                raise  # a stalled page: the listing's own error
            listing.stopped = f"listing stopped at the {caps.seconds:.0f} s cap"
            break
        listing.pages += 1
        fresh, older = _take(page, listing, seen, author, since)
        barren = 0 if fresh else barren + 1
        if older or barren >= BARREN_PAGES:
            if barren >= BARREN_PAGES:
                listing.stopped = f"listing stopped: {BARREN_PAGES} pages in a row listed no new model"
            break
        url = _next_page(headers)
    del listing.commits[wanted:]
    if listing.commits and len(listing.commits) >= caps.models and limit is None:
        listing.stopped = f"listing stopped at the {caps.models}-model cap"
    return listing


def _take(page: list, listing: Listing, seen: set[str], author: str | None, since: datetime | None
          ) -> tuple[int, bool]:
    """Add a page's entries to ``listing``: (how many were new, whether the high-water mark was reached)."""
    fresh = 0
    for entry in page:
        try:
            commit = commit_from(entry if isinstance(entry, dict) else {}, None, listing.where)
        except IdentityError:
            listing.refused += 1
            continue
        if author and not commit.model.lower().startswith(author.lower() + "/"):
            listing.refused += 1
            continue
        if since is not None and (commit.last_modified is None or commit.last_modified < since):
            return fresh, True
        if commit.model in seen:
            continue
        seen.add(commit.model)
        fresh += 1
        listing.commits.append(commit)
        if commit.last_modified and (listing.newest is None or commit.last_modified > listing.newest):
            listing.newest = commit.last_modified
    return fresh, False


def _next_page(headers: dict) -> str | None:
    """The ``Link: <…>; rel="next"`` page, if it is on the Hub (never another host, which would get the
    token)."""
    link = {k.lower(): v for k, v in headers.items()}.get("link", "")
    found = _NEXT.search(link)
    if not found:
        return None
    if not on_hub(found.group(1)):
        raise RemoteError(f"{endpoint()}/api/models", "the listing's next page is not on the Hub")
    return found.group(1)
