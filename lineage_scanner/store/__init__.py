"""Store: the append-only Parquet dataset of signatures (``store``), in rooms of one purpose: files,
views, health, the match index, rows (beside ``schema``), and sandboxed SQL (``sql``)."""
