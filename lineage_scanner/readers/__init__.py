"""Checkpoint readers: local safetensors (single or sharded) and GGUF. See :class:`base.Reader`."""

from lineage_scanner.readers.base import Reader, TensorInfo

__all__ = ["Reader", "TensorInfo"]
