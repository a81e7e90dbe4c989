"""Thousands of mutated safetensors and GGUF headers: each ends in a typed ScanError or a correct
signature; never another exception, a hang (pytest-timeout) or a runaway allocation (peak RSS)."""

from __future__ import annotations

import resource
import struct

import pytest
from gguf import GGMLQuantizationType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_scanner.errors import ScanError
from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.run.scan import scan_strict
from tests.conftest import write_llama
from tests.test_gguf import write_gguf

BACKEND = get_backend("cpu")
SETTINGS = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def mutations(header_len: int):
    edit = st.tuples(st.integers(0, header_len - 1), st.integers(0, 255))
    return st.tuples(
        st.lists(edit, min_size=1, max_size=6),
        st.one_of(st.none(), st.integers(0, 4096)),
        st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    )


def mutate(original: bytes, edits, cut, prefix) -> bytes:
    data = bytearray(original)
    for pos, value in edits:
        data[pos] = value
    if prefix is not None:
        data[:8] = struct.pack("<Q", prefix)
    if cut is not None:
        data = data[: max(0, len(data) - cut)]
    return bytes(data)


def scan_or_typed_error(path) -> None:
    try:
        scan_strict(str(path), BACKEND, set())
    except ScanError as exc:
        assert str(exc).startswith(str(path.parent)), exc


@pytest.fixture(scope="module")
def rss_guard():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 1024, f"peak RSS grew by {grown_mb:.0f} MB while fuzzing"


def test_mutated_safetensors_headers(tmp_path_factory, rss_guard):
    model = write_llama(tmp_path_factory.mktemp("fz") / "m", n_layers=2, hidden=32, heads=2, kv=1)
    weights = model / "model.safetensors"
    original = weights.read_bytes()
    header_len = 8 + struct.unpack("<Q", original[:8])[0]

    @SETTINGS
    @given(mutations(header_len))
    def check(m):
        weights.write_bytes(mutate(original, *m))
        scan_or_typed_error(weights)

    check()


def test_mutated_gguf_headers(tmp_path_factory, rss_guard):
    path = tmp_path_factory.mktemp("fzg") / "m.gguf"
    write_gguf(path, GGMLQuantizationType.Q8_0)
    original = path.read_bytes()
    header_len = original.index(b"blk.1.attn_output.weight") + 64  # metadata and tensor table

    @SETTINGS
    @given(mutations(header_len))
    def check(m):
        edits, cut, _ = m
        path.write_bytes(mutate(original, edits, cut, None))
        scan_or_typed_error(path)

    check()
