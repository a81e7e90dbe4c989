"""Small llama-style models actually trained on this CPU, for the accuracy and tree benchmarks.

Generated curves can make unrelated models too easy to tell apart. These are real: one architecture,
one recipe and one corpus, different seeds; each base gets children by real further training (a short
fine-tune on other text, a long continued pre-training on a third corpus) and grandchildren (a fine-tune
of the continued model, a second fine-tune of the fine-tune), so a family is a tree two generations deep,
as on the Hub. The corpus is the Python standard library's source, bytes as tokens, split three ways by
file name, so everything runs offline.

Encoders too (BERT-style, masked-byte prediction): five shapes from 4 to 12 layers and hidden 64 to 128,
each trained from scratch, two of them fine-tuned.

    python bench/tiny_train.py --out bench/data/trained --bases 4 --strangers 8 --encoders  # for bench/accuracy.py
    python bench/tiny_train.py --out bench/data/trained --bases 2 --strangers 2             # for bench/trees.py
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lineage_scanner.lineage.generator import ToyModel

HIDDEN, HEADS, KV_HEADS, LAYERS, FFN, VOCAB, CONTEXT = 96, 4, 2, 10, 256, 256, 64
#: Progress lines, shown as they happen even when the output is a file.
LOG = functools.partial(print, flush=True)


@dataclass(frozen=True)
class Recipe:
    steps: int
    lr: float
    corpus: int  # which third of the standard library


PRETRAIN = Recipe(700, 3e-3, 0)
FINETUNE = Recipe(120, 5e-4, 1)
CONTINUED = Recipe(600, 2e-3, 2)
#: A fine-tune of a fine-tune, on the third corpus (what the first fine-tune did not see).
SECOND_FINETUNE = Recipe(120, 5e-4, 2)


def corpus(part: int, limit: int = 8 << 20) -> torch.Tensor:
    """Up to ``limit`` bytes of the standard library's ``.py`` files whose name hashes to ``part`` (of 3)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or int(hashlib.sha256(path.name.encode()).hexdigest(), 16) % 3 != part:
            continue
        data = path.read_bytes()
        chunks.append(data)
        size += len(data)
        if size >= limit:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8).to(torch.long)


def rope(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding over the last dimension of [batch, heads, time, head_dim]."""
    t, d = x.shape[-2], x.shape[-1]
    freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    angle = torch.arange(t, dtype=torch.float32)[:, None] * freq[None, :]
    cos, sin = angle.cos(), angle.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        hd = HIDDEN // HEADS
        self.attn_norm, self.mlp_norm = nn.RMSNorm(HIDDEN), nn.RMSNorm(HIDDEN)
        self.q, self.o = nn.Linear(HIDDEN, HEADS * hd, bias=False), nn.Linear(HEADS * hd, HIDDEN, bias=False)
        self.k, self.v = (nn.Linear(HIDDEN, KV_HEADS * hd, bias=False) for _ in range(2))
        self.gate, self.up = (nn.Linear(HIDDEN, FFN, bias=False) for _ in range(2))
        self.down = nn.Linear(FFN, HIDDEN, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        hd = HIDDEN // HEADS
        h = self.attn_norm(x)
        q = rope(self.q(h).view(b, t, HEADS, hd).transpose(1, 2))
        k = rope(self.k(h).view(b, t, KV_HEADS, hd).transpose(1, 2))
        v = self.v(h).view(b, t, KV_HEADS, hd).transpose(1, 2)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, HIDDEN))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class TinyLlama(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.RMSNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)
        for p in self.parameters():  # the llama recipe: N(0, 0.02) for every matrix, norms at 1
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def train(model: TinyLlama, recipe: Recipe, seed: int, batch: int = 24) -> float:
    """AdamW with warm-up and cosine decay on random windows of the recipe's corpus; returns the last loss."""
    data = corpus(recipe.corpus)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(recipe.steps // 20, 1)
    loss = torch.tensor(math.nan)
    for step in range(recipe.steps):
        lr = recipe.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, data.numel() - CONTEXT - 1, (batch,), generator=gen)
        window = data[starts[:, None] + torch.arange(CONTEXT + 1)]
        loss = F.cross_entropy(model(window[:, :-1]).reshape(-1, VOCAB), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return loss.item()


def as_toy(model: TinyLlama, name: str) -> ToyModel:
    """The trained weights as a demo-zoo model, so every writer and transformation applies to them."""
    def w(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.float32).numpy().copy()

    toy = ToyModel(name, "llama", HIDDEN, HEADS, KV_HEADS, FFN, VOCAB, embed=w(model.embed.weight))
    for b in model.blocks:
        toy.layers.append({"q": w(b.q.weight), "k": w(b.k.weight), "v": w(b.v.weight), "o": w(b.o.weight),
                           "attn_norm": w(b.attn_norm.weight), "mlp_norm": w(b.mlp_norm.weight),
                           "gate": w(b.gate.weight), "up": w(b.up.weight), "down": w(b.down.weight)})
    return toy


#: Each trained relative: the relative it is trained from and the recipe, in training order.
RELATIONS: dict[str, tuple[str, Recipe] | None] = {
    "base": None,
    "finetune": ("base", FINETUNE),
    "continued": ("base", CONTINUED),
    "continued-finetune": ("continued", FINETUNE),
    "finetune-finetune": ("finetune", SECOND_FINETUNE),
}


def trained_family(seed: int, children: bool = True, log=LOG) -> dict[str, ToyModel]:
    """A base trained from scratch with ``seed`` and (``children``) its trained children and grandchildren
    (:data:`RELATIONS`): {relation: model}."""
    name = f"trained-{seed}"
    model = TinyLlama(seed)
    started = time.perf_counter()
    loss = train(model, PRETRAIN, seed)
    out = {"base": as_toy(model, name)}
    log(f"{name}: pre-trained {PRETRAIN.steps} steps, loss {loss:.3f} ({time.perf_counter() - started:.0f} s)")
    states = {"base": {k: v.clone() for k, v in model.state_dict().items()}}
    for relation, made in RELATIONS.items() if children else ():
        if made is None:
            continue
        parent, recipe = made
        model.load_state_dict(states[parent])
        loss = train(model, recipe, seed + (1000 if parent == "base" else 2000))
        states[relation] = {k: v.clone() for k, v in model.state_dict().items()}
        out[relation] = as_toy(model, f"{name}-{relation}")
        log(f"{name}-{relation}: {recipe.steps} more steps from {parent}, loss {loss:.3f}")
    return out


def ensure_family(out: Path, seed: int, children: bool = True, only: tuple[str, ...] | None = None
                  ) -> dict[str, ToyModel]:
    """The family of ``seed`` (without ``children``: the base alone; with ``only``: those relations): trained
    and written under ``out`` once, read back from there afterwards (a family trained before a relation
    was added is trained again only by a caller that needs the new relation)."""
    from lineage_scanner.demo.writers import write_hf

    names = {r: f"trained-{seed}" if r == "base" else f"trained-{seed}-{r}" for r in RELATIONS
             if (children or r == "base") and (only is None or r in only)}
    if not all((out / name / "config.json").is_file() for name in names.values()):
        for model in trained_family(seed, children).values():
            write_hf(model, out / model.name)
    return {relation: load_toy(out / name) for relation, name in names.items()}


def load_toy(directory: Path) -> ToyModel:
    """A checkpoint written by :func:`lineage_scanner.demo.writers.write_hf` (llama style), back as a ToyModel."""
    from safetensors.torch import load_file

    t = {k: v.to(torch.float32).numpy() for k, v in load_file(directory / "model.safetensors").items()}
    toy = ToyModel(directory.name, "llama", HIDDEN, HEADS, KV_HEADS, FFN, VOCAB, embed=t["model.embed_tokens.weight"])
    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
             "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm", "gate": "mlp.gate_proj",
             "up": "mlp.up_proj", "down": "mlp.down_proj"}
    for i in range(LAYERS):
        toy.layers.append({key: t[f"model.layers.{i}.{name}.weight"] for key, name in names.items()})
    return toy


@dataclass(frozen=True)
class EncoderShape:
    layers: int
    hidden: int
    heads: int


#: Encoders of different depths and widths, each trained from scratch: the negatives whose curves align
#: once the alignment may skip layers (a 6-layer and a 12-layer model of different widths).
ENCODERS = (EncoderShape(4, 64, 4), EncoderShape(6, 96, 4), EncoderShape(6, 128, 4), EncoderShape(8, 64, 4),
            EncoderShape(12, 96, 4))
ENCODER_PRETRAIN = Recipe(400, 2e-3, 0)
ENCODER_FINETUNE = Recipe(100, 5e-4, 1)
MASK = 0  # the byte that stands for a masked token (NUL never occurs in the corpus)


class TinyEncoder(nn.Module):
    """A BERT-style encoder (post-norm, biases, GELU), bidirectional, trained by masked-byte prediction."""

    def __init__(self, shape: EncoderShape, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.shape = shape
        layer = nn.TransformerEncoderLayer(shape.hidden, shape.heads, 4 * shape.hidden, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=False)
        self.embed = nn.Embedding(VOCAB, shape.hidden)
        self.position = nn.Embedding(CONTEXT, shape.hidden)
        self.blocks = nn.TransformerEncoder(layer, shape.layers, enable_nested_tensor=False)
        self.head = nn.Linear(shape.hidden, VOCAB)
        for p in self.parameters():  # BERT's recipe: N(0, 0.02) for every matrix
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position(torch.arange(tokens.shape[1]))
        return self.head(self.blocks(x))


def train_encoder(model: TinyEncoder, recipe: Recipe, seed: int, batch: int = 24) -> float:
    """Masked-byte prediction (15% of positions) with AdamW on the recipe's corpus; returns the last loss."""
    data = corpus(recipe.corpus)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    loss = torch.tensor(math.nan)
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = recipe.lr * min(1.0, (step + 1) / 20) * (1 - step / recipe.steps)
        starts = torch.randint(0, data.numel() - CONTEXT, (batch,), generator=gen)
        window = data[starts[:, None] + torch.arange(CONTEXT)]
        masked = torch.rand(window.shape, generator=gen) < 0.15
        logits = model(window.masked_fill(masked, MASK))
        loss = F.cross_entropy(logits[masked], window[masked])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


def write_encoder(model: TinyEncoder, directory: Path) -> Path:
    """The encoder as a Hugging Face BERT checkpoint (``bert.encoder.layer.N.*``), bf16."""
    from safetensors.torch import save_file

    h = model.shape.hidden
    t = {"bert.embeddings.word_embeddings.weight": model.embed.weight,
         "bert.embeddings.position_embeddings.weight": model.position.weight}
    for i, block in enumerate(model.blocks.layers):
        p = f"bert.encoder.layer.{i}."
        w, b = block.self_attn.in_proj_weight, block.self_attn.in_proj_bias
        for k, name in enumerate(("query", "key", "value")):
            t[p + f"attention.self.{name}.weight"] = w[k * h : (k + 1) * h]
            t[p + f"attention.self.{name}.bias"] = b[k * h : (k + 1) * h]
        t[p + "attention.output.dense.weight"] = block.self_attn.out_proj.weight
        t[p + "attention.output.dense.bias"] = block.self_attn.out_proj.bias
        t[p + "attention.output.LayerNorm.weight"] = block.norm1.weight
        t[p + "attention.output.LayerNorm.bias"] = block.norm1.bias
        t[p + "intermediate.dense.weight"] = block.linear1.weight
        t[p + "output.dense.weight"] = block.linear2.weight
        t[p + "output.LayerNorm.weight"] = block.norm2.weight
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.bfloat16).contiguous() for k, v in t.items()}, directory / "model.safetensors")
    config = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": h,
              "num_hidden_layers": model.shape.layers, "num_attention_heads": model.shape.heads,
              "intermediate_size": 4 * h, "vocab_size": VOCAB, "max_position_embeddings": CONTEXT}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def ensure_encoders(out: Path, fine_tuned: int = 2, log=LOG) -> dict[str, tuple[Path, str | None]]:
    """Every encoder of ENCODERS trained from scratch (its own seed) and the first ``fine_tuned`` also
    fine-tuned on other text; written under ``out`` once. Returns {name: (path, parent or None)}."""
    models: dict[str, tuple[Path, str | None]] = {}
    for k, shape in enumerate(ENCODERS):
        name = f"encoder-{shape.layers}x{shape.hidden}"
        base, child = out / name, out / f"{name}-finetune"
        if not (base / "config.json").is_file() or (k < fine_tuned and not (child / "config.json").is_file()):
            model = TinyEncoder(shape, 500 + k)
            log(f"{name}: pre-trained, loss {train_encoder(model, ENCODER_PRETRAIN, 500 + k):.3f}")
            write_encoder(model, base)
            if k < fine_tuned:
                log(f"{name}-finetune: loss {train_encoder(model, ENCODER_FINETUNE, 600 + k):.3f}")
                write_encoder(model, child)
        models[name] = (base, None)
        if k < fine_tuned:
            models[f"{name}-finetune"] = (child, name)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/data/trained")
    parser.add_argument("--bases", type=int, default=4, help="bases trained with their children")
    parser.add_argument("--strangers", type=int, default=8, help="more bases, trained alone")
    parser.add_argument("--encoders", action="store_true", help="also train the encoders of other shapes")
    args = parser.parse_args()
    for seed in range(args.bases):
        ensure_family(Path(args.out), seed)
    for seed in range(args.bases, args.bases + args.strangers):
        ensure_family(Path(args.out), seed, children=False)
    if args.encoders:
        ensure_encoders(Path(args.out))


if __name__ == "__main__":
    main()
