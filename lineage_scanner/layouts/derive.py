"""A config for a Hub commit without fetching its config.json, where the weights' shapes tell the rest.

The Hub counts every GET or HEAD of a repo's ``config.json`` as a download of the model, so a scan that
fetched it would add a download to every model it reads. The Hub's listing and model info already carry
the fields that choose the layout (``model_type``, ``architectures``, ``quantization_config``); what they
lack, the sizes, the headers' shapes give: the hidden size from O's rows, and where Q/K norms are per head
(Qwen3, Gemma 3), the head size and so the head counts. config.json is fetched only for what only it holds:
a fused QKV tensor (split by the head counts), multi-head latent attention (its head sizes), or an
architecture this scanner does not know (a multimodal config may nest a known one in ``text_config``); and
for deep verification, which must compare the attention circuits, the head size where no shape tells it
(one counted download per model verified, at a user's query; a scan never pays it).
"""

from __future__ import annotations

from collections.abc import Callable

from lineage_scanner.layouts.families import FamilySpec, Fused, family
from lineage_scanner.layouts.resolve import LAYER_NAME, NOT_LANGUAGE
from lineage_scanner.readers.base import TensorInfo

#: Config fields any of which gives the head size (with the hidden size): see lineage_scanner.layouts.arch.
HEAD_FIELDS = ("head_dim", "num_attention_heads", "n_head", "num_heads")


def complete_config(config: dict, tensors: dict[str, TensorInfo], fetch: Callable[[], dict] | None,
                    heads: bool = False) -> dict:
    """``config`` as given, when it is a config.json (``fetch`` None); else the Hub's extract completed from
    the shapes, or config.json itself (``fetch()``) where the layout needs what only it holds, or, with
    ``heads`` (a read that must carry the attention circuits), where the shapes do not give the head size."""
    if fetch is None:
        return config
    spec = family(str(config.get("model_type", "unknown")))
    if config_needed(spec, tensors):
        return fetch()
    completed = {**config, **sizes(spec, tensors)}
    if heads and not any(k in completed for k in HEAD_FIELDS):
        return fetch()
    return completed


def config_needed(spec: FamilySpec, tensors: dict[str, TensorInfo]) -> str | None:
    """Why the layout needs config.json for these tensors (None: it does not)."""
    if spec.source != "table":
        return f"architecture {spec.name!r} is not in the family table"
    if spec.mla:
        return "multi-head latent attention needs its head sizes"
    for name in tensors:
        match = LAYER_NAME.match(name)
        if match and not NOT_LANGUAGE.search(name) and isinstance(spec.names.get(match.group(2)), Fused):
            return f"{name} is fused; its split needs the head counts"
    return None


def sizes(spec: FamilySpec, tensors: dict[str, TensorInfo]) -> dict:
    """The config's size fields the first layer's attention shapes determine: ``hidden_size`` always, the
    head size and counts where a per-head Q norm gives the head size."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in tensors.items():
        match = LAYER_NAME.match(name)
        if match and match.group(1) == "0" and not NOT_LANGUAGE.search(name):
            role = spec.names.get(match.group(2))
            if isinstance(role, str) and role not in shapes:
                shapes[role] = info.shape
    out: dict = {}
    o, q, k = shapes.get("o", ()), shapes.get("q", ()), shapes.get("k", ())
    if len(o) == 2:
        out["hidden_size"] = o[1] if spec.transposed else o[0]
    head = shapes.get("q_norm", ())
    if len(head) == 1 and len(q) == 2 and len(k) == 2 and head[0] > 0 and q[0] % head[0] == 0 == k[0] % head[0]:
        out |= {"head_dim": head[0], "num_attention_heads": q[0] // head[0], "num_key_value_heads": k[0] // head[0]}
    return out
