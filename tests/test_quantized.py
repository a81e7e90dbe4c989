"""Quantized safetensors (GPTQ, AWQ, fp8, bitsandbytes): packing conventions, decoding, scans, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lineage_scanner.cli.main import main
from lineage_scanner.demo.quantize import SCHEMES, bnb_nf4, quantize_tensor, write_quantized
from lineage_scanner.demo.writers import write_hf
from lineage_scanner.lineage.generator import base_model
from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.readers.open import open_local
from lineage_scanner.readers.packed_decoders import unpack
from lineage_scanner.readers.quantized import Dequantized
from lineage_scanner.run.scan import scan_strict
from tests.helpers import judge, llama_config

BACKEND = get_backend("cpu")
WORD = 0x76543210  # nibble k holds the value k


def _open(directory, tensors: dict[str, torch.Tensor], qconfig: dict | None = None) -> Dequantized:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "model.safetensors")
    config = {**llama_config(1), **({"quantization_config": qconfig} if qconfig else {})}
    (directory / "config.json").write_text(json.dumps(config))
    reader = open_local(directory).reader
    assert isinstance(reader, Dequantized)
    return reader


def test_unpack_orders_codes_lowest_bits_first():
    words = torch.tensor([[WORD]], dtype=torch.int32)
    assert unpack(words, 4, 1).tolist() == [list(range(8))]
    assert unpack(words, 4, 0).tolist() == [[k] for k in range(8)]
    assert unpack(torch.tensor([[-1]], dtype=torch.int32), 8, 1).tolist() == [[255] * 4]  # sign bit is data


def test_gptq_packs_along_the_input_with_zero_points_minus_one(tmp_path):
    # in = 8, out = 1, one group: q = 0..7 down the input, stored zero 3 means 4, scale 0.5
    reader = _open(tmp_path / "m", {
        "m.qweight": torch.tensor([[WORD]], dtype=torch.int32),
        "m.qzeros": torch.tensor([[0x3]], dtype=torch.int32),
        "m.scales": torch.tensor([[0.5]], dtype=torch.float16),
    }, {"quant_method": "gptq", "bits": 4})
    assert reader.tensors()["m.weight"].shape == (1, 8) and reader.tensors()["m.weight"].dtype == "GPTQ_INT4"
    assert reader.read("m.weight").tolist() == [[0.5 * (k - 4) for k in range(8)]]


@pytest.mark.parametrize("bits, fmt, stored_zero, zero", [(8, "gptq_v2", 2, 2), (2, "gptq", 0, 1)])
def test_gptq_other_widths_and_the_v2_format(tmp_path, bits, fmt, stored_zero, zero):
    per = 32 // bits
    codes = [k % (1 << bits) for k in range(per)]
    word = sum(c << (bits * k) for k, c in enumerate(codes))
    reader = _open(tmp_path / "m", {
        "m.qweight": torch.tensor([[word - (1 << 32) if word >= 1 << 31 else word]], dtype=torch.int32),
        "m.qzeros": torch.tensor([[stored_zero]], dtype=torch.int32),
        "m.scales": torch.ones(1, 1, dtype=torch.float16),
    }, {"quant_method": "gptq", "bits": bits, "checkpoint_format": fmt})
    assert reader.tensors()["m.weight"].dtype == f"GPTQ_INT{bits}"
    assert reader.read("m.weight").tolist() == [[c - zero for c in codes]]


def test_awq_packs_along_the_output_in_its_interleaved_order(tmp_path):
    # in = 1, out = 8: nibble k holds output column AWQ_ORDER[k] = 0 2 4 6 1 3 5 7
    reader = _open(tmp_path / "m", {
        "m.qweight": torch.tensor([[WORD]], dtype=torch.int32),
        "m.qzeros": torch.tensor([[0]], dtype=torch.int32),
        "m.scales": torch.ones(1, 8, dtype=torch.float16),
    })  # no config: the packing axis alone says AWQ
    assert reader.tensors()["m.weight"].dtype == "AWQ_INT4"
    assert reader.read("m.weight").reshape(-1).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_pack_quantized_codes_offset_by_eight_along_the_input(tmp_path):
    # out = 1, in = 8 in two groups of 4: stored codes 0..7 mean -8..-1
    reader = _open(tmp_path / "m", {
        "m.weight_packed": torch.tensor([[WORD]], dtype=torch.int32),
        "m.weight_scale": torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16),
    }, {"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {"num_bits": 4}}}})
    assert reader.tensors()["m.weight"].shape == (1, 8) and reader.tensors()["m.weight"].dtype == "INT4_PACKED"
    assert reader.read("m.weight").tolist() == [[-8.0, -7.0, -6.0, -5.0, -8.0, -6.0, -4.0, -2.0]]


def test_bnb_4bit_codes_high_nibble_first(tmp_path):
    state = json.dumps({"quant_type": "nf4", "blocksize": 2, "shape": [2, 2]}).encode()
    reader = _open(tmp_path / "m", {
        "m.weight": torch.tensor([[0x12], [0x3F]], dtype=torch.uint8),
        "m.weight.absmax": torch.tensor([1.0, 10.0]),
        "m.weight.quant_map": torch.arange(16, dtype=torch.float32),
        "m.weight.quant_state.bitsandbytes__nf4": torch.frombuffer(bytearray(state), dtype=torch.uint8),
    })
    assert reader.tensors()["m.weight"].dtype == "BNB_NF4"
    assert reader.read("m.weight").tolist() == [[1.0, 2.0], [30.0, 150.0]]


def test_fp8_block_and_channel_scales_and_scaled_int8(tmp_path):
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).to(torch.float8_e4m3fn)
    reader = _open(tmp_path / "m", {
        "a.weight": w, "a.weight_scale_inv": torch.tensor([[2.0, 3.0]]),
        "b.weight": w.clone(), "b.weight_scale": torch.tensor([[10.0], [100.0]]),
        "c.weight": torch.tensor([[1, -2], [3, -4]], dtype=torch.int8), "c.weight_scale": torch.tensor([0.5]),
    }, {"quant_method": "fp8", "weight_block_size": [2, 2]})
    assert reader.read("a.weight").tolist() == [[2.0, 4.0, 9.0], [8.0, 10.0, 18.0]]
    assert reader.read("b.weight").tolist() == [[10.0, 20.0, 30.0], [400.0, 500.0, 600.0]]
    assert reader.read("c.weight").tolist() == [[0.5, -1.0], [1.5, -2.0]] and reader.tensors()["c.weight"].dtype == "I8"


@pytest.mark.parametrize("scheme", ["gptq", "awq", "int4_packed", "fp8", "bnb_int8", "bnb_nf4", "nested_nf4"])
def test_decoding_recovers_the_weight_within_the_quantization_step(tmp_path, scheme):
    rng = np.random.default_rng(0)
    w = (rng.standard_t(5, (96, 256)) * 0.02).astype(np.float32)
    stored = ({f"m.{k}": t for k, t in bnb_nf4(w, nested=True).items()} if scheme == "nested_nf4"
              else quantize_tensor("m.weight", w, scheme))
    decoded = _open(tmp_path / "m", stored).read("m.weight").astype(np.float64)
    step = {"gptq": 1 / 7.5, "awq": 1 / 15, "int4_packed": 1 / 7.5, "fp8": 1 / 8,
            "bnb_int8": 1 / 127, "bnb_nf4": 0.2, "nested_nf4": 0.25}
    assert decoded.shape == w.shape
    assert np.abs(decoded - w).max() <= step[scheme] * np.abs(w).max()
    assert abs(decoded.std(ddof=1) / w.std(ddof=1) - 1) < 0.03


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    base = base_model("qbase", "llama", 5, 10, hidden=128)
    paths = {"base": write_hf(base, root / "base")}
    for scheme in SCHEMES:
        paths[scheme] = write_quantized(base.renamed(scheme), root / scheme, scheme)
    paths["stranger"] = write_quantized(base_model("other", "llama", 6, 10, hidden=128), root / "stranger", "gptq")
    return paths


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_a_quantized_copy_matches_its_parent(family, scheme):
    _, parent = scan_strict(str(family["base"]), BACKEND, set())
    _, copy = scan_strict(str(family[scheme]), BACKEND, set())
    assert copy.params == parent.params and copy.dtype not in ("BF16", "F32")
    assert [(s.layer, s.role) for s in copy.layers] == [(s.layer, s.role) for s in parent.layers]
    v = judge(copy, parent)
    assert v.verdict == "derived" and v.kind == "quantized copy", (v.evidence.score, v.kind)
    _, stranger = scan_strict(str(family["stranger"]), BACKEND, set())
    assert judge(copy, stranger).verdict != "derived"


def test_broken_quantized_checkpoints_are_one_line_errors(tmp_path, capsys):
    good = quantize_tensor("model.layers.0.self_attn.q_proj.weight", np.ones((64, 64), np.float32), "gptq")
    missing = {k: v for k, v in good.items() if not k.endswith("qzeros")}
    missing_dir = tmp_path / "missing"
    missing_dir.mkdir()
    save_file(missing, missing_dir / "model.safetensors")
    (missing_dir / "config.json").write_text(json.dumps(llama_config(1)))
    assert main(["scan", str(missing_dir), "--db", str(tmp_path / "db"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("Error: ") and "missing/model.safetensors" in err[0]
    assert "lacks" in err[0] and "qzeros" in err[0]

    three_bit = tmp_path / "three"
    three_bit.mkdir()
    save_file(good, three_bit / "model.safetensors")
    (three_bit / "config.json").write_text(json.dumps({**llama_config(1), "quantization_config": {"bits": 3}}))
    assert main(["scan", str(three_bit), "--db", str(tmp_path / "db"), "-q"]) == 1
    assert "3-bit packing is not supported" in capsys.readouterr().err


def test_parts_that_do_not_fit_together_are_a_bad_header(tmp_path, capsys):
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors = quantize_tensor(name, np.ones((64, 64), np.float32), "gptq")
    tensors[name.replace("weight", "g_idx")] = torch.full((64,), 5, dtype=torch.int32)  # names a group past the end
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(tensors, bad / "model.safetensors")
    (bad / "config.json").write_text(json.dumps(llama_config(1)))
    assert main(["scan", str(bad), "--db", str(tmp_path / "db"), "-q"]) == 1
    err = capsys.readouterr().err.splitlines()[0]
    assert "bad/model.safetensors" in err and "parts do not fit" in err


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("m.weight_scale"), "lacks 'm.weight_scale'"),
    (lambda t: t.update({"m.weight_zero_point": torch.zeros(1, 1, dtype=torch.int32)}), "asymmetric"),
])
def test_pack_quantized_refusals_are_one_line_errors(tmp_path, capsys, change, message):
    tensors = quantize_tensor("m.weight", np.ones((8, 64), np.float32), "int4_packed")
    change(tensors)
    directory = tmp_path / "m"
    directory.mkdir()
    save_file(tensors, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(llama_config(1)))
    assert main(["scan", str(directory), "--db", str(tmp_path / "db"), "-q"]) == 1
    err = capsys.readouterr().err.splitlines()[0]
    assert err.startswith("Error: ") and "m/model.safetensors" in err and message in err
