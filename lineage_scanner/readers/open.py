"""Open what a user names as a checkpoint with an immutable identity and a reader over its tensors.

A local source is a directory holding ``config.json`` and safetensors or GGUF weights, a single
``.safetensors`` file, a ``model.safetensors.index.json``, or a ``.gguf`` file. Its identity is (model id,
revision): the id is the directory (or file stem) name, the revision a hash of the headers and config,
so a changed checkpoint gets a new revision without its data being read.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from lineage_scanner.errors import ConfigError, HeaderError, SourceError, UnsafeFormatError
from lineage_scanner.readers.base import Reader
from lineage_scanner.readers.gguf_file import GgufFile
from lineage_scanner.readers.jsonfile import parse_object
from lineage_scanner.readers.local import ShardedSafetensors, inside, read_capped, regular
from lineage_scanner.readers.quantized import dequantizing
from lineage_scanner.readers.shared import Shared
from lineage_scanner.sources import INDEX_NAME, PICKLE_SUFFIXES, is_hub
from lineage_scanner.sources.names import check_relative_name


@dataclass
class OpenedModel:
    """A checkpoint ready to scan: identity, config and a reader over its tensors."""

    model: str
    revision: str
    source: str
    config: dict
    reader: Reader
    declared_base: list[str] = field(default_factory=list)
    #: the card's ``base_model_relation`` (finetune, quantized, merge, adapter), when it declares one
    declared_relation: str | None = None
    #: see :attr:`lineage_scanner.signature.record.Signature.weights_digest` and ``content_digest``
    weights_digest: str | None = None
    content_digest: str | None = None

    @property
    def format(self) -> str:
        return self.reader.format

    def close(self) -> None:
        self.reader.close()


def open_local(text: str | Path) -> OpenedModel:
    """Open a local checkpoint; raises a :class:`lineage_scanner.errors.ScanError` naming the file at fault."""
    path = Path(text).expanduser()
    if not path.exists():
        raise SourceError(path, "no such file or directory")
    path = path.resolve()  # a link the user named is followed: naming it is consent
    if path.is_dir():
        return _open_directory(path)
    regular(path)
    name = path.name
    if name.endswith(PICKLE_SUFFIXES):
        raise _pickle_refusal(path)
    if name.endswith(".gguf"):
        reader = GgufFile(path)
        return _opened(path.stem, path, reader.metadata, reader, [])
    if name.endswith(".index.json"):
        config = _config_beside(path)
        reader = dequantizing(ShardedSafetensors.from_index(path), config)
        return _opened(path.parent.name, path, config, reader, declared_bases(path.parent))
    if name.endswith(".safetensors"):
        config = _config_beside(path)
        reader = dequantizing(ShardedSafetensors([path]), config)
        return _opened(path.stem, path, config, reader, declared_bases(path.parent))
    raise SourceError(path, "not a checkpoint (expected a directory, .safetensors, "
                            f"{INDEX_NAME} or .gguf)")


def _open_directory(path: Path) -> OpenedModel:
    """A model directory. Its entries are checked before use: only regular files, none leading out."""
    entries = sorted(p for p in path.iterdir() if not stat.S_ISDIR(p.lstat().st_mode))
    for entry in entries:
        if entry.name.endswith((".safetensors", ".gguf", ".json")):
            inside(entry, path)
    if not entries:
        raise SourceError(path, "empty directory")
    ggufs = [p for p in entries if p.name.endswith(".gguf")]
    shards = [p for p in entries if p.name.endswith(".safetensors")]
    index = path / INDEX_NAME
    if not shards and not ggufs:
        pickles = [p for p in entries if p.name.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise _pickle_refusal(pickles[0])
        raise SourceError(path, "no .safetensors or .gguf weights in directory")
    if not shards:
        if len(ggufs) > 1:
            raise SourceError(path, f"{len(ggufs)} .gguf files; name the one to scan")
        reader = GgufFile(ggufs[0])
        return _opened(path.name, path, reader.metadata, reader, declared_bases(path))
    config = _read_config(path / "config.json")
    reader = dequantizing(ShardedSafetensors.from_index(index) if index.is_file() else ShardedSafetensors(shards),
                          config)
    return _opened(path.name, path, config, reader, declared_bases(path))


def _opened(model: str, path: Path, config: dict, reader: Reader, base: list[str]) -> OpenedModel:
    digest = hashlib.sha256(reader.fingerprint())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    return OpenedModel(model, digest.hexdigest()[:16], str(path), config, reader, base)


def _pickle_refusal(path: Path) -> UnsafeFormatError:
    return UnsafeFormatError(path, "pickle-based weights are refused (unpickling can run arbitrary code); "
                                   "convert the checkpoint to safetensors")


def _read_config(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(path, "config.json missing")
    return parse_object(read_capped(path, path.parent), str(path))


def _config_beside(weights: Path) -> dict:
    """A lone weights file may sit in a model directory; without a config the layout infers sizes."""
    config = weights.parent / "config.json"
    return _read_config(config) if config.is_file() else {}


#: The front matter of a model card: a YAML block between two ``---`` lines at the top of README.md.
FRONT_MATTER = re.compile(rb"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
#: Bytes of a card read for its front matter (the rest is prose).
CARD_BYTES = 64 << 10


def declared_bases(directory: Path) -> list[str]:
    """``base_model`` declared in the model card's YAML front matter (README.md), as a list. Parsed here
    (a regex and ``yaml.safe_load``) rather than by huggingface_hub's card module, whose import alone
    costs a scan 0.17 s."""
    readme = directory / "README.md"
    if not readme.is_file():
        return []
    with open(inside(readme, directory), "rb") as f:
        match = FRONT_MATTER.match(f.read(CARD_BYTES))
    if not match:
        return []
    import yaml

    try:
        meta = yaml.safe_load(match.group(1).decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):  # a card with broken YAML declares nothing; the weights scan
        return []
    return _as_list(meta.get("base_model")) if isinstance(meta, dict) else []


def _as_list(base: object) -> list[str]:
    """``base_model`` may be one id or a list of them (merges)."""
    if not base:
        return []
    return [base] if isinstance(base, str) else [str(b) for b in base]


@dataclass(frozen=True)
class CopyOf:
    """A Hub commit whose weights another commit holds: the same files (by their SHA-256: nothing read but
    model info) or the same tensors in other files (by the content digest: a few KB read)."""

    model: str
    revision: str
    source: str
    original: tuple[str, str]
    weights_digest: str | None
    declared_base: list[str]
    declared_relation: str | None
    bytes_read: int
    files: list[str]
    content_digest: str | None = None


def open_source(text: str, done: set[tuple[str, str]] | None = None, copies: Shared | None = None
                ) -> OpenedModel | CopyOf | tuple[str, str]:
    """Open a local path or an ``hf://`` reference; for a Hub commit already in ``done``, just its key, and
    for one whose weight files another commit holds (``copies``, a shared
    :class:`lineage_scanner.readers.shared.CopyIndex`), a :class:`CopyOf`."""
    if not is_hub(text):
        return open_local(text)
    return open_hub(str(text), done or set(), copies)


def weights_digest(sha256s: list[str]) -> str:
    """One digest for a set of weight files, from their own SHA-256s (order and names do not count)."""
    return hashlib.sha256("\n".join(sorted(sha256s)).encode()).hexdigest()


def open_hub(text: str, done: set[tuple[str, str]], copies: Shared | None = None
             ) -> OpenedModel | CopyOf | tuple[str, str]:
    """Resolve ``hf://org/name[@revision]`` to its commit and open its safetensors by range reads."""
    from lineage_scanner.readers.hub import HubClient, HubSafetensors, fetch_json, resolve
    from lineage_scanner.sources.hub import HubRef

    ref = HubRef.parse(text)
    if ref.revision and len(ref.revision) == 40 and (ref.repo_id, ref.revision) in done:
        return ref.repo_id, ref.revision  # a pinned commit already scanned: not one request
    client = HubClient(text)
    info = resolve(ref, client)
    sha = info.sha
    if (info.id, sha) in done or (copies is not None and not copies.call("first_visit", (info.id, sha))):
        return info.id, sha  # stored, or opened already in this job (under another name)
    client.source = f"hf://{info.id}@{sha}"
    files = [s.rfilename for s in info.siblings or []]
    lfs = {s.rfilename: s.lfs.sha256 for s in info.siblings or [] if s.lfs is not None and s.lfs.sha256}
    card = info.card_data.to_dict() if info.card_data else {}
    declared = _as_list(card.get("base_model"))
    relation = card.get("base_model_relation")

    def copy_of(weights: list[str]) -> tuple[str | None, CopyOf | None]:
        """The weights' digest, and a CopyOf where another commit holds the same files (else read them)."""
        if not weights or not all(f in lfs for f in weights):
            return None, None
        digest = weights_digest([lfs[f] for f in weights])
        original = copies.call("claim", digest, (info.id, sha)) if copies is not None else None
        if original is None:
            return digest, None
        return digest, CopyOf(info.id, sha, client.source, tuple(original), digest, declared, relation,
                              client.bytes_read, sorted(weights))

    ggufs = [f for f in files if f.endswith(".gguf")]
    if ref.filename or (ggufs and not any(f.endswith(".safetensors") for f in files)):
        digest, copy = copy_of([ref.filename or ggufs[0]] if ref.filename or len(ggufs) == 1 else [])
        if copy:
            return copy
        opened = _open_hub_gguf(client, info.id, sha, ref.filename, ggufs, declared)
        opened.declared_relation, opened.weights_digest = relation, digest
        return opened
    top = [f for f in files if "/" not in f]
    if INDEX_NAME in top:
        index = fetch_json(client, info.id, sha, INDEX_NAME)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConfigError(f"{client.source}/{INDEX_NAME}", "no weight_map")
        where = f"{client.source}/{INDEX_NAME}"
        shards = sorted({check_relative_name(v, where) for v in weight_map.values()})
        strangers = [name for name in shards if name not in files]
        if strangers:  # never fetch, with the user's token, a file this repo does not hold
            raise HeaderError(where, f"names shard {strangers[0]!r}, which is not a file of this repo")
    else:
        shards = [f for f in top if f.endswith(".safetensors")]
    if not shards:
        if any(f.endswith(PICKLE_SUFFIXES) for f in top):
            raise _pickle_refusal(client.source)
        raise SourceError(client.source, "no .safetensors weights in the repo")
    digest, copy = copy_of(shards)
    if copy:
        return copy
    remote = HubSafetensors(client, info.id, sha, shards)
    content = remote.content_digest()  # a re-sharded or re-headed copy: other file hashes, the same weights
    original = copies.call("claim", f"content:{content}", (info.id, sha)) if copies is not None and content else None
    if original is not None:
        remote.close()
        return CopyOf(info.id, sha, client.source, tuple(original), digest, declared, relation, client.bytes_read,
                      sorted(shards), content)
    config = fetch_json(client, info.id, sha, "config.json") if "config.json" in top else {}
    reader = dequantizing(remote, config)
    return OpenedModel(info.id, sha, client.source, config, reader, declared, relation, digest, content)


def _open_hub_gguf(client, repo_id: str, sha: str, chosen: str | None, ggufs: list[str], declared: list[str]
                   ) -> OpenedModel:
    """A GGUF in a Hub repo: the one named after the repo id, or the repo's only one."""
    from lineage_scanner.readers.hub_gguf import HubGguf

    if chosen is None:
        if len(ggufs) != 1:
            raise SourceError(client.source, f"{len(ggufs)} .gguf files; name one: hf://{repo_id}@{sha}/FILE.gguf")
        chosen = ggufs[0]
    elif chosen not in ggufs:
        raise SourceError(client.source, f"no file {chosen!r} in the repo")
    reader = HubGguf(client, repo_id, sha, chosen)
    model = repo_id if len(ggufs) == 1 else f"{repo_id}/{chosen}"
    return OpenedModel(model, sha, f"{client.source}/{chosen}", reader.metadata, reader, declared)
