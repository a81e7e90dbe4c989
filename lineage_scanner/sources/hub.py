"""``hf://org/name[@revision][/file]`` references and the Hub endpoint they are read from."""

from __future__ import annotations

import os
from dataclasses import dataclass

from lineage_scanner.errors import SourceError


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
        body = text.removeprefix("hf://")
        parts = body.split("/")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise SourceError(text, "expected hf://org/name[@revision][/file]")
        name, _, revision = parts[1].partition("@")
        return cls(f"{parts[0]}/{name}", revision or None, "/".join(parts[2:]) or None)
