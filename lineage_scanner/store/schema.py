"""The store's tables, derived from the records that fill them, in Arrow (to write) and DuckDB (to read).

``signatures`` comes from the :class:`Signature` dataclass itself: every field with a storable type is a
column (its ``column`` metadata names the storage type where the Python type leaves it open, ``None``
keeps a field out), so a field added to the record is a column without a second spelling. The other
tables are small and spelled once here. Arrow types are built on first use: reading the store through
DuckDB never imports pyarrow.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from datetime import datetime
from functools import cache

from lineage_scanner.layouts.families import CURVE_ROLES
from lineage_scanner.signature.record import EMBED_DIM, FEATURES, Signature

#: Bumped whenever a column is added; old files stay readable (columns they lack read as NULL).
#: 2: layers.std_se; 3: signatures.declared_relation; 4: invariants, layers.folded_std;
#: 5: layers.folded_kurtosis, invariants.fkurt_q/k/v; 6: signatures.layout_source, format names the
#: quantization scheme and family the architecture for GGUF files too; 7: signatures.sketch and
#: invariant_se, layers.kurtosis_se; 8: signatures.files, weights_digest, content_digest, identical_to;
#: 9: signatures.reason; 10: signatures.sketch_key, sketches at a store's keyed positions with circuit sketches
#: beside them
SCHEMA_VERSION = 10

#: storage kind -> DuckDB type; the Arrow type of each kind is in :func:`_arrow_type`
DUCKDB_TYPES = {
    "string": "VARCHAR", "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT", "float64": "DOUBLE",
    "bool": "BOOLEAN", "timestamp": "TIMESTAMP WITH TIME ZONE", "strings": "VARCHAR[]",
    "curves": "STRUCT(" + ", ".join(f"{r} DOUBLE[]" for r in CURVE_ROLES) + ")",
    "invariants": "STRUCT(" + ", ".join(f"{n} DOUBLE[]" for n in FEATURES) + ")",
    "embedding": f"FLOAT[{EMBED_DIM}]",
    # one entry per sketch of a matrix: its int8 codes and their scale (lineage_scanner.measure.sketch.SketchPart)
    "sketch": "STRUCT(layer INTEGER, role VARCHAR, kind VARCHAR, rows INTEGER, cols INTEGER, scale FLOAT, "
              "codes BLOB)[]",
}
_PYTHON_KINDS = {str: "string", int: "int64", float: "float64", bool: "bool", datetime: "timestamp",
                 list[str]: "strings"}


def _record_columns(cls) -> tuple[tuple[str, str], ...]:
    """(name, kind) per storable field of a dataclass, in field order."""
    namespace = vars(sys.modules[cls.__module__])
    columns = []
    for f in dataclasses.fields(cls):
        if "column" in f.metadata:
            kind = f.metadata["column"]
        else:
            hint = eval(f.type, namespace) if isinstance(f.type, str) else f.type  # postponed annotations
            if isinstance(hint, types.UnionType):  # X | None
                hint = next(a for a in typing.get_args(hint) if a is not type(None))
            kind = _PYTHON_KINDS[hint]
        if kind is not None:
            columns.append((f.name, kind))
    return tuple(columns)


TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "signatures": (*_record_columns(Signature), ("schema_version", "int16")),
    "layers": (
        ("scan_id", "string"), ("model", "string"), ("revision", "string"), ("layer", "int32"), ("role", "string"),
        ("numel", "int64"), ("mean", "float64"), ("std", "float64"), ("min", "float64"), ("max", "float64"),
        ("absmax", "float64"), ("skew", "float64"), ("kurtosis", "float64"), ("std_se", "float64"),
        ("folded_std", "float64"), ("folded_kurtosis", "float64"), ("kurtosis_se", "float64"),
    ),
    "catalog": (
        ("model", "string"), ("sha", "string"), ("last_modified", "timestamp"), ("params", "int64"),
        ("declared_base", "strings"), ("gated", "bool"), ("downloads", "int64"), ("listed_at", "timestamp"),
        # what a scan needs of a listed commit (lineage_scanner.sources.hub.HubCommit): no model-info call
        ("files", "strings"), ("config_json", "string"), ("declared_relation", "string"),
    ),
    # one row per complete Hub listing: its query and the newest last modification it saw (the next
    # listing of the same query stops there)
    "listings": (("query", "string"), ("high_water", "timestamp"), ("models", "int64"), ("listed_at", "timestamp")),
    # one row per derivation of a ``lineage graph`` run: a is the parent, b the child (names kept from the
    # first version, whose rows were undirected pairs); score is their closeness
    "edges": (
        ("a", "string"), ("b", "string"), ("score", "float64"), ("p_value", "float64"), ("kind", "string"),
        ("computed_at", "timestamp"), ("direction", "string"), ("note", "string"), ("evidence", "string"),
        ("log10_p", "float64"), ("declared", "bool"), ("family", "string"), ("runner_up", "string"),
        ("runner_up_score", "float64"),
    ),
}


#: Columns without which a file cannot belong to a table (the views key on them).
REQUIRED = {"signatures": ("model", "revision", "status", "scanned_at", "scan_id"),
            "layers": ("scan_id", "model", "revision", "layer", "role"),
            "catalog": ("model", "sha", "listed_at"), "edges": ("a", "b", "computed_at"),
            "listings": ("query", "listed_at")}
_INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}
_FLOATS = {"FLOAT", "DOUBLE"}


def compatible(found: str, expected: str) -> bool:
    """Whether a file's column type reads as the schema's (widths may differ, as across schema versions)."""
    def kind(t: str) -> str:
        t = t.upper()
        if t in _INTEGERS:
            return "int"
        if t in _FLOATS:
            return "float"
        if t.startswith("STRUCT"):
            return "struct"
        if t.endswith("]"):
            return "list:" + kind(t[: t.rindex("[")])
        return t
    return kind(found) == kind(expected)


def columns(table: str) -> list[str]:
    return [name for name, _ in TABLES[table]]


def duckdb_type(table: str, column: str) -> str:
    return DUCKDB_TYPES[dict(TABLES[table])[column]]


@cache
def arrow_schema(table: str):
    import pyarrow as pa

    return pa.schema([(name, _arrow_type(kind)) for name, kind in TABLES[table]])


def _arrow_type(kind: str):
    import pyarrow as pa

    simple = {"string": pa.string(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
              "float64": pa.float64(), "bool": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC"),
              "strings": pa.list_(pa.string()), "embedding": pa.list_(pa.float32(), EMBED_DIM),
              "sketch": pa.list_(pa.struct([("layer", pa.int32()), ("role", pa.string()), ("kind", pa.string()),
                                            ("rows", pa.int32()),
                                            ("cols", pa.int32()), ("scale", pa.float32()), ("codes", pa.binary())]))}
    if kind in simple:
        return simple[kind]
    names = CURVE_ROLES if kind == "curves" else FEATURES
    return pa.struct([(name, pa.list_(pa.float64())) for name in names])
