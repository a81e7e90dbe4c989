"""Open a Hub commit for scanning: resolve its identity, find copies before reading weights, open a reader.

``hf://org/name[@revision]`` resolves to the commit SHA through model info (one API call, every file's
size and LFS SHA-256 included). A commit already stored is skipped before any weight request. A commit
whose weight files' SHA-256s match another's is a :class:`CopyOf` it (an exact re-upload: nothing read); a
re-sharded or re-headed copy is nominated by its content digest (a few KB of layer 0). Otherwise its
safetensors shards (or its GGUF file) are opened for range reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from lineage_scanner.errors import ConfigError, HeaderError, SourceError
from lineage_scanner.readers.hub_http import HubClient, Timeouts
from lineage_scanner.readers.hub_info import model_info
from lineage_scanner.readers.hub_safetensors import HubSafetensors, ReadAhead
from lineage_scanner.readers.hub_urls import file_url
from lineage_scanner.readers.jsonfile import MAX_JSON_BYTES, parse_object
from lineage_scanner.readers.opened import CopyOf, OpenedModel, pickle_refusal
from lineage_scanner.readers.quantized import dequantizing
from lineage_scanner.readers.shared import Shared
from lineage_scanner.sources import INDEX_NAME, PICKLE_SUFFIXES
from lineage_scanner.sources.hub import HubCommit, HubRef
from lineage_scanner.sources.names import check_relative_name

Key = tuple[str, str]


@dataclass
class HubJob:
    """What the Hub scans of one process share: the job's rate budget and copy index (:mod:`shared`; on Ray,
    handles to the job's actor), the process's read-ahead budget in bytes, and the time limits."""

    budget: Shared | None = None
    copies: Shared | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    read_ahead: ReadAhead = field(default_factory=ReadAhead)

    def client(self, source: str) -> HubClient:
        return HubClient(source, self.budget, self.timeouts)


def weights_digest(sha256s: list[str]) -> str:
    """One digest for a set of weight files, from their own SHA-256s (order and names do not count)."""
    return hashlib.sha256("\n".join(sorted(sha256s)).encode()).hexdigest()


def open_hub(text: str, done: set[Key], job: HubJob | None = None) -> OpenedModel | CopyOf | Key:
    """Resolve ``hf://org/name[@revision]`` to its commit and open its weights by range reads; just the key
    of a commit already in ``done`` (or opened already by this job under another name)."""
    job = job or HubJob()
    ref = HubRef.parse(text)
    if ref.revision and len(ref.revision) == 40 and (ref.repo_id, ref.revision) in done:
        return ref.repo_id, ref.revision  # a pinned commit already scanned: not one request
    client = job.client(text)
    commit = model_info(ref, client)
    key = (commit.model, commit.sha)
    if key in done or (job.copies is not None and not job.copies.call("first_visit", key)):
        return key  # stored, or opened already in this job (under another name)
    client.source = commit.source
    return _Opening(commit, client, job).open(ref.filename)


class _Opening:
    """One commit being opened: its files, its copies, its reader."""

    def __init__(self, commit: HubCommit, client: HubClient, job: HubJob):
        self.commit, self.client, self.job = commit, client, job

    def copy_of(self, weights: list[str]) -> tuple[str | None, CopyOf | None]:
        """The weights' digest, and a CopyOf where another commit holds the same files (else read them)."""
        lfs = self.commit.lfs
        if not weights or not all(f in lfs for f in weights):
            return None, None
        digest = weights_digest([lfs[f] for f in weights])
        original = self.claim(digest)
        return digest, None if original is None else self.copy(original, digest, weights)

    def claim(self, digest: str) -> Key | None:
        copies = self.job.copies
        return None if copies is None else copies.call("claim", digest, (self.commit.model, self.commit.sha))

    def copy(self, original: Key, digest: str | None, weights: list[str], content: str | None = None) -> CopyOf:
        c = self.commit
        return CopyOf(c.model, c.sha, self.client.source, tuple(original), digest, c.declared_base,
                      c.declared_relation, self.client.bytes_read, sorted(weights), content)

    def open(self, filename: str | None) -> OpenedModel | CopyOf:
        c = self.commit
        ggufs = [f for f in c.files if f.endswith(".gguf")]
        if filename or (ggufs and not any(f.endswith(".safetensors") for f in c.files)):
            return self.open_gguf(filename, ggufs)
        top = [f for f in c.files if "/" not in f]
        shards = self.shards(top)
        digest, copy = self.copy_of(shards)
        if copy:
            return copy
        remote = HubSafetensors(self.client, c.model, c.sha, shards, self.job.read_ahead)
        try:
            content = remote.content_digest()  # a re-sharded or re-headed copy: other file hashes, the same weights
            original = self.claim(f"content:{content}") if content else None
            if original is not None:
                remote.close()
                return self.copy(original, digest, shards, content)
            config = self.fetch_json("config.json") if "config.json" in top else {}
            reader = dequantizing(remote, config)
        except BaseException:
            remote.close()
            raise
        return OpenedModel(c.model, c.sha, self.client.source, config, reader, c.declared_base,
                           c.declared_relation, digest, content)

    def shards(self, top: list[str]) -> list[str]:
        """The safetensors shards: from the index (each a file of this repo), else the top-level files."""
        if INDEX_NAME in top:
            where = f"{self.client.source}/{INDEX_NAME}"
            weight_map = self.fetch_json(INDEX_NAME).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConfigError(where, "no weight_map")
            shards = sorted({check_relative_name(v, where) for v in weight_map.values()})
            strangers = [name for name in shards if name not in self.commit.files]
            if strangers:  # never fetch, with the user's token, a file this repo does not hold
                raise HeaderError(where, f"names shard {strangers[0]!r}, which is not a file of this repo")
        else:
            shards = [f for f in top if f.endswith(".safetensors")]
        if not shards:
            if any(f.endswith(PICKLE_SUFFIXES) for f in top):
                raise pickle_refusal(self.client.source)
            raise SourceError(self.client.source, "no .safetensors weights in the repo")
        return shards

    def fetch_json(self, filename: str) -> dict:
        """A JSON file of the repo, read whole but never past the JSON cap."""
        body, _ = self.client.get(file_url(self.commit.model, self.commit.sha, filename), limit=MAX_JSON_BYTES)
        return parse_object(body, f"{self.client.source}/{filename}")

    def open_gguf(self, chosen: str | None, ggufs: list[str]) -> OpenedModel | CopyOf:
        """A GGUF in a Hub repo: the one named, or the repo's only one."""
        from lineage_scanner.readers.hub import HubGguf

        c = self.commit
        if chosen is None:
            if len(ggufs) != 1:
                raise SourceError(self.client.source,
                                  f"{len(ggufs)} .gguf files; name one: hf://{c.model}@{c.sha}/FILE.gguf")
            chosen = ggufs[0]
        elif chosen not in ggufs:
            raise SourceError(self.client.source, f"no file {chosen!r} in the repo")
        digest, copy = self.copy_of([chosen])
        if copy:
            return copy
        reader = HubGguf(self.client, c.model, c.sha, chosen)
        model = c.model if len(ggufs) == 1 else f"{c.model}/{chosen}"
        return OpenedModel(model, c.sha, f"{self.client.source}/{chosen}", reader.metadata, reader, c.declared_base,
                           c.declared_relation, digest)

