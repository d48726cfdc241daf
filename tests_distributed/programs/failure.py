"""Run by tests_distributed/test_failure.py under `mpiexec -n 2 ... failure.py raise|hang`:
rank 1 fails (raises, or hangs) before an allreduce that rank 0 waits in."""
import sys
import time

import numpy as np

import flowjit as fj

d = fj.distributed
d.init(timeout=float(sys.argv[2]) if len(sys.argv) > 2 else None)
d.allreduce(np.ones(3), "sum")           # a first collective that works
print(f"rank {d.rank()} ready", flush=True)
if d.rank() == 1:
    if sys.argv[1] == "raise":
        raise RuntimeError("rank 1 failed on purpose")
    time.sleep(120)                      # hangs: rank 0 times out
d.allreduce(np.ones(3), "sum")
print("UNREACHABLE", flush=True)
