"""Decoders of the packed quantized formats (:mod:`lineage_scanner.readers.packed`), in torch.

Kept apart so that only a checkpoint in one of these formats imports torch: each decoder takes the
stored tensors of one module (torch views of the reader's arrays) and returns its float32 weight
[out, in].
"""

from __future__ import annotations

import torch

from lineage_scanner.readers.packed import AWQ_ORDER, Packed


def unpack(words: torch.Tensor, bits: int, axis: int) -> torch.Tensor:
    """Unsigned ``bits``-wide codes from int32 words, lowest bits first, laid out along ``axis`` (0 or 1)."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    codes = (words.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [rows, cols, per]
    if axis == 0:
        codes = codes.permute(0, 2, 1)
    return codes.reshape(words.shape[0] * (shifts.numel() if axis == 0 else 1), -1)


def _gptq(p: Packed, t: dict[str, torch.Tensor]) -> torch.Tensor:
    out, n_in = p.shape
    q = unpack(t["q"], p.bits, 0)[:n_in]  # [in, out]
    zeros = unpack(t["zeros"], p.bits, 1)[:, :out]
    if p.state["zero_minus_one"]:
        zeros = zeros + 1
    group = t["g_idx"].to(torch.long) if "g_idx" in t else torch.arange(n_in) // p.group
    scale = t["scale"].to(torch.float32)
    return ((q - zeros[group]).to(torch.float32) * scale[group]).T.contiguous()


def _awq(p: Packed, t: dict[str, torch.Tensor]) -> torch.Tensor:
    reorder = torch.tensor([AWQ_ORDER.index(c) for c in range(8)])

    def codes(words: torch.Tensor) -> torch.Tensor:
        c = unpack(words, 4, 1)
        return c.reshape(c.shape[0], -1, 8)[:, :, reorder].reshape(c.shape[0], -1)

    q, zeros = codes(t["q"]), codes(t["zeros"])
    group = torch.arange(p.shape[1]) // p.group
    return ((q - zeros[group]).to(torch.float32) * t["scale"].to(torch.float32)[group]).T.contiguous()


def _pack_quantized_decode(p: Packed, t: dict[str, torch.Tensor]) -> torch.Tensor:
    codes = unpack(t["q"], p.bits, 1)[:, : p.shape[1]] - (1 << (p.bits - 1))
    group = torch.arange(p.shape[1]) // p.group
    return codes.to(torch.float32) * t["scale"].to(torch.float32)[:, group]


def _fp8_block(p: Packed, t: dict[str, torch.Tensor]) -> torch.Tensor:
    rows, cols = p.state["block"]
    scale = t["scale"].to(torch.float32).repeat_interleave(rows, 0).repeat_interleave(cols, 1)
    return t["q"].to(torch.float32) * scale[: p.shape[0], : p.shape[1]]


def _fp8_scaled(p: Packed, t: dict[str, torch.Tensor]) -> torch.Tensor:
    scale = t["scale"].to(torch.float32)
    scale = scale.reshape(()) if scale.numel() == 1 else scale.reshape(p.shape[0], 1)
    return t["q"].to(torch.float32) * scale


def _bnb_int8(p: Packed, t: dict[str, torch.Tensor]) -> torch.Tensor:
    return t["q"].to(torch.float32) * (t["scale"].to(torch.float32).reshape(-1, 1) / 127.0)


def _bnb_4bit_decode(p: Packed, t: dict[str, torch.Tensor]) -> torch.Tensor:
    packed = t["q"].reshape(-1).to(torch.int32)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)
    absmax = t["absmax"]
    if "nested_absmax" in t:  # absmax itself quantized to 8 bits in blocks, plus an offset
        nested = t["nested_absmax"].to(torch.float32)
        block = torch.arange(absmax.numel()) // int(p.state["nested_blocksize"])
        absmax = t["nested_map"].to(torch.float32)[absmax.to(torch.long)] * nested[block]
        absmax = absmax + float(p.state.get("nested_offset", 0.0))
    n = p.shape[0] * p.shape[1]
    values = t["map"].to(torch.float32)[codes[:n].to(torch.long)]
    scale = absmax.to(torch.float32)[torch.arange(n) // int(p.state["blocksize"])]
    return (values * scale).reshape(p.shape)


DECODERS = {"gptq": _gptq, "awq": _awq, "pack_quantized": _pack_quantized_decode, "fp8_block": _fp8_block,
            "fp8_scaled": _fp8_scaled, "bnb_int8": _bnb_int8, "bnb_4bit": _bnb_4bit_decode}
