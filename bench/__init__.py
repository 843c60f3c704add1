"""Benchmarks: print and write measured figures (never asserted by wall-clock in tests)."""
