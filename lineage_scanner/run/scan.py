"""One source, scanned: open, skip what is done, build the signature, turn bad input into an error row."""

from __future__ import annotations

from lineage_scanner.errors import InternalError, ScanError
from lineage_scanner.measure.kernels import MomentsBackend
from lineage_scanner.measure.sampling import SamplePlan
from lineage_scanner.measure.sketch import SketchKey
from lineage_scanner.readers.open import CopyOf, OpenedModel, open_source
from lineage_scanner.readers.shared import Shared
from lineage_scanner.signature.build import build
from lineage_scanner.signature.record import Signature

Key = tuple[str, str]


def scan_strict(source: str, backend: MomentsBackend, done: set[Key], force: bool = False,
                sample: SamplePlan | None = None, copies: Shared | None = None,
                sketch_key: SketchKey | None = None
                ) -> tuple[Key, Signature | None]:
    """Scan one source; the signature is None when (model, revision) is in ``done`` and not forced. A Hub
    commit whose weight files another commit holds (``copies``, see :class:`lineage_scanner.readers.shared.CopyIndex`)
    is not read: its signature is a stub naming the original (``identical_to``), which the batch completes.

    Raises :class:`ScanError` on bad input.
    """
    opened = open_source(source, None if force else done, None if force else copies)
    if isinstance(opened, CopyOf):
        return (opened.model, opened.revision), Signature(
            opened.model, opened.revision, opened.source, weights_digest=opened.weights_digest,
            content_digest=opened.content_digest,
            identical_to="@".join(opened.original), declared_base=opened.declared_base,
            declared_relation=opened.declared_relation, bytes_read=opened.bytes_read, files=opened.files)
    if not isinstance(opened, OpenedModel):  # a Hub commit already stored: skipped before reading weights
        return opened, None
    try:
        key = (opened.model, opened.revision)
        if key in done and not force:
            return key, None
        return key, build(opened, backend, sample, sketch_key)
    finally:
        opened.close()


def scan_one(source: str, backend: MomentsBackend, done: set[Key], force: bool = False,
             sample: SamplePlan | None = None, copies: Shared | None = None,
             sketch_key: SketchKey | None = None
             ) -> tuple[Key, Signature | None]:
    """Like :func:`scan_strict`, but bad input becomes an error signature instead of an exception."""
    try:
        return scan_strict(source, backend, done, force, sample, copies, sketch_key)
    except Exception as exc:  # noqa: BLE001 - the error boundary: one model's bug never stops a batch
        sig = Signature.failed(source, exc if isinstance(exc, ScanError) else InternalError.of(source, exc))
        return sig.key, sig
