"""Quantized safetensors checkpoints: each packed linear weight is read as the float weight it encodes.

Hub checkpoints quantized by GPTQ, AWQ, fp8 (block- or tensor-scaled) and bitsandbytes (LLM.int8, NF4/FP4)
keep the parent's module names but store a linear layer's weight as several tensors (packed integers,
scales, zero points). :class:`Dequantized` wraps a safetensors reader and presents one logical tensor per
layer, ``<module>.weight`` in ``nn.Linear`` layout [out, in], so layouts, folding and moments treat the
copy exactly as its parent; the statistics are those of the dequantized weight. Which scheme a module
uses is read from its tensor names and shapes (the config's ``quantization_config`` supplies bits,
group size and block size where the tensors cannot), so mixed checkpoints (quantized attention, float
norms) work. The logical tensor's ``dtype`` names the scheme (``GPTQ_INT4``, ``BNB_NF4``, …): the
signature records it, and lineage guesses "quantized copy" from it.

Formats, as their reference implementations write them:

- GPTQ (AutoGPTQ / GPTQModel): ``qweight`` int32 [in·bits/32, out] packed along the input, ``qzeros`` int32
  [groups, out·bits/32], ``scales`` [groups, out], optional ``g_idx`` [in] (act-order);
  w = scale · (q − z), where the v1 format (``checkpoint_format`` "gptq", the default) stores z − 1.
- AWQ (GEMM): ``qweight`` int32 [in, out/8] packed along the output in the order 0 2 4 6 1 3 5 7,
  ``qzeros`` likewise, ``scales`` [groups, out]; w = scale · (q − z).
- fp8: ``weight`` F8 with ``weight_scale_inv`` per 128×128 block (DeepSeek-V3, Qwen3-FP8) or ``weight_scale``
  per tensor or per output channel (compressed-tensors, FBGEMM); w = f8 · scale. int8 ``weight`` with a
  ``weight_scale`` (compressed-tensors W8A8) likewise.
- compressed-tensors "pack-quantized" (symmetric int4/int8): ``weight_packed`` int32 [out, in·bits/32], codes
  stored plus 2^(bits-1), lowest bits first along the input; ``weight_scale`` [out, in/group];
  w = scale · (code − 2^(bits-1)).
- bitsandbytes: int8 ``weight`` with ``SCB`` (w = q · SCB / 127); 4-bit ``weight`` uint8 (two codes a byte,
  high nibble first) with ``weight.absmax`` per block, ``weight.quant_map`` and a JSON
  ``weight.quant_state.bitsandbytes__nf4|fp4`` (shape, block size, nested absmax quantization).
"""

from __future__ import annotations

import json
import math

import numpy as np

from lineage_scanner.errors import HeaderError, UnsupportedError
from lineage_scanner.readers.arrays import as_numpy, take_runs, to_torch
from lineage_scanner.readers.base import Reader, TensorInfo
from lineage_scanner.readers.packed import Packed

FP8_BLOCK = (128, 128)
BNB_STATE = ".quant_state.bitsandbytes__"


class Dequantized:
    """A reader over ``inner`` where each quantized module's tensors appear as one float ``.weight``."""

    def __init__(self, inner: Reader, packed: dict[str, Packed]):
        self.inner = inner
        self.path = inner.path
        self.packed = packed
        self.format = format_of(packed)
        infos = inner.tensors()
        hidden = {name for p in packed.values() for name in p.parts.values()}
        self._tensors = {name: info for name, info in infos.items() if name not in hidden}
        for name, p in packed.items():
            main = infos[p.parts["q"]]
            self._tensors[name] = TensorInfo(name, p.label, p.shape, main.file, main.start, main.end)

    @property
    def bytes_read(self) -> int:
        return self.inner.bytes_read

    def tensors(self) -> dict[str, TensorInfo]:
        return self._tensors

    def prefetch(self, names: list[str]) -> None:
        self.inner.prefetch([part for name in names for part in self._stored(name)])

    def read(self, name: str) -> np.ndarray:
        p = self.packed.get(name)
        if p is None:
            return self.inner.read(name)
        from lineage_scanner.readers.packed_decoders import DECODERS  # torch: only packed formats pay for it

        stored = {role: to_torch(self.inner.read(tensor)) for role, tensor in p.parts.items()}
        file = self._tensors[name].file
        try:
            weight = DECODERS[p.scheme](p, stored)
        except (RuntimeError, IndexError, ValueError) as exc:  # stored shapes that do not fit together
            raise HeaderError(file, f"tensor {name!r}: {p.label} parts do not fit {p.shape} ({exc})") from None
        if tuple(weight.shape) != p.shape:
            raise HeaderError(file, f"tensor {name!r}: {p.label} decodes to {tuple(weight.shape)}, not {p.shape}")
        return as_numpy(weight)

    def read_runs(self, name: str, starts: np.ndarray, run: int) -> np.ndarray:
        """Packed codes must be decoded with their scales, so a sample costs a full read here."""
        if name not in self.packed:
            return self.inner.read_runs(name, starts, run)
        return take_runs(self.read(name), starts, run)

    def release(self, name: str) -> None:
        for part in self._stored(name):
            self.inner.release(part)

    def fingerprint(self) -> bytes:
        return self.inner.fingerprint()

    def close(self) -> None:
        self.inner.close()

    def _stored(self, name: str) -> list[str]:
        p = self.packed.get(name)
        return list(p.parts.values()) if p else [name]


def dequantizing(reader: Reader, config: dict) -> Reader:
    """``reader`` itself when nothing in it is quantized, else a :class:`Dequantized` over it."""
    infos = reader.tensors()
    qconfig = config.get("quantization_config") if isinstance(config.get("quantization_config"), dict) else {}
    states = [n for n in infos if BNB_STATE in n]
    if states:
        reader.prefetch(states)
    packed: dict[str, Packed] = {}
    try:
        for name in infos:
            found = _detect(name, infos, qconfig, reader)
            if found is not None:
                packed[found[0]] = found[1]
    except Exception:
        reader.close()
        raise
    return Dequantized(reader, packed) if packed else reader


def _detect(name: str, infos: dict[str, TensorInfo], qconfig: dict, reader: Reader) -> tuple[str, Packed] | None:
    """The quantized module whose main stored tensor is ``name``, if it is one."""
    path = infos[name].file
    if name.endswith(".qweight"):
        module = name[: -len(".qweight")]
        return module + ".weight", _int_packed(module, infos, qconfig, path)
    if name.endswith(".weight_packed"):
        module = name[: -len(".weight_packed")]
        return module + ".weight", _pack_quantized(module, infos, qconfig, path)
    if not name.endswith(".weight"):
        return None
    info = infos[name]
    module = name[: -len(".weight")]
    if (info.dtype.startswith("F8_") or info.dtype == "I8") and len(info.shape) == 2:
        for suffix, scheme in (("weight_scale_inv", "fp8_block"), ("weight_scale", "fp8_scaled")):
            if f"{module}.{suffix}" in infos:
                block = tuple(qconfig.get("weight_block_size") or FP8_BLOCK)
                return name, Packed(scheme, {"q": name, "scale": f"{module}.{suffix}"}, info.shape, info.dtype,
                                    state={"block": block})
    if info.dtype == "I8" and f"{module}.SCB" in infos and len(info.shape) == 2:
        return name, Packed("bnb_int8", {"q": name, "scale": f"{module}.SCB"}, info.shape, "BNB_INT8", bits=8)
    state_name = next((n for n in (f"{name}{BNB_STATE}nf4", f"{name}{BNB_STATE}fp4") if n in infos), None)
    if state_name is not None:
        return name, _bnb_4bit(name, state_name, infos, reader)
    return None


def _int_packed(module: str, infos: dict[str, TensorInfo], qconfig: dict, path: str) -> Packed:
    """GPTQ or AWQ: both store qweight/qzeros/scales; the axis qweight is packed along tells them apart."""
    parts = {"q": f"{module}.qweight", "zeros": f"{module}.qzeros", "scale": f"{module}.scales"}
    missing = [n for n in parts.values() if n not in infos]
    if missing:
        raise HeaderError(path, f"quantized module {module!r} lacks {missing[0]!r}")
    if f"{module}.g_idx" in infos:
        parts["g_idx"] = f"{module}.g_idx"
    bits = int(qconfig.get("bits") or qconfig.get("w_bit") or 4)
    if bits not in (2, 4, 8):
        raise UnsupportedError(path, f"quantized module {module!r}: {bits}-bit packing is not supported")
    per = 32 // bits
    q, scale = infos[parts["q"]].shape, infos[parts["scale"]].shape
    if len(q) != 2 or len(scale) != 2:
        raise HeaderError(path, f"quantized module {module!r}: qweight and scales must be 2-D")
    method = str(qconfig.get("quant_method", "")).lower()
    if method == "awq" or (method != "gptq" and q[1] * per == scale[1] and q[1] != scale[1]):
        if bits != 4:
            raise UnsupportedError(path, f"quantized module {module!r}: AWQ packing is defined for 4 bits")
        scheme, shape = "awq", (scale[1], q[0])
    else:
        scheme, shape = "gptq", (scale[1], q[0] * per)
    v1 = scheme == "gptq" and str(qconfig.get("checkpoint_format", "gptq")).lower() == "gptq"
    group = math.ceil(shape[1] / max(scale[0], 1))
    return Packed(scheme, parts, shape, f"{scheme.upper()}_INT{bits}", bits, group, state={"zero_minus_one": v1})


def _pack_quantized(module: str, infos: dict[str, TensorInfo], qconfig: dict, path: str) -> Packed:
    """compressed-tensors' symmetric int4/int8 ("pack-quantized"): codes + 2^(bits-1) packed into int32 words
    along the input, ``weight_scale`` per output row and input group."""
    parts = {"q": f"{module}.weight_packed", "scale": f"{module}.weight_scale"}
    if parts["scale"] not in infos:
        raise HeaderError(path, f"quantized module {module!r} lacks {parts['scale']!r}")
    if f"{module}.weight_zero_point" in infos:
        raise UnsupportedError(path, f"quantized module {module!r}: asymmetric pack-quantized weights are not read")
    if f"{module}.weight_shape" in infos:  # [out, in]: the packed shape implies it when in is a multiple of 8
        parts["shape"] = f"{module}.weight_shape"
    groups = (qconfig.get("config_groups") or {}).values()
    bits = next((int(g["weights"]["num_bits"]) for g in groups if isinstance(g, dict) and
                 isinstance(g.get("weights"), dict) and "num_bits" in g["weights"]), 4)
    if bits not in (4, 8):
        raise UnsupportedError(path, f"quantized module {module!r}: {bits}-bit packing is not supported")
    packed, scale = infos[parts["q"]].shape, infos[parts["scale"]].shape
    if len(packed) != 2 or len(scale) != 2 or scale[0] != packed[0]:
        raise HeaderError(path, f"quantized module {module!r}: weight_packed {packed} and weight_scale {scale} "
                                "do not fit together")
    n_in = packed[1] * (32 // bits)
    return Packed("pack_quantized", parts, (packed[0], n_in), f"INT{bits}_PACKED", bits,
                  math.ceil(n_in / max(scale[1], 1)))


def _bnb_4bit(name: str, state_name: str, infos: dict[str, TensorInfo], reader: Reader) -> Packed:
    path = infos[state_name].file
    raw = reader.read(state_name)
    try:
        state = json.loads(np.asarray(raw).astype(np.uint8).tobytes().decode("utf-8"))
        shape = tuple(int(d) for d in state["shape"])
        int(state["blocksize"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise HeaderError(path, f"tensor {state_name!r}: not a bitsandbytes quant state ({exc})") from None
    if len(shape) != 2:
        raise UnsupportedError(path, f"tensor {name!r}: 4-bit weight of shape {shape} is not a matrix")
    parts = {"q": name, "absmax": f"{name}.absmax", "map": f"{name}.quant_map"}
    if "nested_blocksize" in state:
        parts.update(nested_absmax=f"{name}.nested_absmax", nested_map=f"{name}.nested_quant_map")
    missing = [n for n in parts.values() if n not in infos]
    if missing:
        raise HeaderError(path, f"4-bit weight {name!r} lacks {missing[0]!r}")
    label = "BNB_FP4" if state_name.endswith("fp4") else "BNB_NF4"
    return Packed("bnb_4bit", {**parts, "state": state_name}, shape, label, state=state)


#: The ``format`` column a checkpoint quantized with each scheme gets (int8 with a scale: see :func:`format_of`).
FORMATS = {"gptq": "gptq", "awq": "awq", "pack_quantized": "compressed-tensors", "fp8_block": "fp8",
           "fp8_scaled": "fp8", "bnb_int8": "bnb", "bnb_4bit": "bnb"}


def format_of(packed: dict[str, Packed]) -> str:
    """The checkpoint's quantization format: that of the scheme covering most modules."""
    names = [("int8" if p.label == "I8" and p.scheme == "fp8_scaled" else FORMATS[p.scheme]) for p in packed.values()]
    return max(sorted(set(names)), key=names.count)
