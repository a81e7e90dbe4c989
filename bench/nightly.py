"""The nightly job against a Hub stand-in that behaves like the Hub where cost is decided.

A catalog of --repos repos (10,000 by default) is drawn from --sets weight sets, generated from seeds on
request (no disk): originals, exact re-uploads under other names, re-sharded copies, derived models (a
drifted copy of a set), gated repos, repos deleted after they were listed, repos with only a pickled
``.bin``, and repos with only a GGUF; each has a last modification. The stand-in answers with --latency,
caps all bodies to one --bandwidth, redirects weight files to a file host with signed URLs (and their
SHA-256 in ``X-Linked-Etag``), serves the listing with ``expand``, and enforces the free token's rate
limits (--api calls and --resolve calls per --window seconds, with 429s and RateLimit headers).

Night 1 runs :func:`lineage_scanner.run.nightly.run_night` (list the catalog, scan what it can before
--minutes run out) on a local Ray with --workers workers. Between the nights --changed of the repos get a
new commit (new weights), as many new repos appear, and 3% are renamed (their old ids redirect); night 2
lists only what changed since night 1's high-water mark and scans what is left. Reported per night: models
per hour, requests per model by class (API, resolve, file host), model-info calls, listing pages, query-file
(config.json) requests, bytes per model, copies, deferred rows, 429s, peak RSS, and the bound that the
binding limit sets at that cost per model.

    python bench/nightly.py [--repos 10000] [--minutes 20] [--minutes2 10] [--changed 0.16] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lineage_scanner.demo.derive import drift  # noqa: E402
from lineage_scanner.demo.writers import hf_config, write_gguf, write_hf  # noqa: E402
from lineage_scanner.lineage.generator import base_model  # noqa: E402
from lineage_scanner.run.nightly import run_night  # noqa: E402
from lineage_scanner.run.ray import connect  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402
from lineage_scanner.testing.hub_repos import EPOCH  # noqa: E402
from lineage_scanner.testing.hub_server import GeneratedRepo, HubStandIn, Limits  # noqa: E402

KINDS = {"original": 0.32, "reupload": 0.22, "resharded": 0.06, "derived": 0.17, "gated": 0.04, "deleted": 0.03,
         "renamed": 0.03, "bin_only": 0.06, "gguf_only": 0.07}
LAYERS, HIDDEN = 6, 64
RENAMED = "-old-name"
NAMES = {"one": ["config.json", "model.safetensors"], "bin": ["config.json", "pytorch_model.bin"],
         "gguf": ["model.Q8_0.gguf"],
         "two": ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json"]}


def weights(key) -> object:
    """The toy model of a weight set: ("base", seed) or ("derived", seed, child)."""
    base = base_model(f"set-{key[1]}", "llama", 10_000 + key[1], LAYERS, hidden=HIDDEN)
    return base if key[0] == "base" else drift(base, f"set-{key[1]}-{key[2]}", key[2], 0.05, 0.01)


def make(key) -> dict[str, bytes]:
    """The files of (weight set, layout): one safetensors, two shards with an index, a GGUF, or a .bin."""
    weight_set, layout = key
    model = weights(weight_set)
    with tempfile.TemporaryDirectory() as d:
        if layout == "bin":
            return {"config.json": json.dumps(hf_config(model, "llama")).encode(), "pytorch_model.bin": bytes(4096)}
        if layout == "gguf":
            return {"model.Q8_0.gguf": write_gguf(model, Path(d) / "model.gguf", "Q8_0").read_bytes()}
        folder = write_hf(model, Path(d) / "m", "llama", shards=2 if layout == "two" else 1)
        return {p.name: p.read_bytes() for p in folder.iterdir()}


def repo(i: int, kind: str, rng: np.random.Generator, n_sets: int, cache: dict, when: datetime) -> GeneratedRepo:
    weight_set = ("base", int(rng.integers(n_sets)))
    layout = {"resharded": "two", "bin_only": "bin", "gguf_only": "gguf"}.get(kind, "one")
    if kind == "derived":
        weight_set = ("derived", weight_set[1], int(rng.integers(1, 4)))
    repo_id = f"org{i % 97}/model-{i:05d}" + (RENAMED if kind == "renamed" else "")
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    return GeneratedRepo(repo_id, (weight_set, layout), make, cache, NAMES[layout], config,
                         params=LAYERS * 4 * HIDDEN * HIDDEN, gated=kind == "gated", deleted=kind == "deleted",
                         downloads=int(rng.integers(0, 10_000)), last_modified=when)


def catalog(n_repos: int, n_sets: int, seed: int = 0) -> tuple[list[GeneratedRepo], dict, dict]:
    """The repos (modified over the month before EPOCH), how many of each kind, and the weight-set cache."""
    rng = np.random.default_rng(seed)
    cache: dict = {}
    kinds = rng.choice(list(KINDS), size=n_repos, p=list(KINDS.values()))
    repos = [repo(i, kind, rng, n_sets, cache, EPOCH - timedelta(minutes=int(rng.integers(0, 43_200))))
             for i, kind in enumerate(kinds)]
    return repos, {k: int((kinds == k).sum()) for k in KINDS}, cache


def change(hub: HubStandIn, repos: list[GeneratedRepo], share: float, n_sets: int, cache: dict, seed: int = 1
           ) -> dict[str, int]:
    """Between the nights: ``share`` of the repos pushed new weights, as many new repos, renamed repos."""
    rng = np.random.default_rng(seed)
    now = datetime.now(timezone.utc)
    readable = [r for r in repos if not (r.gated or r.deleted or r.key[1] in ("bin", "gguf"))]
    pushed = rng.choice(len(readable), size=int(share * len(repos)), replace=False)
    for k in pushed:
        r = readable[k]
        r.commit(now, key=(("derived", int(rng.integers(n_sets)), int(rng.integers(4, 8))), r.key[1]))
    new = [repo(len(repos) + i, str(rng.choice(["original", "reupload", "derived"])), rng, n_sets, cache, now)
           for i in range(int(share * len(repos)))]
    for r in new:
        hub.add(r)
    renamed = [r.repo_id for r in repos if r.repo_id.endswith(RENAMED)]
    for old in renamed:  # the old ids redirect; the listing shows the new ones (not modified: not listed again)
        hub.rename(old, old.removesuffix(RENAMED) + "-moved")
    return {"pushed": len(pushed), "new": len(new), "renamed": len(renamed)}


class PeakRss:
    """The largest RSS seen, every half second, of every Ray worker process."""

    def __init__(self):
        import psutil

        self.workers, self._stop = 0, threading.Event()
        self._psutil = psutil
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for p in self._psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "ScanWorker" in cmd and p.info["memory_info"]:
                    self.workers = max(self.workers, p.info["memory_info"].rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def night(hub: HubStandIn, store: Store, minutes: float, workers: int) -> dict:
    """One night of the nightly job against the stand-in, measured."""
    hub.reset_counts()
    started = time.monotonic()
    watch = PeakRss()
    result = run_night(store, minutes, workers, unit_bytes=1, sort="downloads")
    watch.stop()
    seconds = time.monotonic() - started
    summary = result.batch
    with store.connect() as con:  # a commit scanned twice over the nights (there must be none)
        (twice,) = con.execute("SELECT count(*) FROM (SELECT model, revision FROM scans WHERE status = 'ok' "
                               "GROUP BY ALL HAVING count(*) > 1)").fetchone()
    done = summary.scanned
    return {"listed": len(result.listing.commits), "pages": result.listing.pages, "todo": result.todo,
            "scanned": done, "copies": summary.n_copies, "deferred": summary.n_deferred,
            "failed": summary.n_failed, "skipped": summary.n_skipped, "twice": twice, "seconds": seconds,
            "models_per_hour": done / seconds * 3600 if done else 0.0, "requests": dict(hub.by_class),
            "rejected": dict(hub.rejected), "query_files": sum(hub.query_files.values()),
            "model_info": sum(v for k, v in hub.requests.items() if k.startswith("api:")),
            "bytes": sum(hub.bytes_served.values()), "sent": result.sent,
            "driver_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "worker_rss": watch.workers}


def bound(result: dict, limits: Limits, bandwidth: float) -> tuple[float, str]:
    """Models per hour that each limit allows at this night's cost per model; the smallest binds."""
    n = max(result["scanned"], 1)
    per = {"api": result["requests"].get("api", 0) / n, "resolve": result["requests"].get("resolve", 0) / n}
    rates = {k: getattr(limits, k) / limits.window_s * 3600 / per[k] for k in per if per[k] and getattr(limits, k)}
    if bandwidth and result["bytes"]:
        rates["bandwidth"] = bandwidth / (result["bytes"] / n) * 3600
    kind = min(rates, key=rates.get)
    return rates[kind], kind


def report(name: str, r: dict, limits: Limits, bandwidth: float) -> None:
    n = max(r["scanned"], 1)
    limit, binding = bound(r, limits, bandwidth)
    windows = math.ceil(r["seconds"] / limits.window_s)
    print(f"\n{name}: listed {r['listed']} ({r['pages']} pages), to scan {r['todo']}; scanned {r['scanned']} in "
          f"{r['seconds']:.0f} s ({r['models_per_hour']:.0f} models/hour); copies {r['copies']}, deferred "
          f"{r['deferred']}, failed rows {r['failed']} (gated, deleted, .bin-only: expected); commits scanned "
          f"twice {r['twice']}")
    print("  requests per model: " + ", ".join(f"{k} {v / n:.3f}" for k, v in sorted(r["requests"].items()))
          + f"; model-info calls {r['model_info']}, query-file requests {r['query_files']}; bytes per model "
          f"{r['bytes'] / n / 1e3:.0f} KB")
    print(f"  429s {r['rejected'] or 0} over {windows} window(s); driver peak RSS {r['driver_rss'] >> 20} MiB, "
          f"worker peak RSS {r['worker_rss'] >> 20} MiB; the job's own account: {r['sent']}")
    print(f"  binding limit: {binding}, {limit:.0f} models/hour at this cost per model; achieved "
          f"{r['models_per_hour'] / limit:.0%} of it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=10_000)
    parser.add_argument("--sets", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=20.0, help="the first night's time budget")
    parser.add_argument("--minutes2", type=float, default=10.0, help="the second night's")
    parser.add_argument("--changed", type=float, default=0.16, help="share of repos pushed between the nights, "
                                                                    "and as many new repos (3,200 models changed "
                                                                    "for 10,000 repos: the Hub's daily increment)")
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--bandwidth", type=float, default=50e6, help="bytes/s, all bodies together")
    parser.add_argument("--api", type=int, default=1000)
    parser.add_argument("--resolve", type=int, default=5000)
    parser.add_argument("--window", type=float, default=300.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench/data/nightly")
    args = parser.parse_args()
    repos, counts, cache = catalog(args.repos, args.sets)
    print(f"catalog: {len(repos)} repos from {args.sets} weight sets: {counts}")
    limits = Limits(api=args.api, resolve=args.resolve, window_s=args.window)
    db = Path(args.out) / "store"
    if db.exists():
        import shutil

        shutil.rmtree(db)
    connect(num_cpus=os.cpu_count())
    with HubStandIn(repos, page_size=1000, limits=limits, latency_s=args.latency, bandwidth=args.bandwidth) as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
        store = Store(db)
        first = night(hub, store, args.minutes, args.workers)
        report("night 1", first, limits, args.bandwidth)
        changes = change(hub, repos, args.changed, args.sets, cache)
        print(f"\nbetween the nights: {changes}")
        second = night(hub, store, args.minutes2, args.workers)
        report("night 2", second, limits, args.bandwidth)
    print(json.dumps({"night1": first, "changes": changes, "night2": second}, default=str))


if __name__ == "__main__":
    main()
