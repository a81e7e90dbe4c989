"""Measure: moments of every attention part of a checkpoint, exact or sampled, through a kernel backend."""
