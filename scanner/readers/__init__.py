"""Checkpoint readers: local safetensors (single or sharded) and GGUF. See :class:`base.Reader`."""

from scanner.readers.base import Reader, TensorInfo

__all__ = ["Reader", "TensorInfo"]
