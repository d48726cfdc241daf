"""flowjit benchmarks: `python -m perf [--quick] [--json PATH]` (see perf/run.py).

Kept free of imports so that `python -m perf.compile_child` in a fresh process pays
only for what it measures.
"""
