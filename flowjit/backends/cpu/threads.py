"""How many threads a step's parallel work may use: fewer while other processes want
the cores.

OpenBLAS splits a GEMM statically between its threads, and the loop kernels that run on
its pool (pool.py) are split the same way, so the caller waits for its slowest thread.
When another process holds a core, one of those threads is descheduled for a whole
time slice and the step stalls: on the 2-core VM with two busy processes beside it, the
MLP digits example took 15x longer with two threads than with one (issue 16). So a
program with parallel work asks `adapt()` before it runs; at most every INTERVAL
seconds that samples how many threads of *other* processes are runnable (the kernel's
count in /proc/loadavg minus this process's running threads) and sets OpenBLAS's and
Numba's thread counts to the cores left over, at least 1 and at most the pool's size,
once AGREE samples in a row say so. Results are reproducible to the bit only while
the count stays the same (a reduction split over more threads adds in another order):
fix it with `fj.config.threads` where that matters.

`fj.config.threads` (env FLOWJIT_THREADS) chooses: "auto" adapts, up to the size the
BLAS pool had at the first parallel step (which honours OPENBLAS_NUM_THREADS and
threadpoolctl limits); a number fixes the count; None (the default) leaves the pool as
it is. Adapting is not the default yet: a reduction split over the pool adds its
partial sums per thread, so a changed count changes the last bits of a result, and on
the development VM a kernel thread that wakes now and then (DAMON's kdamond) made the
count change on a quiet machine, so two runs of the same program could differ.
Splitting rows into blocks whose number does not depend on the thread count comes
first.
"""
import os
import time

import numba

from ...config import config
from . import pool

INTERVAL = 0.05
# A new count is taken only after this many samples in a row agree on it. A sample can
# be wrong for an instant (a thread of ours that went to sleep between reading the
# count and reading its state counts as another process's), and every change of the
# count changes how reductions split their rows, so results would differ in the last
# bits from one quiet run to the next.
AGREE = 3

state = {"next": 0.0, "max": None, "now": None, "fixed": None, "recent": []}


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def others_runnable():
    """Threads of other processes that are runnable now, or None where /proc cannot
    tell (not Linux)."""
    try:
        with open("/proc/loadavg", "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
        mine = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:          # the thread ended meanwhile
                continue
            mine += stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] == b"R"
    except (OSError, ValueError, IndexError):
        return None
    return max(running - mine, 0)


def set_threads(n):
    """OpenBLAS's (GEMMs and the loop pool) and Numba's (prange) thread counts."""
    if state["now"] == n:
        return
    state["now"] = n
    if pool.available() and "set" in pool.state:
        pool.state["set"](int(n))
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _pool_size():
    if pool.available() and "get" in pool.state:
        return max(int(pool.state["get"]()), 1)
    return numba.get_num_threads()


def adapt():
    """Before a step with parallel work: the thread count for the machine as it is now."""
    now = time.monotonic()
    if now < state["next"]:
        return
    state["next"] = now + INTERVAL
    fixed = config.threads
    if fixed is None:
        return
    if fixed != "auto":
        if state["fixed"] != fixed:
            state["fixed"] = fixed
            set_threads(max(int(fixed), 1))
        return
    state["fixed"] = None
    if state["max"] is None:
        state["max"] = _pool_size()
        state["now"] = state["max"]
    if state["max"] < 2:
        return
    others = others_runnable()
    if others is None:
        return
    recent = state["recent"]
    recent.append(max(1, min(state["max"], _cores() - others)))
    del recent[:-AGREE]
    if len(recent) == AGREE and all(n == recent[0] for n in recent):
        set_threads(recent[0])
