"""The Hub catalog: list models with ``HfApi.list_models`` into the store's work list.

One paginated listing call returns, per model, the commit SHA, last modification, safetensors parameter
counts, card data (declared ``base_model``) and gated status (``expand``), so building a work list of
thousands of models costs a handful of API calls, not one per model. ``lineage scan --catalog`` then
scans only the (model, sha) pairs the store has no signature for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

EXPAND = ["sha", "lastModified", "safetensors", "cardData", "gated", "downloads"]


@dataclass(frozen=True)
class CatalogEntry:
    model: str
    sha: str
    last_modified: datetime | None
    params: int | None
    declared_base: list[str]
    gated: bool
    downloads: int | None = None
    listed_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def source(self) -> str:
        return f"hf://{self.model}@{self.sha}"


def list_catalog(author: str | None = None, search: str | None = None, filter: str | None = None,
                 sort: str | None = None, limit: int | None = None) -> list[CatalogEntry]:
    from huggingface_hub import HfApi

    from lineage_scanner.sources.hub import endpoint

    api = HfApi(endpoint=endpoint())
    entries = []
    for m in api.list_models(author=author, search=search, filter=filter, sort=sort, limit=limit, expand=EXPAND):
        card = m.card_data.to_dict() if m.card_data else {}
        base = card.get("base_model") or []
        entries.append(CatalogEntry(
            model=m.id, sha=m.sha or "", last_modified=m.last_modified,
            params=m.safetensors.total if m.safetensors else None,
            declared_base=[base] if isinstance(base, str) else [str(b) for b in base],
            gated=bool(m.gated), downloads=m.downloads,
        ))
    return entries
