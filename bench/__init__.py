"""Benchmarks: ``python -m bench``. Not tests: figures beside ceilings measured in the same run."""
