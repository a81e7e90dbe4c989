"""Scan a batch of sources into the store: open, skip what is done, build, record failures, write.

One bad model never stops a batch: its error becomes a row (status, message) and the batch goes on.
Signatures are written in batches of ``flush_every`` so an interrupted run keeps what it finished,
and a re-run skips every (model, revision) already stored.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from kernels import MomentsBackend, get_backend
from scanner.errors import ScanError
from scanner.sampling import SamplePlan
from scanner.signature import Signature, build
from scanner.sources import OpenedModel, name_of, open_source
from scanner.store import Store

Key = tuple[str, str]


@dataclass
class ScanReport:
    scanned: list[Signature] = field(default_factory=list)
    skipped: list[Key] = field(default_factory=list)

    @property
    def failed(self) -> list[Signature]:
        return [s for s in self.scanned if not s.ok]


def scan_strict(source: str, backend: MomentsBackend, done: set[Key], force: bool = False,
                sample: SamplePlan | None = None) -> tuple[Key, Signature | None]:
    """Scan one source; the signature is None when (model, revision) is in ``done`` and not forced.

    Raises :class:`ScanError` on bad input.
    """
    opened = open_source(source, None if force else done)
    if not isinstance(opened, OpenedModel):  # a Hub commit already stored: skipped before reading weights
        return opened, None
    try:
        key = (opened.model, opened.revision)
        if key in done and not force:
            return key, None
        return key, build(opened, backend, sample)
    finally:
        opened.close()


def scan_one(source: str, backend: MomentsBackend, done: set[Key], force: bool = False,
             sample: SamplePlan | None = None) -> tuple[Key, Signature | None]:
    """Like :func:`scan_strict`, but bad input becomes an error signature instead of an exception."""
    try:
        return scan_strict(source, backend, done, force, sample)
    except ScanError as exc:
        sig = Signature.failed(*name_of(source), source, exc)
        return (sig.model, sig.revision), sig


def scan_sources(sources: list[str], store: Store, backend: str = "auto", force: bool = False,
                 progress: bool = True, flush_every: int = 32, sample: SamplePlan | None = None) -> ScanReport:
    impl = get_backend(backend)
    done = store.done()
    report = ScanReport()
    pending: list[Signature] = []
    bar = tqdm(sources, desc="scan", unit="model", file=sys.stderr, disable=not progress)
    for source in bar:
        key, sig = scan_one(source, impl, done, force, sample)
        if sig is None:
            report.skipped.append(key)
            continue
        report.scanned.append(sig)
        pending.append(sig)
        bar.set_postfix(failed=len(report.failed))
        if len(pending) >= flush_every:
            store.write(pending)
            pending.clear()
    store.write(pending)
    return report


def signature_for(text: str, store: Store, backend: str = "auto") -> Signature:
    """A signature for a path (scanned into the store unless already there) or a stored ``model[@rev]``."""
    if not text.startswith("hf://") and not Path(text).expanduser().exists():
        model, _, revision = text.partition("@")
        return store.load(model, revision or None)
    key, sig = scan_strict(text, get_backend(backend), store.done())
    if sig is None:
        return store.load(*key)
    store.write([sig])
    return sig
