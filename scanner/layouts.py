"""Which tensors hold attention, per architecture family: tensor name -> (layer, role).

Each family is a table (data, not code paths) from the part of a tensor name after its layer index to a
role, or to a :class:`Fused` spec for tensors that pack Q, K and V together. Fused tensors are split by
rows (or columns, for GPT-2's transposed Conv1D) using the config's head counts, before any statistic.
An unknown architecture falls back to the union of the plain tables and says so; a checkpoint with no
Q/K/V/O found is :class:`UnsupportedError`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from scanner.errors import ConfigError, UnsupportedError
from scanner.readers.base import TensorInfo

#: Roles whose per-layer curves make up a signature; the rest are recorded in the long-form table.
CURVE_ROLES = ("q", "k", "v", "o")

#: No real model has this many layers; a larger index is a corrupt name, not a reason to allocate.
MAX_LAYERS = 4096
LAYER_NAME = re.compile(r"^(?:.*\.)?(?:layers|layer|h|blocks|blk)\.(\d+)\.(.+)$")
#: Towers of multimodal checkpoints also number their layers; their attention is not the LM's.
NOT_LANGUAGE = re.compile(r"vision|visual|image|audio|mm_projector|speech")


@dataclass(frozen=True)
class Fused:
    """A tensor packing several roles. ``scheme`` says how rows (or columns) interleave."""

    scheme: str  # "concat" | "per_head" | "falcon" | "mla_kv"
    axis: int = 0
    suffix: str = ""  # appended to each role: "" for weights, "_bias" for biases


@dataclass(frozen=True)
class Part:
    """A role's share of one tensor: ``ranges`` along ``axis`` (empty = the whole tensor)."""

    layer: int
    role: str
    tensor: str
    axis: int = 0
    ranges: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Layout:
    family: str
    n_layers: int
    parts: tuple[Part, ...]
    fallback: bool = False
    #: weights stored [in, out] (GPT-2's Conv1D) rather than nn.Linear's [out, in]
    transposed: bool = False
    #: added to stored norm weights to get the gain (Gemma stores gain - 1)
    norm_offset: float = 0.0
    #: the layer's attn_norm scales the attention's input (pre-norm); False for post-norm encoders
    pre_norm: bool = True


def _proj(prefix: str, q: str, k: str, v: str, o: str, norm: str, extra: dict | None = None) -> dict:
    table = {}
    for role, name in zip(CURVE_ROLES, (q, k, v, o)):
        table[f"{prefix}{name}.weight"] = role
        table[f"{prefix}{name}.bias"] = f"{role}_bias"
    table[norm] = "attn_norm"
    return {**table, **(extra or {})}


LLAMA = _proj("self_attn.", "q_proj", "k_proj", "v_proj", "o_proj", "input_layernorm.weight",
              {"self_attn.q_norm.weight": "q_norm", "self_attn.k_norm.weight": "k_norm"})
DEEPSEEK_MLA = {
    **LLAMA,
    "self_attn.q_b_proj.weight": "q",
    "self_attn.q_a_proj.weight": "q_a",
    "self_attn.kv_a_proj_with_mqa.weight": "kv_a",
    "self_attn.kv_b_proj.weight": Fused("mla_kv"),
    "self_attn.q_a_layernorm.weight": "q_a_norm",
    "self_attn.kv_a_layernorm.weight": "kv_a_norm",
}
PHI3 = {**LLAMA, "self_attn.qkv_proj.weight": Fused("concat"), "self_attn.qkv_proj.bias": Fused("concat", 0, "_bias")}
GPT2 = {
    "attn.c_attn.weight": Fused("concat", axis=1),
    "attn.c_attn.bias": Fused("concat", 0, "_bias"),
    "attn.c_proj.weight": "o",
    "attn.c_proj.bias": "o_bias",
    "ln_1.weight": "attn_norm",
}
GPT_NEOX = {
    "attention.query_key_value.weight": Fused("per_head"),
    "attention.query_key_value.bias": Fused("per_head", 0, "_bias"),
    "attention.dense.weight": "o",
    "attention.dense.bias": "o_bias",
    "input_layernorm.weight": "attn_norm",
}
FALCON = {
    "self_attention.query_key_value.weight": Fused("falcon"),
    "self_attention.dense.weight": "o",
    "input_layernorm.weight": "attn_norm",
    "ln_attn.weight": "attn_norm",
}
BERT = _proj("attention.", "self.query", "self.key", "self.value", "output.dense",
             "attention.output.LayerNorm.weight")
MPNET = _proj("attention.attn.", "q", "k", "v", "o", "attention.LayerNorm.weight")
GGUF = {
    **_proj("", "attn_q", "attn_k", "attn_v", "attn_output", "attn_norm.weight",
            {"attn_q_norm.weight": "q_norm", "attn_k_norm.weight": "k_norm"}),
    "attn_qkv.weight": Fused("concat"),
    "attn_qkv.bias": Fused("concat", 0, "_bias"),
}

FAMILIES: dict[str, dict] = {
    **dict.fromkeys(["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text",
                     "mixtral", "qwen2_moe", "qwen3_moe"], LLAMA),
    "phi3": PHI3,
    "gpt2": GPT2,
    "gpt_neox": GPT_NEOX,
    "falcon": FALCON,
    "bert": BERT,
    "roberta": BERT,
    "mpnet": MPNET,
    "deepseek_v2": DEEPSEEK_MLA,
    "deepseek_v3": DEEPSEEK_MLA,
    "gguf": GGUF,
}
#: Encoders whose attn_norm normalises the attention's output, not its input: no gain to fold.
POST_NORM = ("bert", "roberta", "mpnet")
#: The fallback for unknown architectures: every unfused entry of every table.
PATTERNS = {k: v for table in FAMILIES.values() for k, v in table.items() if isinstance(v, str)}


@dataclass(frozen=True)
class Shape:
    """The attention sizes a fused split needs, read from the config."""

    n_heads: int
    n_kv_heads: int
    head_dim: int


def resolve(family: str, tensors: dict[str, TensorInfo], shape: Shape | None, config: dict,
            n_layers: int | None, path: str) -> Layout:
    """Map a checkpoint's tensors to (layer, role) parts, splitting fused tensors."""
    table = FAMILIES.get(family)
    fallback = table is None
    if fallback:
        table = PATTERNS
    parts: list[Part] = []
    for name, info in tensors.items():
        match = LAYER_NAME.match(name)
        if not match or NOT_LANGUAGE.search(name):
            continue
        layer, rest = int(match.group(1)), match.group(2)
        if layer >= MAX_LAYERS:
            raise UnsupportedError(path, f"tensor {name!r} has layer index {layer}, beyond {MAX_LAYERS}")
        target = table.get(rest)
        if isinstance(target, str):
            parts.append(Part(layer, target, name))
        elif isinstance(target, Fused):
            parts.extend(_split(target, layer, info, shape, config, path))
    roles = {p.role for p in parts}
    if not roles & set(CURVE_ROLES):
        raise UnsupportedError(path, f"no attention projections found for architecture {family!r}")
    if fallback:
        warnings.warn(f"{path}: unknown architecture {family!r}; attention found by name patterns",
                      stacklevel=2)
    depth = max(p.layer for p in parts) + 1
    if n_layers is not None and n_layers > depth:
        raise ConfigError(path, f"config declares {n_layers} layers but attention tensors stop at layer {depth - 1}")
    return Layout(family, depth, tuple(sorted(parts, key=lambda p: (p.layer, p.role))), fallback,
                  transposed=family == "gpt2", norm_offset=1.0 if family.startswith("gemma") else 0.0,
                  pre_norm=family not in POST_NORM)


def _split(spec: Fused, layer: int, info: TensorInfo, shape: Shape | None, config: dict,
           path: str) -> list[Part]:
    if shape is None:
        raise ConfigError(path, f"tensor {info.name!r} is fused; config.json must give the head counts")
    nq, nkv, hd = shape.n_heads, shape.n_kv_heads, shape.head_dim
    if spec.scheme == "concat":
        spans = {"q": [(0, nq * hd)], "k": [(nq * hd, (nq + nkv) * hd)],
                 "v": [((nq + nkv) * hd, (nq + 2 * nkv) * hd)]}
    elif spec.scheme == "per_head" or (spec.scheme == "falcon" and _falcon_layout(config) == "per_head"):
        spans = {r: [((3 * h + i) * hd, (3 * h + i + 1) * hd) for h in range(nq)] for i, r in enumerate("qkv")}
    elif spec.scheme == "falcon":
        group = nq // nkv + 2
        spans = {"q": [(g * group * hd, (g * group + group - 2) * hd) for g in range(nkv)],
                 "k": [((g * group + group - 2) * hd, (g * group + group - 1) * hd) for g in range(nkv)],
                 "v": [((g * group + group - 1) * hd, (g + 1) * group * hd) for g in range(nkv)]}
    else:  # mla_kv: per head, the no-RoPE key rows then the value rows
        k_dim, v_dim = config.get("qk_nope_head_dim"), config.get("v_head_dim")
        if not (isinstance(k_dim, int) and isinstance(v_dim, int)):
            raise ConfigError(path, "MLA config needs integer qk_nope_head_dim and v_head_dim")
        step = k_dim + v_dim
        spans = {"k": [(h * step, h * step + k_dim) for h in range(nq)],
                 "v": [(h * step + k_dim, (h + 1) * step) for h in range(nq)]}
    axis = spec.axis if len(info.shape) > 1 else 0
    end = max(stop for ranges in spans.values() for _, stop in ranges)
    if info.shape[axis] != end:
        raise ConfigError(path, f"tensor {info.name!r} has {info.shape[axis]} rows on axis {axis}, but the "
                                f"config's heads ({nq} q, {nkv} kv, head_dim {hd}) imply {end}")
    return [Part(layer, role + spec.suffix, info.name, axis, tuple(ranges)) for role, ranges in spans.items()]


def _falcon_layout(config: dict) -> str:
    """Falcon packs QKV three ways: grouped (new decoder), multi-query (concat) or per head (old RW)."""
    if config.get("new_decoder_architecture"):
        return "grouped"
    return "grouped" if config.get("multi_query", True) else "per_head"
