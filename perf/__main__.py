"""`python -m perf`: run the benchmarks (see perf/run.py for the options)."""
import sys

from perf.run import main

sys.exit(main())
