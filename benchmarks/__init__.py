"""Benchmarks and hardware checks (run as ``python -m benchmarks.<name>``)."""
