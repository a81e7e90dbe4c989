"""Architecture facts from a Hugging Face ``config.json`` or GGUF metadata, under one set of names."""

from __future__ import annotations

from dataclasses import dataclass

from lineage_scanner.errors import ConfigError
from lineage_scanner.layouts.families import FamilySpec, family, gguf_family
from lineage_scanner.layouts.resolve import Shape


@dataclass(frozen=True)
class ArchFacts:
    spec: FamilySpec
    architecture: str
    n_layers: int | None
    hidden_size: int | None
    n_heads: int | None
    n_kv_heads: int | None
    head_dim: int | None

    @property
    def family(self) -> str:
        return self.spec.name

    @property
    def shape(self) -> Shape | None:
        if self.n_heads and self.n_kv_heads and self.head_dim:
            return Shape(self.n_heads, self.n_kv_heads, self.head_dim)
        return None


def _first(config: dict, *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if value is not None:
            return value
    return None


def _divide(hidden: object, heads: object) -> int | None:
    """head_dim when the config leaves it implicit (hidden / heads)."""
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads == 0:
        return hidden // heads
    return None


def from_config(config: dict, fmt: str, path: str) -> ArchFacts:
    """Read sizes under their many spellings; a present but non-integer size is a config error."""
    if fmt == "gguf":
        arch = str(config.get("general.architecture", "unknown"))
        facts = ArchFacts(
            gguf_family(config), arch,
            config.get(f"{arch}.block_count"),
            config.get(f"{arch}.embedding_length"),
            config.get(f"{arch}.attention.head_count"),
            config.get(f"{arch}.attention.head_count_kv", config.get(f"{arch}.attention.head_count")),
            config.get(f"{arch}.attention.key_length") or _divide(config.get(f"{arch}.embedding_length"),
                                                                  config.get(f"{arch}.attention.head_count")),
        )
    else:
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
        cfg = {**config, **text}
        heads = _first(cfg, "num_attention_heads", "n_head", "num_heads")
        hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
        kv = _first(cfg, "num_key_value_heads", "num_kv_heads", "n_head_kv")
        if kv is None:
            kv = 1 if cfg.get("multi_query") and not cfg.get("new_decoder_architecture") else heads
        head_dim = cfg.get("head_dim") or _divide(hidden, heads)
        archs = config.get("architectures") or ["unknown"]
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ConfigError(path, f"architectures must be a list of names, got {archs!r:.80}")
        if not isinstance(cfg.get("model_type", ""), str):
            raise ConfigError(path, f"model_type must be a name, got {cfg.get('model_type')!r:.80}")
        facts = ArchFacts(family(str(cfg.get("model_type", "unknown"))), str(archs[0]),
                          _first(cfg, "num_hidden_layers", "n_layer", "num_layers"), hidden, heads, kv, head_dim)
    for name in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim"):
        value = getattr(facts, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ConfigError(path, f"{name} must be a positive integer, got {value!r}")
    return facts
