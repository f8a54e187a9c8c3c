"""Benchmarks (``easel bench ...``): commands that print a table and write JSON, never timed tests."""
