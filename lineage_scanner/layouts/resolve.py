"""Which tensors hold attention: tensor name -> (layer, role), from a :class:`FamilySpec`.

Fused tensors are split by rows (or columns, for GPT-2's transposed Conv1D) using the config's head
counts, before any statistic. A spec found by name patterns (an unknown architecture) says so in the
layout, and the signature records it; a checkpoint with no Q/K/V/O found is :class:`UnsupportedError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lineage_scanner.errors import ConfigError, UnsupportedError
from lineage_scanner.layouts.families import CURVE_ROLES, FamilySpec, Fused
from lineage_scanner.readers.base import TensorInfo

#: No real model has this many layers; a larger index is a corrupt name, not a reason to allocate.
MAX_LAYERS = 4096
LAYER_NAME = re.compile(r"^(?:.*\.)?(?:layers|layer|h|blocks|blk)\.(\d+)\.(.+)$")
#: Towers of multimodal checkpoints also number their layers; their attention is not the LM's.
NOT_LANGUAGE = re.compile(r"vision|visual|image|audio|mm_projector|speech")


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
    spec: FamilySpec
    n_layers: int
    parts: tuple[Part, ...]
    #: from the config, where it gives the head counts
    head_dim: int | None = None

    @property
    def family(self) -> str:
        return self.spec.name

    @property
    def fallback(self) -> bool:
        return self.spec.source != "table"


@dataclass(frozen=True)
class Shape:
    """The attention sizes a fused split needs, read from the config."""

    n_heads: int
    n_kv_heads: int
    head_dim: int


def resolve(spec: FamilySpec, tensors: dict[str, TensorInfo], shape: Shape | None, config: dict,
            n_layers: int | None, path: str) -> Layout:
    """Map a checkpoint's tensors to (layer, role) parts, splitting fused tensors."""
    parts: list[Part] = []
    for name, info in tensors.items():
        match = LAYER_NAME.match(name)
        if not match or NOT_LANGUAGE.search(name):
            continue
        layer, rest = int(match.group(1)), match.group(2)
        if layer >= MAX_LAYERS:
            raise UnsupportedError(path, f"tensor {name!r} has layer index {layer}, beyond {MAX_LAYERS}")
        target = spec.names.get(rest)
        if isinstance(target, str):
            parts.append(Part(layer, target, name))
        elif isinstance(target, Fused):
            parts.extend(_split(target, layer, info, shape, config, path))
    roles = {p.role for p in parts}
    if not roles & set(CURVE_ROLES):
        raise UnsupportedError(path, f"no attention projections found for architecture {spec.name!r}")
    depth = max(p.layer for p in parts) + 1
    if n_layers is not None and n_layers > depth:
        raise ConfigError(path, f"config declares {n_layers} layers but attention tensors stop at layer {depth - 1}")
    return Layout(spec, depth, tuple(sorted(parts, key=lambda p: (p.layer, p.role))),
                  shape.head_dim if shape else None)


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
