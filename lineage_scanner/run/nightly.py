"""The nightly Hub scan as a library function: list what changed, scan the commits the store lacks.

:func:`run_night` lists the catalog (only what changed since the previous complete listing of the same
query: its high-water mark is kept in the store), appends it to the store, then scans the store's work
list (deferred commits first, then the most downloaded) through Ray until the night's minutes run out;
what is left, failed on a transient error or ran past its deadline waits for the next night. Every Hub
request of the night (the listing's, the workers') goes through one rate budget, whose account of what
was sent the night reports: API calls, model-info calls, resolves, query-file requests.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime

from lineage_scanner.measure.sampling import SamplePlan
from lineage_scanner.readers.hub_catalog import Listing, ListingCaps, list_catalog
from lineage_scanner.readers.hub_time import DEFAULT_DEADLINE_S, Timeouts
from lineage_scanner.readers.shared import RateBudget, Shared
from lineage_scanner.run.batch import BatchSummary, Executor, ScanConfig, run_batch
from lineage_scanner.store.store import Store

#: Hub models each worker scans at once: a model's scan is mostly waiting on round trips.
IN_FLIGHT = 4
#: Signatures written per file: a night of thousands of models in few files keeps the store quick to open
#: (every lookup reads each file's footer) until the night's compaction.
FLUSH_EVERY = 256
#: The listing options that name a listing (its high-water mark is per query).
QUERY = ("author", "search", "filter")


@dataclass
class Night:
    """What a night did: its listing, how many commits it had to scan, the batch, and the Hub requests
    it sent (by class: ``api``, ``resolve``; by purpose: ``listing``, ``model_info``, ``query_file``)."""

    listing: Listing
    todo: int
    batch: BatchSummary
    sent: dict[str, int] = field(default_factory=dict)
    #: the high-water mark the listing started from (None: a full listing)
    since: datetime | None = None

    def line(self) -> str:
        """The night in one line, for a job's log."""
        b, s = self.batch, self.sent
        return (f"listed {len(self.listing.commits)} ({'since ' + str(self.since) if self.since else 'full'}, "
                f"{self.listing.refused} refused), scanned {b.scanned} ({b.n_copies} copies), failed {b.n_failed}, "
                f"deferred {b.n_deferred}, {b.bytes_read / 1e9:.2f} GB in {b.seconds:.1f} s; Hub requests: "
                f"{s.get('api', 0)} API ({s.get('listing', 0)} listing pages, {s.get('model_info', 0)} model info), "
                f"{s.get('resolve', 0)} resolves, {s.get('query_file', 0)} query-file (config.json) requests")


def run_night(store: Store, minutes: float | None = None, workers: int | None = None, *,
              sample: SamplePlan | None = None, unit_bytes: int | None = None, in_flight: int = IN_FLIGHT,
              deadline_s: float = DEFAULT_DEADLINE_S, address: str | None = None, incremental: bool = True,
              caps: ListingCaps | None = None, executor: Executor | None = None, **listing) -> Night:
    """List the catalog (``listing``: author, search, filter, sort, limit; only what changed since the
    last complete listing when ``incremental``), then scan the commits the store lacks until ``minutes``
    have passed. On Ray (``workers``, ``address``) unless an ``executor`` is given."""
    started = time.monotonic()
    budget, actor = _budget(executor, address)
    query = json.dumps({k: listing.get(k) for k in QUERY}, sort_keys=True)
    since = store.high_water(query) if incremental else None
    found = list_catalog(**listing, since=since, caps=caps or ListingCaps(), budget=budget)
    store.write_catalog(found.commits)
    limit = listing.get("limit")
    if found.stopped is None and (limit is None or len(found.commits) < limit):  # complete: the next night stops here
        store.write_listing(query, found.newest or since, len(found.commits))
    todo = store.todo()
    print(f"[lineage] catalog: {len(found.commits)} models listed ({found.pages} pages), {len(todo)} commits "
          "to scan", flush=True)
    deadline = math.inf if minutes is None else started + minutes * 60

    def until_deadline():
        for source in todo:
            if time.monotonic() > deadline:
                return
            yield source

    if executor is None:
        from lineage_scanner.run.ray import RayExecutor

        executor = RayExecutor(workers, address, in_flight=in_flight)
    options = {} if unit_bytes is None else {"unit_bytes": unit_bytes}
    try:
        config = ScanConfig(sample=sample, budget=budget, timeouts=Timeouts(model_s=deadline_s))
        batch = run_batch(until_deadline(), store, executor, config=config,
                          progress=True, keep_records=False, flush_every=FLUSH_EVERY, **options)
        sent = budget.call("sent")
    finally:
        if actor is not None:
            import ray

            ray.kill(actor)
    return Night(found, len(todo), batch, sent, since)


def _budget(executor: Executor | None, address: str | None) -> tuple[Shared, object]:
    """The night's rate budget: an actor every Ray worker asks, or an object in this process."""
    if executor is not None:
        return Shared(RateBudget()), None
    from lineage_scanner.run.ray import connect

    ray = connect(address)
    actor = ray.remote(num_cpus=0)(RateBudget).remote()
    return Shared(actor=actor), actor
