"""Benchmarks and the chaos suite (`make bench`, `make chaos`)."""
