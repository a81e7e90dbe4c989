"""The demo zoo: realistic small checkpoints with a known lineage, in several formats.

Five bases in four families (two independent llama-style bases act as same-architecture strangers),
each with a light fine-tune, a heavy continued-training drift, a pruned copy, a fine-grained MoE
upcycle and a quantized GGUF export; four also have a quantized safetensors copy (GPTQ, AWQ, fp8,
bitsandbytes NF4), and one has two function-preserving evasions (heads permuted, residual stream rotated)
whose cards claim training from scratch. Two families have grandchildren too, as families on the Hub do:
a fine-tune of the continued-training child and a quantized export of the fine-tune, each declaring the
child it was made from. ``lineage.csv`` records the truth (each model's own parent). The zoo is also the
test fixture, so it is deterministic: the same arguments always write the same bytes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from lineage_scanner.demo.derive import drift, permute_heads, prune, rotate_residual
from lineage_scanner.demo.quantize import write_quantized
from lineage_scanner.demo.writers import write_card, write_gguf, write_hf
from lineage_scanner.lineage.generator import base_model


@dataclass(frozen=True)
class Family:
    name: str
    style: str
    seed: int
    n_layers: int
    quant: str
    shards: int = 1
    #: the scheme of a quantized safetensors copy (see lineage_scanner.demo.quantize), if the family has one
    hub_quant: str | None = None
    #: whether the family also has the two function-preserving evasions (permuted heads, rotated residual)
    evasions: bool = False
    #: whether the family has grandchildren: a fine-tune of the continued-training child, a Q4_0 GGUF of the
    #: fine-tune
    grandchildren: bool = False


FAMILIES = (
    Family("llama-a", "llama", 11, 12, "Q8_0", hub_quant="gptq", evasions=True, grandchildren=True),
    Family("llama-b", "llama", 12, 12, "Q4_0", hub_quant="awq"),
    Family("qwen2-a", "qwen2", 21, 10, "Q8_0", hub_quant="fp8", grandchildren=True),
    Family("gpt2-a", "gpt2", 31, 12, "Q4_0"),
    Family("phi3-a", "phi3", 41, 8, "Q8_0", shards=2, hub_quant="bnb_nf4"),
)


@dataclass(frozen=True)
class ZooEntry:
    model: str
    parent: str | None
    relation: str  # base | finetune | continued | pruned | moe_upcycle | quantized | permuted | rotated
    path: str


def family_roots(entries: list[ZooEntry]) -> dict[str, str]:
    """Each model's family root: its parent's parent's ... first ancestor without a parent."""
    parent = {e.model: e.parent for e in entries}

    def root(model: str) -> str:
        while parent.get(model):
            model = parent[model]
        return model

    return {e.model: root(e.model) for e in entries}


def build_zoo(out: str | Path, hidden: int = 128, families: tuple[Family, ...] = FAMILIES) -> list[ZooEntry]:
    """Write the zoo under ``out`` (skipped if ``lineage.csv`` is already there) and return its truth.

    ``hidden`` and ``families`` make larger or smaller zoos (tests of sampling need larger matrices)."""
    out = Path(out)
    truth = out / "lineage.csv"
    if truth.is_file():
        return read_truth(truth)
    entries: list[ZooEntry] = []
    for fam in families:
        base = base_model(fam.name, fam.style, fam.seed, fam.n_layers, hidden=hidden)
        entries.append(_hf(base, out, None, "base", shards=fam.shards))
        tuned = drift(base, f"{fam.name}-ft", fam.seed + 100, 0.05, 0.01)
        entries.append(_hf(tuned, out, fam.name, "finetune"))
        heavy = drift(base, f"{fam.name}-ct", fam.seed + 200, 0.3, 0.08)
        entries.append(_hf(heavy, out, fam.name, "continued", declare=False))
        pruned = prune(drift(base, f"{fam.name}-pruned", fam.seed + 300, 0.05, 0.01), f"{fam.name}-pruned")
        entries.append(_hf(pruned, out, fam.name, "pruned"))
        moe = drift(base, f"{fam.name}-moe", fam.seed + 400, 0.05, 0.01)
        entries.append(_hf(moe, out, fam.name, "moe_upcycle",
                           model_type="qwen2_moe" if base.has_bias and fam.style == "qwen2" else "mixtral"))
        entries.append(_gguf(base, out, fam.quant))
        if fam.hub_quant:
            name = f"{fam.name}-{fam.hub_quant.replace('_', '-')}"
            directory = write_quantized(base.renamed(name), out / name, fam.hub_quant)
            write_card(directory, fam.name)
            entries.append(ZooEntry(name, fam.name, "quantized", str(directory)))
        if fam.grandchildren:
            entries.append(_hf(drift(heavy, f"{heavy.name}-ft", fam.seed + 700, 0.05, 0.01), out, heavy.name,
                               "finetune"))
            entries.append(_gguf(tuned, out, "Q4_0"))
        if fam.evasions:
            entries.append(_hf(permute_heads(base, f"{fam.name}-permuted", fam.seed + 500), out, fam.name, "permuted",
                               declare=False))
            entries.append(_hf(rotate_residual(base, f"{fam.name}-rotated", fam.seed + 600), out, fam.name, "rotated",
                               declare=False))
    out.mkdir(parents=True, exist_ok=True)
    tmp = truth.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "parent", "relation", "path"])
        for e in entries:
            writer.writerow([e.model, e.parent or "", e.relation, Path(e.path).relative_to(out)])
    tmp.replace(truth)
    return entries


def _hf(model, out: Path, parent: str | None, relation: str, *, declare: bool = True, shards: int = 1,
        model_type: str | None = None) -> ZooEntry:
    directory = write_hf(model, out / model.name, model_type=model_type, shards=shards)
    write_card(directory, parent if declare else None)
    return ZooEntry(model.name, parent, relation, str(directory))


def _gguf(model, out: Path, qtype: str) -> ZooEntry:
    """A quantized GGUF export of ``model``, its card declaring it."""
    name = f"{model.name}-{qtype.lower()}"
    path = write_gguf(model, out / name / f"{name}.gguf", qtype)
    write_card(path.parent, model.name)
    return ZooEntry(name, model.name, "quantized", str(path.parent))


def read_truth(path: Path) -> list[ZooEntry]:
    with path.open() as f:
        return [ZooEntry(r["model"], r["parent"] or None, r["relation"], str(path.parent / r["path"]))
                for r in csv.DictReader(f)]
