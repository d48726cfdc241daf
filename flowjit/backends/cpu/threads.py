"""How many threads a step's parallel work uses: fewer while other processes want the
cores.

Parallel work (loop kernels and GEMMs split into blocks) runs on flowjit's help-first
pool (scheduler.py). A step with parallel work calls `begin()` before it runs and
`end()` after (also when it raises):
- the pool's *size* is the user's thread count: `fj.config.threads` (env
  FLOWJIT_THREADS) when it is a number, else the count of the OpenBLAS the GEMMs
  call (blas.py: NumPy's, else SciPy's), which honours
  OPENBLAS_NUM_THREADS and threadpoolctl limits (read at every step), at most the
  cores this process may use. Jobs are cut into blocks counted from the size, so a
  result depends on the size alone, never on the load;
- how many of the pool's workers *help* adapts to the machine ("auto", the default):
  at most every INTERVAL seconds `begin` samples how many threads of other processes
  are runnable (the kernel's count in /proc/loadavg minus this process's running
  threads) and lets as many threads work as there are cores left over, at least the
  caller: fewer at once, more once AGREE samples in a row say so. A worker that is not
  helping sleeps;
- that OpenBLAS runs single-threaded inside the step (the GEMM blocks are
  single-threaded calls on the pool) and gets the user's count back after it;
- Numba's prange loops (the generic convolutions) get the helping count too.
"""
import contextlib
import ctypes
import os
import threading
import time

import numba

from ...config import config
from . import blas, scheduler

INTERVAL = 0.05
# A new count is taken only after this many samples in a row agree on it (a sample can
# be wrong for an instant: a thread of ours that went to sleep between reading the
# count and reading its state counts as another process's).
AGREE = 3

state = {"next": 0.0, "size": None, "now": None, "recent": [], "asked": None, "depth": 0,
         "user": None}
_lock = threading.RLock()
# how deep this thread is in begin/end pairs: only the outermost pair sets up (a
# training step's forward and backward run inside the step's own pair, and a setup
# costs 3-4 us: the lock, reading OpenBLAS's count and setting it twice)
_held = threading.local()


def _after_fork():
    """A forked child starts without the parent's workers (scheduler.py) and without
    its steps in flight: configure again."""
    global _lock, _fds_lock
    _lock = threading.RLock()
    _held.depth = 0
    state.update(size=None, now=None, recent=[], asked=None, depth=0)
    _fds_lock = threading.Lock()
    _forget_fds()


os.register_at_fork(after_in_child=_after_fork)


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def others_runnable():
    """Threads of other processes that are runnable now, or None where /proc cannot
    tell (not Linux). Our own threads are read just before and just after the kernel's
    count, and one runnable in either read is ours: a worker going to sleep between the
    two reads would otherwise count as another process's, and a quiet machine would
    look busy for a moment. First only this thread and the pool's workers are read
    (microseconds); the process's other threads only when those leave some runnable
    thread unexplained (a process with JAX or torch loaded has 15-20 threads, and
    reading them all cost 0.37 ms a sample: 0.7% of a step at one every INTERVAL)."""
    try:
        with _fds_lock:
            for own in (_pool_runnable, _my_runnable):
                before = own()
                running = _kernel_runnable()
                others = running - len(before | own())
                if others <= 0:
                    return 0
            return others
    except (OSError, ValueError, IndexError):
        with _fds_lock:
            _forget_fds()        # (a kept descriptor the program closed and reused)
        return None


def _kernel_runnable():
    """The kernel's count of runnable threads, all processes (/proc/loadavg)."""
    return int(_read("/proc/loadavg").split()[3].split(b"/")[0])


# /proc files kept open (a read from offset 0 gives the current state), at most
# MAX_KEPT: path -> fd. A forked child drops the parent's: a task's file stays bound to
# the parent's thread.
MAX_KEPT = 64
_fds = {}
_fds_lock = threading.Lock()


def _read(path):
    fd = _fds.get(path)
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
        if len(_fds) >= MAX_KEPT:
            try:
                return os.pread(fd, 512, 0)
            finally:
                os.close(fd)
        _fds[path] = fd
    return os.pread(fd, 512, 0)


def _runnable(tids):
    """Those of the thread ids (str) whose thread is running or runnable."""
    out = set()
    for tid in tids:
        path = f"/proc/self/task/{tid}/stat"
        try:
            stat = _read(path)
        except OSError:          # the thread ended meanwhile
            fd = _fds.pop(path, None)
            if fd is not None:
                os.close(fd)
            continue
        end = stat.rfind(b")")
        if stat[end + 2:end + 3] == b"R":
            out.add(tid)
    return out


def _pool_runnable():
    """This thread and the pool's runnable workers (this process's every runnable
    thread where the workers' ids are not known)."""
    tids = scheduler.worker_tids()
    if tids is None:
        return _my_runnable()
    return {str(threading.get_native_id())} | _runnable(str(t) for t in tids)


def _my_runnable():
    """The ids of this process's threads that are running or runnable."""
    tids = os.listdir("/proc/self/task")
    _forget_fds(keep={f"/proc/self/task/{t}/stat" for t in tids} | {"/proc/loadavg"})
    return _runnable(tids)


def _forget_fds(keep=()):
    """Close the kept files, but those in `keep` (threads that ended leave theirs)."""
    for path in [p for p in _fds if p not in keep]:
        try:
            os.close(_fds.pop(path))
        except OSError:
            pass


def _apply(size, working):
    if (state["size"], state["now"]) == (size, working):
        return
    state["size"], state["now"] = size, working
    scheduler.configure(size, working - 1)
    numba.set_num_threads(max(min(working, numba.config.NUMBA_NUM_THREADS), 1))


def _sample(size):
    """The working count for the machine as it is now (the last agreed one meanwhile)."""
    now = time.monotonic()
    if now < state["next"] and state["now"] is not None:
        return min(state["now"], size)
    state["next"] = now + INTERVAL
    others = others_runnable()
    if others is None:
        return size
    recent = state["recent"]
    recent.append(max(1, min(size, _cores() - others)))
    del recent[:-AGREE]
    if len(recent) == AGREE and all(n == recent[0] for n in recent):
        return recent[0]
    # fewer threads at once (a thread that other processes deschedule stalls the step
    # until they let it run), more only once AGREE samples in a row say so
    current = size if state["now"] is None else min(state["now"], size)
    return min(current, recent[-1])


def held():
    """Whether this thread is inside a begin/end pair (a step's programs then skip theirs)."""
    return getattr(_held, "depth", 0) > 0


def begin():
    """Before a step with parallel work: set the pool up for the machine as it is now
    and run the GEMMs' OpenBLAS on one thread until the matching end(). Steps running at
    once in several Python threads share one setup: the first begin makes it and the
    last end restores OpenBLAS's count, so no step sees another's count of 1 as the
    user's. Inside another pair of the same thread it only counts."""
    depth = getattr(_held, "depth", 0)
    _held.depth = depth + 1
    if depth:
        return
    with _lock:
        state["depth"] += 1
        if state["depth"] > 1:
            return
        user = blas.get_threads()
        state["user"] = user
        if (user, config.threads) != state["asked"] or time.monotonic() >= state["next"]:
            if (user, config.threads) != state["asked"]:
                state["next"] = 0.0          # a new setting: look at the machine now
            state["asked"] = (user, config.threads)
            fixed = config.threads
            if fixed not in (None, "auto"):
                size = working = max(int(fixed), 1)
                state["next"] = time.monotonic() + INTERVAL
            else:
                size = max(min(user if user is not None else _cores(), _cores()), 1)
                working = _sample(size) if size > 1 else 1
            _apply(size, working)
        if user is not None and user != 1:
            blas.set_threads(1)


def end():
    """After the step (also when it raised): the last one out gives OpenBLAS the user's
    count back."""
    depth = getattr(_held, "depth", 0)
    if depth <= 0:                       # begin was interrupted before it counted
        return
    _held.depth = depth - 1
    if depth > 1:
        return
    with _lock:
        if state["depth"] <= 0:          # begin was interrupted before it counted
            return
        state["depth"] -= 1
        if state["depth"] == 0 and state["user"] is not None and state["user"] != 1:
            blas.set_threads(state["user"])


# ---- NumPy's BLAS while tier 0 runs beside a compile process -----------------------
_openblas = None       # (get, set) thread controls of every OpenBLAS loaded in the process


def _openblas_controls():
    """The thread count controls of the OpenBLAS libraries this process has loaded
    (NumPy's own among them, which SciPy's controls do not reach), from
    /proc/self/maps; none where that cannot be read."""
    global _openblas
    if _openblas is None:
        found = []
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({ln.split()[-1] for ln in f if len(ln.split()) >= 6
                                and "openblas" in os.path.basename(ln.split()[-1]).lower()})
            for path in paths:
                lib = ctypes.CDLL(path)          # already loaded: the same handle
                for name in ("scipy_openblas_{}_num_threads64_", "scipy_openblas_{}_num_threads",
                             "openblas_{}_num_threads"):
                    if hasattr(lib, name.format("get")) and hasattr(lib, name.format("set")):
                        found.append((getattr(lib, name.format("get")), getattr(lib, name.format("set"))))
                        break
        except OSError:
            pass
        _openblas = found
    return _openblas


@contextlib.contextmanager
def beside_a_compile():
    """Around a tier-0 call while a compile process runs: NumPy's BLAS leaves it a core.
    OpenBLAS splits a GEMM statically over its threads, so with every core asked for,
    the step waits for whichever thread the compile process descheduled (on 2 cores
    the digits MLP's tier 0 ran 3.9x slower than on one thread)."""
    cap = max(_cores() - 1, 1)
    changed = []
    for get, set_threads in _openblas_controls():
        n = int(get())
        if n > cap:
            set_threads(cap)
            changed.append((set_threads, n))
    try:
        yield
    finally:
        for set_threads, n in changed:
            set_threads(n)
