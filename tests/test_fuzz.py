"""Ten thousand mutated inputs of each kind (safetensors headers, GGUF metadata, config.json and index
files, Hub responses): each ends in a typed ScanError or a correct result; never another exception, a
hang (pytest-timeout) or a runaway allocation (peak RSS)."""

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
from tests.helpers import write_llama
from tests.test_gguf import write_gguf

pytestmark = pytest.mark.slow  # ten thousand inputs of each kind

BACKEND = get_backend("cpu")
SETTINGS = settings(
    max_examples=10_000,
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


@pytest.fixture(autouse=True)
def written_files_settle_at_once(monkeypatch):
    """Each example writes a file and opens it at once: the reader's wait for a file just written to settle
    (20 ms) would be most of the run; what is fuzzed here is what the file says, not when it was written."""
    monkeypatch.setattr("lineage_scanner.readers.local.SETTLE_NS", 0)


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


#: JSON a hostile repo could hold: any shape, odd numbers, deep nesting.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=30), inner, max_size=4),
    max_leaves=12,
)
CONFIG_KEYS = ["model_type", "architectures", "hidden_size", "num_attention_heads", "num_key_value_heads",
               "num_hidden_layers", "head_dim", "text_config", "quantization_config", "multi_query"]


def test_mutated_configs_and_indexes(tmp_path_factory, rss_guard):
    import json

    model = write_llama(tmp_path_factory.mktemp("fzc") / "m", n_layers=2, hidden=32, heads=2, kv=1)
    weights = model / "model.safetensors"
    shard = model / "model-00001-of-00001.safetensors"
    weights.rename(shard)
    good_config = json.loads((model / "config.json").read_text())
    index = model / "model.safetensors.index.json"

    @SETTINGS
    @given(st.dictionaries(st.sampled_from(CONFIG_KEYS), JSON, max_size=4), JSON, st.booleans(),
           st.one_of(st.none(), st.binary(max_size=40)))
    def check(changes, weight_map, nest_map, raw):
        config = {**good_config, **changes}
        (model / "config.json").write_bytes(raw if raw is not None else json.dumps(config).encode())
        index.write_text(json.dumps({"weight_map": {"t": shard.name, "u": weight_map} if nest_map else weight_map}))
        scan_or_typed_error(model)

    check()


def test_random_hub_responses(rss_guard, monkeypatch):
    """A server answering each range request with a random status, headers and a truncated or oversized
    body; the client returns exactly the bytes asked for or raises a typed error, quickly."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from lineage_scanner.readers.hub_http import HubClient

    monkeypatch.setattr("lineage_scanner.readers.hub_http.RETRIES", 1)
    monkeypatch.setattr("lineage_scanner.readers.hub_http.BACKOFF_S", 0.0)
    monkeypatch.setattr("lineage_scanner.readers.hub_http.MAX_RETRY_AFTER_S", 0.0)
    answer: dict = {}
    content = bytes(range(256)) * 16

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            a = answer
            self.send_response(a["status"])
            for key, value in a["headers"]:
                self.send_header(key, value)
            self.send_header("Content-Length", str(a["announced"]))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(a["body"])
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/file"
    header = st.tuples(st.sampled_from(["Content-Range", "Retry-After", "Content-Type", "Location"]),
                       st.one_of(st.text(alphabet="bytes0123456789-/* .,e", max_size=24),
                                 st.sampled_from(["*/4096", "bytes 0-99/4096", "bytes */4096", "100000", "-1",
                                                  "nan", "inf", "bytes 0-99/x"])))
    try:
        @SETTINGS
        @given(st.sampled_from([200, 206, 206, 206, 401, 403, 404, 416, 429, 500, 503]), st.lists(header, max_size=3),
               st.integers(0, 300), st.integers(-50, 50), st.integers(0, 200), st.integers(1, 200))
        def check(status, headers, served, lie, start, length):
            body = content[start:start + served]
            answer.update(status=status, headers=headers, body=body, announced=max(0, len(body) + lie))
            try:
                got, _ = HubClient("hf://fuzz/repo").get(url, start, start + length - 1)
            except ScanError:
                return
            assert got == body[: len(got)] and 0 < len(got) <= length  # never bytes it was not sent

        check()
    finally:
        server.shutdown()
        server.server_close()
