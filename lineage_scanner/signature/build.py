"""How an opened checkpoint becomes a :class:`Signature`: facts, layout, moments, features."""

from __future__ import annotations

from lineage_scanner.layouts.arch import from_config
from lineage_scanner.layouts.derive import complete_config
from lineage_scanner.layouts.resolve import resolve
from lineage_scanner.measure.kernels import MomentsBackend
from lineage_scanner.measure.moments import measure
from lineage_scanner.measure.sampling import SamplePlan
from lineage_scanner.measure.sketch import SketchKey
from lineage_scanner.readers.opened import OpenedModel
from lineage_scanner.signature.features import curves_from, embedding, invariant_errors, invariants
from lineage_scanner.signature.record import Signature


def build(opened: OpenedModel, backend: MomentsBackend, sample: SamplePlan | None = None,
          key: SketchKey | None = None) -> Signature:
    """Scan an opened checkpoint into a signature, its sketches at ``key``'s positions (a store's secret, else
    this process's own: see :class:`SketchKey`); raises ScanError on bad input."""
    key = key or SketchKey.of_process()
    tensors = opened.reader.tensors()
    # a Hub commit's config: no download counted, except that a key which reads everything (deep
    # verification's) fetches config.json for the head size the circuits need when the shapes do not tell it
    config = complete_config(opened.config, tensors, opened.config_file, heads=key.digest)
    facts = from_config(config, opened.format, opened.source)
    layout = resolve(facts.spec, tensors, facts.shape, config, facts.n_layers, opened.source)
    result = measure(opened.reader, layout, backend, sample, key)
    features = invariants(result.stats, layout.n_layers)
    return Signature(
        model=opened.model, revision=opened.revision, source=opened.source, format=opened.format,
        family=facts.family, architecture=facts.architecture, n_layers=layout.n_layers,
        hidden_size=facts.hidden_size, n_heads=facts.n_heads, n_kv_heads=facts.n_kv_heads,
        head_dim=facts.head_dim, dtype=result.dtype, params=sum(t.numel for t in tensors.values()),
        declared_base=opened.declared_base, declared_relation=opened.declared_relation,
        layout_source=layout.spec.source, curves=curves_from(result.stats, layout.n_layers),
        invariants=features, invariant_se=invariant_errors(result.stats, layout.n_layers),
        embedding=embedding(features), layers=result.stats, sketch=result.sketch,
        sketch_key=key.id, attention_digest=result.attention_digest,
        files=sorted({t.file.rsplit("/", 1)[-1] for t in tensors.values()}), weights_digest=opened.weights_digest,
        content_digest=opened.content_digest,
        bytes_read=opened.reader.bytes_read, sampled=result.sampled,
    )
