"""The Signature: one typed record per (model, revision), the unit every later stage reads.

A signature carries the per-role std curves over depth (the seed method's input), the invariant feature
curves the lineage engine scores (with their standard errors when sampled), the positional weight sketch
the same-shape test correlates, the full per-layer moments (``layers``, stored in their own long-form
table), the architecture facts, provenance and the lineage a model card declares. A model that fails
becomes a signature too, with ``status`` and ``error`` set and no curves, so a batch never loses track of
what it was asked to scan.

The store derives its Parquet schema from these fields (see :mod:`lineage_scanner.store.schema`): a new
field is a new column. ``column`` metadata names a storage type where the Python type leaves it open.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from lineage_scanner import __version__
from lineage_scanner.errors import ScanError
from lineage_scanner.sources import name_of

if TYPE_CHECKING:  # measured signatures carry them; stored ones are read without torch or numba
    from lineage_scanner.measure.records import LayerStat
    from lineage_scanner.measure.sketch import SketchPart


FEATURES = ("qk", "vo", "kurt_q", "kurt_k", "kurt_v", "kurt_o", "fkurt_q", "fkurt_k", "fkurt_v")
#: Points per feature in the fixed-length embedding the SQL pre-filter ranks by, and its features.
EMBED_POINTS = 32
EMBED_FEATURES = ("qk", "vo", "kurt_q", "kurt_k")
EMBED_DIM = EMBED_POINTS * len(EMBED_FEATURES)
#: The key id of sketches stored before keys existed (schema 8 and older: NULL), at positions anyone can
#: compute: evidence a forger could aim at.
PUBLIC_KEY = "public"


def _column(kind: str, default=None):
    return field(default=default, metadata={"column": kind})


@dataclass
class Signature:
    model: str
    revision: str
    source: str
    status: str = "ok"
    error: str | None = None
    #: the kind of failure within ``status``, where its error names one (a safetensors header's
    #: ``invalid_offset``, ``header_too_large``, ...: see :mod:`lineage_scanner.errors`)
    reason: str | None = None
    format: str | None = None
    family: str | None = None
    architecture: str | None = None
    n_layers: int | None = _column("int32")
    hidden_size: int | None = _column("int32")
    n_heads: int | None = _column("int32")
    n_kv_heads: int | None = _column("int32")
    head_dim: int | None = _column("int32")
    dtype: str | None = None
    params: int | None = None
    declared_base: list[str] = field(default_factory=list)
    declared_relation: str | None = None
    #: how the layout was found: "table" (a known family) or "name-patterns" (an unknown architecture)
    layout_source: str | None = None
    curves: dict[str, list[float]] = field(default_factory=dict, metadata={"column": "curves"})
    #: rescaling- and folding-invariant feature curves (see lineage_scanner.signature.features)
    invariants: dict[str, list[float]] = field(default_factory=dict, metadata={"column": "invariants"})
    #: the standard error of each invariant point (see lineage_scanner.signature.features.invariant_errors)
    invariant_se: dict[str, list[float]] = field(default_factory=dict, metadata={"column": "invariants"})
    embedding: list[float] | None = _column("embedding")
    layers: tuple[LayerStat, ...] = field(default=(), metadata={"column": None})  # the layers table
    #: each attention matrix's values at its store key's positions, and the circuit sketches
    #: (lineage_scanner.measure.sketch, lineage_scanner.measure.circuits)
    sketch: tuple[SketchPart, ...] = field(default=(), metadata={"column": "sketch"})
    #: the id of the key that placed the sketch (None in stores older than keys: positions anyone can
    #: compute); sketches compare only under one key
    sketch_key: str | None = None
    #: SHA-256 over every attention value, in float32 and nn.Linear's layout (whatever format stored them):
    #: taken by deep verification only (it reads them all), never stored
    attention_digest: str | None = field(default=None, metadata={"column": None})
    #: the checkpoint's weight files, by name, as its tensors' headers listed them
    files: list[str] = field(default_factory=list)
    #: SHA-256 over the weight files' own SHA-256s (the Hub's LFS oids, from model info), sorted: equal for
    #: exact re-uploads whatever their names; None where the hashes are unknown (local files)
    weights_digest: str | None = None
    #: SHA-256 over the first KB of each of layer 0's matrices (dtype, shape and bytes, in name order): equal
    #: for a re-sharded or re-headed copy, whose files' hashes differ; None where not taken (local files)
    content_digest: str | None = None
    #: "model@revision" of the stored signature this one copies: the same weights, none of their bytes read
    identical_to: str | None = None
    bytes_read: int = 0
    sampled: bool = False
    scanner_version: str = __version__
    scanned_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    scan_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def key(self) -> tuple[str, str]:
        return self.model, self.revision

    @classmethod
    def failed(cls, source: str, exc: ScanError) -> Signature:
        """The error row of a source that could not be scanned, named as far as the source text tells."""
        return cls(*name_of(source), source, status=exc.status, error=str(exc), reason=exc.reason)
