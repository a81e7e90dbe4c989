"""Lineage: the seed score (``paper``), the feature score (``score``), nulls (``null``, ``generator``),
verdicts (``verdict``) and the store's lineage graph (``graph``)."""
