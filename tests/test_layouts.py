"""Layouts: each family's names resolve to roles, and fused tensors split into the right rows/columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lineage_scanner.errors import ConfigError, UnsupportedError
from lineage_scanner.layouts.families import family, gguf_family
from lineage_scanner.layouts.resolve import Shape, resolve
from lineage_scanner.measure.kernels import get_backend
from lineage_scanner.measure.kernels.stats import Moments
from lineage_scanner.measure.parts import segments
from lineage_scanner.readers.base import TensorInfo

NAMES = {
    "llama": ["model.layers.{i}.self_attn.q_proj.weight", "model.layers.{i}.self_attn.o_proj.weight"],
    "mistral": ["model.layers.{i}.self_attn.k_proj.weight"],
    "qwen2": ["model.layers.{i}.self_attn.q_proj.bias", "model.layers.{i}.self_attn.v_proj.weight"],
    "qwen3": ["model.layers.{i}.self_attn.q_norm.weight", "model.layers.{i}.self_attn.q_proj.weight"],
    "gemma": ["model.layers.{i}.self_attn.q_proj.weight"],
    "gemma2": ["model.layers.{i}.self_attn.k_proj.weight"],
    "gemma3": [
        "language_model.model.layers.{i}.self_attn.q_proj.weight",
        "vision_tower.vision_model.encoder.layers.{i}.self_attn.q_proj.weight",
    ],
    "mixtral": ["model.layers.{i}.self_attn.o_proj.weight"],
    "qwen2_moe": ["model.layers.{i}.self_attn.q_proj.weight"],
    "qwen3_moe": ["model.layers.{i}.self_attn.k_norm.weight", "model.layers.{i}.self_attn.k_proj.weight"],
    "bert": [
        "bert.encoder.layer.{i}.attention.self.query.weight",
        "bert.encoder.layer.{i}.attention.output.dense.weight",
    ],
    "roberta": ["roberta.encoder.layer.{i}.attention.self.key.weight"],
    "mpnet": ["mpnet.encoder.layer.{i}.attention.attn.q.weight", "mpnet.encoder.layer.{i}.attention.attn.o.weight"],
    "gpt2": ["h.{i}.attn.c_proj.weight"],
    "gpt_neox": ["gpt_neox.layers.{i}.attention.dense.weight"],
    "falcon": ["transformer.h.{i}.self_attention.dense.weight"],
    "deepseek_v3": [
        "model.layers.{i}.self_attn.q_b_proj.weight",
        "model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight",
    ],
    "gguf": ["blk.{i}.attn_q.weight", "blk.{i}.attn_output.weight", "blk.{i}.attn_norm.weight"],
}


def spec_of(name: str):
    """A family's spec by config model_type; "gguf" stands for a llama GGUF (GGUF's own tensor names)."""
    return gguf_family({"general.architecture": "llama"}) if name == "gguf" else family(name)


def infos(names: dict[str, tuple[int, ...]]) -> dict[str, TensorInfo]:
    return {n: TensorInfo(n, "F32", s, "x", 0, 0) for n, s in names.items()}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_family_tables(name):
    names = {pattern.format(i=i): (8, 8) for pattern in NAMES[name] for i in range(3)}
    layout = resolve(spec_of(name), infos(names), Shape(2, 2, 4), {}, 3, "x")
    assert layout.n_layers == 3 and not layout.fallback
    assert {p.layer for p in layout.parts} == {0, 1, 2}
    assert not any("vision" in p.tensor for p in layout.parts)
    assert {p.role for p in layout.parts} & {"q", "k", "v", "o"}


def test_unknown_architecture_falls_back_to_name_patterns_and_says_so():
    names = {f"model.layers.{i}.self_attn.{r}_proj.weight": (8, 8) for i in range(2) for r in "qkvo"}
    layout = resolve(spec_of("olmo9"), infos(names), None, {}, None, "x")
    assert layout.fallback and len(layout.parts) == 8
    assert layout.family == "olmo9" and layout.spec.source == "name-patterns"


def test_no_attention_is_unsupported():
    with pytest.raises(UnsupportedError, match="no attention projections"):
        resolve(spec_of("llama"), infos({"model.layers.0.mlp.up_proj.weight": (4, 4)}), None, {}, None, "x")


def split_moments(family, name, tensor, shape, config=None):
    layout = resolve(spec_of(family), infos({name: tuple(tensor.shape)}), shape, config or {}, 1, "x")
    backend = get_backend("cpu")
    out = {}
    for part in layout.parts:
        total = Moments()
        for seg in segments(tensor, part):
            total = total + Moments.from_partial(backend.partials([seg])[0])
        out[part.role] = total
    return out


def check(out, expected: dict[str, np.ndarray]):
    assert set(out) == set(expected)
    for role, values in expected.items():
        assert out[role].count == values.size
        assert out[role].std == pytest.approx(values.astype(np.float64).std(ddof=1), rel=1e-9)


def test_phi3_concat_rows():
    q, k, v = torch.randn(8 * 4, 16), torch.randn(2 * 4, 16) * 3, torch.randn(2 * 4, 16) * 5
    out = split_moments("phi3", "model.layers.0.self_attn.qkv_proj.weight", torch.cat([q, k, v]), Shape(8, 2, 4))
    check(out, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})


def test_gpt2_conv1d_is_split_by_columns():
    q, k, v = torch.randn(16, 16), torch.randn(16, 16) * 3, torch.randn(16, 16) * 5
    fused = torch.cat([q, k, v]).T.contiguous()  # Conv1D stores [in, out]
    out = split_moments("gpt2", "h.0.attn.c_attn.weight", fused, Shape(4, 4, 4))
    check(out, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})


def test_gpt_neox_interleaves_per_head():
    heads, hd = 4, 3
    blocks = torch.randn(heads, 3, hd, 10) * torch.tensor([1.0, 3.0, 5.0]).view(1, 3, 1, 1)
    fused = blocks.reshape(heads * 3 * hd, 10)
    out = split_moments(
        "gpt_neox", "gpt_neox.layers.0.attention.query_key_value.weight", fused, Shape(heads, heads, hd)
    )
    check(out, {r: blocks[:, i].numpy() for i, r in enumerate("qkv")})


def test_falcon_grouped_query():
    groups, per_group, hd = 2, 4, 3
    blocks = torch.randn(groups, per_group + 2, hd, 10)
    blocks[:, per_group] *= 3
    blocks[:, per_group + 1] *= 5
    fused = blocks.reshape(-1, 10)
    out = split_moments(
        "falcon",
        "transformer.h.0.self_attention.query_key_value.weight",
        fused,
        Shape(groups * per_group, groups, hd),
        {"new_decoder_architecture": True},
    )
    check(
        out,
        {"q": blocks[:, :per_group].numpy(), "k": blocks[:, per_group].numpy(), "v": blocks[:, per_group + 1].numpy()},
    )


def test_deepseek_mla_kv_split():
    heads, k_dim, v_dim = 3, 4, 2
    per_head = torch.cat([torch.randn(heads, k_dim, 8), torch.randn(heads, v_dim, 8) * 4], dim=1)
    out = split_moments(
        "deepseek_v2",
        "model.layers.0.self_attn.kv_b_proj.weight",
        per_head.reshape(-1, 8),
        Shape(heads, heads, 8),
        {"qk_nope_head_dim": k_dim, "v_head_dim": v_dim},
    )
    check(out, {"k": per_head[:, :k_dim].numpy(), "v": per_head[:, k_dim:].numpy()})


def test_fused_shape_disagreeing_with_config():
    with pytest.raises(ConfigError, match="imply 48"):
        resolve(spec_of("phi3"), infos({"model.layers.0.self_attn.qkv_proj.weight": (40, 16)}), Shape(8, 2, 4),
                {}, 1, "x")


def test_depth_comes_from_tensors_and_config_cannot_inflate_it():
    names = {f"model.layers.{i}.self_attn.q_proj.weight": (8, 8) for i in range(3)}
    with pytest.raises(ConfigError, match="declares 2000000000 layers"):
        resolve(spec_of("llama"), infos(names), None, {}, 2_000_000_000, "x")
    with pytest.raises(UnsupportedError, match="layer index 99999999"):
        resolve(spec_of("llama"), infos({"model.layers.99999999.self_attn.q_proj.weight": (8, 8)}), None, {}, None, "x")
