"""A hostile Hub: answers that never come, bodies that trickle, sizes that lie, listings that never end,
and answers that name another repo. Each is a one-line error row (or a one-line error for the listing)
in bounded time and memory, and the good models of the same batch land."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from lineage_scanner.readers.hub_catalog import ListingCaps, list_catalog
from lineage_scanner.readers.hub_http import HubClient
from lineage_scanner.readers.hub_time import Timeouts
from lineage_scanner.readers.hub_urls import file_url
from lineage_scanner.run.batch import ScanConfig, run_batch
from lineage_scanner.run.local import InProcess
from lineage_scanner.store.store import Store
from lineage_scanner.testing.hub_server import HubStandIn, Repo
from tests.helpers import run_cli_process, start_cli


@pytest.fixture
def hub(zoo_by_name, tmp_path, monkeypatch):
    root = tmp_path / "repos"
    repos = [Repo(f"acme/{name}", shutil.copytree(zoo_by_name[demo].path, root / name))
             for name, demo in (("good", "llama-a"), ("slow", "llama-b"), ("impostor", "qwen2-a"))]
    with HubStandIn(repos, page_size=2) as server:
        server.trickle_s = 0.5
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        yield server


def cli(hub, *args, timeout=300) -> tuple[dict, list[str]]:
    """``lineage ARGS`` in a subprocess: (its exit code, seconds and peak RSS; its error lines)."""
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("RAY_ADDRESS", None)
    report, errors, _ = run_cli_process(*args, env=env, timeout=timeout)
    return report, errors


def rows(db) -> dict[str, tuple[str, str | None]]:
    """Each model's newest row: (status, error)."""
    with Store(db).connect() as con:
        found = con.execute("SELECT model, status, error FROM scans ORDER BY scanned_at").fetchall()
    return {m: (s, e) for m, s, e in found}


@pytest.mark.parametrize("workers", [None, 2])
def test_a_model_info_that_never_comes_is_a_timeout_row(hub, tmp_path, workers):
    """The stalling repo's model info is never answered: two read timeouts of 10 s, then a timeout row; the
    good repo lands, in this process and on two Ray workers alike."""
    hub.inject("info:acme/slow", "hang", forever=True)
    db = tmp_path / "db"
    args = ["scan", "hf://acme/slow", "hf://acme/good", "--db", str(db), "-q"]
    report, errors = cli(hub, *args, *(["--workers", str(workers)] if workers else []))
    assert report["code"] == 1 and report["seconds"] < 45 + (60 if workers else 0)  # 2 x 10 s, then the rest
    assert len(errors) == 1  # one line, for the one bad model
    assert errors[0].startswith("Error: hf://acme/slow: model info: no answer within 10 s")
    found = rows(db)
    assert found["acme/good"][0] == "ok" and found["acme/slow"][0] == "timeout"
    assert report["rss"] < (1 << 30)


def test_a_trickling_body_is_cut_by_the_stall_detector(hub):
    """One byte every half second: under the minimum rate, so the request is cut after the window (twice:
    it is tried again once), never waited out."""
    client = HubClient("hf://acme/slow", timeouts=Timeouts(read_s=5, stall_window_s=2, min_rate=1024))
    hub.inject("acme/slow/model.safetensors", "trickle", forever=True)
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        client.get(file_url("acme/slow", hub.sha_of("acme/slow"), "model.safetensors"), 0, 99_999)
    assert caught.value.status == "timeout" and "under the minimum of 1 KiB/s over 2 s" in str(caught.value)
    assert time.monotonic() - started < 10


def test_a_stalled_scan_stops_at_its_deadline_and_the_rest_lands(hub, tmp_path):
    """The whole scan's deadline cuts a model whose bodies trickle fast enough to pass the stall detector's
    default window; the good model is stored; the timeout row is scanned again by the next run."""
    hub.inject("acme/slow/model.safetensors", "trickle", forever=True)
    db = tmp_path / "db"
    report, errors = cli(hub, "scan", "hf://acme/good", "hf://acme/slow", "--deadline", "4", "--db", str(db), "-q")
    assert report["code"] == 1 and report["seconds"] < 25
    assert len(errors) == 1 and "past the model's 4 s scan deadline" in errors[0]
    assert rows(db) == {"acme/good": ("ok", None), "acme/slow": ("timeout", errors[0].removeprefix("Error: "))}
    hub.clear()
    report, _ = cli(hub, "scan", "hf://acme/good", "hf://acme/slow", "--db", str(db), "-q")
    assert report["code"] == 0 and rows(db)["acme/slow"][0] == "ok"


@pytest.mark.parametrize("executor", ["in-process", pytest.param("ray", marks=pytest.mark.ray)])
def test_what_finished_is_written_while_a_slow_model_runs(hub, tmp_path, executor):
    """A good model finished before a stalling one is in the store long before the stalling one's
    deadline, whichever executor runs the batch (a local Ray may take half a minute to start here). On Ray
    the batch is ``lineage scan --workers 2`` in a process of its own, as a user runs it: a Ray driver in the
    test process would outlive the stand-in its workers read from."""
    hub.inject("acme/slow/model.safetensors", "stall", forever=True)
    db = tmp_path / "db"
    sources = ["hf://acme/good", "hf://acme/slow"]
    if executor == "in-process":
        config = ScanConfig(timeouts=Timeouts(read_s=60, model_s=60))
        batch = threading.Thread(target=run_batch, args=(sources, Store(db), InProcess()), daemon=True,
                                 kwargs={"config": config, "progress": False, "unit_bytes": 1, "flush_seconds": 0.5})
        batch.start()
        running, finish = batch.is_alive, lambda: batch.join(120) or ("", "")
    else:  # the CLI flushes every 30 s: the deadline is past that and the first write
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"}
        env.pop("RAY_ADDRESS", None)
        scan = start_cli("scan", *sources, "--workers", "2", "--deadline", "100", "--db", str(db), "-q", env=env)
        running, finish = (lambda: scan.poll() is None), (lambda: scan.communicate(timeout=200))
    started = time.monotonic()
    while "acme/good" not in (rows(db) if Store(db).files("signatures") else {}):
        assert time.monotonic() - started < 95 and running(), "the good model was held back"
        time.sleep(0.5)
    assert running()  # the slow model is still in flight: the good one did not wait for it
    hub.clear()
    _, err = finish()
    assert not running() and rows(db)["acme/slow"][0] == "timeout"
    assert "core_worker" not in err and " E " not in err, err  # no error-level line from Ray in a normal run


def test_a_huge_model_info_is_cut_at_its_cap(hub, tmp_path):
    """200 MB of valid JSON, without a Content-Length: read up to the 16 MiB cap, then refused."""
    hub.inject("info:acme/slow", "huge", forever=True)
    db = tmp_path / "db"
    report, errors = cli(hub, "scan", "hf://acme/slow", "hf://acme/good", "--db", str(db), "-q")
    assert report["code"] == 1 and report["seconds"] < 60
    assert errors == ["Error: hf://acme/slow: model info is over the 16 MiB cap for a file read whole"]
    assert report["rss"] < 600 << 20  # a whole 200 MB answer parsed would be over 2 GB
    assert rows(db)["acme/good"][0] == "ok" and rows(db)["acme/slow"][0] == "network"


def test_an_answer_naming_another_repo_is_refused(hub, tmp_path):
    """Model info that claims to be a famous repo: an error row under the name asked for, and nothing stored
    under the claimed one."""
    hub.claims["acme/impostor"] = {"id": "meta-llama/Llama-3.1-8B"}
    db = tmp_path / "db"
    report, errors = cli(hub, "scan", "hf://acme/impostor", "hf://acme/good", "--db", str(db), "-q")
    assert report["code"] == 1 and len(errors) == 1
    assert errors[0] == ("Error: hf://acme/impostor: the Hub's answer names 'meta-llama/Llama-3.1-8B', not the "
                         "repo asked for; nothing is stored under that name")
    found = rows(db)
    assert found["acme/impostor"][0] == "bad_identity" and found["acme/good"][0] == "ok"
    assert not any(m.startswith("meta-llama") for m in found)


@pytest.mark.parametrize("sha", ["\x1b[31m<b>/../../" + "0" * 20, "0" * 39, "g" * 40, 12345])
def test_a_commit_that_is_not_40_hex_digits_is_refused(hub, tmp_path, sha):
    hub.claims["acme/impostor"] = {"sha": sha}
    db = tmp_path / "db"
    summary = run_batch(["hf://acme/impostor"], Store(db), progress=False)
    (failed,) = summary.failed
    assert failed.status == "bad_identity" and "not 40 hex digits" in failed.error
    assert "\x1b" not in failed.error and failed.revision == ""


def test_a_listing_that_never_ends_stops_with_its_cap_named(hub, tmp_path):
    """Empty next pages forever: three pages that list nothing new end it; the models listed are kept."""
    hub.inject("list", "endless", forever=True)
    db = tmp_path / "db"
    report, errors = cli(hub, "catalog", "--db", str(db), "-q")
    assert report["code"] == 1 and report["seconds"] < 30
    assert errors == [f"Error: {hub.endpoint}/api/models: listing stopped: 3 pages in a row listed no new model "
                      "(3 models listed and kept)"]
    assert len(Store(db).todo()) == 3


def test_a_listing_of_made_up_models_stops_at_the_page_cap(hub):
    """Fresh made-up models on every page, forever: the page cap ends it, and says so."""
    hub.inject("list", "flood", forever=True)
    started = time.monotonic()
    listing = list_catalog(caps=ListingCaps(pages=40))
    assert listing.stopped == "listing stopped at the 40-page cap" and listing.pages == 40
    assert time.monotonic() - started < 30
    capped = list_catalog(caps=ListingCaps(seconds=1.0))
    assert capped.stopped == "listing stopped at the 1 s cap"


def test_listed_entries_with_bad_identities_are_refused(hub):
    hub.claims["acme/impostor"] = {"sha": "not a sha"}
    hub.claims["acme/slow"] = {"id": "../../etc"}
    listing = list_catalog()
    assert [c.model for c in listing.commits] == ["acme/good"] and listing.refused == 2
