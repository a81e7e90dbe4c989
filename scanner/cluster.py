"""Distributed scanning on Ray: a driver that feeds ``ScanWorker`` actors bounded units of work.

The work list streams through the driver (a generator: a million-line list costs no memory) and is packed
into units balanced by bytes, not count: small models share a unit up to ``unit_bytes``, a large model is
a unit of its own. Each actor holds one unit at a time, so the work in flight is bounded by the actor
count (backpressure). Actors hold a GPU each and use the Triton kernel where the cluster has GPUs, else a
CPU each.

Faults: an actor that dies is restarted by Ray (``max_restarts``); the driver re-queues its unit, split
into single models so one bad model cannot sink its neighbours, and gives a model ``max_attempts``
before recording it as an error row (``worker_died``). Errors of the application (bad files, gated
repos) are error rows from the worker itself and are not retried. The driver writes every result to the
store as units finish; a driver started again skips every (model, revision) already stored, so a resumed
batch neither redoes nor duplicates work.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scanner.errors import ScanError
from scanner.sampling import SamplePlan
from scanner.signature import Signature
from scanner.sources import name_of
from scanner.store import Store

#: Target bytes per unit: about a few seconds of scanning on one worker.
UNIT_BYTES = 2 << 30
#: Bytes assumed for a model whose size is unknown before it is opened (a Hub repo, say).
UNKNOWN_BYTES = 1 << 30
MAX_ATTEMPTS = 3
#: Failures a job keeps in memory to report (all of them are rows in the store's ``errors`` view).
KEPT_FAILURES = 1000
#: Test hook for the fault-injection tests: "MARKER_FILE:SUBSTRING" makes a worker exit abruptly on the
#: first source containing SUBSTRING, once (it creates MARKER_FILE); "always:SUBSTRING" every time.
CRASH_HOOK = "LINEAGE_TEST_CRASH"


@dataclass(frozen=True)
class WorkUnit:
    sources: tuple[str, ...]
    nbytes: int
    attempt: int = 1


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


class ScanWorker:
    """One scanning process: a moments backend, the store's done set, and one unit at a time."""

    def __init__(self, backend: str, done, force: bool, sample: SamplePlan | None, threads: int):
        import numba
        import torch

        from kernels import get_backend

        # the CPU kernel's threads match the CPUs Ray gave this actor, so workers do not fight for cores
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        torch.set_num_threads(max(1, threads))
        self.backend = get_backend(backend)
        self.done = done
        self.force = force
        self.sample = sample

    def ping(self) -> bool:
        return True

    def scan(self, unit: WorkUnit) -> tuple[list[Signature], list[tuple[str, str]]]:
        from scanner.scan import scan_one

        scanned, skipped = [], []
        for source in unit.sources:
            _crash_hook(source)
            key, sig = scan_one(source, self.backend, self.done, self.force, self.sample)
            if sig is None:
                skipped.append(key)
            else:
                scanned.append(sig)
        return scanned, skipped


def _crash_hook(source: str) -> None:
    for rule in filter(None, os.environ.get(CRASH_HOOK, "").split(",")):
        marker, _, needle = rule.partition(":")
        if needle in source and (marker == "always" or not os.path.exists(marker)):
            if marker != "always":
                Path(marker).touch()
            os._exit(13)


@dataclass(frozen=True)
class ScanRecord:
    """One scanned model, as a batch reports it (the signature itself is in the store)."""

    model: str
    revision: str
    status: str
    error: str | None
    n_layers: int | None
    bytes_read: int

    @classmethod
    def of(cls, sig: Signature) -> ScanRecord:
        return cls(sig.model, sig.revision, sig.status, sig.error, sig.n_layers, sig.bytes_read)


@dataclass
class BatchSummary:
    """What a batch did. Signatures went to the store; in memory stay counters, the failures, and, when
    ``keep_records`` (the CLI, not a million-model job), one small record per model."""

    records: list[ScanRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[ScanRecord] = field(default_factory=list)
    scanned: int = 0
    n_skipped: int = 0
    n_failed: int = 0
    bytes_read: int = 0
    retried_units: int = 0
    seconds: float = 0.0
    keep_records: bool = True

    def add(self, scanned: list[Signature], skipped: list[tuple[str, str]]) -> None:
        for sig in scanned:
            record = ScanRecord.of(sig)
            self.scanned += 1
            self.bytes_read += record.bytes_read
            if record.status != "ok":
                self.n_failed += 1
                if self.keep_records or len(self.failed) < KEPT_FAILURES:
                    self.failed.append(record)
            if self.keep_records:
                self.records.append(record)
        self.n_skipped += len(skipped)
        if self.keep_records:
            self.skipped += skipped


def connect(address: str | None = None, num_cpus: int | None = None):
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a local Ray on this machine."""
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs = {"address": address} if address else {"num_cpus": num_cpus or os.cpu_count(),
                                                      "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        ray.init(**kwargs, log_to_driver=False, logging_level="ERROR")
    return ray


def run_batch(sources: Iterable[str], store: Store, *, workers: int | None = None, address: str | None = None,
              backend: str = "auto", force: bool = False, sample: SamplePlan | None = None,
              unit_bytes: int = UNIT_BYTES, progress: bool = True, max_units: int | None = None,
              keep_records: bool = True) -> BatchSummary:
    """Scan ``sources`` on Ray actors into ``store``. ``max_units`` stops early (to test resuming)."""
    ray = connect(address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    count = workers or (gpus if gpus else max(1, cpus))
    # leave a share of a CPU free, so other Ray work (a job's driver, say) is never starved by the workers
    options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": min(1.0, cpus / (count + 1))}
    env = {k: os.environ[k] for k in (CRASH_HOOK, "HF_ENDPOINT", "HF_TOKEN", "TRITON_INTERPRET") if k in os.environ}
    remote = ray.remote(max_restarts=-1, max_task_retries=0, runtime_env={"env_vars": env})(ScanWorker)
    threads = max(1, round(cpus / count))
    args = ("triton" if gpus and backend == "auto" else backend, ray.put(store.done()), force, sample, threads)
    actors = [remote.options(**options).remote(*args) for _ in range(count)]
    summary = BatchSummary(keep_records=keep_records)
    started = time.perf_counter()
    units = plan_units(sources, unit_bytes)
    retry: deque[WorkUnit] = deque()
    idle = deque(actors)
    pending: dict = {}
    submitted = 0
    bar = _progress(progress)
    while True:
        while idle and (max_units is None or submitted < max_units):
            unit = retry.popleft() if retry else next(units, None)
            if unit is None:
                break
            actor = idle.popleft()
            pending[actor.scan.remote(unit)] = (actor, unit)
            submitted += 1
        if not pending:
            break
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        actor, unit = pending.pop(ref)
        try:
            scanned, skipped = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker died (crash, OOM, preemption) during this unit
            summary.retried_units += 1
            _requeue(unit, exc, retry, store, summary)
            idle.append(_revived(ray, actor, lambda: remote.options(**options).remote(*args)))
            continue
        idle.append(actor)
        store.write(scanned)
        summary.add(scanned, skipped)
        _report(bar, summary, started)
    summary.seconds = time.perf_counter() - started
    if bar is not None:
        bar.close()
    for actor in idle:
        ray.kill(actor)
    return summary


def _revived(ray, actor, replacement):
    """The actor once Ray has restarted it (so work never lands on a restarting actor), else a new one."""
    try:
        ray.get(actor.ping.remote(), timeout=120)
        return actor
    except ray.exceptions.RayError:
        ray.kill(actor)
        return replacement()


def _requeue(unit: WorkUnit, exc: Exception, retry: deque, store: Store, summary: BatchSummary) -> None:
    if len(unit.sources) > 1:  # isolate the culprit: each model again, on its own
        retry.extend(WorkUnit((s,), source_bytes(s), unit.attempt + 1) for s in unit.sources)
    elif unit.attempt < MAX_ATTEMPTS:
        retry.append(WorkUnit(unit.sources, unit.nbytes, unit.attempt + 1))
    else:
        source = unit.sources[0]
        sig = Signature.failed(*name_of(source), source, WorkerDied(source, unit.attempt, exc))
        store.write([sig])
        summary.add([sig], [])


class WorkerDied(ScanError):
    status = "worker_died"

    def __init__(self, source: str, attempts: int, exc: Exception):
        super().__init__(source, f"the scanning worker died {attempts} times on this model "
                                 f"({exc.__class__.__name__})")


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(desc="scan", unit="model", file=sys.stderr)


def _report(bar, summary: BatchSummary, started: float) -> None:
    """The same figures on the progress bar (a terminal) and as log lines (a Ray job's logs)."""
    elapsed = max(time.perf_counter() - started, 1e-9)
    figures = (f"done {summary.scanned + summary.n_skipped} failed {summary.n_failed} "
               f"read {summary.bytes_read / 1e9:.2f} GB ({summary.bytes_read / elapsed / 1e6:.1f} MB/s)")
    if bar is not None:
        bar.n = summary.scanned + summary.n_skipped
        bar.set_postfix_str(figures.split(" ", 2)[2])
    if not sys.stderr.isatty():
        print(f"[lineage] {figures}", file=sys.stderr, flush=True)
