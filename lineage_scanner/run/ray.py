"""The Ray executor: ``ScanWorker`` actors on a cluster (or a local Ray), fed one unit at a time.

Each actor holds one unit at a time, so the work in flight is bounded by the actor count (backpressure).
Actors hold a GPU each and use the Triton kernel where the cluster has GPUs, else a CPU each. The batch
loop itself (:func:`lineage_scanner.run.batch.run_batch`) is the same as in-process; this module only
dispatches.

Faults: an actor that dies is restarted by Ray (``max_restarts``); the executor re-queues its unit, split
into single models so one bad model cannot sink its neighbours, and gives a model ``max_attempts``
before yielding it as an error row (``worker_died``). Errors of the application (bad files, gated repos)
are error rows from the worker itself and are not retried.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from lineage_scanner.errors import InternalError, ScanError
from lineage_scanner.readers.shared import CopyIndex, RateBudget, Shared
from lineage_scanner.run.batch import HEARTBEAT_S, Known, ScanConfig, Scanner, UnitResult, WorkUnit, source_bytes
from lineage_scanner.signature.record import Signature

MAX_ATTEMPTS = 3
#: Test hook for the fault-injection tests: "MARKER_FILE:SUBSTRING" makes a worker exit abruptly on a
#: unit holding a source containing SUBSTRING, once (it creates MARKER_FILE); "always:SUBSTRING" every time.
CRASH_HOOK = "LINEAGE_TEST_CRASH"
#: Variables the workers need from the driver's environment. Never a secret: Ray logs runtime_env in
#: clear text. Workers read HF_TOKEN from their own environment or the Hub client's token file.
WORKER_ENV = (CRASH_HOOK, "HF_ENDPOINT", "TRITON_INTERPRET")


class JobState(RateBudget, CopyIndex):
    """A job's Hub rate budget and copy index in one actor: one process fewer to start per batch (on a
    small machine, starting processes is most of what a short batch costs on Ray)."""

    def __init__(self, known: dict):
        RateBudget.__init__(self)
        CopyIndex.__init__(self, known)

    def reset(self, known: dict) -> None:
        """Start another batch's copy index (the rate budget carries on: the Hub's windows do)."""
        CopyIndex.__init__(self, known)


class ScanWorker:
    """One scanning process on Ray: a :class:`Scanner` whose threads match the CPUs Ray gave it."""

    def __init__(self, config: ScanConfig, known: Known, threads: int, in_flight: int = 1):
        import numba

        # the CPU kernel's threads match the CPUs Ray gave this actor, so workers do not fight for cores
        self.threads = threads
        self.in_flight = in_flight
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        self.scanner = Scanner(config, known, in_flight)

    def reset(self, config: ScanConfig, known: Known) -> None:
        """Serve another batch (a kept worker: its process, imports and loaded kernels stay)."""
        self.scanner = Scanner(config, known, self.in_flight)

    def ping(self) -> bool:
        return True

    def scan(self, unit: WorkUnit) -> UnitResult:
        import numba

        numba.set_num_threads(max(1, min(self.threads, numba.config.NUMBA_NUM_THREADS)))  # per calling thread
        for source in unit.sources:
            _crash_hook(source)
        return self.scanner.scan(unit)


def _crash_hook(source: str) -> None:
    for rule in filter(None, os.environ.get(CRASH_HOOK, "").split(",")):
        marker, _, needle = rule.partition(":")
        if needle in source and (marker == "always" or not os.path.exists(marker)):
            if marker != "always":
                Path(marker).touch()
            os._exit(13)


def connect(address: str | None = None, num_cpus: int | None = None):
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a local Ray on this machine."""
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        # Ray starts workers at nice 15: on a machine whose cores anything else uses, the scan would starve
        # (30x slower beside two busy processes here). A Ray started by ``ray start`` takes the same from
        # RAY_worker_niceness=0 (see cluster.yaml).
        # "local": a Ray of our own, never one that another program happens to run on this machine (Ray's
        # default for no address is to join the newest one it finds).
        kwargs = {"address": address} if address else {"address": "local", "num_cpus": num_cpus or os.cpu_count(),
                                                      "include_dashboard": False, "_node_ip_address": "127.0.0.1",
                                                      "_system_config": {"worker_niceness": 0}}
        ray.init(**kwargs, log_to_driver=False, logging_level="ERROR")
    return ray


class RayExecutor:
    """``workers`` actors (default: one per GPU, else one per CPU) on the Ray at ``address``, each scanning
    ``in_flight`` units at once (Hub scans: their round trips overlap; see :class:`Scanner`).

    Starting a worker (a process, its imports, its compiled kernels) takes about 0.6 s on the development
    machine; a batch pays it once, at its start. With ``keep_workers`` the workers outlive a batch and
    serve the next one started from this executor (a service scanning batch after batch), until
    :meth:`close`."""

    def __init__(self, workers: int | None = None, address: str | None = None, in_flight: int = 1,
                 keep_workers: bool = False):
        self.workers = workers
        self.address = address
        self.in_flight = in_flight
        self.keep_workers = keep_workers
        self.retried_units = 0
        self._kept: list = []
        self._state = None

    def close(self) -> None:
        """Stop the kept workers."""
        if self._kept or self._state is not None:
            import ray

            for actor in [*self._kept, *([self._state] if self._state is not None else [])]:
                ray.kill(actor)
            self._kept, self._state = [], None

    def run(self, units: Iterator[WorkUnit], config: ScanConfig, known: Known) -> Iterator[UnitResult]:
        ray = connect(self.address)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        count = self.workers or (gpus if gpus else max(1, cpus))
        # leave a share of a CPU free, so other Ray work (a job's driver, say) is never starved by the workers
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": min(1.0, cpus / (count + 1))}
        env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
        # a runtime env of its own makes Ray start new processes: only when there is something to pass
        runtime = {"runtime_env": {"env_vars": env}} if env else {}
        remote = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=self.in_flight,
                            **runtime)(ScanWorker)
        if gpus and config.backend == "auto":
            config = dataclasses.replace(config, backend="triton")
        state = None
        if config.budget is None or config.copies is None:  # one budget and one copy index for all the workers
            if self._state is not None:
                state, self._state = self._state, None
                ray.get(state.reset.remote(known.digests))
            else:
                state = ray.remote(num_cpus=0)(JobState).remote(known.digests)
            shared = Shared(actor=state)
            config = dataclasses.replace(config, budget=config.budget or shared, copies=config.copies or shared)
        args = (config, ray.put(known), max(1, round(cpus / count)), self.in_flight)
        if len(self._kept) == count:
            ray.get([actor.reset.remote(config, args[1]) for actor in self._kept])
            actors, self._kept = self._kept, []
        else:
            self.close()
            actors = [remote.options(**options).remote(*args) for _ in range(count)]
        idle = deque(actor for _ in range(self.in_flight) for actor in actors)  # one entry per free slot
        retry: deque[WorkUnit] = deque()
        pending: dict = {}
        try:
            while True:
                while idle:
                    unit = retry.popleft() if retry else next(units, None)
                    if unit is None:
                        break
                    actor = idle.popleft()
                    pending[actor.scan.remote(unit)] = (actor, unit)
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=HEARTBEAT_S)
                if not ready:  # a slow unit: let the loop write what finished meanwhile
                    yield UnitResult()
                    continue
                (ref,) = ready
                actor, unit = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the application's own error: recorded, not retried
                    idle.append(actor)
                    yield UnitResult([Signature.failed(s, InternalError.of(s, exc.cause or exc))
                                      for s in unit.sources])
                    continue
                except ray.exceptions.RayError as exc:  # the worker died (crash, OOM, preemption) during this unit
                    self.retried_units += 1
                    failed = _requeue(unit, exc, retry)
                    if failed is not None:
                        yield UnitResult([failed])
                    idle.append(_revived(ray, actor, lambda: remote.options(**options).remote(*args)))
                    continue
                idle.append(actor)
                yield result
        finally:
            alive = list({*idle, *(a for a, _ in pending.values())})
            if self.keep_workers and not pending:
                self._kept, self._state = alive, state
            else:
                for actor in [*alive, *([state] if state is not None else [])]:
                    ray.kill(actor)


def _revived(ray, actor, replacement):
    """The actor once Ray has restarted it (so work never lands on a restarting actor), else a new one."""
    try:
        ray.get(actor.ping.remote(), timeout=120)
        return actor
    except ray.exceptions.RayError:
        ray.kill(actor)
        return replacement()


def _requeue(unit: WorkUnit, exc: Exception, retry: deque) -> Signature | None:
    """Queue the unit again (split, so one bad model cannot sink its neighbours); past MAX_ATTEMPTS, the
    model's error row."""
    if len(unit.sources) > 1:  # isolate the culprit: each model again, on its own
        retry.extend(WorkUnit((s,), source_bytes(s), unit.attempt + 1) for s in unit.sources)
    elif unit.attempt < MAX_ATTEMPTS:
        retry.append(WorkUnit(unit.sources, unit.nbytes, unit.attempt + 1))
    else:
        source = unit.sources[0]
        return Signature.failed(source, WorkerDied(source, unit.attempt, exc))
    return None


class WorkerDied(ScanError):
    status = "worker_died"

    def __init__(self, source: str, attempts: int, exc: Exception):
        super().__init__(source, f"the scanning worker died {attempts} times on this model "
                                 f"({exc.__class__.__name__})")
