"""The Signature: one typed record per (model, revision), and how a checkpoint becomes one.

A signature carries the per-role std curves over depth (the seed method's input), the full per-layer
moments (long form, for everything later scoring needs), the architecture facts, provenance and the
lineage a model card declares. A model that fails becomes a signature too, with ``status`` and
``error`` set and no curves, so a batch never loses track of what it was asked to scan.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kernels import MomentsBackend
from scanner import __version__
from scanner.arch import from_config
from scanner.errors import ScanError
from scanner.evidence import invariants
from scanner.layouts import CURVE_ROLES, resolve
from scanner.lineage import embedding
from scanner.moments import LayerStat, measure
from scanner.sampling import SamplePlan
from scanner.sources import OpenedModel


@dataclass
class Signature:
    model: str
    revision: str
    source: str
    status: str = "ok"
    error: str | None = None
    format: str | None = None
    family: str | None = None
    architecture: str | None = None
    n_layers: int | None = None
    hidden_size: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    head_dim: int | None = None
    dtype: str | None = None
    params: int | None = None
    declared_base: list[str] = field(default_factory=list)
    declared_relation: str | None = None
    curves: dict[str, list[float]] = field(default_factory=dict)
    #: rescaling- and folding-invariant feature curves (see scanner.evidence)
    invariants: dict[str, list[float]] = field(default_factory=dict)
    embedding: list[float] | None = None
    layers: tuple[LayerStat, ...] = ()
    bytes_read: int = 0
    sampled: bool = False
    scanner_version: str = __version__
    scanned_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    scan_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, model: str, revision: str, source: str, exc: Exception) -> Signature:
        status = exc.status if isinstance(exc, ScanError) else "error"
        message = str(exc) if isinstance(exc, ScanError) else f"{source}: {exc.__class__.__name__}: {exc}"
        return cls(model, revision, source, status=status, error=message)


def curves_from(stats: tuple[LayerStat, ...], n_layers: int) -> dict[str, list[float]]:
    """Per-role std over layers 0..n_layers-1; NaN where a layer lacks the role."""
    curves = {role: [math.nan] * n_layers for role in CURVE_ROLES}
    for s in stats:
        if s.role in curves:
            curves[s.role][s.layer] = s.moments.std
    return {role: values for role, values in curves.items() if not all(math.isnan(v) for v in values)}


def build(opened: OpenedModel, backend: MomentsBackend, sample: SamplePlan | None = None) -> Signature:
    """Scan an opened checkpoint into a signature; raises ScanError on bad input."""
    facts = from_config(opened.config, opened.format, opened.source)
    tensors = opened.reader.tensors()
    layout = resolve(facts.family, tensors, facts.shape, opened.config, facts.n_layers, opened.source)
    result = measure(opened.reader, layout, backend, sample)
    curves = curves_from(result.stats, layout.n_layers)
    features = invariants(result.stats, layout.n_layers)
    return Signature(
        model=opened.model, revision=opened.revision, source=opened.source, format=opened.format,
        family=facts.family, architecture=facts.architecture, n_layers=layout.n_layers,
        hidden_size=facts.hidden_size, n_heads=facts.n_heads, n_kv_heads=facts.n_kv_heads,
        head_dim=facts.head_dim, dtype=result.dtype, params=sum(t.numel for t in tensors.values()),
        declared_base=opened.declared_base, declared_relation=opened.declared_relation,
        curves=curves, invariants=features, embedding=embedding(features),
        layers=result.stats, bytes_read=opened.reader.bytes_read, sampled=result.sampled,
    )
