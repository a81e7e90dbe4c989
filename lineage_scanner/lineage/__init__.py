"""Lineage: the seed score (``paper``), the feature score (``score``), nulls (``null``, ``generator``),
verdicts (``verdict``), and family trees: how close relatives are (``closeness``), which came first
(``direction``), the trees (``tree``), ``match``'s ranking (``relatives``), the store's graph (``graph``)
and how a tree compares with known lineage (``treescore``)."""
