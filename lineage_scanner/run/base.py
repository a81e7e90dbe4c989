"""What every executor shares: the records that travel between the batch loop and the scanning processes,
the :class:`Scanner` that does the per-model work, and the :class:`Executor` protocol.

As in datatrove's ``executor/base.py``, the per-unit logic is written once, here; :mod:`.local` and
:mod:`.ray` import this module and only dispatch units to Scanners, and :mod:`.batch` (the loop) imports
them. Nothing here imports an executor, so the walk along a scan goes one way: batch -> executor -> base.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lineage_scanner.errors import InternalError, ScanError
from lineage_scanner.measure.kernels import MomentsBackend, get_backend
from lineage_scanner.measure.sampling import SamplePlan
from lineage_scanner.measure.sketch import SketchKey
from lineage_scanner.readers.hub_time import Timeouts
from lineage_scanner.readers.open import open_source
from lineage_scanner.readers.open_hub import HubJob
from lineage_scanner.readers.opened import CopyOf, OpenedModel
from lineage_scanner.readers.shared import CopyIndex, RateBudget, Shared
from lineage_scanner.signature.build import build
from lineage_scanner.signature.record import Signature

#: Bytes assumed for a model whose size is unknown before it is opened (a Hub repo, say).
UNKNOWN_BYTES = 1 << 30
#: An executor waiting on a slow unit yields an empty result this often, so the loop can write what finished.
HEARTBEAT_S = 1.0

Key = tuple[str, str]


@dataclass(frozen=True)
class WorkUnit:
    sources: tuple[str, ...]
    nbytes: int
    attempt: int = 1


@dataclass(frozen=True)
class ScanConfig:
    """What every scanning process needs to know about the batch (picklable: Ray ships it to workers)."""

    #: the moments backend's name; :class:`Scanner` alone turns it into a backend, in the process that scans
    backend: str = "auto"
    force: bool = False
    sample: SamplePlan | None = None
    #: the job's shared Hub rate budget and copy index (on Ray, handles to their actors); None: each
    #: process its own budget, and an index seeded with :attr:`Known.digests`
    budget: Shared | None = None
    copies: Shared | None = None
    #: a store every scanning process reaches (an object store), which Ray workers write their units'
    #: signatures to themselves; None: the driver writes everything (a local directory may not be shared)
    store: str | None = None
    #: how long the Hub may take: per request, per stalled body, and one model's whole scan (``model_s``)
    timeouts: Timeouts = Timeouts()
    #: the store's secret sketch key (run_batch takes it from the store; it travels to Ray workers with the
    #: configuration, never in a runtime environment)
    key: SketchKey | None = None


@dataclass(frozen=True)
class Known:
    """What the store already holds, as every scanning process needs it (picklable, shipped once): the
    (model, revision) pairs scanned, and the weights digest of each original signature (a Hub commit whose
    weight files all match one is a copy: none of its bytes are read)."""

    done: frozenset[Key] = frozenset()
    digests: dict[str, Key] = field(default_factory=dict)


@dataclass
class UnitResult:
    scanned: list[Signature] = field(default_factory=list)
    skipped: list[Key] = field(default_factory=list)
    #: the originals among ``scanned`` (not copies, which the driver completes) are in the store already
    stored: bool = False


class OneAtATime:
    """A moments backend shared by threads that each scan a model: its kernels run one at a time (numba's
    parallel kernels must not be entered from two threads at once), while the threads' requests overlap."""

    def __init__(self, backend):
        self._backend, self._lock = backend, threading.Lock()

    def __getattr__(self, name: str):
        attr = getattr(self._backend, name)
        if not callable(attr):
            return attr

        def serialised(*args, **kwargs):
            with self._lock:
                return attr(*args, **kwargs)
        return serialised


class Scanner:
    """One scanning process's state (a moments backend, what the store holds) and the per-model scan. With
    ``in_flight`` > 1 several units are scanned at once from as many threads (a Hub scan mostly waits on
    round trips), their kernels one at a time.

    The one place a backend is chosen: from ``config.backend`` by :func:`get_backend`'s rule, in the process
    that runs the kernels (a Ray worker on a GPU node picks Triton there, whatever the driver has), unless
    the caller hands over a ``backend`` it already holds (a test's, a benchmark's). ``hub``: the job's Hub
    state (rate budget, copy index, deadlines) where the caller shares one across scanners."""

    def __init__(self, config: ScanConfig, known: Known = Known(), in_flight: int = 1,
                 backend: MomentsBackend | None = None, hub: HubJob | None = None):
        if backend is None:
            backend = get_backend(config.backend)
        self.backend = OneAtATime(backend) if in_flight > 1 else backend
        self.config = config
        self.done = set(known.done)
        self.hub = hub or HubJob(config.budget or Shared(RateBudget()),
                                 config.copies or Shared(CopyIndex(known.digests)), config.timeouts)

    def scan(self, unit: WorkUnit) -> UnitResult:
        result = UnitResult()
        for source in unit.sources:
            key, sig = self.scan_one(source)
            if sig is None:
                result.skipped.append(key)
            else:
                result.scanned.append(sig)
        return result

    def scan_one(self, source: str) -> tuple[Key, Signature | None]:
        """Like :meth:`strict`, but bad input becomes an error signature instead of an exception."""
        try:
            return self.strict(source)
        except Exception as exc:  # noqa: BLE001 - the error boundary: one model's bug never stops a batch
            sig = Signature.failed(source, exc if isinstance(exc, ScanError) else InternalError.of(source, exc))
            return sig.key, sig

    def strict(self, source: str) -> tuple[Key, Signature | None]:
        """Scan one source; the signature is None when (model, revision) is done and not forced. A Hub commit
        whose weight files another commit holds (see :class:`lineage_scanner.readers.shared.CopyIndex`) is not
        read: its signature is a stub naming the original (``identical_to``), which the batch completes.

        Raises :class:`ScanError` on bad input.
        """
        force = self.config.force
        hub = dataclasses.replace(self.hub, copies=None) if force else self.hub
        opened = open_source(source, None if force else self.done, hub)
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
            if key in self.done and not force:
                return key, None
            return key, build(opened, self.backend, self.config.sample, self.config.key)
        finally:
            opened.close()


class Executor(Protocol):
    """Runs units through Scanners somewhere and yields their results, in any order."""

    #: units run again after their worker was lost
    retried_units: int

    def run(self, units: Iterator[WorkUnit], config: ScanConfig, known: Known) -> Iterator[UnitResult]: ...


def source_bytes(source: str) -> int:
    """Size on disk of a local checkpoint's weights; UNKNOWN_BYTES for remote or unreadable ones."""
    path = Path(source)
    try:
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".gguf"))
    except OSError:
        pass
    return UNKNOWN_BYTES
