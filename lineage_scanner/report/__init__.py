"""Report: what a person reads: plots of curves and evidence."""
