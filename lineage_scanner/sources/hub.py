"""``hf://org/name[@revision][/file]`` references, the Hub endpoint they are read from, and what the Hub
says of a commit (:class:`HubCommit`), which a listed source carries to its scan (:class:`ListedSource`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

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


@dataclass(frozen=True)
class HubCommit:
    """What the Hub says of one commit of a repo, from its model listing (``expand``) or its model info:
    everything a scan needs before it reads a weight byte. Checked when it is made
    (:func:`lineage_scanner.readers.hub_info.commit_from`): a valid repo id and a 40-hex SHA."""

    model: str
    sha: str
    files: tuple[str, ...] = ()
    #: the config fields the Hub extracts (``model_type``, ``architectures``, ``quantization_config``):
    #: never the head counts, which only config.json holds
    config: dict = field(default_factory=dict)
    declared_base: list[str] = field(default_factory=list)
    declared_relation: str | None = None
    gated: bool = False
    last_modified: datetime | None = None
    params: int | None = None
    downloads: int | None = None
    #: each LFS file's SHA-256, where the answer gave them (model info with ``blobs``; a listing does not)
    lfs: dict[str, str] = field(default_factory=dict, compare=False)
    listed_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc), compare=False)

    @property
    def source(self) -> str:
        return f"hf://{self.model}@{self.sha}"

    @property
    def config_json(self) -> str:
        """The config fields as the store keeps them."""
        return json.dumps(self.config, sort_keys=True)


class ListedSource(str):
    """An ``hf://model@sha`` source that carries what the listing said of its commit (:attr:`commit`), so
    the scan needs no model-info call: the batch loop and its executors pass it on as the string it is
    (pickled with its commit to a Ray worker)."""

    commit: HubCommit

    def __new__(cls, commit: HubCommit) -> ListedSource:
        text = super().__new__(cls, commit.source)
        text.commit = commit
        return text

    def __reduce__(self):
        return ListedSource, (self.commit,)
