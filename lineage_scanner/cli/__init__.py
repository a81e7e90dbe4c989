"""The command line: ``lineage`` (see :mod:`lineage_scanner.cli.main`)."""
