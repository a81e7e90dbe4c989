"""The Ray executor: ``ScanWorker`` actors on a cluster (or a local Ray), fed one unit at a time.

Each actor holds one unit at a time, so the work in flight is bounded by the actor count (backpressure).
Actors hold a GPU each and use the Triton kernel where the cluster has GPUs, else a CPU each. The batch
loop itself (:func:`lineage_scanner.run.batch.run_batch`) is the same as in-process; this module only
dispatches.

Faults: an actor that dies is restarted by Ray (``max_restarts``); the executor re-queues its unit, split
into single models so one bad model cannot sink its neighbours, and gives a model ``max_attempts``
before yielding it as an error row (``worker_died``). Errors of the application (bad files, gated repos)
are error rows from the worker itself and are not retried. The worker class is a parameter
(``RayExecutor(worker=...)``): the fault-injection tests hand it a subclass that dies on cue.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import deque
from collections.abc import Iterator

from lineage_scanner.errors import InternalError, StoreError, WorkerDied
from lineage_scanner.readers.shared import CopyIndex, RateBudget, Shared
from lineage_scanner.run.base import HEARTBEAT_S, Known, ScanConfig, Scanner, UnitResult, WorkUnit, source_bytes
from lineage_scanner.run.placement import placement
from lineage_scanner.signature.record import Signature
from lineage_scanner.sources import name_of
from lineage_scanner.store.files import new_stem
from lineage_scanner.store.store import Store

MAX_ATTEMPTS = 3
#: How long a lost worker is given to come back (a crashed process restarts in seconds, imports included).
REVIVE_S = 60.0
#: Variables the workers need from the driver's environment. Never a secret: Ray logs runtime_env in
#: clear text. Workers read HF_TOKEN from their own environment or the Hub client's token file.
WORKER_ENV = ("HF_ENDPOINT", "TRITON_INTERPRET")


class JobState(RateBudget, CopyIndex):
    """A job's Hub rate budget and copy index in one actor: one process fewer to start per batch (on a
    small machine, starting processes is most of what a short batch costs on Ray)."""

    def __init__(self, known: dict):
        RateBudget.__init__(self)
        CopyIndex.__init__(self, known)
        self.units: dict[str, str] = {}  # stem -> "committed" | "abandoned": workers' units, see commit()

    def reset(self, known: dict) -> None:
        """Start another batch's copy index (the rate budget carries on: the Hub's windows do)."""
        CopyIndex.__init__(self, known)

    def commit(self, stem: str) -> bool:
        """A worker asks whether the unit it staged under ``stem`` may appear: yes, unless the driver gave
        up on it first (its worker lost, the unit scanned again elsewhere). One actor answers both sides
        in turn, so exactly one of them wins."""
        return self.units.setdefault(stem, "committed") == "committed"

    def forget(self, models: list[str]) -> None:
        """A lost worker's unit is scanned again: its commits count as not yet opened in this job."""
        with self._lock:
            self._opened = {key for key in self._opened if key[0] not in models}

    def abandon(self, stem: str) -> str:
        """The driver gives up on a lost worker's unit: "committed" if the worker committed it first (the
        driver then finishes its publication), else "abandoned" (a later commit is refused)."""
        return self.units.setdefault(stem, "abandoned")


class ScanWorker:
    """One scanning process on Ray: a :class:`Scanner` whose threads match the CPUs Ray gave it. Where the
    batch's store is one every node reaches (``config.store``), the worker writes each unit's originals
    there itself, under the name the driver gave the unit (see :meth:`RayExecutor.run`)."""

    def __init__(self, threads: int, in_flight: int = 1):
        """Only sizes: the batch (its configuration and what the store holds, which may be megabytes) comes
        by :meth:`reset`, a call, never as a constructor argument: Ray keeps a restartable actor's stored
        constructor arguments and says so at error level on every start. A restarted worker is reset again
        by the executor before it gets work."""
        import numba

        # the CPU kernel's threads match the CPUs Ray gave this actor, so workers do not fight for cores
        self.threads = threads
        self.in_flight = in_flight
        self.scanner, self.store = None, None
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))

    def reset(self, config: ScanConfig, known: Known) -> None:
        """Serve another batch (a kept worker: its process, imports and loaded kernels stay)."""
        self.scanner = Scanner(config, known, self.in_flight)
        self.store = Store(config.store) if config.store else None

    def ping(self) -> bool:
        return True

    def scan(self, unit: WorkUnit, stem: str | None = None, fence: Shared | None = None) -> UnitResult:
        import numba

        numba.set_num_threads(max(1, min(self.threads, numba.config.NUMBA_NUM_THREADS)))  # per calling thread
        result = self.scanner.scan(unit)
        if self.store is not None and stem is not None:
            commit = (lambda: fence.call("commit", stem)) if fence is not None else None
            try:  # copies are completed by the driver, which writes them
                self.store.write([sig for sig in result.scanned if sig.identical_to is None], stem, commit)
                result.stored = True
            except StoreError:  # the driver writes them, or stops the batch with the store's error
                pass
        return result


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
                 keep_workers: bool = False, worker: type[ScanWorker] | None = None):
        self.workers = workers
        self.address = address
        self.in_flight = in_flight
        self.keep_workers = keep_workers
        self.worker = worker or ScanWorker
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
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = connect(self.address)
        slots = placement(ray, self.workers)
        count = len(slots)
        env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
        # a runtime env of its own makes Ray start new processes: only when there is something to pass
        runtime = {"runtime_env": {"env_vars": env}} if env else {}
        remote = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=self.in_flight,
                            **runtime)(self.worker)
        # units' file names, where workers write (names the driver can look for when a worker is lost)
        batch = new_stem() if config.store else None
        state = None
        if config.budget is None or config.copies is None:  # one budget and one copy index for all the workers
            if self._state is not None:
                state, self._state = self._state, None
                ray.get(state.reset.remote(known.digests))
            else:
                # on the driver's node: the job lives and dies with it, while any worker node may be lost
                here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
                state = ray.remote(num_cpus=0, scheduling_strategy=here)(JobState).remote(known.digests)
            shared = Shared(actor=state)
            config = dataclasses.replace(config, budget=config.budget or shared, copies=config.copies or shared)
        known_ref = ray.put(known)

        def given_the_batch(actor):  # every worker (new, kept, restarted) gets the batch by this call
            return actor.reset.remote(config, known_ref)

        fence = Shared(actor=state) if state is not None else None  # commits of workers' units
        if len(self._kept) == count:
            actors, self._kept = self._kept, []
        else:
            self.close()
            actors = [remote.options(**slot.options).remote(slot.threads, self.in_flight) for slot in slots]
        ray.get([given_the_batch(actor) for actor in actors])
        slot_of = dict(zip(actors, slots))
        lost: set = set()
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
                    stem = batch and (f"{batch}-{hashlib.sha256(repr(unit.sources).encode()).hexdigest()[:12]}"
                                      f"-{unit.attempt}")
                    pending[actor.scan.remote(unit, stem, fence)] = (actor, unit, stem)
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=HEARTBEAT_S)
                if not ready:  # a slow unit: let the loop write what finished meanwhile
                    yield UnitResult()
                    continue
                (ref,) = ready
                actor, unit, stem = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the application's own error: recorded, not retried
                    idle.append(actor)
                    yield UnitResult([Signature.failed(s, InternalError.of(s, exc.cause or exc))
                                      for s in unit.sources])
                    continue
                except ray.exceptions.RayError as exc:  # the worker died (crash, OOM, preemption) during this unit
                    self.retried_units += 1
                    landed = _landed(ray, config.store, stem, fence)
                    if landed is not None:  # it died after writing the unit: what remains are its copies
                        yield UnitResult(landed, stored=True)
                        unit = _less(unit, landed)
                    if fence is not None and unit.sources:  # opened by the lost attempt: to be opened again
                        fence.call("forget", [name_of(source)[0] for source in unit.sources])
                    failed = _requeue(unit, exc, retry) if unit.sources else None
                    if failed is not None:
                        yield UnitResult([failed])
                    if actor in lost:  # another of its units already found it gone
                        continue
                    if _revived(ray, actor, given_the_batch):
                        idle.append(actor)
                        continue
                    lost.add(actor)  # its node is gone, or Ray could not bring it back: the others go on
                    if not set(slot_of) - lost:  # unless none is left: then one more, wherever it fits
                        slot = slot_of[actor]
                        replacement = remote.options(**slot.fallback(ray)).remote(slot.threads, self.in_flight)
                        ray.get(given_the_batch(replacement))  # before its first unit
                        slot_of[replacement] = slot
                        idle.extend([replacement] * self.in_flight)
                    continue
                idle.append(actor)
                yield result
        finally:
            alive = list({*idle, *(a for a, *_ in pending.values())} - lost)
            if self.keep_workers and not pending:
                self._kept, self._state = alive, state
            else:
                for actor in [*alive, *([state] if state is not None else [])]:
                    ray.kill(actor)


def _landed(ray, store: str | None, stem: str | None, fence: Shared | None) -> list[Signature] | None:
    """What a lost worker's unit left in the store: its signatures if its commit won (the unit's files
    published now if the worker died half way), None if it never committed (a late commit is refused
    from now on, so the unit can be scanned again without ever appearing twice)."""
    if not stem:
        return None
    if fence is not None:
        if ray.get(fence.actor.abandon.remote(stem)) != "committed":
            return None
        Store(store).publish(stem)
    return Store(store).written(stem)


def _less(unit: WorkUnit, landed: list[Signature]) -> WorkUnit:
    """``unit`` without the models whose rows landed in the store (by the model a source names)."""
    models = {sig.model for sig in landed}
    return dataclasses.replace(unit, sources=tuple(s for s in unit.sources if name_of(s)[0] not in models))


def _revived(ray, actor, reset, wait: float = REVIVE_S) -> bool:
    """Whether Ray restarted the actor within ``wait`` seconds, and it took the batch again (``reset``: the
    call that gives it), so work never lands on a restarting or empty actor; if not, it is killed (a lost
    node's actor Ray cannot place again would wait forever)."""
    try:
        ray.get(actor.ping.remote(), timeout=wait)
        ray.get(reset(actor), timeout=wait)
        return True
    except ray.exceptions.RayError:
        ray.kill(actor)
        return False


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
