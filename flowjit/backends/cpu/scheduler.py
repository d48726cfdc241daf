"""The thread pool parallel work runs on: help-first, so a caller never waits for a
thread that is not running.

A parallel kernel (a fused loop split into row blocks, a GEMM split into blocks of
rows or columns) calls `flowjit_pool_run(n, task, records, stride)`: run `task` on each
of the n records. The caller publishes the job, wakes sleeping workers, and then claims
blocks itself from a shared counter, one at a time, as the workers do. When no block is
left it waits only for blocks a worker has already claimed (and is running). A worker
that is asleep, descheduled by a busy machine, or slow to wake finds the counter spent
and goes back to waiting: the caller never blocks on it. Static splitting (OpenBLAS's
threads, Numba's workqueue) makes the caller wait for every thread's share instead; on
a 2-core machine with two busy processes that made a training step 15-45x slower than
on one thread (issue 16).

Which thread runs a block changes nothing in the result: the block boundaries come
from the shapes alone (pool.block_count), and blocks that reduce write their own
partial results, combined in block order. So results are the same to the bit on one
thread or many, and the thread count may change from step to step (threads.py).

The scheduler is a small LLVM IR module compiled once per process by llvmlite (a few
milliseconds); its workers are plain pthreads started through ctypes. The job is one
64-bit word: a generation (32 bits), the end of the unclaimed blocks and the first of
them (16 bits each). The caller claims blocks from the front and workers from the
back, so from one call to the next each thread tends to run the same blocks and finds
their data in its own core's cache (an LSTM's products with a packed 1 MB weight,
each core reading its half: 1-3% faster a step than both claiming from the front).
A claim is a compare-and-swap on the whole word, so a late worker can never claim a
block of a newer job with the task of an older one. An idle worker polls for work for
a short while (yielding its core to anyone else who wants it on every poll), then
sleeps on a condition variable until the next job. A second caller (another Python
thread, or a Numba prange thread) that finds the pool busy runs its blocks itself.

Each worker notes its kernel thread id (@tids), so that threads.py's samples of the
machine read only the workers' states.

Test hooks (ctl words): `paused` keeps workers from taking blocks (the caller runs
everything), `delay_us` makes a worker sleep before it takes blocks.
"""
import ctypes
import os
import threading

import llvmlite.binding as ll

MAX_LISTED = 256             # workers whose kernel thread ids are noted (@tids's length)
MAX_BLOCKS = 65535           # the block count and the next block share 16 bits each
IDLE_POLLS = 400             # polls (each a sched_yield) before an idle worker sleeps
                             # (one not helping now sleeps at once)
# ctl words
SLEEPERS, HELPERS, BUSY, PAUSED, DELAY_US, POLLS, SIZE = 0, 2, 3, 4, 5, 6, 7   # (1: unused)

_IR = r"""
@word = global i64 0, align 64
@done = global i64 0, align 64
@job = global [3 x i64] zeroinitializer, align 64
@ctl = global [8 x i64] zeroinitializer, align 64
@mtx = global [128 x i8] zeroinitializer, align 64
@tids = global [256 x i64] zeroinitializer, align 64
@gettid = global i64 0, align 8
@cnd = global [128 x i8] zeroinitializer, align 64

declare i32 @flowjit_sys_lock(ptr)
declare i32 @flowjit_sys_unlock(ptr)
declare i32 @flowjit_sys_wait(ptr, ptr)
declare i32 @flowjit_sys_broadcast(ptr)
declare i32 @flowjit_sys_yield()
declare i32 @flowjit_sys_usleep(i32)

define private i64 @ctl_load(i64 %i) {
  %p = getelementptr [8 x i64], ptr @ctl, i64 0, i64 %i
  %v = load atomic i64, ptr %p seq_cst, align 8
  ret i64 %v
}

define private void @ctl_add(i64 %i, i64 %d) {
  %p = getelementptr [8 x i64], ptr @ctl, i64 0, i64 %i
  %o = atomicrmw add ptr %p, i64 %d seq_cst
  ret void
}

; claim and run blocks of the current job until none is left: from the front (the
; caller) or from the back (workers)
define private void @help(i1 %back) {
entry:
  br label %loop
loop:
  %w = load atomic i64, ptr @word seq_cst, align 8
  %front = and i64 %w, 65535
  %hi = lshr i64 %w, 16
  %end = and i64 %hi, 65535
  %more = icmp ult i64 %front, %end
  br i1 %more, label %claim, label %out
claim:
  %fn = load atomic i64, ptr @job monotonic, align 8
  %recp = getelementptr [3 x i64], ptr @job, i64 0, i64 1
  %rec = load atomic i64, ptr %recp monotonic, align 8
  %stp = getelementptr [3 x i64], ptr @job, i64 0, i64 2
  %stride = load atomic i64, ptr %stp monotonic, align 8
  %wf = add i64 %w, 1
  %wb = sub i64 %w, 65536
  %w1 = select i1 %back, i64 %wb, i64 %wf
  %last = sub i64 %end, 1
  %next = select i1 %back, i64 %last, i64 %front
  %cas = cmpxchg ptr @word, i64 %w, i64 %w1 seq_cst seq_cst
  %ok = extractvalue { i64, i1 } %cas, 1
  br i1 %ok, label %run, label %loop
run:
  %off = mul i64 %next, %stride
  %addr = add i64 %rec, %off
  %argp = inttoptr i64 %addr to ptr
  %fnp = inttoptr i64 %fn to ptr
  call void %fnp(ptr %argp)
  %d = atomicrmw add ptr @done, i64 1 seq_cst
  br label %loop
out:
  ret void
}

; whether worker idx may take blocks now, and the job has blocks left
define private i1 @has_work(i64 %idx) {
  %h = call i64 @ctl_load(i64 2)
  %p = call i64 @ctl_load(i64 4)
  %w = load atomic i64, ptr @word seq_cst, align 8
  %front = and i64 %w, 65535
  %hi = lshr i64 %w, 16
  %end = and i64 %hi, 65535
  %mine = icmp slt i64 %idx, %h
  %free = icmp eq i64 %p, 0
  %more = icmp ult i64 %front, %end
  %a = and i1 %mine, %free
  %b = and i1 %a, %more
  ret i1 %b
}

define i32 @flowjit_pool_run(i32 %n32, ptr %fn, ptr %rec, i32 %stride32) {
entry:
  %n = sext i32 %n32 to i64
  %stride = sext i32 %stride32 to i64
  %fni = ptrtoint ptr %fn to i64
  %reci = ptrtoint ptr %rec to i64
  %h = call i64 @ctl_load(i64 2)
  %hasw = icmp sgt i64 %h, 0
  %many = icmp sgt i64 %n, 1
  %fits = icmp sle i64 %n, 65535
  %c1 = and i1 %hasw, %many
  %c2 = and i1 %c1, %fits
  br i1 %c2, label %trylock, label %inline
trylock:
  %busyp = getelementptr [8 x i64], ptr @ctl, i64 0, i64 3
  %tl = cmpxchg ptr %busyp, i64 0, i64 1 seq_cst seq_cst
  %got = extractvalue { i64, i1 } %tl, 1
  br i1 %got, label %publish, label %inline
inline:
  %i = phi i64 [0, %entry], [0, %trylock], [%i1, %inline_body]
  %left = icmp slt i64 %i, %n
  br i1 %left, label %inline_body, label %ret
inline_body:
  %off = mul i64 %i, %stride
  %addr = add i64 %reci, %off
  %argp = inttoptr i64 %addr to ptr
  call void %fn(ptr %argp)
  %i1 = add i64 %i, 1
  br label %inline
publish:
  store atomic i64 %fni, ptr @job monotonic, align 8
  %recp = getelementptr [3 x i64], ptr @job, i64 0, i64 1
  store atomic i64 %reci, ptr %recp monotonic, align 8
  %stp = getelementptr [3 x i64], ptr @job, i64 0, i64 2
  store atomic i64 %stride, ptr %stp monotonic, align 8
  store atomic i64 0, ptr @done seq_cst, align 8
  %w0 = load atomic i64, ptr @word seq_cst, align 8
  %gen = lshr i64 %w0, 32
  %gen1 = add i64 %gen, 1
  %genw = shl i64 %gen1, 32
  %nbw = shl i64 %n, 16
  %w = or i64 %genw, %nbw
  store atomic i64 %w, ptr @word seq_cst, align 8
  %sl = call i64 @ctl_load(i64 0)
  %anyone = icmp sgt i64 %sl, 0
  br i1 %anyone, label %wake, label %work
wake:
  %l = call i32 @flowjit_sys_lock(ptr @mtx)
  %b = call i32 @flowjit_sys_broadcast(ptr @cnd)
  %u = call i32 @flowjit_sys_unlock(ptr @mtx)
  br label %work
work:
  call void @help(i1 false)
  br label %wait
wait:
  %k = phi i64 [0, %work], [%k1, %spin], [0, %yield]
  %d = load atomic i64, ptr @done seq_cst, align 8
  %fin = icmp sge i64 %d, %n
  br i1 %fin, label %release, label %spin
spin:
  %k1 = add i64 %k, 1
  %tired = icmp sgt i64 %k1, 64
  br i1 %tired, label %yield, label %wait
yield:
  %y = call i32 @flowjit_sys_yield()
  br label %wait
release:
  store atomic i64 0, ptr %busyp seq_cst, align 8
  br label %ret
ret:
  ret i32 0
}

; how many threads the pool has (blocks per job are counted from it, not from how
; many are helping now)
define i64 @flowjit_pool_size() {
  %v = call i64 @ctl_load(i64 7)
  ret i64 %v
}

define ptr @flowjit_pool_worker(ptr %arg) {
entry:
  %idx = ptrtoint ptr %arg to i64
  ; note this thread's kernel id, so that threads.py reads only its workers' states
  %gt = load atomic i64, ptr @gettid monotonic, align 8
  %known = icmp ne i64 %gt, 0
  %listed = icmp ult i64 %idx, 256
  %note = and i1 %known, %listed
  br i1 %note, label %tid, label %start
tid:
  %gtp = inttoptr i64 %gt to ptr
  %t32 = call i32 %gtp()
  %t = sext i32 %t32 to i64
  %tp = getelementptr [256 x i64], ptr @tids, i64 0, i64 %idx
  store atomic i64 %t, ptr %tp seq_cst, align 8
  br label %start
start:
  br label %top
top:
  %polls = phi i64 [0, %start], [0, %helped], [%p1, %poll], [0, %woke]
  %can = call i1 @has_work(i64 %idx)
  br i1 %can, label %delay, label %idle
delay:
  %us = call i64 @ctl_load(i64 5)
  %late = icmp sgt i64 %us, 0
  br i1 %late, label %sleep_us, label %helping
sleep_us:
  %us32 = trunc i64 %us to i32
  %s = call i32 @flowjit_sys_usleep(i32 %us32)
  br label %helping
helping:
  call void @help(i1 true)
  br label %helped
helped:
  br label %top
idle:
  %p1 = add i64 %polls, 1
  %limit = call i64 @ctl_load(i64 6)
  %h = call i64 @ctl_load(i64 2)
  %mine = icmp slt i64 %idx, %h
  %early = icmp slt i64 %p1, %limit
  %polling = and i1 %mine, %early
  br i1 %polling, label %poll, label %sleep
poll:
  %y = call i32 @flowjit_sys_yield()
  br label %top
sleep:
  ; only a worker that may help now counts as a sleeper (the caller wakes sleepers
  ; for each job); configure() wakes everyone when the helping count changes
  %l = call i32 @flowjit_sys_lock(ptr @mtx)
  %hs = call i64 @ctl_load(i64 2)
  %ps = call i64 @ctl_load(i64 4)
  %mine_s = icmp slt i64 %idx, %hs
  %free_s = icmp eq i64 %ps, 0
  %count = and i1 %mine_s, %free_s
  %inc = zext i1 %count to i64
  call void @ctl_add(i64 0, i64 %inc)
  %c = call i1 @has_work(i64 %idx)
  br i1 %c, label %woke, label %waiting
waiting:
  %wt = call i32 @flowjit_sys_wait(ptr @cnd, ptr @mtx)
  br label %woke
woke:
  %dec = sub i64 0, %inc
  call void @ctl_add(i64 0, i64 %dec)
  %u = call i32 @flowjit_sys_unlock(ptr @mtx)
  br label %top
}

; wake every sleeping worker (after the helping count or a test hook changed)
define void @flowjit_pool_wake() {
  %l = call i32 @flowjit_sys_lock(ptr @mtx)
  %b = call i32 @flowjit_sys_broadcast(ptr @cnd)
  %u = call i32 @flowjit_sys_unlock(ptr @mtx)
  ret void
}
"""

RUN_SYMBOL = "flowjit_pool_run"
SIZE_SYMBOL = "flowjit_pool_size"
state = {"engine": None, "why": "not started", "workers": 0}
_keep = []
_lock = threading.Lock()


def _libc():
    libc = ctypes.CDLL(None)
    names = {"lock": "pthread_mutex_lock", "unlock": "pthread_mutex_unlock",
             "wait": "pthread_cond_wait", "broadcast": "pthread_cond_broadcast",
             "yield": "sched_yield", "usleep": "usleep",
             "malloc": "malloc", "free": "free"}       # (malloc/free: gemm_ir's copies)
    for ours, theirs in names.items():
        ll.add_symbol("flowjit_sys_" + ours, ctypes.cast(getattr(libc, theirs), ctypes.c_void_p).value)
    return libc


def _ctl_array():
    return (ctypes.c_int64 * 8).from_address(state["addr"]["ctl"])


def _init_sync(libc):
    """Mutex and condition variable, fresh (also in a forked child, where a worker of
    the parent may have held the mutex at the fork)."""
    libc.pthread_mutex_init(ctypes.c_void_p(state["addr"]["mtx"]), None)
    libc.pthread_cond_init(ctypes.c_void_p(state["addr"]["cnd"]), None)


def start():
    """Compile the scheduler and register `flowjit_pool_run` (once per process). True
    when it runs; False where it cannot (no pthreads): callers then run serially."""
    with _lock:
        if state["engine"] is not None:
            return True
        if state["why"] != "not started":
            return False
        try:
            libc = _libc()
            ll.initialize_native_target()
            ll.initialize_native_asmprinter()
            mod = ll.parse_assembly(_IR)
            mod.verify()
            tm = ll.Target.from_default_triple().create_target_machine(opt=2)
            engine = ll.create_mcjit_compiler(mod, tm)
            engine.finalize_object()
            state["addr"] = {name: engine.get_global_value_address(name)
                             for name in ("ctl", "mtx", "cnd", "word", "done", "tids", "gettid")}
            # glibc 2.30+; without it the workers' ids stay unknown (threads.py then
            # reads every thread of the process)
            gettid = getattr(libc, "gettid", None)
            if gettid is not None:
                ctypes.c_int64.from_address(state["addr"]["gettid"]).value = \
                    ctypes.cast(gettid, ctypes.c_void_p).value
            state["run"] = engine.get_function_address(RUN_SYMBOL)
            state["worker"] = engine.get_function_address("flowjit_pool_worker")
            state["wake"] = ctypes.CFUNCTYPE(None)(engine.get_function_address("flowjit_pool_wake"))
            _keep.extend([mod, tm, engine, libc])
            state["libc"] = libc
            _init_sync(libc)
            _ctl_array()[POLLS] = IDLE_POLLS
            ll.add_symbol(RUN_SYMBOL, state["run"])
            ll.add_symbol(SIZE_SYMBOL, engine.get_function_address(SIZE_SYMBOL))
            _ctl_array()[SIZE] = 1
            state.update(engine=engine, why="running")
            os.register_at_fork(after_in_child=_after_fork)
            return True
        except Exception as e:  # noqa: BLE001  (any failure only means: serial)
            state["why"] = f"no thread pool ({e})"
            return False


def _after_fork():
    """A forked child has none of the parent's workers: start again with none (the
    caller runs every block until configure starts new ones). A job the parent had in
    flight (another thread's) is dropped, so new workers never run its blocks."""
    global _lock
    _lock = threading.Lock()          # it may have been held by a parent thread
    state["workers"] = 0
    ctl = _ctl_array()
    for i in (SLEEPERS, HELPERS, BUSY):
        ctl[i] = 0
    word = ctypes.c_int64.from_address(state["addr"]["word"])
    word.value = ((word.value >> 32) + 1) << 32
    ctypes.memset(state["addr"]["tids"], 0, 8 * MAX_LISTED)
    _init_sync(state["libc"])


def configure(size, helping):
    """A pool of `size` threads (the caller and size - 1 workers): jobs are split into
    blocks counted from it. `helping` of the workers take blocks now (0 while the
    machine is busy); workers are started as they are first needed."""
    if not start():
        return
    with _lock:
        _ctl_array()[SIZE] = max(int(size), 1)
        n = max(min(int(helping), int(size) - 1), 0)
        libc = state["libc"]
        while state["workers"] < n:
            tid = ctypes.c_ulong()
            fn = ctypes.c_void_p(state["worker"])
            if libc.pthread_create(ctypes.byref(tid), None, fn, ctypes.c_void_p(state["workers"])) != 0:
                n = state["workers"]
                break
            libc.pthread_detach(tid)
            state["workers"] += 1
        if _ctl_array()[HELPERS] != n:
            _ctl_array()[HELPERS] = n
            state["wake"]()


def helpers():
    return int(_ctl_array()[HELPERS]) if state["engine"] is not None else 0


def size():
    return int(_ctl_array()[SIZE]) if state["engine"] is not None else 1


def worker_tids():
    """The kernel thread ids of the pool's workers, or None while one is not known
    (not started yet, past MAX_LISTED, or no gettid in this libc)."""
    n = state["workers"] if state["engine"] is not None else 0
    if n > MAX_LISTED:
        return None
    tids = list((ctypes.c_int64 * MAX_LISTED).from_address(state["addr"]["tids"])[:n]) if n else []
    return None if 0 in tids else tids


def set_test_hooks(paused=None, delay_us=None):
    """Tests: keep workers from taking blocks, or delay them before they do."""
    start()
    ctl = _ctl_array()
    if paused is not None:
        ctl[PAUSED] = int(bool(paused))
    if delay_us is not None:
        ctl[DELAY_US] = int(delay_us)
    state["wake"]()


def run_python(n, task_address, records):
    """Run a registered task over an int64 records array from Python (tests)."""
    start()
    fn = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_int32)(state["run"])
    fn(n, task_address, records.ctypes.data, records.strides[0])
