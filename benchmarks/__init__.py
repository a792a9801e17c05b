"""Benchmarks of up_fast against x_transformers.up_wrapper (pytest-benchmark), and their report.

    pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/RUN.json
    python -m benchmarks.report benchmarks/results/RUN.json --out benchmarks/results/

The run is green wherever it runs: speed targets (benchmarks/targets.py) are reported at the end
of the run, in the JSON and by the report, and fail a benchmark only on the device they were set
them for. UP_FAST_BENCH_ROUNDS=1 (and SOAK_STEPS=1000) makes a quick pass whose timings are not
worth quoting.

A package so that `python -m benchmarks.report` works; the repository's `pytest` (testpaths =
tests) does not collect it.
"""
