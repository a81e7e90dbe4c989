"""A model as ``compare``, ``match`` and ``plot`` name it: a stored id, or a path or Hub reference to scan."""

from __future__ import annotations

from pathlib import Path

from lineage_scanner.signature.record import Signature
from lineage_scanner.sources import is_hub
from lineage_scanner.store.store import Store


def signature_for(text: str, store: Store, backend: str = "auto") -> Signature:
    """A stored ``model[@revision]``, or a path / ``hf://`` source scanned into the store unless already
    there (a read-only store only notes it could not keep it). A stored id costs no import of the scanning
    stack (torch, numba)."""
    if not is_hub(text) and not Path(text).expanduser().exists():
        model, _, revision = text.partition("@")
        return store.load(model, revision or None)
    from lineage_scanner.run.base import Known, ScanConfig, Scanner
    from lineage_scanner.store.key import store_key

    key, sig = Scanner(ScanConfig(backend, key=store_key(store)), Known(frozenset(store.done()))).strict(text)
    if sig is None:
        return store.load(*key)
    store.keep([sig])
    return sig
