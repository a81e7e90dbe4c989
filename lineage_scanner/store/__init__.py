"""Store: the append-only Parquet dataset of signatures (``store``), its schema (``schema``)."""
