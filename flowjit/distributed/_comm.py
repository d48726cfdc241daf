"""The MPI side of `fj.distributed`: the world (rank, size), and the collectives on
contiguous NumPy buffers, each waited for with a timeout.

Which MPI: MPICH, through `mpi4py` (`pip install flowjit[distributed]` installs the
`mpi4py` and `mpich` wheels from the package index). MPICH's wheel needs no system MPI
(it brings its own `libmpi` and the Hydra launcher `mpiexec`), and unlike Open MPI it
runs as root (containers, CI) without extra variables (Open MPI refuses root unless
OMPI_ALLOW_RUN_AS_ROOT and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM are set). Any MPI that mpi4py
was built against works the same.

The world: `init()` imports mpi4py (so MPI_Init runs) only when the process was started
by an MPI launcher (PMI_*/PMIX_*/OMPI_* variables in the environment, set by mpiexec).
Without a launcher, or without mpi4py, the world has size 1: every collective returns its
input (a copy) and nothing is imported.

With several ranks, init() turns off the background compile (fj.config.background_compile):
a rank running tier-0 NumPy steps while another runs compiled kernels would round
differently, and the ranks' parameters would drift apart.

Timeouts: every collective is non-blocking (Iallreduce, Ibcast, Iallgatherv, Ibarrier)
and waited for by a polling loop (`Testall`, sleeping 20 us growing to 1 ms between
polls) for at most FLOWJIT_MPI_TIMEOUT seconds (default 60; `init(timeout=...)` or
`set_timeout`). When it expires, `CollectiveTimeoutError` is raised, naming the
operation, this rank and the world size. The request cannot be cancelled (MPI has no
cancel for collectives) and MPI_Finalize would wait for it, so the process must not
exit normally: `init()` installs a `sys.excepthook` (world size > 1 only) that prints
the traceback of any uncaught exception -- a timeout, or any error of the user's program
-- and then (after 0.5 s, so mpiexec forwards that output) calls MPI_Abort on
COMM_WORLD, which makes mpiexec end every rank. So a rank
that raises ends the job at once, and a rank that waits for a rank that hangs (or loops
forever) raises its timeout error and then ends the job. A program that catches the
error itself should call `fj.distributed.abort()` after reporting it.
"""
import os
import sys
import threading
import time

import numpy as np

_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")

# a bucket: the most bytes one Iallreduce carries (the gradients are packed into one
# contiguous buffer, cut into buckets all reduced at once)
BUCKET_BYTES = int(os.environ.get("FLOWJIT_MPI_BUCKET_BYTES", str(4 << 20)))


class CollectiveTimeoutError(RuntimeError):
    """A collective did not complete on this rank within the timeout."""


class _State:
    def __init__(self):
        self.initialized = False
        self.comm = None          # mpi4py's COMM_WORLD when size > 1 (or launched)
        self.MPI = None
        self.rank = 0
        self.size = 1
        self.pid = None
        self.timeout = None
        self.lock = threading.RLock()
        self.hook_installed = False
        self.groups = {}          # group id > 0 -> a sub-communicator (add_group)


S = _State()


def _env_timeout():
    try:
        return float(os.environ.get("FLOWJIT_MPI_TIMEOUT", "60"))
    except ValueError:
        return 60.0


def launched():
    """Whether an MPI launcher (mpiexec, srun with PMI) started this process."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def init(timeout=None, abort_on_error=True):
    with S.lock:
        if timeout is not None:
            S.timeout = float(timeout)
        if S.initialized:
            return
        S.pid = os.getpid()
        if launched():
            try:
                from mpi4py import MPI
            except ImportError:
                MPI = None
            if MPI is not None:
                S.MPI = MPI
                S.comm = MPI.COMM_WORLD
                S.rank = S.comm.Get_rank()
                S.size = S.comm.Get_size()
        S.initialized = True
        if S.size > 1:
            # every rank must run the same code for its floats to round the same way (and
            # the ranks' parameters to stay bit-identical): no tier-0 steps on one rank
            # while another runs compiled kernels, so jitted functions compile before
            # their first call
            from .. import config
            config.background_compile = False
        if S.size > 1 and abort_on_error and not S.hook_installed:
            _install_hook()


def ensure():
    if not S.initialized:
        init()


def timeout():
    return S.timeout if S.timeout is not None else _env_timeout()


def active():
    """Whether collectives really talk to other ranks (in the process that called init:
    a background-compile child running a kernel once on zeros does not)."""
    return S.comm is not None and S.size > 1 and os.getpid() == S.pid


def abort(code=1):
    """End every rank (MPI_Abort on COMM_WORLD); a world of size 1: exit this process."""
    try:
        sys.stderr.flush()
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    if S.comm is not None and S.size > 1:
        # mpiexec kills every rank at MPI_Abort, maybe before its proxy has forwarded
        # what this rank just wrote: give it a moment, so the reason reaches the user
        time.sleep(0.5)
        S.comm.Abort(code)
    os._exit(code)


def _install_hook():
    previous = sys.excepthook

    def hook(tp, value, tb):
        try:
            previous(tp, value, tb)
            sys.stderr.write(f"flowjit.distributed: rank {S.rank} of {S.size} ended by an uncaught "
                             f"{tp.__name__}; calling MPI_Abort so every rank ends\n")
        finally:
            abort(1)
    sys.excepthook = hook
    S.hook_installed = True
    # a thread's uncaught exception does not reach sys.excepthook; the main thread's does.


# How a wait polls. MPI moves a non-blocking collective forward only inside MPI calls, so
# every pause between polls stalls the transfer (a 20 us sleep is ~80 us on a busy
# machine; sleeps made a 235k-float allreduce 3.5x slower than a blocking one). So a
# wait polls SPIN_POLLS times at once, then for YIELD_POLL_S seconds back to back, handing the core to any other runnable
# process between polls (sched_yield: no spinning on a core another process needs);
# a longer wait (a slow or failed peer) sleeps between polls, up to 1 ms.
YIELD_POLL_S = 0.05
SPIN_POLLS = 64         # (about 1 us each) before the first yield
_yield = getattr(os, "sched_yield", lambda: time.sleep(0))


def wait(requests, what):
    """Wait for `requests` with the timeout, or raise CollectiveTimeoutError. what: the
    operation, for the message (a string, or a function making it: only on a timeout)."""
    MPI = S.MPI
    test = requests[0].Test if len(requests) == 1 else (lambda: MPI.Request.Testall(requests))
    for _ in range(SPIN_POLLS):          # most waits end within microseconds: poll at once
        if test():
            return
    limit = timeout()
    start = time.monotonic()
    deadline = start + limit
    fast_until = start + YIELD_POLL_S
    pause = 5e-5
    while not test():
        now = time.monotonic()
        if now < fast_until:
            _yield()
            continue
        if now > deadline:
            if callable(what):
                what = what()
            raise CollectiveTimeoutError(
                f"flowjit.distributed: {what} timed out on rank {S.rank} of {S.size} after "
                f"{limit:g} s (FLOWJIT_MPI_TIMEOUT): another rank failed, hung or did not "
                f"call the same collective; the job is aborted (MPI_Abort) when this error "
                f"is not caught")
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)


# Collectives reduce in buffers kept between calls: MPI on freshly allocated memory cost
# ~0.4 ms more per 235k-float allreduce than on a reused buffer (page faults as the
# transport first touches it), so each (dtype, size) gets one buffer, reused.
_scratch = {}


def scratch(dtype, n):
    """A reused flat buffer of n elements of dtype (its contents are garbage)."""
    key = (np.dtype(dtype).str, int(n))
    buf = _scratch.get(key)
    if buf is None:
        if len(_scratch) > 64:          # sizes that keep changing: do not hoard memory
            _scratch.clear()
        buf = _scratch[key] = np.empty(int(n), dtype)
    return buf


# ---- the collectives on NumPy arrays --------------------------------------------------
OPS = ("sum", "mean", "max", "min")


_MPI_OPS = {}


def _mpi_op(op):
    if not _MPI_OPS:
        MPI = S.MPI
        _MPI_OPS.update(sum=MPI.SUM, mean=MPI.SUM, max=MPI.MAX, min=MPI.MIN)
    return _MPI_OPS[op]


def allreduce_np(x, op="sum", what="allreduce", inplace=False):
    """The elementwise reduction of `x` over the ranks, as a new array (mean: the sum
    divided by the world size, in x's dtype; integer mean floors); inplace: written into
    x itself (a writable C-contiguous ndarray), which is returned."""
    if op not in OPS:
        raise ValueError(f"fj.distributed.allreduce: op must be one of {OPS}, got {op!r}")
    if inplace:
        if not (isinstance(x, np.ndarray) and x.flags.c_contiguous and x.flags.writeable):
            raise TypeError(f"fj.distributed.allreduce(inplace=True) needs a writable C-contiguous "
                            f"NumPy array, got {type(x).__name__}"
                            + (f" {x.shape} {x.dtype}" if isinstance(x, np.ndarray) else ""))
        if active():
            flat = x.reshape(-1)
            if flat.nbytes <= BUCKET_BYTES:      # (the common case, without the bucket list)
                reqs = [S.comm.Iallreduce(S.MPI.IN_PLACE, flat, _mpi_op(op))]
            else:
                reqs = start_allreduce(flat, op)
            wait(reqs, lambda: f"{what}(op={op!r}, {flat.size} x {flat.dtype})")
            if op == "mean":
                finish(flat, op)
        return x
    x = np.asarray(x)
    if not active():
        return np.array(x, copy=True)
    buf = scratch(x.dtype, x.size)
    buf[...] = x.reshape(-1)
    reqs = start_allreduce(buf, op)
    wait(reqs, lambda: f"{what}(op={op!r}, {buf.size} x {buf.dtype})")
    finish(buf, op)
    return buf.reshape(x.shape).copy()


def start_allreduce(buf, op, comm=None):
    """Start in-place Iallreduces over the buckets of flat contiguous `buf` (on COMM_WORLD,
    or `comm`)."""
    MPI = S.MPI
    comm = comm or S.comm
    mop = _mpi_op(op)
    per = max(1, BUCKET_BYTES // max(buf.itemsize, 1))
    if buf.size <= per:
        return [comm.Iallreduce(MPI.IN_PLACE, buf, mop)]
    return [comm.Iallreduce(MPI.IN_PLACE, buf[i:i + per], mop) for i in range(0, buf.size, per)]


def finish(buf, op, size=None):
    if op == "mean" and active():
        size = S.size if size is None else size
        if buf.dtype.kind == "f" or buf.dtype.kind == "c":
            buf /= buf.dtype.type(size)
        else:
            buf //= size


def add_group(comm):
    """Register a sub-communicator for collectives inside jitted functions (the `group`
    attribute of the mpi_collective op); returns its id (> 0)."""
    gid = len(S.groups) + 1
    S.groups[gid] = comm
    return gid


def broadcast_np(x, root=0, what="broadcast"):
    x = np.asarray(x)
    _check_root(root, what)
    if not active():
        return np.array(x, copy=True)
    buf = scratch(x.dtype, x.size)
    buf[...] = x.reshape(-1)
    wait([S.comm.Ibcast(buf, root=root)], lambda: f"{what}(root={root}, {buf.size} x {buf.dtype})")
    return buf.reshape(x.shape).copy()


def allgather_np(x, what="allgather"):
    """Every rank's `x` concatenated on axis 0 (in rank order); the other dims and the
    dtype must agree (a scalar counts as shape (1,))."""
    x = np.asarray(x)
    if x.ndim == 0:
        x = x.reshape(1)
    if not active():
        return np.array(x, copy=True)
    MPI = S.MPI
    meta = np.array([x.shape[0], x.size, x.ndim, x.dtype.num], np.int64)
    metas = np.empty((S.size, meta.size), np.int64)
    wait([S.comm.Iallgather(meta, metas)], lambda: f"{what} (sizes)")
    if len(set(metas[:, 2])) != 1 or len(set(metas[:, 3])) != 1:
        raise ValueError(f"fj.distributed.allgather on rank {S.rank}: the ranks' arrays differ in "
                         f"rank or dtype")
    rows = metas[:, 0]
    counts = metas[:, 1]
    row_size = x.size // x.shape[0] if x.shape[0] else 0
    if any(r and c // r != row_size for r, c in zip(rows, counts)):
        raise ValueError(f"fj.distributed.allgather on rank {S.rank}: the ranks' arrays differ in a "
                         f"dim after the first")
    out = np.empty((int(rows.sum()),) + x.shape[1:], x.dtype)
    send = np.ascontiguousarray(x).reshape(-1)
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
    mtype = MPI._typedict[x.dtype.char]
    wait([S.comm.Iallgatherv([send, mtype], [out.reshape(-1), (counts, displs), mtype])],
         f"{what}({x.size} x {x.dtype})")
    return out


def barrier(what="barrier"):
    if not active():
        return
    wait([S.comm.Ibarrier()], what)


def _check_root(root, what):
    if not 0 <= int(root) < max(S.size, 1):
        raise ValueError(f"fj.distributed.{what}: root must be in [0, {S.size}), got {root}")


# ---- what compiled code calls (Numba object mode, ops.py) -----------------------------
CODES = {"sum": 0, "mean": 1, "max": 2, "min": 3, "broadcast": 4}
NAMES = {v: k for k, v in CODES.items()}


def host_collective(code, root, group, x, out):
    """Compiled code's callback: out[...] = the collective `code` of x over COMM_WORLD
    (group 0) or the sub-communicator `group` (a background compile child, or a world of
    size 1, copies)."""
    name = NAMES[int(code)]
    x = np.asarray(x)
    out = np.asarray(out).reshape(-1)
    if not active():
        out[...] = x.reshape(-1)
        return
    comm = S.groups[int(group)] if group else S.comm
    buf = scratch(x.dtype, x.size)
    buf[...] = x.reshape(-1)
    if name == "broadcast":
        _check_root(root, "broadcast")
        wait([comm.Ibcast(buf, root=int(root))],
             lambda: f"broadcast (in a jitted function)(root={root}, {buf.size} x {buf.dtype})")
    else:
        wait(start_allreduce(buf, name, comm),
             lambda: f"allreduce (in a jitted function)(op={name!r}, {buf.size} x {buf.dtype})")
        finish(buf, name, comm.Get_size())
    out[...] = buf


# ---- a compiled step's allreduce in two halves (ops.py: mpi_start / mpi_wait) ----------
# start packs a bucket of gradients into the slot's own buffer and starts its
# Iallreduce; the compiled code runs on (the rest of the backward) and wait, later,
# completes it and writes the result. One slot per start node (a traced call site).
_pending = {}          # slot -> (buffer, requests, op name, comm size)
_slot_buffers = {}     # slot -> its buffer, reused by every call


def host_start(code, group, slot, xs, token):
    name = NAMES[int(code)]
    xs = [np.asarray(x) for x in xs]
    n = sum(x.size for x in xs)
    buf = _slot_buffers.get(slot)
    if buf is None or buf.size != n or buf.dtype != xs[0].dtype:
        buf = _slot_buffers[slot] = np.empty(n, xs[0].dtype)
    off = 0
    for x in xs:
        buf[off:off + x.size] = x.reshape(-1)
        off += x.size
    if active():
        comm = S.groups[int(group)] if group else S.comm
        _pending[slot] = (buf, start_allreduce(buf, name, comm), name, comm.Get_size())
    else:           # a world of one, or a background-compile child: nothing to reduce
        _pending[slot] = (buf, [], name, 1)
    np.asarray(token).reshape(-1)[0] = slot


def host_wait(token, out):
    slot = int(np.asarray(token).reshape(-1)[0])
    got = _pending.pop(slot, None)
    out = np.asarray(out).reshape(-1)
    if got is None:
        raise RuntimeError(f"flowjit.distributed: internal error: allreduce slot {slot} was "
                           f"waited for but never started")
    buf, reqs, name, size = got
    if reqs:
        wait(reqs, lambda: f"a jitted step's gradient allreduce ({buf.size} x {buf.dtype})")
        finish(buf, name, size)
    out[...] = buf
