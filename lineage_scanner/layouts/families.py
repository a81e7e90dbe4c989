"""Architecture families as data: one :class:`FamilySpec` record per family, used by every stage.

A spec says which tensors hold attention (a table from the part of a tensor name after its layer index
to a role, or to a :class:`Fused` packing), how its weights are stored (transposed Conv1D, a norm gain
stored minus one), where its attention norm sits (pre- or post-norm), and whether it is a mixture of
experts or uses multi-head latent attention. Layouts, norm folding and the guess at how one model came
from another all read these records; no stage tests a family's name.

GGUF files name tensors their own way (``blk.N.attn_q.weight``) and store weights in ``nn.Linear``
orientation with any norm offset already applied, whatever the family; :func:`gguf_family` maps a file's
``general.architecture`` onto the same families, so a GGUF export is calibrated and judged as its family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

#: Roles whose per-layer curves make up a signature; the rest are recorded in the long-form table.
CURVE_ROLES = ("q", "k", "v", "o")


@dataclass(frozen=True)
class Fused:
    """A tensor packing several roles. ``scheme`` says how rows (or columns) interleave."""

    scheme: str  # "concat" | "per_head" | "falcon" | "mla_kv"
    axis: int = 0
    suffix: str = ""  # appended to each role: "" for weights, "_bias" for biases


@dataclass(frozen=True)
class FamilySpec:
    """Everything the scanner needs to know about one architecture family."""

    name: str
    #: tensor name after ``layers.N.`` -> role, or a Fused packing of several roles
    names: Mapping[str, str | Fused]
    #: weights stored [in, out] (GPT-2's Conv1D) rather than nn.Linear's [out, in]
    transposed: bool = False
    #: added to stored norm weights to get the gain (Gemma stores gain - 1)
    norm_offset: float = 0.0
    #: the layer's attn_norm scales the attention's input (pre-norm); False for post-norm encoders
    pre_norm: bool = True
    moe: bool = False
    #: multi-head latent attention (DeepSeek-V2/V3): Q and KV through low-rank projections
    mla: bool = False
    #: ``model_type`` values of config.json that belong to the family
    model_types: tuple[str, ...] = ()
    #: ``general.architecture`` values of GGUF files converted from the family
    gguf_archs: tuple[str, ...] = ()
    #: roles whose rows a GGUF converter reordered for its rotary layout (llama.cpp does for ``llama``)
    rope_rows: tuple[str, ...] = ()
    #: how this spec was chosen: "table" (a known family) or "name-patterns" (the fallback)
    source: str = field(default="table", compare=False)


def _proj(prefix: str, q: str, k: str, v: str, o: str, norm: str, extra: dict | None = None) -> dict:
    table: dict[str, str | Fused] = {}
    for role, name in zip(CURVE_ROLES, (q, k, v, o)):
        table[f"{prefix}{name}.weight"] = role
        table[f"{prefix}{name}.bias"] = f"{role}_bias"
    table[norm] = "attn_norm"
    return {**table, **(extra or {})}


LLAMA_NAMES = _proj("self_attn.", "q_proj", "k_proj", "v_proj", "o_proj", "input_layernorm.weight",
                    {"self_attn.q_norm.weight": "q_norm", "self_attn.k_norm.weight": "k_norm"})
MLA_NAMES = {
    **LLAMA_NAMES,
    "self_attn.q_b_proj.weight": "q",
    "self_attn.q_a_proj.weight": "q_a",
    "self_attn.kv_a_proj_with_mqa.weight": "kv_a",
    "self_attn.kv_b_proj.weight": Fused("mla_kv"),
    "self_attn.q_a_layernorm.weight": "q_a_norm",
    "self_attn.kv_a_layernorm.weight": "kv_a_norm",
}
PHI3_NAMES = {**LLAMA_NAMES, "self_attn.qkv_proj.weight": Fused("concat"),
              "self_attn.qkv_proj.bias": Fused("concat", 0, "_bias")}
GPT2_NAMES = {
    "attn.c_attn.weight": Fused("concat", axis=1),
    "attn.c_attn.bias": Fused("concat", 0, "_bias"),
    "attn.c_proj.weight": "o",
    "attn.c_proj.bias": "o_bias",
    "ln_1.weight": "attn_norm",
}
GPT_NEOX_NAMES = {
    "attention.query_key_value.weight": Fused("per_head"),
    "attention.query_key_value.bias": Fused("per_head", 0, "_bias"),
    "attention.dense.weight": "o",
    "attention.dense.bias": "o_bias",
    "input_layernorm.weight": "attn_norm",
}
FALCON_NAMES = {
    "self_attention.query_key_value.weight": Fused("falcon"),
    "self_attention.dense.weight": "o",
    "input_layernorm.weight": "attn_norm",
    "ln_attn.weight": "attn_norm",
}
BERT_NAMES = _proj("attention.", "self.query", "self.key", "self.value", "output.dense",
                   "attention.output.LayerNorm.weight")
MPNET_NAMES = _proj("attention.attn.", "q", "k", "v", "o", "attention.LayerNorm.weight")
GGUF_NAMES = {
    **_proj("", "attn_q", "attn_k", "attn_v", "attn_output", "attn_norm.weight",
            {"attn_q_norm.weight": "q_norm", "attn_k_norm.weight": "k_norm"}),
    "attn_qkv.weight": Fused("concat"),
    "attn_qkv.bias": Fused("concat", 0, "_bias"),
}

SPECS = (
    FamilySpec("llama", LLAMA_NAMES, model_types=("llama",), gguf_archs=("llama",)),
    FamilySpec("mistral", LLAMA_NAMES, model_types=("mistral",)),
    FamilySpec("qwen2", LLAMA_NAMES, model_types=("qwen2",), gguf_archs=("qwen2",)),
    FamilySpec("qwen3", LLAMA_NAMES, model_types=("qwen3",), gguf_archs=("qwen3",)),
    FamilySpec("gemma", LLAMA_NAMES, norm_offset=1.0, model_types=("gemma",), gguf_archs=("gemma",)),
    FamilySpec("gemma2", LLAMA_NAMES, norm_offset=1.0, model_types=("gemma2",), gguf_archs=("gemma2",)),
    FamilySpec("gemma3", LLAMA_NAMES, norm_offset=1.0, model_types=("gemma3", "gemma3_text"),
               gguf_archs=("gemma3",)),
    FamilySpec("mixtral", LLAMA_NAMES, moe=True, model_types=("mixtral",)),
    FamilySpec("qwen2_moe", LLAMA_NAMES, moe=True, model_types=("qwen2_moe",), gguf_archs=("qwen2moe",)),
    FamilySpec("qwen3_moe", LLAMA_NAMES, moe=True, model_types=("qwen3_moe",), gguf_archs=("qwen3moe",)),
    FamilySpec("phi3", PHI3_NAMES, model_types=("phi3",), gguf_archs=("phi3",)),
    FamilySpec("gpt2", GPT2_NAMES, transposed=True, model_types=("gpt2",), gguf_archs=("gpt2",)),
    FamilySpec("gpt_neox", GPT_NEOX_NAMES, model_types=("gpt_neox",), gguf_archs=("gptneox",)),
    FamilySpec("falcon", FALCON_NAMES, model_types=("falcon",), gguf_archs=("falcon",)),
    FamilySpec("bert", BERT_NAMES, pre_norm=False, model_types=("bert",), gguf_archs=("bert",)),
    FamilySpec("roberta", BERT_NAMES, pre_norm=False, model_types=("roberta", "xlm-roberta")),
    FamilySpec("mpnet", MPNET_NAMES, pre_norm=False, model_types=("mpnet",)),
    FamilySpec("deepseek_v2", MLA_NAMES, moe=True, mla=True, model_types=("deepseek_v2",),
               gguf_archs=("deepseek2",)),
    FamilySpec("deepseek_v3", MLA_NAMES, moe=True, mla=True, model_types=("deepseek_v3",)),
)
BY_MODEL_TYPE = {t: spec for spec in SPECS for t in spec.model_types}
BY_GGUF_ARCH = {a: spec for spec in SPECS for a in spec.gguf_archs}
#: The fallback for unknown architectures: every unfused entry of every table, found by name.
PATTERNS = FamilySpec("unknown", {k: v for spec in SPECS for k, v in spec.names.items() if isinstance(v, str)},
                      source="name-patterns")


def family(model_type: str) -> FamilySpec:
    """The spec of a config.json ``model_type``; the name-pattern fallback (keeping the name) if unknown."""
    spec = BY_MODEL_TYPE.get(model_type)
    return spec if spec is not None else replace(PATTERNS, name=model_type)


def is_moe(name: str | None) -> bool:
    """Whether a stored signature's family is a mixture of experts (False for unknown families)."""
    spec = BY_MODEL_TYPE.get(name or "")
    return bool(spec and spec.moe)


#: GGUF architectures whose Q/K rows llama.cpp's converter permutes (its "normal" rotary layout).
ROPE_PERMUTED_ARCHS = ("llama",)


def gguf_family(metadata: Mapping[str, object]) -> FamilySpec:
    """The family a GGUF file was converted from, with GGUF's names and storage conventions.

    llama.cpp files Mixtral under ``llama`` with an expert count, so experts decide between the two."""
    arch = str(metadata.get("general.architecture", "unknown"))
    spec = BY_GGUF_ARCH.get(arch)
    experts = metadata.get(f"{arch}.expert_count")
    if spec is not None and spec.name == "llama" and isinstance(experts, int) and experts > 1:
        spec = BY_MODEL_TYPE["mixtral"]
    if spec is None:
        return replace(PATTERNS, name=arch, names=GGUF_NAMES)
    return replace(spec, names=GGUF_NAMES, transposed=False, norm_offset=0.0,
                   rope_rows=("q", "k") if arch in ROPE_PERMUTED_ARCHS else ())
