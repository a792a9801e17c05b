"""Benchmarks of up_fast against x_transformers.up_wrapper (pytest-benchmark), and their report.

    pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/RUN.json
    python -m benchmarks.report benchmarks/results/RUN.json --out benchmarks/results/

A package so that `python -m benchmarks.report` works; the repository's `pytest` (testpaths =
tests) does not collect it.
"""
