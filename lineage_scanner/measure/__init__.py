"""Measure: moments of every attention part of a checkpoint, exact, streamed or sampled, through a kernel
backend."""
