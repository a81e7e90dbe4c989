"""``hf://org/name[@revision][/file]`` references and the Hub endpoint they are read from."""

from __future__ import annotations

import os
from dataclasses import dataclass

from lineage_scanner.errors import SourceError
from lineage_scanner.sources.names import PR_REF, check_relative_name, check_repo_id, check_revision


def endpoint() -> str:
    """``HF_ENDPOINT`` as the ``huggingface_hub`` client reads it (the public Hub by default)."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None
    filename: str | None = None

    @classmethod
    def parse(cls, text: str) -> HubRef:
        """``hf://org/name[@revision][/file]``; the revision may be ``refs/pr/N`` (which holds slashes)."""
        body = text.removeprefix("hf://")
        org, _, rest = body.partition("/")
        head, slash, tail = rest.partition("/")
        name, at, revision = head.partition("@")
        if not org or not name:
            raise SourceError(text, "expected hf://org/name[@revision][/file]")
        if at:  # a revision runs to the next slash, except refs/pr/N, which holds two
            pr = PR_REF.match(revision + slash + tail)
            if pr:
                revision, tail = pr.group(0), (revision + slash + tail)[pr.end():].removeprefix("/")
            check_revision(revision, text)
        rest = tail
        filename = check_relative_name(rest, text, SourceError) if rest else None
        return cls(check_repo_id(org, name, text), revision or None, filename)
