"""Benchmarks and full-size random-weight models built from the published checkpoint layouts."""
