"""The batch loop, written once for every executor: plan units, skip what is done, scan, flush, summarise.

The work list streams through (a generator: a million-line list costs no memory) and is packed into units
balanced by bytes, not count: small models share a unit up to ``unit_bytes``, a large model is a unit of
its own. An executor (:mod:`lineage_scanner.run.local`, :mod:`lineage_scanner.run.ray`) only dispatches
units to :class:`Scanner` instances and yields their results; everything else happens here, in one place:
signatures are written as they come (every ``flush_every`` models or ``flush_seconds``, and at the end),
one bad model is an error row and the batch goes on, and a re-run skips every (model, revision) already
stored, so an interrupted batch neither redoes nor duplicates finished work.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Protocol

from lineage_scanner.errors import DeferredError, SourceError
from lineage_scanner.measure.sampling import SamplePlan
from lineage_scanner.measure.sketch import SketchKey
from lineage_scanner.readers.shared import CopyIndex, Shared, use_budget
from lineage_scanner.signature.record import Signature
from lineage_scanner.store.key import store_key
from lineage_scanner.store.store import Store

#: Target bytes per unit: about a few seconds of scanning on one worker.
UNIT_BYTES = 2 << 30
#: Bytes assumed for a model whose size is unknown before it is opened (a Hub repo, say).
UNKNOWN_BYTES = 1 << 30
#: Failures a job keeps in memory to report (all of them are rows in the store's ``errors`` view).
KEPT_FAILURES = 1000
FLUSH_EVERY = 32
FLUSH_SECONDS = 30.0

Key = tuple[str, str]


@dataclass(frozen=True)
class WorkUnit:
    sources: tuple[str, ...]
    nbytes: int
    attempt: int = 1


@dataclass(frozen=True)
class ScanConfig:
    """What every scanning process needs to know about the batch (picklable: Ray ships it to workers)."""

    backend: str = "auto"
    force: bool = False
    sample: SamplePlan | None = None
    #: the job's shared Hub rate budget and copy index (on Ray, handles to their actors); None: each
    #: process its own budget, and an index seeded with :attr:`Known.digests`
    budget: Shared | None = None
    copies: Shared | None = None
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
    """One scanning process's state (a moments backend, what the store holds) and the per-unit scan. With
    ``in_flight`` > 1 several units are scanned at once from as many threads (a Hub scan mostly waits on
    round trips), their kernels one at a time."""

    def __init__(self, config: ScanConfig, known: Known, in_flight: int = 1):
        from lineage_scanner.measure.kernels import get_backend

        use_budget(config.budget)
        backend = get_backend(config.backend)
        self.backend = OneAtATime(backend) if in_flight > 1 else backend
        self.config = config
        self.done = set(known.done)
        self.copies = config.copies or Shared(CopyIndex(known.digests))

    def scan(self, unit: WorkUnit) -> UnitResult:
        from lineage_scanner.run.scan import scan_one

        result = UnitResult()
        for source in unit.sources:
            key, sig = scan_one(source, self.backend, self.done, self.config.force, self.config.sample, self.copies,
                                self.config.key)
            if sig is None:
                result.skipped.append(key)
            else:
                result.scanned.append(sig)
        return result


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


def plan_units(sources: Iterable[str], unit_bytes: int = UNIT_BYTES) -> Iterator[WorkUnit]:
    """Pack consecutive sources into units of about ``unit_bytes``, lazily."""
    batch: list[str] = []
    size = 0
    for source in sources:
        nbytes = source_bytes(source)
        if batch and size + nbytes > unit_bytes:
            yield WorkUnit(tuple(batch), size)
            batch, size = [], 0
        batch.append(source)
        size += nbytes
    if batch:
        yield WorkUnit(tuple(batch), size)


@dataclass(frozen=True)
class ScanRecord:
    """One scanned model, as a batch reports it (the signature itself is in the store)."""

    model: str
    revision: str
    status: str
    error: str | None
    n_layers: int | None
    bytes_read: int
    sampled: bool
    layout_source: str | None
    scan_id: str

    @classmethod
    def of(cls, sig: Signature) -> ScanRecord:
        return cls(sig.model, sig.revision, sig.status, sig.error, sig.n_layers, sig.bytes_read, sig.sampled,
                   sig.layout_source, sig.scan_id)


@dataclass
class BatchSummary:
    """What a batch did. Signatures went to the store; in memory stay counters, the failures, and, when
    ``keep_records`` (the CLI, not a million-model job), one small record per model."""

    records: list[ScanRecord] = field(default_factory=list)
    skipped: list[Key] = field(default_factory=list)
    failed: list[ScanRecord] = field(default_factory=list)
    scanned: int = 0
    n_skipped: int = 0
    n_failed: int = 0
    #: models whose Hub budget ran out: rows the next ``scan --catalog`` takes first, not failures
    n_deferred: int = 0
    #: models found to be exact copies of stored ones (no weight bytes read)
    n_copies: int = 0
    bytes_read: int = 0
    retried_units: int = 0
    seconds: float = 0.0
    keep_records: bool = True

    def add(self, result: UnitResult) -> None:
        for sig in result.scanned:
            record = ScanRecord.of(sig)
            self.scanned += 1
            self.bytes_read += record.bytes_read
            self.n_copies += sig.identical_to is not None
            if record.status == "deferred":
                self.n_deferred += 1
            elif record.status != "ok":
                self.n_failed += 1
                if self.keep_records or len(self.failed) < KEPT_FAILURES:
                    self.failed.append(record)
            if self.keep_records:
                self.records.append(record)
        self.n_skipped += len(result.skipped)
        if self.keep_records:
            self.skipped += result.skipped


def choose_executor(workers: int | None, address: str | None) -> Executor:
    """Ray when it was asked for (``--workers``, ``--address``, ``RAY_ADDRESS``), else this process.

    Measured (bench/batch.py, 2 cores): in-process wins at every batch size there, small models and large
    alike, because the CPU kernel already spreads each tensor over every core and a local Ray costs
    seconds of start-up and worker imports. Ray is for clusters and GPU nodes, which only the user knows of."""
    if workers or address or os.environ.get("RAY_ADDRESS"):
        from lineage_scanner.run.ray import RayExecutor

        return RayExecutor(workers, address)
    from lineage_scanner.run.local import InProcess

    return InProcess()


def run_batch(sources: Iterable[str], store: Store, executor: Executor | None = None, *,
              config: ScanConfig = ScanConfig(), unit_bytes: int = UNIT_BYTES, progress: bool = True,
              max_units: int | None = None, keep_records: bool = True, flush_every: int = FLUSH_EVERY,
              flush_seconds: float = FLUSH_SECONDS) -> BatchSummary:
    """Scan ``sources`` into ``store`` through ``executor`` (in this process by default).
    ``max_units`` stops after that many units (to test resuming)."""
    if executor is None:
        from lineage_scanner.run.local import InProcess

        executor = InProcess()
    if config.key is None:
        config = dataclasses.replace(config, key=store_key(store))
    summary = BatchSummary(keep_records=keep_records)
    started = last_flush = time.perf_counter()
    units = plan_units(sources, unit_bytes)
    pending: list[Signature] = []
    shown = None  # from the first result on, so that a batch that cannot start prints only its error

    def flush() -> None:
        nonlocal last_flush
        store.write(pending)
        pending.clear()
        last_flush = time.perf_counter()

    copies = _Copies(store, flush)
    try:
        known = Known(frozenset(store.done()), store.digests())
        for result in executor.run(islice(units, max_units), config, known):
            shown = shown or (_Progress() if progress else None)
            settled = copies.settle(result.scanned)
            pending.extend(settled)
            summary.add(UnitResult(settled, result.skipped))
            if len(pending) >= flush_every or time.perf_counter() - last_flush >= flush_seconds:
                flush()
            if shown:
                shown.update(summary)
    finally:
        unsettled = copies.unsettled()
        pending.extend(unsettled)
        summary.add(UnitResult(unsettled))
        flush()
        if shown:
            shown.close()
    summary.retried_units = executor.retried_units
    summary.seconds = time.perf_counter() - started
    return summary


class _Copies:
    """Completes copies' signatures in the driver. A copy's stub (no bytes read) gets its original's
    measurements: from the RECENT originals this batch scanned (kept in memory), else from the store
    (writing what is pending first, if the original was scanned in this batch); a stub whose original is
    still being scanned waits for it, and one whose original failed is deferred (the next run scans it)."""

    #: Originals kept in memory for their copies: re-uploads come soon after their original, and a store
    #: lookup (DuckDB over every file) costs far more than the scan it saves on a small model.
    RECENT = 1024

    def __init__(self, store: Store, flush):
        self.store, self.flush = store, flush
        self.waiting: dict[str, list[Signature]] = {}
        self.scanned: dict[str, bool] = {}  # "model@revision" of this batch's originals -> scanned ok
        self.recent: OrderedDict[str, Signature | None] = OrderedDict()

    def settle(self, results: list[Signature]) -> list[Signature]:
        """``results`` with every copy that can be completed now completed, and those that waited for one of
        them. A stub waits (is held back) while its original is still being scanned."""
        out: list[Signature] = []

        def ready(sig: Signature) -> None:
            out.append(sig)
            key = f"{sig.model}@{sig.revision}"
            if sig.weights_digest or sig.content_digest:  # others may copy it (a copy too: a copy's re-upload)
                self.scanned[key] = sig.ok
                self.recent[key] = sig if sig.ok else None
                if len(self.recent) > self.RECENT:
                    self.recent.popitem(last=False)
            for stub in self.waiting.pop(key, []):
                ready(self._completed(stub, self.recent.get(key)))

        for sig in results:
            if sig.identical_to is None:
                ready(sig)
            elif sig.identical_to in self.recent:
                self.recent.move_to_end(sig.identical_to)
                ready(self._completed(sig, self.recent[sig.identical_to]))
            elif sig.identical_to in self.scanned:
                ready(self._completed(sig, self._original(sig.identical_to, flush=True)))
            elif (original := self._original(sig.identical_to)) is not None:
                ready(self._completed(sig, original))
            else:
                self.waiting.setdefault(sig.identical_to, []).append(sig)
        return out

    def unsettled(self) -> list[Signature]:
        """Copies whose original never came: deferred rows."""
        stubs = [stub for waiting in self.waiting.values() for stub in waiting]
        self.waiting.clear()
        return [self._completed(stub, None) for stub in stubs]

    def _original(self, key: str, flush: bool = False) -> Signature | None:
        """The stored original (after writing what is pending, when it was scanned in this batch)."""
        if flush and self.scanned[key]:
            self.flush()
        try:
            return self.store.load(*key.rsplit("@", 1))
        except SourceError:
            return None

    @staticmethod
    def _completed(stub: Signature, original: Signature | None) -> Signature:
        """The original's measurements under the copy's identity, card and provenance (the per-layer table
        stays the original's, under its scan); a deferred row when there is no original to copy."""
        if original is None:
            return dataclasses.replace(stub, status=DeferredError.status,
                                       error=f"{stub.source}: a copy of {stub.identical_to}, which did not scan; "
                                             "left for the next run")
        return dataclasses.replace(original, model=stub.model, revision=stub.revision, source=stub.source,
                                   declared_base=stub.declared_base, declared_relation=stub.declared_relation,
                                   weights_digest=stub.weights_digest, content_digest=stub.content_digest,
                                   identical_to=stub.identical_to,
                                   bytes_read=stub.bytes_read, files=stub.files, scanned_at=stub.scanned_at,
                                   scan_id=stub.scan_id,
                                   layers=(), scanner_version=stub.scanner_version)


class _Progress:
    """A bar on a terminal; elsewhere (a Ray job's log, say) one ``[lineage]`` line per result."""

    def __init__(self):
        self.started = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc="scan", unit="model", file=sys.stderr)

    def update(self, summary: BatchSummary) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        done = summary.scanned + summary.n_skipped
        figures = (f"failed {summary.n_failed} read {summary.bytes_read / 1e9:.2f} GB "
                   f"({summary.bytes_read / elapsed / 1e6:.1f} MB/s)")
        if self.bar is None:
            print(f"[lineage] done {done} {figures}", file=sys.stderr, flush=True)
        else:
            self.bar.n = done
            self.bar.set_postfix_str(figures)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
