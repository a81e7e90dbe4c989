"""Errors with names: every error class lives in errors.py, and each way a safetensors header can be wrong
is its own kind, recorded in the error row's ``reason`` so that nobody has to match message text."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import lineage_scanner
from lineage_scanner import errors
from lineage_scanner.cli.main import main
from lineage_scanner.readers.local import SafetensorsFile
from lineage_scanner.run.batch import run_batch
from lineage_scanner.store.store import Store
from tests.helpers import raw_safetensors

F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

#: case -> (header, data bytes, length prefix or None, the kind the safetensors library names)
HEADERS = {
    "too_small": (None, b"", None, errors.HeaderTooSmall),
    "too_large": ({"w": F32}, bytes(8), 2**40, errors.HeaderTooLarge),
    "length_past_end": ({"w": F32}, bytes(8), 10_000, errors.InvalidHeaderLength),
    "not_utf8": (b'{"\xff": 1}', b"", None, errors.InvalidHeader),
    "not_json": (b"{nope", b"", None, errors.InvalidHeaderDeserialization),
    "not_an_object": ([1, 2, 3], b"", None, errors.InvalidHeaderDeserialization),
    "unknown_dtype": ({"w": {**F32, "dtype": "F7"}}, bytes(8), None, errors.InvalidHeaderDeserialization),
    "negative_dim": ({"w": {**F32, "shape": [-2]}}, bytes(8), None, errors.InvalidHeaderDeserialization),
    "offsets_reversed": ({"w": {**F32, "data_offsets": [8, 0]}}, bytes(8), None, errors.InvalidOffset),
    "overlap": ({"a": F32, "b": {**F32, "data_offsets": [4, 12]}}, bytes(12), None, errors.InvalidOffset),
    "gap": ({"a": F32, "b": {**F32, "data_offsets": [12, 20]}}, bytes(20), None, errors.InvalidOffset),
    "span_mismatch": ({"w": {**F32, "shape": [3]}}, bytes(8), None, errors.TensorInvalidInfo),
    "huge_dim": ({"w": {**F32, "shape": [2**62, 0]}}, bytes(8), None, errors.ValidationOverflow),
    "truncated_data": ({"w": F32}, bytes(4), None, errors.MetadataIncompleteBuffer),
    "trailing_bytes": ({"w": F32}, bytes(12), None, errors.MetadataIncompleteBuffer),
}


def write_case(path: Path, case: str) -> Path:
    header, data, length, _ = HEADERS[case]
    if header is None:
        path.write_bytes(b"\x10\x00")
        return path
    return raw_safetensors(path, header, data, length)


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_each_header_failure_is_its_own_kind(tmp_path, case):
    kind = HEADERS[case][3]
    path = write_case(tmp_path / "model.safetensors", case)
    with pytest.raises(errors.HeaderError) as caught:
        SafetensorsFile(path)
    assert type(caught.value) is kind and caught.value.status == "bad_header"
    assert caught.value.reason == kind.reason and str(caught.value).startswith(f"{path}: ")


def test_kinds_are_distinct_and_named():
    kinds = [k for k in vars(errors).values() if inspect.isclass(k) and issubclass(k, errors.HeaderError)
             and k is not errors.HeaderError]
    assert len({k.reason for k in kinds}) == len(kinds) >= 9
    assert all(k.reason == "".join(f"_{c.lower()}" if c.isupper() else c for c in k.__name__).lstrip("_")
               for k in kinds)


def test_error_rows_record_the_kind(tmp_path):
    cases = ["too_large", "overlap", "span_mismatch", "truncated_data"]
    sources = [str(write_case(tmp_path / f"{case}.safetensors", case)) for case in cases]
    store = Store(tmp_path / "db")
    summary = run_batch(sources, store, progress=False)
    assert summary.n_failed == len(cases)
    rows = dict(store.connect().execute("SELECT model, reason FROM errors WHERE status = 'bad_header'").fetchall())
    assert rows == {f"{case}.safetensors": HEADERS[case][3].reason for case in cases}


def test_an_unavailable_backend_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if Path("/dev/nvidiactl").exists():
        pytest.skip("a CUDA machine can run the triton backend")
    path = raw_safetensors(tmp_path / "m.safetensors", {"w": F32}, bytes(8))
    assert main(["scan", str(path), "--db", str(tmp_path / "db"), "--backend", "triton", "-q"]) == 1
    assert capsys.readouterr().err == ("Error: the triton backend needs a CUDA GPU (or TRITON_INTERPRET=1 to "
                                       "emulate one)\n")


#: Exceptions that are signals between two functions of one reader, never an error anyone sees.
SIGNALS = {("lineage_scanner/readers/gguf_header.py", "NeedMore"), ("lineage_scanner/readers/hub_http.py", "_Retry"),
           ("lineage_scanner/readers/hub_time.py", "Stalled")}


def test_every_error_class_is_in_errors_py():
    root = Path(lineage_scanner.__file__).parent
    elsewhere = set()
    for path in root.rglob("*.py"):
        relative = str(path.relative_to(root.parent))
        if relative == "lineage_scanner/errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    (b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")).endswith(("Error", "Exception"))
                    for b in node.bases):
                elsewhere.add((relative, node.name))
    assert elsewhere <= SIGNALS, elsewhere - SIGNALS
