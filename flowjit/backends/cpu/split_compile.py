"""A cold program's kernels compiled in several processes at once, on idle cores.

Numba compiles while holding the GIL, so a program's 20-30 kernels compile one after
another in the calling process, on one core, while the Python tier's first call waits
for them (seconds: the LSTM step about ten). Here, before that first call, a *dry run*
of the Python tier records what each kernel and GEMM helper will be called with: the
same entry source, run on copies of the real arguments, with every kernel and helper
replaced by a stub that notes its argument types (numba.typeof) and computes nothing.
Those are the types of the real first call, for programs whose control flow does not
depend on computed values and that run no op for its side effect (no while loop, cond,
print or MPI collective: those compile as before).

Forked children and this process take the calls one at a time from a shared queue,
costliest first, and compile them into Numba's disk cache; then this process loads the
children's from disk (milliseconds each). Each kernel is compiled once, by one
process, to the same machine code, so nothing in a result depends on this. It runs
only where the disk cache is on, the platform forks, and as many cores as it would use
are idle now (threads.others_runnable): on a busy machine, or beside another compiling
process, the kernels compile in this process as before. A child that fails, or runs
past TIMEOUT seconds, only leaves this process the kernels it had not saved.
"""
import os
import struct
import time
import warnings

import numba
import numpy as np

from ... import runtime_config as cfg
from ...config import config
from ...ir.registry import REGISTRY
from ...runtime import stats as S
from . import forked, loader, pool, runtime_lib, threads

# runtime_lib helpers entries call by name
HELPERS = ("gemm", "ngemm", "bmm", "bmm_loop", "pack_weight", "pgemm", "pack_pgemm")
DATA_DEPENDENT = {"while", "cond"}          # ops whose Python-tier control flow reads values
# compile cost in source characters (on 2 cores, a kernel took about 0.1 s plus 1 s per
# 6000 characters of its source, a helper 0.1-0.2 s)
KERNEL_COST = 600
HELPER_COST = 1200
TIMEOUT = 600.0
SAMPLES, SAMPLE_GAP_S = 3, 0.005      # how processes() looks at the machine


def processes():
    """How many processes would compile now: `fj.config.compile_processes` (default
    "auto": the cores no other process wants, at most 4)."""
    want = config.compile_processes
    if want != "auto":
        return max(int(want), 1)
    # the fewest runnable threads of other processes in a few samples a few ms apart:
    # one sample can catch a process that is just exiting (a cold compile then ran in
    # one process, twice as long, about once in ten runs here); a busy machine stays
    # busy in every sample
    seen = []
    for k in range(SAMPLES):
        if k:
            time.sleep(SAMPLE_GAP_S)
        seen.append(threads.others_runnable())
    if None in seen:
        return 1
    # (a child compiling the packed products for this process is not another process)
    from .packed import compiling_aside
    others = max(min(seen) - compiling_aside(), 0)
    return max(min(threads._cores() - others, 4), 1)


def compile_ahead(exe, args, runs_next=()):
    """Compile exe's kernels for `args` in several processes when that can help, and
    with them the kernels of the programs that run after it in the same call:
    runs_next holds (executable, a function from the previous program's arguments and
    outputs to its own arguments), a training step's backward, say, which reads the
    forward's residuals. A dry run's outputs have the real ones' shapes and types, so
    one queue covers both programs (the backward's kernels no longer wait for the
    forward's). Returns how many kernel signatures were compiled here or in
    children."""
    stages = [exe] + [e for e, _ in runs_next]
    if all(loader.kernel_cached(k, e.kernel_srcs[k]) for e in stages for k in e.kernel_names):
        return 0                 # they load in milliseconds
    if not _eligible(exe):
        return 0
    n = processes()              # (samples the machine for ~10 ms: only when it matters)
    if n < 2:
        return 0
    t0 = time.perf_counter()
    _start_numba()               # (meanwhile a child may be compiling the packed products)
    for e in stages:             # (before the children fork: they compile the helpers)
        loader.start_packed_for(e.py_src or "")
    jobs = {}                    # (name, signature): the executable with its source
    try:
        outs = _dry_run(exe, args, jobs)
    except Exception:            # noqa: BLE001  (the normal path reports any real error)
        return 0
    for nxt, next_args in runs_next:
        if not _eligible(nxt):
            break
        try:
            args = next_args(args, outs)
            outs = _dry_run(nxt, args, jobs)
        except Exception:        # noqa: BLE001  (it compiles on its first call instead)
            break
    # (a kernel already in the disk cache loads in milliseconds on its first call)
    # (the GEMM helpers' Python twins stand in for them in the first calls: backend.py)
    todo = [(e, name, sig) for (name, sig), e in jobs.items()
            if not _ready(e, name, sig) and name not in runtime_lib.PYTHON_TWINS
            and (name in HELPERS or not loader.kernel_cached(name, e.kernel_srcs[name]))]
    if len(todo) < 2:
        return 0
    todo.sort(key=_cost, reverse=True)     # the costliest first: the last ones are short
    if not _share_out(todo, n, _compile):
        return 0
    _compile(todo)               # load what the children saved (or compile what they did not)
    compiled = sum(1 for _, name, _ in todo if name not in HELPERS)
    S.bump("compiles", compiled)
    S.bump("compile_seconds", time.perf_counter() - t0)
    return compiled


def compile_later(jobs):
    """The later compile of Python-tier programs (backend._compile_loops, synchronous):
    jobs (executable, name, signature) for their loop functions and the compiled
    versions of their Python stand-ins (each name an attribute of the executable's entry
    module), shared out on idle cores as compile_ahead shares out the kernels, the loops
    (the biggest) first. Their processes then load what the children saved at their
    next calls. Returns how many were compiled (0: those calls compile them as before)."""
    if len(jobs) < 2 or not hasattr(os, "fork") or not cfg.disk_cache_enabled():
        return 0
    n = processes()
    if n < 2:
        return 0
    todo = sorted(jobs, key=lambda job: job[1] in job[0].loop_names, reverse=True)
    t0 = time.perf_counter()
    _start_numba()
    if not _share_out(todo, n, _compile_later):
        return 0
    S.bump("compiles", len(todo))
    S.bump("compile_seconds", time.perf_counter() - t0)
    return len(todo)


def _eligible(exe):
    if not hasattr(os, "fork") or not cfg.disk_cache_enabled() or exe.py_src is None:
        return False
    from .background import possible
    return possible(exe) and not _has_data_dependent(exe.program.graph)


def _has_data_dependent(graph, seen=None):
    """Whether the program (its loop and branch bodies included) has control flow that
    reads computed values, or an op run for its side effect (print, an MPI collective):
    a dry run would run that effect once more."""
    seen = set() if seen is None else seen
    if id(graph) in seen:
        return False
    seen.add(id(graph))
    for n in graph.nodes:
        op = REGISTRY.get(n.op)
        if n.op in DATA_DEPENDENT or (op is not None and op.effect):
            return True
        for v in n.attrs.values():
            sub = getattr(v, "graph", v)
            if hasattr(sub, "nodes") and _has_data_dependent(sub, seen):
                return True
    return False


def _dry_run(exe, args, jobs):
    """The outputs of the Python tier's first call made with stubs (its loops cut to one
    step); each kernel or helper signature it calls goes into jobs, with exe."""
    def stub(name):
        def record(*a):
            jobs.setdefault((name, tuple(numba.typeof(x) for x in a)), exe)
        return record
    ns = {"CACHE": False}
    exec(compile(loader.HEADER, "<flowjit header>", "exec"), ns)
    ns.update({k: stub(k) for k in list(exe.kernel_names) + list(HELPERS)})
    ns["pack_weight"] = _packed_shape(ns["pack_weight"])
    ns["alloc"] = lambda site, shape, dtype: np.empty(shape, dtype)
    # a loop's first step makes every call its later steps make, with the same types
    # (a scan's carry keeps its type): the entry's only `range` is a scan's loop, run
    # here for one step, so the dry run takes as long for 200 steps as for 50
    ns["range"] = _first_step
    exec(compile(exe.py_src, f"<flowjit dry run {exe.entry_name}>", "exec"), ns)
    # its scalar lines compute on uninitialised buffers: whatever NumPy would warn of
    # there is no user's concern
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return ns[exe.entry_name](*[_copy(a) for a in args])


def _packed_shape(record):
    """pack_weight's stub: what it returns is passed on (to pgemm, to a loop), so it has
    the packed array's shape."""
    from .packed import PANEL

    def stub(w, transposed):
        record(w, transposed)
        k, n = (w.shape[1], w.shape[0]) if transposed else w.shape
        return np.empty((-(-n // PANEL), k, PANEL), np.float32)
    return stub


def _start_numba():
    """Load Numba's typing and lowering registries (0.3 s, once per process) before the
    children fork, so that they share them: the first compile in each would load them
    again."""
    from numba.core.registry import cpu_target
    cpu_target.typing_context.refresh()
    cpu_target.target_context.refresh()


def _first_step(*bounds):
    return range(*bounds)[:1]


def _copy(a):
    """A one-element array copied (with its writeable flag: numba.typeof reads it), any
    other argument as it is. With the kernels and helpers stubs, the entry's only writes
    outside its own buffers are scalar lines updating a one-element variable (a step
    count), and copying a big argument cost time that grew with a loop's length (0.25 s
    for an LSTM's residuals at 200 steps)."""
    if not isinstance(a, np.ndarray) or a.size > 1:
        return a
    c = np.copy(a, order="K")
    c.flags.writeable = a.flags.writeable
    return c


def _ready(exe, name, sig):
    """Whether this process already has `name` compiled for `sig` (a kernel the Python
    tier launches from Python: its task, compiled when its module loads)."""
    if name in HELPERS:
        return sig in getattr(runtime_lib, name).overloads
    mod = loader._modules.get(name)
    return mod is not None and (pool.python_launchable(name, exe.kernel_srcs[name])
                                or sig in getattr(mod, name).overloads)


def _cost(job):
    exe, name, _ = job
    return HELPER_COST if name in HELPERS else KERNEL_COST + len(exe.kernel_srcs[name])


class _JobQueue:
    """Job indices 0..n-1 in a pipe, taken one at a time by whichever process is free
    (this one and its forked children): a read of 4 bytes from a pipe is atomic, so
    each index goes to exactly one process. Costs estimated ahead of time missed by up
    to 2x here, so parts fixed in advance left one process idle near the end."""

    def __init__(self, n):
        if 4 * n > 65536:          # all of them must fit in the pipe's buffer
            raise OSError("too many jobs for one pipe")
        self.r, w = os.pipe()
        try:
            os.write(w, b"".join(struct.pack("<I", i) for i in range(n)))
        finally:
            os.close(w)            # drained: read() returns b"" in every process

    def take(self):
        b = os.read(self.r, 4)
        return struct.unpack("<I", b)[0] if len(b) == 4 else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.r)


def _share_out(todo, n, compile_jobs):
    """Run compile_jobs on the jobs of `todo`, one at a time from a shared queue, here and
    in up to n - 1 forked children, which save into the disk cache; False when no queue
    could be made (nothing ran)."""
    try:
        queue = _JobQueue(len(todo))
    except OSError:
        return False
    with queue:
        children = _fork_children(min(n, len(todo)) - 1, lambda: _compile_from(queue, todo, compile_jobs))
        _compile_from(queue, todo, compile_jobs)
        forked.wait(children, TIMEOUT)
    return True


def _compile_from(queue, todo, compile_jobs):
    # a process that gave up the disk cache (full, say) saves nothing for the others:
    # it stops taking jobs, and this process compiles what is left after the children
    while cfg.disk_cache_enabled() and (i := queue.take()) is not None:
        compile_jobs([todo[i]])


def _compile_later(part):
    for exe, name, sig in part:
        getattr(exe._module, name).compile(sig)


def _compile(part):
    for exe, name, sig in part:
        if name in HELPERS:
            getattr(runtime_lib, name).compile(sig)
        else:
            src = exe.kernel_srcs[name]
            mod = loader.load(name, src, threads=name in exe.threaded)
            if not pool.python_launchable(name, src):     # (its launcher compiles later: pool.py)
                getattr(mod, name).compile(sig)


def _fork_children(n, work):
    """Start n forked children, each running work() and leaving at once."""
    pids = []
    for _ in range(n):
        pid = forked.fork_child(work)
        if pid is None:
            break
        pids.append(pid)
    return pids
