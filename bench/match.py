"""`match` at scale: a store of 1,000,000 synthetic signatures; time the SQL pre-filter over all of them and
the exact re-score of the top 100, as `lineage match` runs them (median of 5 after one warm-up, with the
match index open, as in a long-running process), and the first query of a fresh process.

    python bench/match.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lineage_scanner.lineage.null import null_for, synthetic_features  # noqa: E402
from lineage_scanner.lineage.verdict import decide  # noqa: E402
from lineage_scanner.signature.features import embedding  # noqa: E402
from lineage_scanner.signature.record import (
    EMBED_DIM,  # noqa: E402
    Signature,  # noqa: E402
)
from lineage_scanner.store.schema import arrow_schema  # noqa: E402
from lineage_scanner.store.store import Store  # noqa: E402

LAYERS = 12


def synthetic_store(root: Path, rows: int, chunk: int = 100_000) -> None:
    """Signatures with random (but properly normalised) invariant curves, written straight as Parquet."""
    rng = np.random.default_rng(0)
    folder = root / "signatures"
    folder.mkdir(parents=True)
    now = datetime.now(timezone.utc)
    inv_type = arrow_schema("signatures").field("invariants").type
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        curves = rng.standard_normal((n, 4, LAYERS)).cumsum(axis=2)  # smooth-ish random depth profiles
        emb = np.stack([embedding(dict(zip(("qk", "vo", "kurt_q", "kurt_k"), c.tolist()))) for c in curves[:2000]])
        emb = np.resize(emb, (n, EMBED_DIM)).astype(np.float32)  # reuse shapes beyond 2,000 (speed of setup)
        inv = [{"qk": c[0].tolist(), "vo": c[1].tolist(), "kurt_q": c[2].tolist(), "kurt_k": c[3].tolist(),
                "kurt_v": None, "kurt_o": None} for c in curves]
        table = pa.table({
            "model": [f"synthetic/m{start + i:07d}" for i in range(n)],
            "revision": ["0" * 16] * n, "status": ["ok"] * n, "n_layers": pa.array([LAYERS] * n, pa.int32()),
            "family": ["llama"] * n,
            "invariants": pa.array(inv, inv_type),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), EMBED_DIM),
            "scanned_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            "scan_id": [uuid.uuid4().hex for _ in range(n)],
        })
        pq.write_table(table, folder / f"part-{start:08d}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        synthetic_store(Path(tmp), args.rows)
        print(f"store of {args.rows:,} signatures built in {time.perf_counter() - t:.0f} s")
        store = Store(tmp)
        feats = synthetic_features(LAYERS, 999)
        query = Signature("query", "q", "q", family="llama", n_layers=LAYERS, invariants=feats,
                          embedding=embedding(feats))
        t = time.perf_counter()
        store.index_path()
        print(f"match index built in {time.perf_counter() - t:.1f} s (once per change of the store)")
        t = time.perf_counter()
        null = null_for(store, query, query)
        print(f"store null ({null.source}, {len(null.scores)} pairs) in {time.perf_counter() - t:.2f} s "
              "(once per store state, architecture and depth)")
        t = time.perf_counter()
        cold = Store(tmp).nearest(query.embedding, (query.model, query.revision), 100)
        print(f"first query of a fresh process (index pages not yet cached): {time.perf_counter() - t:.3f} s")
        assert len(cold) == 100
        prefilter, rescore = [], []
        for _ in range(6):
            t0 = time.perf_counter()
            candidates = store.nearest(query.embedding, (query.model, query.revision), 100)
            t1 = time.perf_counter()
            verdicts = [decide(query, c, null_for(store, query, c)) for c in candidates]
            t2 = time.perf_counter()
            prefilter.append(t1 - t0)
            rescore.append(t2 - t1)
        assert len(candidates) == 100 and len(verdicts) == 100
        pre, exact = statistics.median(prefilter[1:]), statistics.median(rescore[1:])
        print(f"SQL pre-filter over {args.rows:,}: {pre:.3f} s; exact re-score of top 100: {exact:.3f} s; "
              f"match total: {pre + exact:.3f} s")


if __name__ == "__main__":
    main()
