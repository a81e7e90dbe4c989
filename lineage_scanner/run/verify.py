"""Deep verification: both models read again at positions nobody could know in advance, judged by what was
read.

A store's key is a secret, but secrets leak, and a store's older sketches may sit at positions anyone can
compute. So a verdict that rests on channels that disagree, that would call two models' weights identical,
or that says "unrelated" from stored positions alone while the curves do not or the models are small (all a
scrub aimed with a leaked key leaves behind), is checked by reading both models again (locally by mmap, from
the Hub by range reads) under a key drawn at query time from the operating system's random source:
VERIFY_RUNS runs of VERIFY_RUN values per matrix (eight times a stored sketch), every matched residual pair
of the circuits, their Gram on as many layers as VERIFY_GRAM_BYTES holds, and a SHA-256 of every attention
value. The verdict on what was read follows the same rules as any other
(:func:`lineage_scanner.lineage.verdict.decide`); "identical weights" then rests on the two digests, which
read everything.

What it costs: one exact scan of each model (every attention byte: about 2.7 GB for a 7B model in bf16;
on the Hub, one request per weight file's header and one per run of adjacent tensors), plus the digest and
the circuits (a few seconds per 7B model on two cores). See the README's threat model for measured figures.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from lineage_scanner.errors import LineageError, SourceError
from lineage_scanner.measure.sketch import SketchKey
from lineage_scanner.signature.record import Signature

if TYPE_CHECKING:  # a verdict on stored signatures imports none of the scanning stack (torch, numba)
    from lineage_scanner.measure.kernels import MomentsBackend

VERIFY_RUNS = 256
VERIFY_RUN = 16
#: every matched pair a model's width allows
VERIFY_PAIRS = 1 << 20
VERIFY_GRAM_BYTES = 2 << 30


@dataclass(frozen=True)
class Verification:
    """What deep verification read and found (``identical``: the two digests of every attention value agree;
    None where some part could not be read whole)."""

    key_id: str
    values_per_matrix: int
    bytes_read: int
    seconds: float
    identical: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


def verification_key() -> SketchKey:
    """A fresh key reading at verification's sizes."""
    return SketchKey.fresh(runs=VERIFY_RUNS, run=VERIFY_RUN, circuit_pairs=VERIFY_PAIRS,
                           gram_bytes=VERIFY_GRAM_BYTES, digest=True)


def reread(sig: Signature, backend: MomentsBackend, key: SketchKey) -> Signature:
    """``sig``'s model read again in full under ``key``; an error if its source is gone or no longer holds the
    weights that were scanned (a local checkpoint changed since: its revision moved)."""
    from lineage_scanner.readers.open import open_source
    from lineage_scanner.readers.opened import OpenedModel
    from lineage_scanner.signature.build import build

    try:
        opened = open_source(sig.source)
    except LineageError as exc:
        raise SourceError(sig.source, f"cannot be read again to verify: {exc}") from None
    if not isinstance(opened, OpenedModel):
        raise SourceError(sig.source, "cannot be read again to verify")
    try:
        if opened.revision != sig.revision:
            raise SourceError(sig.source, f"changed since it was scanned (revision {opened.revision}, stored "
                                          f"{sig.revision}): scan it again before verifying")
        fresh = build(opened, backend, None, key)
    finally:
        opened.close()
    fresh.model, fresh.revision = sig.model, sig.revision
    return fresh


def verify(a: Signature, b: Signature, backend: MomentsBackend) -> tuple[Signature, Signature, Verification]:
    """Both models read again under one fresh key: their fresh signatures and what was read."""
    key = verification_key()
    started = time.perf_counter()
    fresh_a, fresh_b = reread(a, backend, key), reread(b, backend, key)
    digests = fresh_a.attention_digest, fresh_b.attention_digest
    identical = None if None in digests else digests[0] == digests[1]
    return fresh_a, fresh_b, Verification(key.id, VERIFY_RUNS * VERIFY_RUN, fresh_a.bytes_read + fresh_b.bytes_read,
                                          time.perf_counter() - started, identical)


#: Attention values per model up to which ``compare`` re-reads a stored "unrelated" between models of one shape
#: even where the curves agree with it (about 128 MB of bf16, a model up to about a billion parameters: a
#: few seconds). Whoever holds a store's key can blank every stored weight channel by replacing what the key
#: reads; on a narrow model that is most of the attention and can move the curves too, but fresh positions
#: still land on what is left. Beyond this size "unrelated" is re-read where the curves do not agree with it.
CHEAP_VALUES = 64 << 20


def judge(a: Signature, b: Signature, store, backend: str = "auto", mode: str = "auto", null=None):
    """The verdict on two signatures, verified at fresh positions when ``mode`` is "always", or "auto" and the
    stored evidence asks for it (:attr:`~lineage_scanner.lineage.verdict.Verdict.wants_verification`, or an
    "unrelated" between models of one shape small enough to re-read cheaply: :data:`CHEAP_VALUES`); "never"
    keeps to the stored sketches. An automatic verification that cannot read a model again leaves the stored
    verdict, saying why; an asked-for one raises. ``null``: the curves' reference null (default: the
    store's)."""
    from lineage_scanner.lineage.null import null_for
    from lineage_scanner.lineage.verdict import decide
    from lineage_scanner.measure.kernels import get_backend

    null = null if null is not None else null_for(store, a, b)
    stored = decide(a, b, null)
    cheap = stored.verdict == "unrelated" and stored.sketch is not None and max(_values(a), _values(b)) <= CHEAP_VALUES
    if mode == "never" or (mode == "auto" and not (stored.wants_verification or cheap)):
        return stored
    try:
        fresh_a, fresh_b, report = verify(a, b, get_backend(backend))
    except LineageError as exc:
        if mode == "always":
            raise
        stored.verification = {"ran": False, "why": str(exc)}
        return stored
    found = {"ran": True, **report.to_dict(), "stored_verdict": stored.verdict, "stored_kind": stored.kind,
             "stored_conflict": stored.conflict}
    verified = decide(fresh_a, fresh_b, null, verification=found)
    verified.a, verified.b = stored.a, stored.b
    return verified


def _values(sig: Signature) -> int:
    """How many attention values a model holds (its value sketches carry each matrix's shape)."""
    return sum(p.rows * p.cols for p in sig.sketch or () if p.kind == "values")
