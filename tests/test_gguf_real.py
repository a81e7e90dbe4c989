"""Real-shaped GGUF files (a 150,000-token vocabulary with scores, token types and merges, Qwen2.5-1.5B's
attention in Q4_K_M): the one-pass header and the tensors read from it agree with the ``gguf`` package's
GGUFReader, locally and over the Hub, and the Hub reader never fetches the arrays it skips."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.readers.base import TensorInfo
from lineage_scanner.readers.gguf_file import GgufFile
from lineage_scanner.readers.gguf_header import GGML_TYPES
from lineage_scanner.run.scan import scan_strict
from lineage_scanner.testing.gguf_files import QWEN25_1_5B, write_checkpoint
from lineage_scanner.testing.hub_server import HubStandIn, Repo

LAYERS = 2


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The file and the gguf package's reading of it (GGUFReader takes ~15 s of CPU on this header)."""
    path = write_checkpoint(tmp_path_factory.mktemp("real") / "qwen-q4_k_m.gguf", layers=LAYERS, scores=True)
    return path, GGUFReader(path)


def reference_metadata(reader: GGUFReader) -> dict:
    """GGUFReader's scalar and string fields, as the scan's metadata held them when GGUFReader parsed it."""
    fields = {name: field.contents() for name, field in reader.fields.items() if len(field.types) == 1}
    return {name: value for name, value in fields.items() if isinstance(value, (str, int, float, bool))}


def reference_tensors(reader: GGUFReader, path) -> dict[str, TensorInfo]:
    return {t.name: TensorInfo(t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape.tolist())), str(path),
                               int(t.data_offset), int(t.data_offset) + int(t.n_bytes)) for t in reader.tensors}


def reference_values(tensor) -> np.ndarray:
    if tensor.tensor_type.name in ("F32", "F16"):
        return np.asarray(tensor.data)
    return dequantize(tensor.data, tensor.tensor_type)


def test_the_type_table_is_the_gguf_packages():
    package = {int(t): (t.name, *GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}
    assert GGML_TYPES == package


def test_header_matches_gguf_reader(real):
    path, ref = real
    ours = GgufFile(path)
    assert ours.tensors() == reference_tensors(ref, path)
    assert list(ours.tensors()) == [t.name for t in ref.tensors]  # table order too
    assert ours.header.data_start == ref.data_offset
    assert ours.metadata == reference_metadata(ref)
    assert ours.metadata["qwen2.attention.head_count_kv"] == QWEN25_1_5B.kv_heads
    assert not any(key.startswith("tokenizer.ggml.tokens") for key in ours.metadata)  # arrays are never kept
    ours.close()


def test_tensors_match_gguf_reader_bit_for_bit(real):
    path, ref = real
    ours = GgufFile(path)
    for tensor in ref.tensors:
        want, got = reference_values(tensor), ours.read(tensor.name)
        assert got.shape == want.shape, tensor.name
        assert np.array_equal(got.view(np.uint8), np.ascontiguousarray(want).view(np.uint8)), tensor.name
        if got.ndim == 2:
            assert np.array_equal(np.concatenate([b for _, b in ours.read_blocks(tensor.name)]), got)
    ours.close()


def test_a_real_shaped_scan(real):
    path, _ = real
    _, sig = scan_strict(str(path), get_backend("cpu"), set())
    assert (sig.family, sig.format, sig.n_layers, sig.n_heads, sig.n_kv_heads) == ("qwen2", "gguf", LAYERS, 12, 2)
    assert sig.dtype == "Q4_K" and {s.role for s in sig.layers} >= {"q", "k", "v", "o", "q_bias", "attn_norm"}


def test_the_hub_reader_skips_fixed_arrays_unfetched(real, monkeypatch):
    """Over the Hub the header is read by range as the walk reaches it: the token types and scores (1.2 MB
    here) are skipped by their declared sizes and never fetched, the strings are walked, and the tensors
    are those of the local file."""
    from lineage_scanner.readers.gguf_header import header_end
    from lineage_scanner.readers.hub_gguf import HubGguf
    from lineage_scanner.readers.hub_http import HubClient

    path, ref = real
    with HubStandIn([Repo("acme/qwen-gguf", path.parent)]) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        reader = HubGguf(HubClient("hf://acme/qwen-gguf"), "acme/qwen-gguf", "main", path.name)
        header_bytes = hub.bytes_served[path.name]
        local = GgufFile(path)
        assert reader.tensors() == {n: TensorInfo(t.name, t.dtype, t.shape, reader.path, t.start, t.end)
                                    for n, t in local.tensors().items()}
        assert reader.metadata == local.metadata
        name = "blk.1.attn_v.weight"
        assert np.array_equal(reader.read(name), local.read(name))
        reader.close()
    skipped = QWEN25_1_5B.vocab * (4 + 4)  # token types (int32) and scores (float32)
    assert header_bytes <= header_end(path.read_bytes()) - skipped + 64 * 1024


def test_a_hub_scan_fetches_a_layers_attention_in_one_request(real, monkeypatch):
    """Over the Hub a scan equals the local one, and its small tensors are fetched ahead, a layer's norm, Q,
    K, V, O and biases (neighbours in the file) in one range request."""
    path, _ = real
    with HubStandIn([Repo("acme/qwen-gguf", path.parent)]) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        _, remote = scan_strict("hf://acme/qwen-gguf", get_backend("cpu"), set())
        requests = hub.requests[path.name]
    _, local = scan_strict(str(path), get_backend("cpu"), set())
    assert remote.curves == local.curves and remote.sketch and len(remote.sketch) == len(local.sketch)
    assert requests <= 10 + LAYERS  # the header's windows, then one range per layer
