"""What a user names, before anything is opened: local paths, ``hf://`` references, catalog listings.

A source string resolves to an identity (model id, revision); the readers open it. Parsing lives here so
that the batch loop can name a source that never opened (its error row) without touching a reader.
"""

from __future__ import annotations

from pathlib import Path

#: Weights stored as pickles: refused, never unpickled (unpickling can run arbitrary code).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_NAME = "model.safetensors.index.json"
HUB_PREFIX = "hf://"


def is_hub(text: str) -> bool:
    return str(text).startswith(HUB_PREFIX)


def name_of(text: str) -> tuple[str, str]:
    """(model, revision) as far as the source text tells, for error rows of sources that never opened."""
    if is_hub(text):
        from lineage_scanner.errors import SourceError
        from lineage_scanner.sources.hub import HubRef

        try:
            ref = HubRef.parse(str(text))
        except SourceError:
            return str(text), ""
        return ref.repo_id, ref.revision or ""
    return Path(text).name, ""
