"""Shared fixtures: the demo zoo (built once per session) and small hand-made checkpoints."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lineage_scanner.demo.zoo import build_zoo
from lineage_scanner.lineage.null import synthetic
from lineage_scanner.lineage.verdict import Verdict, decide


def judge(a, b) -> Verdict:
    """A verdict against the built-in synthetic null at the pair's depths (no store needed)."""
    return decide(a, b, synthetic(a.n_layers or 0, b.n_layers or 0))


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """The demo zoo's ground truth; checkpoints live under the returned entries' paths."""
    return build_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def zoo_by_name(zoo):
    return {e.model: e for e in zoo}


def llama_config(n_layers: int = 2, hidden: int = 64, heads: int = 4, kv: int = 2) -> dict:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "num_hidden_layers": n_layers,
    }


def write_llama(
    directory: Path,
    n_layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv: int = 2,
    seed: int = 0,
    dtype=torch.bfloat16,
) -> Path:
    """A tiny llama-style checkpoint directory with config.json."""
    gen = torch.Generator().manual_seed(seed)
    hd = hidden // heads
    tensors = {}
    for i in range(n_layers):
        p = f"model.layers.{i}.self_attn."
        for role, rows in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd), ("o", hidden)):
            tensors[p + f"{role}_proj.weight"] = (torch.randn(rows, hidden, generator=gen) * (0.02 * (i + 1))).to(dtype)
        tensors[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(llama_config(n_layers, hidden, heads, kv)))
    return directory


def raw_safetensors(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    """Write a safetensors file byte by byte, so tests can make it lie."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


# The synthetic null's disk cache is kept per test session, so no earlier version's scores are read.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="lineage-test-cache-")

# Without a GPU, the Triton backend runs its kernels in Triton's CPU interpreter. Set before any import
# of triton (the interpreter is chosen at import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

BACKEND_NAMES = ["cpu", "triton"]

ROOT = Path(__file__).resolve().parents[1]
