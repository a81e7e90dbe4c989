"""Signature: the record per (model, revision) (``record``), its feature curves (``features``), and how
a scan builds one (``build``, which needs the scanning stack)."""
