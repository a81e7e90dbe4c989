"""lineage-scanner: tell which open-weight models were derived from which, from their weights alone."""

__version__ = "0.1.0"
