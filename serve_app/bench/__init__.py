"""Benchmark programs (they print numbers and write JSON + plots; they are not tests)."""
