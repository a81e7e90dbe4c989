"""GGUF: every quant type the gguf package can dequantize is read and measured like the reference; the
compiled decoders give the reference's exact bits."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize

from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.readers import ggml_quants
from lineage_scanner.readers.ggml_quants import DECODED
from lineage_scanner.readers.open import open_local
from lineage_scanner.run.scan import scan_strict

TYPES = [
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "IQ4_NL",
    "IQ4_XS",
]
ROWS, COLS = 16, 256


def write_gguf(path, qtype: GGMLQuantizationType, seed: int = 0, heads: int = 4):
    """Two layers of attention in ``qtype``. Quantized payloads are random bytes below 0x3C, so every
    fp16 scale inside them is finite; the reference is the gguf package's own dequantizer."""
    rng = np.random.default_rng(seed)
    block, type_size = GGML_QUANT_SIZES[qtype]
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_embedding_length(COLS)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    expected = {}
    for i in range(2):
        for role, name in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output")):
            if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                data = (rng.standard_normal((ROWS, COLS)) * 0.02).astype(
                    np.float32 if qtype.name == "F32" else np.float16
                )
                writer.add_tensor(f"blk.{i}.{name}.weight", data)
                values = data
            else:
                data = rng.integers(0, 0x3C, (ROWS, COLS // block * type_size), dtype=np.uint8)
                writer.add_tensor(f"blk.{i}.{name}.weight", data, raw_dtype=qtype)
                values = dequantize(data, qtype)
            expected[(i, role)] = np.asarray(values, dtype=np.float64)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.mark.parametrize("name", TYPES)
def test_quant_types_match_reference(tmp_path, name):
    qtype = GGMLQuantizationType[name]
    path = tmp_path / f"m-{name}.gguf"
    expected = write_gguf(path, qtype)
    _, sig = scan_strict(str(path), get_backend("cpu"), set())
    assert sig.family == "llama" and sig.format == "gguf" and sig.architecture == "llama" and sig.dtype == name
    got = {(s.layer, s.role): s.moments for s in sig.layers}
    for key, values in expected.items():
        assert got[key].count == values.size
        assert got[key].std == pytest.approx(values.std(ddof=1), rel=1e-6)
        assert got[key].absmax == np.abs(values).max()


def test_identity_is_stable_and_content_addressed(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    write_gguf(a, GGMLQuantizationType.Q8_0, seed=1)
    write_gguf(b, GGMLQuantizationType.Q8_0, seed=1)
    ra, rb = open_local(a), open_local(b)
    assert ra.model == "a" and ra.revision == rb.revision


def test_changed_weights_change_the_revision(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    write_gguf(a, GGMLQuantizationType.F16, seed=1)
    write_gguf(b, GGMLQuantizationType.F16, seed=2)
    assert open_local(a).revision != open_local(b).revision


def test_header_end_matches_the_parser_and_asks_for_more(tmp_path):
    from lineage_scanner.readers.gguf_file import GgufFile
    from lineage_scanner.readers.gguf_header import NeedMore, header_end

    path = tmp_path / "m.gguf"
    write_gguf(path, GGMLQuantizationType.Q4_K)
    data = path.read_bytes()
    end = header_end(data)
    assert end == min(t.start for t in GgufFile(path).tensors().values())
    with pytest.raises(NeedMore) as more:
        header_end(data[:100], len(data))
    assert more.value.at_least > 100


@pytest.mark.parametrize("name", list(DECODED))
def test_compiled_decoders_are_bit_identical_to_the_gguf_package(name):
    """Random bytes, NaN and Inf scales included: every value has the reference's exact bits."""
    qtype = GGMLQuantizationType[name]
    block, type_size = GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(3).integers(0, 256, 97 * type_size, dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = dequantize(raw.reshape(1, -1), qtype).reshape(-1)
    got = ggml_quants.dequantize(raw, name, 97 * block)
    same = (got.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(got) & np.isnan(ref))
    assert same.all(), f"{(~same).sum()} of {same.size} values differ"


def test_blocks_of_rows_are_the_tensor(tmp_path, monkeypatch):
    """A tensor over the streaming threshold is measured block by block: the same statistics as whole."""
    from lineage_scanner.readers import gguf_file

    path = tmp_path / "m.gguf"
    write_gguf(path, GGMLQuantizationType.Q4_K, heads=COLS // ROWS)  # Q/K rows are whole heads (rotary order)
    _, whole = scan_strict(str(path), get_backend("cpu"), set())
    reader = gguf_file.GgufFile(path)
    name = "blk.0.attn_q.weight"
    monkeypatch.setattr(gguf_file, "BLOCK_BYTES", 3 * COLS * 4)  # blocks of 3 rows, the last one short
    blocks = list(reader.read_blocks(name))
    assert [first for first, _ in blocks] == list(range(0, ROWS, 3))
    assert np.array_equal(np.concatenate([b for _, b in blocks]), reader.read(name))
    monkeypatch.setattr(gguf_file, "STREAM_BYTES", 1024)
    _, streamed = scan_strict(str(path), get_backend("cpu"), set())
    for a, b in zip(whole.layers, streamed.layers):
        assert (a.layer, a.role, a.moments.count, a.moments.min) == (b.layer, b.role, b.moments.count, b.moments.min)
        assert a.moments.std == pytest.approx(b.moments.std, rel=1e-7)
    assert len(whole.sketch) == len(streamed.sketch) > 0  # the sketch's rows are kept as blocks pass
    for a, b in zip(whole.sketch, streamed.sketch):
        assert (a.layer, a.role, a.kind) == (b.layer, b.role, b.kind) and np.array_equal(a.values, b.values)


def test_types_without_a_compiled_decoder_use_the_gguf_package(tmp_path):
    path = tmp_path / "m.gguf"
    expected = write_gguf(path, GGMLQuantizationType.TQ2_0)
    assert "TQ2_0" not in DECODED
    _, sig = scan_strict(str(path), get_backend("cpu"), set())
    got = {(s.layer, s.role): s.moments for s in sig.layers}
    for key, values in expected.items():
        assert got[key].std == pytest.approx(values.std(ddof=1), rel=1e-6)
