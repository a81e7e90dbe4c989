"""What the ``lineage`` commands do, as library functions: the CLI, jobs and tests call these, and the CLI only
parses their arguments and prints what they return.

Each function takes a :class:`~lineage_scanner.store.store.Store` and names models as the CLI does (a stored
``model[@revision]``, a path, or ``hf://org/name[@revision]``: paths and Hub references are scanned into the
store first, see :func:`lineage_scanner.run.lookup.signature_for`). Heavy imports (the scanning stack,
matplotlib, the Hub client) happen inside the functions that need them, so that a lookup of stored models
never pays for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lineage_scanner.errors import RemoteError, UsageError
from lineage_scanner.lineage.null import null_for
from lineage_scanner.lineage.verdict import Verdict, decide, q_values
from lineage_scanner.run.lookup import signature_for
from lineage_scanner.signature.record import EMBED_DIM, Signature
from lineage_scanner.sources.hub import HubCommit
from lineage_scanner.store.store import Store

if TYPE_CHECKING:  # the scanning stack is imported by scan() alone
    from lineage_scanner.lineage.tree import TreeEdge
    from lineage_scanner.run.base import ScanConfig
    from lineage_scanner.run.batch import BatchSummary

#: Where ``graph`` finds where cards and weights disagree (the ``disagreements`` view), in a stable order.
DISAGREEMENTS = "SELECT model, other, problem FROM disagreements ORDER BY ALL"


@dataclass(frozen=True)
class Comparison:
    """Two models and the verdict on them."""

    a: Signature
    b: Signature
    verdict: Verdict


@dataclass(frozen=True)
class Matches:
    """A ``match`` query and its relatives' rows (see :meth:`lineage_scanner.lineage.relatives.Relative.row`),
    parent first."""

    query: Signature
    matches: list[dict]


@dataclass(frozen=True)
class LineageGraph:
    """The family trees' derivations (also written to the store), the graph, where cards and weights
    disagree, as (model, other, problem) rows, and the file the graph was written to, if any."""

    edges: list[TreeEdge]
    graph: dict
    disagreements: list[tuple[str, str, str]] = field(default_factory=list)
    written: Path | None = None


@dataclass(frozen=True)
class Catalog:
    """A Hub listing, and the sources of the store's work list (listed commits not yet scanned) after it."""

    entries: list[HubCommit]
    todo: set[str]
    #: listed entries refused (a malformed repo id or commit), and where the listing came from
    refused: int = 0
    where: str = ""


def scan(sources: list[str], store: Store, config: ScanConfig | None = None, *, from_catalog: bool = False,
         limit: int | None = None, workers: int | None = None, address: str | None = None,
         progress: bool = True) -> BatchSummary:
    """Scan ``sources`` (and with ``from_catalog``, up to ``limit`` listed commits not yet scanned) into the store,
    in this process or on Ray (see :func:`lineage_scanner.run.batch.choose_executor`); a
    :class:`~lineage_scanner.run.batch.BatchSummary`."""
    from lineage_scanner.run.batch import choose_executor, run_batch
    from lineage_scanner.sources import is_hub

    missing = [s for s in sources if not is_hub(s) and not os.path.lexists(os.path.expanduser(s))]
    if missing:  # a typo, not a model: nothing to record in the store
        raise UsageError(f"{missing[0]}: no such file or directory")
    sources = list(sources) + (store.todo(limit) if from_catalog else [])
    if not sources:
        raise UsageError("nothing to scan: name sources, or --catalog with unscanned catalog entries")
    return run_batch(sources, store, choose_executor(workers, address), config=config, progress=progress)


def catalog(store: Store, author: str | None = None, search: str | None = None, filter: str | None = None,
            sort: str | None = None, limit: int | None = None) -> Catalog:
    """List Hub models into the store's work list (pages of the Hub's listing, capped: see
    :mod:`lineage_scanner.readers.hub_catalog`). A listing a cap stopped is kept as far as it went, then
    raised as a one-line error naming the cap."""
    from lineage_scanner.readers.hub_catalog import list_catalog

    listing = list_catalog(author=author, search=search, filter=filter, sort=sort, limit=limit)
    entries = listing.commits
    store.write_catalog(entries)
    if listing.stopped:  # what was listed is kept; the listing is incomplete, and says which cap stopped it
        raise RemoteError(listing.where, f"{listing.stopped} ({len(entries)} models listed and kept)")
    return Catalog(entries, set(store.todo()), listing.refused, listing.where)


def compare(a: str, b: str, store: Store, backend: str = "auto", plot: str | Path | None = None,
            verify: str = "auto") -> Comparison:
    """The verdict on two models, against the store's null, deep-verified at fresh positions as ``verify``
    says ("auto": when the stored evidence asks for it; "always"; "never": see
    :func:`lineage_scanner.run.verify.judge`); with ``plot``, the evidence that decided drawn above the seed
    method's curves."""
    from lineage_scanner.run.verify import judge

    sig_a, sig_b = signature_for(a, store, backend), signature_for(b, store, backend)
    v = judge(sig_a, sig_b, store, backend, verify)
    if plot:
        from lineage_scanner.report.plot import plot_evidence

        plot_evidence(sig_a, sig_b, v, plot, title=f"{sig_a.model} vs {sig_b.model}: {v.verdict}"
                      f"{f' ({v.kind})' if v.kind else ''}, decided by {v.decided_by or 'nothing'}")
    return Comparison(sig_a, sig_b, v)


def report(a: str, b: str, store: Store, out: str | Path, backend: str = "auto", verify: str = "auto") -> Comparison:
    """:func:`compare`, written to ``out`` as one self-contained HTML page."""
    from lineage_scanner.report.pair import pair_report

    pair = compare(a, b, store, backend, verify=verify)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(pair_report(pair.a, pair.b, pair.verdict), encoding="utf-8")
    return pair


def match(source: str, store: Store, top: int = 10, prefilter: int = 100, backend: str = "auto") -> Matches:
    """The ``top`` nearest relatives of a model in the store: the SQL pre-filter's ``prefilter`` candidates,
    each judged exactly, ranked parent first (see :mod:`lineage_scanner.lineage.relatives`), with
    Benjamini-Hochberg q-values over all of them."""
    from lineage_scanner.lineage.relatives import rank

    query = signature_for(source, store, backend)
    candidates = store.nearest(query.embedding or [0.0] * EMBED_DIM, (query.model, query.revision), prefilter)
    ranked = rank(query, candidates, [decide(query, c, null_for(store, query, c)) for c in candidates])
    qs = q_values([r.verdict.p_value for r in ranked])
    return Matches(query, [r.row(q) for r, q in zip(ranked, qs)][:top])


def graph(store: Store, out: str | Path | None = None, min_confidence: float = 0.99, html: str | Path | None = None,
          title: str | None = None) -> LineageGraph:
    """Build the stored models' family trees (see :mod:`lineage_scanner.lineage.tree`), write their
    derivations to the store (which fills the ``edges`` and ``disagreements`` views) and, with ``out``,
    the graph (GraphML or JSON); with ``html``, a lineage map for a browser."""
    from lineage_scanner.lineage.graph import detect, graph_data, write

    forest = detect(store, min_confidence)
    saved = store.keep(edges=forest.edges)  # a read-only store: the derivations are shown, not stored
    with store.connect(edges=None if saved else forest.edges) as con:
        exported = graph_data(store, con)
        disagreements = con.execute(DISAGREEMENTS).fetchall()
    written = write(exported, out) if out else None
    if html:
        from lineage_scanner.report.lineage_map import lineage_map

        Path(html).write_text(lineage_map(exported, title or "Lineage map"), encoding="utf-8")
    return LineageGraph(forest.edges, exported, disagreements, written)


def plot(sources: list[str], store: Store, out: str | Path, backend: str = "auto") -> Path:
    """Per-layer z-scored std curves of several models, one panel per role, as the seed paper drew them."""
    from lineage_scanner.report.plot import plot_curves

    return plot_curves([signature_for(s, store, backend) for s in sources], out,
                       title="per-layer std of attention projections")


def store_health(store: Store, repair: bool = False) -> list[tuple[str, str]]:
    """The store's damaged or foreign files and their problems; with ``repair``, each moved aside to
    ``DB/quarantine/`` and where it went (local directories and object stores alike)."""
    return store.repair() if repair else store.check()
