"""Open what a user names as a checkpoint with an immutable identity and a reader over its tensors: a
local checkpoint here, a Hub commit in :mod:`lineage_scanner.readers.open_hub`.

A local source is a directory holding ``config.json`` and safetensors or GGUF weights, a single
``.safetensors`` file, a ``model.safetensors.index.json``, or a ``.gguf`` file. Its identity is (model id,
revision): the id is the directory (or file stem) name, the revision the full SHA-256 of its config and of
every byte of its weight files (:meth:`lineage_scanner.readers.local.LocalFile.digest`), so an edit of any
byte, wherever it lies and whatever the file's mtime says, is a new revision (a digest of sampled bytes at
public positions let an edit between them keep the old revision, and with it a stale signature). It is
not truncated: 16 hex digits (64 bits) collide after about 2^32 tries, which an adversary can afford.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from pathlib import Path

from lineage_scanner.errors import ConfigError, SourceError
from lineage_scanner.readers.base import Reader
from lineage_scanner.readers.gguf_file import GgufFile
from lineage_scanner.readers.jsonfile import parse_object
from lineage_scanner.readers.local import ShardedSafetensors, inside, read_capped, regular
from lineage_scanner.readers.open_hub import HubJob, open_hub
from lineage_scanner.readers.opened import CopyOf, OpenedModel, pickle_refusal
from lineage_scanner.readers.quantized import dequantizing
from lineage_scanner.sources import INDEX_NAME, PICKLE_SUFFIXES, is_hub


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
        raise pickle_refusal(path)
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
            raise pickle_refusal(pickles[0])
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
    try:
        digest = hashlib.sha256(reader.fingerprint())
    except BaseException:
        reader.close()
        raise
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    return OpenedModel(model, digest.hexdigest(), str(path), config, reader, base)


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


def open_source(text: str, done: set[tuple[str, str]] | None = None, hub: HubJob | None = None
                ) -> OpenedModel | CopyOf | tuple[str, str]:
    """Open a local path or an ``hf://`` reference (see :func:`lineage_scanner.readers.open_hub.open_hub`:
    a Hub commit already in ``done`` gives just its key, one whose weights another commit holds a
    :class:`CopyOf`)."""
    if not is_hub(text):
        return open_local(text)
    return open_hub(text, done or set(), hub)
