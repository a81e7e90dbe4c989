"""What opening a source gives the scan: an :class:`OpenedModel` (identity, config, a reader), or for a Hub
commit whose weights another commit holds, a :class:`CopyOf` (nothing of it to read)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lineage_scanner.errors import UnsafeFormatError
from lineage_scanner.readers.base import Reader


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
    #: for a Hub commit whose ``config`` is the Hub's extract (no sizes): fetches config.json, which the Hub
    #: counts as a download, so only where the layout needs it (:mod:`lineage_scanner.layouts.derive`)
    config_file: Callable[[], dict] | None = None

    @property
    def format(self) -> str:
        return self.reader.format

    def close(self) -> None:
        self.reader.close()


@dataclass(frozen=True)
class CopyOf:
    """A Hub commit whose weights another commit holds: the same files (by their SHA-256: nothing read but
    what locates them) or the same tensors in other files (by the content digest, verified at fresh
    positions: see :mod:`lineage_scanner.readers.open_hub`)."""

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


def pickle_refusal(path: Path | str) -> UnsafeFormatError:
    return UnsafeFormatError(path, "pickle-based weights are refused (unpickling can run arbitrary code); "
                                   "convert the checkpoint to safetensors")
