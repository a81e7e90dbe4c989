"""Open a Hub commit for scanning: its identity, its copies found before any weight is read, then a reader.

What the Hub says of the commit comes from the listing the source was listed in (a
:class:`ListedSource`: no API call of its own) or else from model info (one API call). Then, in order:

- **Stored already** (or opened already by this job under another name, a renamed repo): skipped.
- **Exact copy**: the weight files' SHA-256s (model info's LFS oids, or the ``X-Linked-Etag`` each file's
  resolve answers with: one resolve per weight file, which reading the file needs anyway) match another
  commit's: a :class:`CopyOf` it, not one weight byte read. Complete evidence: whole-file hashes.
- **Re-sharded or re-headed copy**: the content digest (a few KB of layer 0, a fixed and public part of
  the weights) only nominates a candidate: the candidate and the original are read at fresh positions drawn
  now from a secret random source (:mod:`lineage_scanner.readers.fresh`) and must agree bit for bit, with
  the same tensors, before the copy is recorded; else the commit is scanned like any other.
- **Otherwise** its safetensors shards (or its GGUF file) are opened for range reads. Its config is the
  Hub's extract (family, architectures, quantization); config.json, whose every GET or HEAD the Hub counts
  as a download, is fetched only where the layout needs what only it holds (:mod:`lineage_scanner.layouts.derive`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lineage_scanner.errors import ConfigError, HeaderError, ScanError, SourceError
from lineage_scanner.readers.fresh import FreshComparison, compare_at_fresh_positions
from lineage_scanner.readers.hub_http import HubClient
from lineage_scanner.readers.hub_info import model_info
from lineage_scanner.readers.hub_safetensors import HubSafetensors, ReadAhead
from lineage_scanner.readers.hub_time import Timeouts
from lineage_scanner.readers.hub_urls import file_url
from lineage_scanner.readers.jsonfile import MAX_JSON_BYTES, parse_object
from lineage_scanner.readers.opened import CopyOf, OpenedModel, pickle_refusal
from lineage_scanner.readers.quantized import dequantizing
from lineage_scanner.readers.shared import Shared
from lineage_scanner.sources import INDEX_NAME, PICKLE_SUFFIXES
from lineage_scanner.sources.hub import HubCommit, HubRef, ListedSource
from lineage_scanner.sources.names import SHA, check_relative_name

Key = tuple[str, str]
#: A complete set of shards, as the Hub's tools name them: the index is then not needed to find them.
SHARD = re.compile(r"(.+)-(\d{5})-of-(\d{5})\.safetensors")
#: Range requests (and weight files located) at once in a process.
RANGE_THREADS = 16


@dataclass
class HubJob:
    """What the Hub scans of one process share: the job's rate budget and copy index (:mod:`shared`; on Ray,
    handles to the job's actor), the process's read-ahead budget in bytes, and the time limits."""

    budget: Shared | None = None
    copies: Shared | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    read_ahead: ReadAhead = field(default_factory=ReadAhead)
    #: the process's range-request threads, shared by the models it scans at once (starting threads for
    #: every model costs a small model's scan a tenth of its time)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(RANGE_THREADS,
                                                                                thread_name_prefix="range"))

    def client(self, source: str) -> HubClient:
        return HubClient(source, self.budget, self.timeouts)


def weights_digest(sha256s: list[str]) -> str:
    """One digest for a set of weight files, from their own SHA-256s (order and names do not count)."""
    return hashlib.sha256("\n".join(sorted(sha256s)).encode()).hexdigest()


def open_hub(text: str, done: set[Key], job: HubJob | None = None) -> OpenedModel | CopyOf | Key:
    """Open ``hf://org/name[@revision][/file]`` (see the module); just the key of a commit already in
    ``done``, or opened already by this job under another name."""
    job = job or HubJob()
    ref = HubRef.parse(text)
    if ref.revision and SHA.fullmatch(ref.revision) and (ref.repo_id, ref.revision) in done:
        return ref.repo_id, ref.revision  # a pinned commit already scanned: not one request
    client = job.client(str(text))
    commit = text.commit if isinstance(text, ListedSource) else model_info(ref, client)
    opening = _Opening(commit, client, job, done)
    if opening.seen():
        return opening.key
    return opening.open(ref.filename)


class _Opening:
    """One commit being opened: its files, its copies, its reader."""

    def __init__(self, commit: HubCommit, client: HubClient, job: HubJob, done: set[Key]):
        self.commit, self.client, self.job, self.done = commit, client, job, done
        client.source = commit.source

    @property
    def key(self) -> Key:
        return self.commit.model, self.commit.sha

    def seen(self) -> bool:
        """Stored already, or opened already in this job (a commit listed under two names is scanned once)."""
        copies = self.job.copies
        return self.key in self.done or (copies is not None and not copies.call("first_visit", self.key))

    def renamed(self) -> bool:
        """Whether a redirect of the Hub announced the repo's new name (a listing's name can be a day old):
        the commit is then kept under it (its source, the name listed: the store's work list knows it read
        that one), and whether it is stored or opened already under it."""
        new = self.client.renamed
        if new is None or new == self.commit.model:
            return False
        self.commit = dataclasses.replace(self.commit, model=new)  # the source stays what was listed and read
        return self.seen()

    def open(self, filename: str | None) -> OpenedModel | CopyOf | Key:
        c = self.commit
        ggufs = [f for f in c.files if f.endswith(".gguf")]
        if filename or (ggufs and not any(f.endswith(".safetensors") for f in c.files)):
            return self.open_gguf(filename, ggufs)
        top = [f for f in c.files if "/" not in f]
        shards = self.shards(top)
        digest = self.digest(shards)
        if self.renamed():
            return self.key
        original = self.claim(digest) if digest else None  # an exact copy of the commit that claimed it first
        if original is not None:
            return self.copy(original, digest, shards)
        remote = HubSafetensors(self.client, self.commit.model, c.sha, shards, self.job.read_ahead, self.job.pool)
        try:
            content = remote.content_digest()
            nominee = self.claim(f"content:{content}") if content else None
            if nominee is not None and self.verified(nominee, remote).equal:
                remote.close()
                return self.copy(nominee, digest, shards, content)
            config, whole = dict(c.config), False
            reader = dequantizing(remote, config)
            if reader is not remote and "quantization_config" not in config and "config.json" in top:
                config, whole = self.fetch_json("config.json"), True  # packed weights: bits and groups are there
                reader = dequantizing(remote, config)
        except BaseException:
            remote.close()
            raise
        return OpenedModel(self.commit.model, c.sha, self.client.source, config, reader, c.declared_base,
                           c.declared_relation, digest, content, config_file=None if whole else self.config_file(top))

    def config_file(self, top: list[str]):
        """What fetches the whole config when the layout needs it: config.json (a download, counted by the
        Hub), or the Hub's extract again where the repo has none."""
        if "config.json" in top:
            return lambda: self.fetch_json("config.json")
        return lambda: dict(self.commit.config)

    def shards(self, top: list[str]) -> list[str]:
        """The safetensors shards: a complete ``*-0000i-of-0000n`` set as listed, else from the index (each a
        file of this repo), else the top-level files."""
        weights = sorted(f for f in top if f.endswith(".safetensors"))
        if INDEX_NAME in top and not _complete_set(weights):
            where = f"{self.client.source}/{INDEX_NAME}"
            weight_map = self.fetch_json(INDEX_NAME).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConfigError(where, "no weight_map")
            weights = sorted({check_relative_name(v, where) for v in weight_map.values()})
            strangers = [name for name in weights if name not in self.commit.files]
            if strangers:  # never fetch, with the user's token, a file this repo does not hold
                raise HeaderError(where, f"names shard {strangers[0]!r}, which is not a file of this repo")
        if not weights:
            if any(f.endswith(PICKLE_SUFFIXES) for f in top):
                raise pickle_refusal(self.client.source)
            raise SourceError(self.client.source, "no .safetensors weights in the repo")
        return weights

    def digest(self, weights: list[str]) -> str | None:
        """The weight files' digest, from each file's SHA-256: model info's, or the one its resolve's redirect
        states (the file is then resolved already for the reads to come; a redirect may also announce a
        rename); None where one is unknown."""
        if all(f in self.commit.lfs for f in weights):
            return weights_digest([self.commit.lfs[f] for f in weights])
        urls = [file_url(self.commit.model, self.commit.sha, f) for f in weights]
        located = [self.client.locate(urls[0])] if len(urls) == 1 else list(self.job.pool.map(self.client.locate, urls))
        return None if any(x is None for x in located) else weights_digest([x.sha256 for x in located])

    def claim(self, digest: str) -> Key | None:
        """The commit that holds weights ``digest``, if another does (this one claims it otherwise)."""
        copies = self.job.copies
        return None if copies is None else copies.call("claim", digest, self.key)

    def copy(self, original: Key, digest: str | None, weights: list[str], content: str | None = None) -> CopyOf:
        c = self.commit
        return CopyOf(c.model, c.sha, self.client.source, tuple(original), digest, c.declared_base,
                      c.declared_relation, self.client.bytes_read, sorted(weights), content)

    def verified(self, nominee: Key, candidate: HubSafetensors) -> FreshComparison:
        """The candidate against the commit its content digest nominated, at fresh secret positions spread
        over every attention matrix, with the same tensors (names, dtypes, shapes) required. Nothing found
        equal where the original cannot be opened."""
        original: HubSafetensors | None = None
        try:
            client = self.job.client(f"hf://{nominee[0]}@{nominee[1]}")
            info = model_info(HubRef(*nominee), client)
            shards = _Opening(info, client, self.job, set()).shards([f for f in info.files if "/" not in f])
            original = HubSafetensors(client, info.model, info.sha, shards, self.job.read_ahead, self.job.pool)
            theirs, ours = original.tensors(), candidate.tensors()
            if {n: (t.dtype, t.shape) for n, t in theirs.items()} != {n: (t.dtype, t.shape) for n, t in ours.items()}:
                return FreshComparison(0, 0, 0, "the tensors differ")
            return compare_at_fresh_positions(candidate, original, _attention(ours))
        except ScanError:
            return FreshComparison(0, 0, 0)
        finally:
            if original is not None:
                original.close()

    def fetch_json(self, filename: str) -> dict:
        """A JSON file of the repo, read whole but never past the JSON cap."""
        body, _ = self.client.get(file_url(self.commit.model, self.commit.sha, filename), limit=MAX_JSON_BYTES)
        return parse_object(body, f"{self.client.source}/{filename}")

    def open_gguf(self, chosen: str | None, ggufs: list[str]) -> OpenedModel | CopyOf | Key:
        """A GGUF in a Hub repo: the one named, or the repo's only one."""
        from lineage_scanner.readers.hub_gguf import HubGguf

        c = self.commit
        if chosen is None:
            if len(ggufs) != 1:
                raise SourceError(self.client.source,
                                  f"{len(ggufs)} .gguf files; name one: hf://{c.model}@{c.sha}/FILE.gguf")
            chosen = ggufs[0]
        elif chosen not in ggufs:
            raise SourceError(self.client.source, f"no file {chosen!r} in the repo")
        digest = self.digest([chosen])
        if self.renamed():
            return self.key
        original = self.claim(digest) if digest else None
        if original is not None:
            return self.copy(original, digest, [chosen])
        reader = HubGguf(self.client, self.commit.model, c.sha, chosen)
        model = self.commit.model if len(ggufs) == 1 else f"{self.commit.model}/{chosen}"
        return OpenedModel(model, c.sha, f"{self.client.source}/{chosen}", reader.metadata, reader, c.declared_base,
                           c.declared_relation, digest)


def _complete_set(names: list[str]) -> bool:
    """Whether ``names`` are exactly the shards 1..n of one ``PREFIX-0000i-of-0000n.safetensors`` set."""
    found = [SHARD.fullmatch(n) for n in names]
    if not names or not all(found):
        return False
    prefixes, totals = {m.group(1) for m in found}, {int(m.group(3)) for m in found}
    return len(prefixes) == 1 and totals == {len(names)} and {int(m.group(2)) for m in found} == set(
        range(1, len(names) + 1))


def _attention(tensors: dict) -> list[str]:
    """The matrices a copy check reads: every attention matrix (any family's naming), else every matrix."""
    matrices = sorted(n for n, t in tensors.items() if len(t.shape) == 2)
    attention = [n for n in matrices if re.search(r"attn|attention", n)]
    return attention or matrices
