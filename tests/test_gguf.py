"""GGUF: every quant type the gguf package can dequantize is read and measured like the reference; the
compiled decoders give the reference's exact bits."""

from __future__ import annotations

import re
import struct

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


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, kind: int, value: bytes) -> bytes:
    return _s(key) + struct.pack("<I", kind) + value


def _tensor(name: str, dims: list[int], kind: int, offset: int) -> bytes:
    return _s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset)


def _file(kvs: list[bytes], tensors: list[bytes], data: bytes = bytes(4096)) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(tensors)
    return head + bytes(-len(head) % 32) + data


ARCH = _kv("general.architecture", 8, _s("llama"))
F32_16 = _tensor("blk.0.attn_q.weight", [4, 4], 0, 0)  # 64 bytes at offset 0


@pytest.mark.parametrize("kvs, tensors, problem", [
    ([ARCH, ARCH], [F32_16], "metadata key 'general.architecture' appears twice"),
    ([ARCH], [F32_16, F32_16], "appears twice in the tensor table"),
    ([ARCH], [_tensor("t", [4], 33, 0)], "unknown GGML type 33"),
    ([ARCH], [_tensor("t", [48, 2], 8, 0)], "not whole Q8_0 blocks of 32"),
    ([ARCH], [F32_16, _tensor("t", [4], 0, 96)], "has data offset 96, expected 64"),
    ([ARCH], [_tensor("t", [1 << 40, 1 << 40], 0, 0)], "impossible dimensions"),
    ([ARCH], [_tensor("t", [1 << 20], 0, 0)], "claims 4194304 bytes"),
    ([ARCH], [_tensor("t", [4] * 9, 0, 0)], "has 9 dimensions"),
    ([_kv("general.alignment", 4, struct.pack("<I", 48))], [], "general.alignment 48 is not a power of two"),
    ([_kv("general.alignment", 5, struct.pack("<i", 64))], [], "general.alignment has metadata type 5"),
    ([_kv("k", 9, struct.pack("<IQ", 8, 3) + _s("a") + _s("b") + struct.pack("<Q", 1 << 40))], [],
     "a string of 1099511627776 bytes needs"),
    ([_kv("k", 9, struct.pack("<IQ", 13, 1))], [], "array of metadata type 13 not allowed"),
    ([_kv("k", 14, b"")], [], "unknown metadata type 14"),
    ([_s("x" * 70_000) + struct.pack("<I", 4) + bytes(4)], [], "over the 65536-byte cap"),
    ([ARCH], [_s(b"\xff\xfe") + struct.pack("<IQIQ", 1, 4, 0, 0)], "is not UTF-8"),
])
def test_header_rules(tmp_path, kvs, tensors, problem):
    """Each rule of the tensor table and metadata (llama.cpp's loader's, and the bounds): a one-line error."""
    from lineage_scanner.errors import HeaderError
    from lineage_scanner.readers.gguf_file import GgufFile

    path = tmp_path / "m.gguf"
    path.write_bytes(_file(kvs, tensors, bytes(70_000)))
    with pytest.raises(HeaderError, match=re.escape(problem)) as error:
        GgufFile(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_header_cap(tmp_path, monkeypatch):
    from lineage_scanner.errors import HeaderError
    from lineage_scanner.readers import gguf_header
    from lineage_scanner.readers.gguf_file import GgufFile

    path = tmp_path / "m.gguf"
    path.write_bytes(_file([ARCH, _kv("k", 9, struct.pack("<IQ", 5, 5000) + bytes(20_000))], [F32_16]))
    assert GgufFile(path).metadata["general.architecture"] == "llama"
    monkeypatch.setattr(gguf_header, "MAX_HEADER_BYTES", 10_000)
    with pytest.raises(HeaderError, match="the header runs past 0 MiB, the cap"):
        GgufFile(path)


def test_string_arrays_are_walked_across_windows():
    """A string array read through windows of a few bytes each (as over HTTP) ends where the whole file's
    walk ends, and a string cut by a window's edge is skipped by its length, not fetched."""
    from lineage_scanner.readers.gguf_header import parse_header

    strings = [b"x" * n for n in (1, 0, 700, 3, 9000, 2)] * 50
    data = _file([ARCH, _kv("tokens", 9, struct.pack("<IQ", 8, len(strings)) + b"".join(map(_s, strings)))], [F32_16])
    whole = parse_header(len(data), "m", (data, 0))
    asked = []

    def window(pos: int, n: int, hint: int):
        asked.append((pos, n))
        return data[pos : pos + max(n, 64)], pos

    assert parse_header(len(data), "m", (data[:100], 0), window) == whole
    fetched = sum(max(n, 64) for _, n in asked)
    assert fetched < len(data) - 50 * 9000  # the 9000-byte strings were stepped over
