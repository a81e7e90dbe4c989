"""Rows of the store's tables from the records, and records back from rows: the one place that knows how
a :class:`Signature` (and its per-layer moments) is laid out in Parquet, beside the schema that derives
the columns from the same record.
"""

from __future__ import annotations

import dataclasses

from lineage_scanner.signature.record import Signature
from lineage_scanner.store.schema import SCHEMA_VERSION, arrow_schema

#: What scoring reads of a stored signature (not its layers, provenance or errors).
SCORED = ("model", "revision", "source", "n_layers", "hidden_size", "family", "format", "dtype", "curves",
          "invariants", "invariant_se", "declared_base", "embedding", "sketch", "sketch_key",
          "weights_digest")
STORED = [f.name for f in dataclasses.fields(Signature) if f.metadata.get("column", "") is not None]
#: What :meth:`Store.load` reads: every stored column the ``signatures`` view keeps (an ok scan has no error).
PROVENANCE = [name for name in STORED if name != "error"]


def signature_table(sigs: list[Signature]):
    """One row per signature (curves, features and sketch included; layers are their own table)."""
    import pyarrow as pa

    rows = [{**{name: getattr(s, name) for name in STORED}, "schema_version": SCHEMA_VERSION} for s in sigs]
    for row in rows:
        for nested in ("curves", "invariants", "invariant_se"):
            row[nested] = row[nested] or None
        row["sketch"] = [{"layer": p.layer, "role": p.role, "kind": p.kind, "rows": p.rows, "cols": p.cols,
                          **dict(zip(("scale", "codes"), p.codes()))} for p in row["sketch"]] or None
    return pa.Table.from_pylist(rows, schema=arrow_schema("signatures"))


def layer_table(sigs: list[Signature]):
    """The long form: one row per signature x layer x role."""
    import pyarrow as pa

    rows = []
    for s in sigs:
        for stat in s.layers:
            m = stat.moments
            rows.append({
                "scan_id": s.scan_id, "model": s.model, "revision": s.revision, "layer": stat.layer,
                "role": stat.role, "numel": m.count, "mean": m.mean, "std": m.std, "min": m.min,
                "max": m.max, "absmax": m.absmax, "skew": m.skew, "kurtosis": m.kurtosis,
                "std_se": stat.std_se, "folded_std": stat.folded_std, "folded_kurtosis": stat.folded_kurtosis,
                "kurtosis_se": stat.kurtosis_se,
            })
    return pa.Table.from_pylist(rows, schema=arrow_schema("layers"))


def signatures_from(names: list[str], rows) -> list[Signature]:
    """Signatures (no layers) from rows whose columns are ``names``; absent nested values dropped."""
    out = []
    for row in rows:
        values = dict(zip(names, row))
        for nested in ("curves", "invariants", "invariant_se"):
            if nested in values:
                values[nested] = {k: v for k, v in (values[nested] or {}).items() if v is not None}
        if values.get("sketch"):
            from lineage_scanner.measure.sketch import SketchPart  # numpy: only once a sketch is read

            values["sketch"] = tuple(SketchPart.from_codes(**p) for p in values["sketch"])
        elif "sketch" in values:
            values["sketch"] = ()
        for listed in ("declared_base", "files"):
            if listed in values:
                values[listed] = list(values[listed] or [])
        for counted in ("bytes_read", "sampled"):  # NULL in files older than the column: the field's default
            if counted in values and values[counted] is None:
                del values[counted]
        if values.get("embedding") is not None:
            values["embedding"] = list(values["embedding"])
        out.append(Signature(**values))
    return out
