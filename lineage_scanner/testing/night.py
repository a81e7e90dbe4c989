"""A night's catalog for cluster tests and benches: tiny llama checkpoints on disk, served as Hub repos by
the stand-in, some of them exact re-uploads of others (as the Hub's commonest derivation is), so that a
night exercises the copy path across nodes too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lineage_scanner.testing.hub_server import Repo

LAYERS, HIDDEN, HEADS, KV_HEADS = 3, 64, 4, 2


def tiny_llama(folder: Path, seed: int) -> Path:
    """A llama-style checkpoint of LAYERS layers (attention and norms only, float32) with its config."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS
    tensors = {}
    for i in range(LAYERS):
        prefix = f"model.layers.{i}."
        shapes = {"q_proj": HIDDEN, "k_proj": KV_HEADS * head_dim, "v_proj": KV_HEADS * head_dim, "o_proj": HIDDEN}
        for name, rows in shapes.items():
            weight = rng.standard_normal((rows, HIDDEN)) * 0.02
            tensors[f"{prefix}self_attn.{name}.weight"] = weight.astype(np.float32)
        tensors[f"{prefix}input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
              "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "num_hidden_layers": LAYERS}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def night_catalog(folder: Path, originals: int, copies: int, org: str = "night") -> list[Repo]:
    """``originals`` distinct models and ``copies`` exact re-uploads of some of them, as stand-in repos with
    distinct download counts (the night takes the most downloaded first)."""
    paths = [tiny_llama(folder / f"m{i:04d}", seed=i) for i in range(originals)]
    repos = [Repo(f"{org}/model-{i:04d}", path, downloads=10_000 - i) for i, path in enumerate(paths)]
    repos += [Repo(f"{org}/reupload-{i:04d}", paths[(7 * i) % originals], downloads=5_000 - i) for i in range(copies)]
    return repos
