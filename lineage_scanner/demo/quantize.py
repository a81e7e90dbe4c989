"""Quantized exports for the demo zoo, stored the way GPTQ, AWQ, compressed-tensors, fp8 and bitsandbytes
checkpoints are.

Each encoder turns one float weight [out, in] into the tensors its format stores (see
:mod:`scanner.readers.quantized` for the layouts); :func:`write_quantized` writes a whole model with
every linear weight quantized, as the Hub's quantized copies of a base are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from lineage_scanner.demo.writers import decoder_tensors, hf_config
from lineage_scanner.lineage.generator import ToyModel
from lineage_scanner.readers.packed import AWQ_ORDER
from lineage_scanner.readers.quantized import BNB_STATE

#: The 16 NormalFloat levels of QLoRA's NF4 (bitsandbytes stores them beside each weight as quant_map).
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)
GROUP = 32
FP8_MAX = 448.0


def _pack(codes: np.ndarray, axis: int, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """4-bit codes into int32 words along ``axis``: nibble k of a word holds element ``order[k]`` of its 8."""
    c = np.moveaxis(codes.astype(np.uint32), axis, -1)
    c = c.reshape(*c.shape[:-1], -1, 8)[..., list(order)]
    words = (c << (4 * np.arange(8, dtype=np.uint32))).sum(axis=-1, dtype=np.uint32)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(words, -1, axis)).view(np.int32))


def _symmetric_int4(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..15 standing for -8..7 ([out, in]) and one scale per output row and input group."""
    grouped = w.astype(np.float32).reshape(w.shape[0], -1, group)
    scale = np.maximum(np.abs(grouped).max(axis=2), 1e-12) / 7.5
    return np.clip(np.round(grouped / scale[:, :, None]), -8, 7).reshape(w.shape) + 8, scale


def gptq(w: np.ndarray, group: int = GROUP) -> dict[str, torch.Tensor]:
    """Symmetric 4-bit GPTQ in the v1 checkpoint format (zero points stored minus one), stored [in, out]."""
    codes, scale = _symmetric_int4(w, group)
    zeros = np.full(scale.T.shape, 8 - 1)
    return {"qweight": _pack(codes.T, 0), "qzeros": _pack(zeros, 1),
            "scales": torch.from_numpy(scale.T.astype(np.float16)),
            "g_idx": torch.from_numpy(np.arange(w.shape[1], dtype=np.int32) // group)}


def awq(w: np.ndarray, group: int = GROUP) -> dict[str, torch.Tensor]:
    """Asymmetric 4-bit AWQ (GEMM packing) with a zero point per group and output column."""
    wt = w.T.astype(np.float32)
    grouped = wt.reshape(-1, group, wt.shape[1])
    low, high = grouped.min(axis=1), grouped.max(axis=1)
    scale = np.maximum(high - low, 1e-12) / 15
    zeros = np.clip(np.round(-low / scale), 0, 15)
    q = np.clip(np.round(grouped / scale[:, None, :]) + zeros[:, None, :], 0, 15).reshape(wt.shape)
    return {"qweight": _pack(q, 1, AWQ_ORDER), "qzeros": _pack(zeros, 1, AWQ_ORDER),
            "scales": torch.from_numpy(scale.astype(np.float16))}


def pack_quantized(w: np.ndarray, group: int = GROUP) -> dict[str, torch.Tensor]:
    """compressed-tensors' symmetric int4 W4A16: one scale per output row and input group."""
    codes, scale = _symmetric_int4(w, group)
    return {"weight_packed": _pack(codes, 1), "weight_scale": torch.from_numpy(scale).to(torch.bfloat16),
            "weight_shape": torch.tensor(w.shape, dtype=torch.int64)}


def fp8_block(w: np.ndarray, block: int = 128) -> dict[str, torch.Tensor]:
    """e4m3 with one inverse scale per block × block tile (DeepSeek-V3 style)."""
    rows, cols = -(-w.shape[0] // block), -(-w.shape[1] // block)
    padded = np.zeros((rows * block, cols * block), np.float32)
    padded[: w.shape[0], : w.shape[1]] = w
    tiles = np.abs(padded.reshape(rows, block, cols, block)).max(axis=(1, 3))
    scale = np.maximum(tiles, 1e-12) / FP8_MAX
    full = np.repeat(np.repeat(scale, block, 0), block, 1)[: w.shape[0], : w.shape[1]]
    return {"weight": torch.from_numpy(w / full).to(torch.float8_e4m3fn),
            "weight_scale_inv": torch.from_numpy(scale.astype(np.float32))}


def bnb_int8(w: np.ndarray) -> dict[str, torch.Tensor]:
    """LLM.int8: one absmax per output row (``SCB``), codes in [-127, 127]."""
    scb = np.maximum(np.abs(w).max(axis=1), 1e-12).astype(np.float32)
    q = np.clip(np.round(w * 127 / scb[:, None]), -127, 127).astype(np.int8)
    return {"weight": torch.from_numpy(q), "SCB": torch.from_numpy(scb)}


def bnb_nf4(w: np.ndarray, blocksize: int = 64, nested: bool = False) -> dict[str, torch.Tensor]:
    """NF4 codes per block of ``blocksize`` with a float absmax each (or 8-bit absmax, when ``nested``)."""
    flat = w.astype(np.float32).reshape(-1, blocksize)
    absmax = np.maximum(np.abs(flat).max(axis=1), 1e-12)
    codes = np.abs((flat / absmax[:, None])[..., None] - NF4).argmin(axis=-1).reshape(-1).astype(np.uint8)
    state = {"quant_type": "nf4", "blocksize": blocksize, "dtype": "bfloat16", "shape": list(w.shape)}
    out = {"weight": torch.from_numpy(((codes[0::2] << 4) | codes[1::2]).reshape(-1, 1)),
           "weight.quant_map": torch.from_numpy(NF4.copy())}
    if nested:
        nested_map = np.linspace(-1, 1, 256, dtype=np.float32)
        offset = float(absmax.mean())
        centred = np.pad(absmax - offset, (0, -absmax.size % 256)).reshape(-1, 256)
        scale = np.maximum(np.abs(centred).max(axis=1), 1e-12)
        idx = np.abs((centred / scale[:, None])[..., None] - nested_map).argmin(axis=-1).reshape(-1)
        out.update({"weight.absmax": torch.from_numpy(idx[: absmax.size].astype(np.uint8)),
                    "weight.nested_absmax": torch.from_numpy(scale.astype(np.float32)),
                    "weight.nested_quant_map": torch.from_numpy(nested_map)})
        state.update(nested_blocksize=256, nested_offset=offset)
    else:
        out["weight.absmax"] = torch.from_numpy(absmax.astype(np.float32))
    out[f"weight{BNB_STATE}nf4"] = torch.frombuffer(bytearray(json.dumps(state).encode()), dtype=torch.uint8)
    return out


SCHEMES = {
    "gptq": (gptq, {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "sym": True, "desc_act": False}),
    "awq": (awq, {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm"}),
    "int4_packed": (pack_quantized, {"quant_method": "compressed-tensors", "format": "pack-quantized",
                                     "config_groups": {"group_0": {"weights": {"num_bits": 4, "group_size": GROUP,
                                                                               "symmetric": True}}}}),
    "fp8": (fp8_block, {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}),
    "bnb_int8": (bnb_int8, {"quant_method": "bitsandbytes", "load_in_8bit": True}),
    "bnb_nf4": (bnb_nf4, {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}),
}


def quantize_tensor(name: str, w: np.ndarray, scheme: str) -> dict[str, torch.Tensor]:
    """One linear weight ``<module>.weight`` as the stored tensors of ``scheme``, under their full names."""
    encode, _ = SCHEMES[scheme]
    module = name[: -len(".weight")]
    return {f"{module}.{part}": t.contiguous() for part, t in encode(w).items()}


def write_quantized(model: ToyModel, directory: Path, scheme: str) -> Path:
    """``model`` with every linear weight of its layers quantized by ``scheme``; the rest in bf16."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in decoder_tensors(model, model.style).items():
        if ".layers." in name and name.endswith("_proj.weight"):
            tensors.update(quantize_tensor(name, value, scheme))
        else:
            tensors[name] = torch.from_numpy(np.ascontiguousarray(value)).to(torch.bfloat16)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    config = {**hf_config(model, model.style), "quantization_config": SCHEMES[scheme][1]}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory
