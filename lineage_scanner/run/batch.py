"""The batch loop, written once for every executor: plan units, skip what is done, scan, flush, summarise.

The work list streams through (a generator: a million-line list costs no memory) and is packed into units
balanced by bytes, not count: small models share a unit up to ``unit_bytes``, a large model is a unit of
its own. An executor (:mod:`lineage_scanner.run.local`, :mod:`lineage_scanner.run.ray`) only dispatches
units to :class:`lineage_scanner.run.base.Scanner` instances and yields their results; everything else
happens here, in one place: signatures are written as they come (every ``flush_every`` models or
``flush_seconds``, and at the end), one bad model is an error row and the batch goes on, and a re-run skips
every (model, revision) already stored, so an interrupted batch neither redoes nor duplicates finished work.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from lineage_scanner.errors import DeferredError, SourceError
from lineage_scanner.run.base import Executor, Key, Known, ScanConfig, UnitResult, WorkUnit, source_bytes
from lineage_scanner.signature.record import Signature
from lineage_scanner.store.key import store_key
from lineage_scanner.store.store import Store

#: Target bytes per unit: about a few seconds of scanning on one worker.
UNIT_BYTES = 2 << 30
#: Failures a job keeps in memory to report (all of them are rows in the store's ``errors`` view).
KEPT_FAILURES = 1000
FLUSH_EVERY = 32
FLUSH_SECONDS = 30.0


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
              config: ScanConfig | None = None, unit_bytes: int = UNIT_BYTES, progress: bool = True,
              max_units: int | None = None, keep_records: bool = True, flush_every: int = FLUSH_EVERY,
              flush_seconds: float = FLUSH_SECONDS) -> BatchSummary:
    """Scan ``sources`` into ``store`` through ``executor`` (in this process by default).
    ``max_units`` stops after that many units (to test resuming)."""
    config = config or ScanConfig()
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

    copies = _Copies(store, pending)
    if store.remote:
        config = dataclasses.replace(config, store=store.root)
    try:
        known = Known(frozenset(store.done()), store.digests())
        for result in executor.run(islice(units, max_units), config, known):
            if result.scanned or result.skipped:  # else a heartbeat: a slow model is still being scanned
                shown = shown or (_Progress(started) if progress else None)
                settled = copies.settle(result.scanned)
                pending.extend(s for s in settled if not (result.stored and s.identical_to is None))
                summary.add(UnitResult(settled, result.skipped))
                if shown:
                    shown.update(summary)
            if len(pending) >= flush_every or (pending and time.perf_counter() - last_flush >= flush_seconds):
                flush()
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
    measurements: from the RECENT originals this batch scanned (kept in memory), else from those not yet
    written, else from the store; a stub whose original is still being scanned waits for it, and one whose
    original failed is deferred (the next run scans it)."""

    #: Originals kept in memory for their copies: re-uploads come soon after their original, and a store
    #: lookup (DuckDB over every file) costs far more than the scan it saves on a small model.
    RECENT = 1024

    def __init__(self, store: Store, pending: list[Signature]):
        self.store, self.pending = store, pending
        self._before = None  # a connection to the store as it was before this batch: lookups in a row
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
                # the recent ones are what copies point to: originals, and re-sharded copies (other files, whose
                # own re-uploads copy them); an exact copy's files are its original's, which take its re-uploads
                if sig.identical_to is None or sig.content_digest is not None:
                    self.recent[key] = sig if sig.ok else None
                    if len(self.recent) > self.RECENT:
                        self.recent.popitem(last=False)
            for stub in self.waiting.pop(key, []):
                ready(self._completed(stub, sig if sig.ok else None))

        for sig in results:
            if sig.identical_to is None:
                ready(sig)
            elif sig.identical_to in self.recent:
                self.recent.move_to_end(sig.identical_to)
                ready(self._completed(sig, self.recent[sig.identical_to]))
            elif sig.identical_to in self.scanned:  # an original of this batch (None: it failed)
                ready(self._completed(sig, self._recall(sig.identical_to) if self.scanned[sig.identical_to] else None))
            elif (original := self._recall(sig.identical_to)) is not None:
                ready(self._completed(sig, original))
            else:
                self.waiting.setdefault(sig.identical_to, []).append(sig)
        return out

    def unsettled(self) -> list[Signature]:
        """Copies whose original never came: deferred rows (the batch is over)."""
        if self._before is not None:
            self._before.close()
            self._before = None
        stubs = [stub for waiting in self.waiting.values() for stub in waiting]
        self.waiting.clear()
        return [self._completed(stub, None) for stub in stubs]

    def _recall(self, key: str) -> Signature | None:
        """The original, not yet written or from the store, kept among the recent ones again: its other
        copies (a re-upload is seldom alone) need no lookup of their own."""
        original = next((p for p in reversed(self.pending) if p.ok and f"{p.model}@{p.revision}" == key), None)
        if original is None:
            if self._before is None:
                self._before = self.store.connect()
            try:  # stored before this batch (a night's copies are mostly of earlier nights' originals)
                original = self.store.load(*key.rsplit("@", 1), con=self._before)
            except SourceError:
                try:  # written by this batch
                    original = self.store.load(*key.rsplit("@", 1))
                except SourceError:
                    return None
        self.recent[key] = original
        if len(self.recent) > self.RECENT:
            self.recent.popitem(last=False)
        return original

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
    """A bar on a terminal; elsewhere (a Ray job's log, say) one ``[lineage]`` line per result. The rate is
    over the batch's time since ``started``, not since the first result: a batch whose first result brings
    every model (one unit) would otherwise divide its bytes by a microsecond."""

    def __init__(self, started: float):
        self.started = started
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
