"""Real-shaped GGUF files for tests and benchmarks, written by the ``gguf`` package's own GGUFWriter.

A GGUF checkpoint from the Hub is mostly tokenizer in its header: Qwen2.5's holds 151,936 tokens, as many
token types and 151,387 merges (SentencePiece models add a float score per token). :func:`write_checkpoint`
writes such a header (a synthetic vocabulary of the same counts and string lengths) with a model's tensor
table in llama.cpp's Q4_K_M mix: Q/K/O and the MLP in Q4_K, V and the MLP's down projection in Q6_K on the
layers llama.cpp gives more bits, F32 norms and biases. Attention weights are random blocks (every byte
below 0x3C, so each fp16 scale is finite); the tensors a scan never reads (embeddings, MLP) are zeros, so
a full-size file costs little to write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GgufShape:
    """The sizes a real-shaped GGUF is written with."""

    arch: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    merges: int


#: Qwen2.5-1.5B (and Qwen2.5-Coder-1.5B), as llama.cpp converts it.
QWEN25_1_5B = GgufShape("qwen2", layers=28, hidden=1536, heads=12, kv_heads=2, ffn=8960, vocab=151_936,
                        merges=151_387)
#: Where a llama-family model stores Q/K/V/O biases (none do but Qwen2).
BIASED = ("qwen2",)


def more_bits(layer: int, layers: int) -> bool:
    """Layers whose attn_v and ffn_down llama.cpp's Q4_K_M stores in Q6_K (its ``use_more_bits``)."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def vocabulary(count: int, rng: np.random.Generator, lengths: tuple[int, int] = (1, 13)) -> list[bytes]:
    """``count`` token-like strings of 1-12 letters (a byte-level BPE vocabulary averages about 6.5)."""
    sizes = rng.integers(*lengths, count)
    letters = rng.integers(ord("a"), ord("z") + 1, int(sizes.sum()), dtype=np.uint8).tobytes()
    ends = np.cumsum(sizes).tolist()
    return [letters[end - size : end] for end, size in zip(ends, sizes.tolist())]


def random_blocks(qtype: str, rows: int, cols: int, rng: np.random.Generator | None) -> np.ndarray:
    """[rows, bytes per row] of random ``qtype`` blocks, every byte below 0x3C so that fp16 scales are
    finite; zeros without ``rng``."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    if rng is None:
        return np.zeros((rows, cols // block * type_size), np.uint8)
    return rng.integers(0, 0x3C, (rows, cols // block * type_size), dtype=np.uint8)


def _writer(path: Path, shape: GgufShape, layers: int):
    """A GGUFWriter with ``shape``'s architecture keys written."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), shape.arch)
    writer.add_name(f"real-shaped {shape.arch}")
    writer.add_block_count(layers)
    writer.add_context_length(32768)
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-6)
    return writer


def write_checkpoint(path: Path, shape: GgufShape = QWEN25_1_5B, *, layers: int | None = None,
                     everything: bool = False, scores: bool = False, seed: int = 0) -> Path:
    """A GGUF with ``shape``'s tokenizer and attention (``layers`` of them, default all); with
    ``everything``, also its embeddings and MLP (zeros) at their real sizes; with ``scores``, a float
    score per token too."""
    from gguf import GGMLQuantizationType

    rng = np.random.default_rng(seed)
    layers = shape.layers if layers is None else layers
    writer = _writer(path, shape, layers)
    writer.add_file_type(15)  # MOSTLY_Q4_K_M
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(shape.arch)
    tokens = vocabulary(shape.vocab, rng)
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (shape.vocab - 22) + [3] * 22)
    if scores:
        writer.add_token_scores(rng.standard_normal(shape.vocab).astype(np.float32).tolist())
    writer.add_token_merges([a + b" " + b for a, b in zip(tokens[: shape.merges], tokens[1 : shape.merges + 1])])
    writer.add_eos_token_id(shape.vocab - 21)
    writer.add_pad_token_id(shape.vocab - 21)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                             "{{ message['content'] }}<|im_end|>\n{% endfor %}" * 8)
    kv = shape.hidden // shape.heads * shape.kv_heads

    def add(name: str, rows: int, cols: int, qtype: str, random: bool = True) -> None:
        if qtype == "F32":
            data = rng.standard_normal(cols).astype(np.float32) * 0.1 + (1.0 if "norm" in name else 0.0)
            writer.add_tensor(name, data)
            return
        writer.add_tensor(name, random_blocks(qtype, rows, cols, rng if random else None),
                          raw_dtype=GGMLQuantizationType[qtype])

    if everything:
        add("token_embd.weight", shape.vocab, shape.hidden, "Q6_K", random=False)
    for i in range(layers):
        v_type = "Q6_K" if more_bits(i, layers) else "Q4_K"
        add(f"blk.{i}.attn_norm.weight", 1, shape.hidden, "F32")
        for role, rows, qtype in (("q", shape.hidden, "Q4_K"), ("k", kv, "Q4_K"), ("v", kv, v_type)):
            add(f"blk.{i}.attn_{role}.weight", rows, shape.hidden, qtype)
            if shape.arch in BIASED:
                add(f"blk.{i}.attn_{role}.bias", 1, rows, "F32")
        add(f"blk.{i}.attn_output.weight", shape.hidden, shape.hidden, "Q4_K")
        if everything:
            add(f"blk.{i}.ffn_norm.weight", 1, shape.hidden, "F32")
            add(f"blk.{i}.ffn_gate.weight", shape.ffn, shape.hidden, "Q4_K", random=False)
            add(f"blk.{i}.ffn_up.weight", shape.ffn, shape.hidden, "Q4_K", random=False)
            add(f"blk.{i}.ffn_down.weight", shape.hidden, shape.ffn, v_type, random=False)
    if everything:
        add("output_norm.weight", 1, shape.hidden, "F32")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_claims(path: Path, shape: GgufShape, tensors: list[tuple[str, str, tuple[int, ...]]], *,
                 holes: bool) -> Path:
    """A GGUF whose table claims ``tensors`` (name, type, numpy shape) for a one-layer ``shape``, with no
    vocabulary. With ``holes`` the file holds their bytes as zeros that take no disk (a sparse file);
    without, the file ends with its header, so every claim is a lie."""
    import os

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

    writer = _writer(path, shape, 1)
    total = 0
    for name, qtype, dims in tensors:
        kind = GGMLQuantizationType[qtype]
        block, type_size = GGML_QUANT_SIZES[kind]
        nbytes = int(np.prod(dims)) // block * type_size
        writer.add_tensor_info(name, dims, np.dtype(np.float32), nbytes, raw_dtype=kind)
        total += GGUFWriter.ggml_pad(nbytes, writer.data_alignment)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    if holes:
        os.truncate(path, GGUFWriter.ggml_pad(path.stat().st_size, writer.data_alignment) + total)
    return path
