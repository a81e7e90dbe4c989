"""Layouts: which tensors of a checkpoint are which attention role in which layer, per family
(``families``: the specs as data; ``resolve``: names to parts; ``arch``: sizes from a config)."""
