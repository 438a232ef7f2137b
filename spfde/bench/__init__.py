"""Benchmarks that print numbers and ratios (`python -m spfde.bench NAME`, `make bench`), one module each."""
