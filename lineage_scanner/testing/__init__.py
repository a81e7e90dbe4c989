"""Test and benchmark helpers that ship with the package: the local Hub stand-in."""
