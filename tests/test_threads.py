"""Parallel work on flowjit's help-first pool (backends/cpu/scheduler.py, threads.py):
the caller never waits for a worker that has not started, results are the same to the
bit however many threads helped, the count of helping threads drops while other
processes want every core, and fj.config.threads / OpenBLAS's count set the pool."""
import os
import threading

import numpy as np
import pytest
from numba import cfunc, types

import flowjit as fj
from flowjit.backends.cpu import blas, pool, scheduler as S, threads as T

pytestmark = pytest.mark.skipif(not pool.available(), reason=S.state["why"])


@pytest.fixture
def fresh_threads(monkeypatch):
    """A clean sampling state (sampled at the next call), the hooks off afterwards."""
    monkeypatch.setattr(fj.config, "threads", "auto")
    T.state.update(next=0.0, size=None, now=None, recent=[])
    yield
    S.set_test_hooks(paused=False, delay_us=0)
    T.state.update(next=0.0, size=None, now=None, recent=[])


def _step():
    # big enough for the pool (>= 2^16 elements) and a GEMM split into blocks
    @fj.jit
    def f(a, b):
        h = fj.sigmoid(fj.matmul(a, b))
        return fj.reduce_sum(h * h, axis=0), fj.reduce_sum(h), fj.reduce_max(h, axis=1)
    rng = np.random.default_rng(0)
    return f, rng.standard_normal((384, 256)).astype(np.float32), \
        rng.standard_normal((256, 384)).astype(np.float32)


def _numpy(outs):
    return [o.numpy() for o in outs]


def _sampled(f, a, b):
    """f(a, b) after AGREE fresh samples (the count changes once they agree)."""
    for _ in range(T.AGREE):
        T.state["next"] = 0.0
        out = f(a, b)
    return _numpy(out)


def _check_reference(outs, a, b):
    h = 1 / (1 + np.exp(-(a.astype(np.float64) @ b.astype(np.float64))))
    np.testing.assert_allclose(outs[0], (h * h).sum(axis=0), rtol=2e-4)
    np.testing.assert_allclose(float(outs[1]), h.sum(), rtol=2e-4)
    np.testing.assert_allclose(outs[2], h.max(axis=1), rtol=2e-5)


def _same_bits(x, y):
    for p, q in zip(x, y):
        assert np.array_equal(p, q)


def test_step_has_parallel_work():
    f, a, b = _step()
    f(a, b)
    (c,) = [e for es in f._cache.values() for e in es]
    assert c.exe.parallel


def test_busy_machine_runs_everything_on_the_calling_thread(fresh_threads, monkeypatch):
    f, a, b = _step()
    monkeypatch.setattr(T, "others_runnable", lambda: 0)
    quiet = _sampled(f, a, b)
    monkeypatch.setattr(T, "others_runnable", lambda: 64)      # every core taken by others
    busy = _sampled(f, a, b)
    assert T.state["now"] == 1 and S.helpers() == 0
    _check_reference(busy, a, b)
    _same_bits(busy, quiet)


def test_quiet_machine_uses_the_whole_pool(fresh_threads, monkeypatch):
    f, a, b = _step()
    size = T.state["size"] or min(blas.get_threads() or 1, T._cores())
    monkeypatch.setattr(T, "others_runnable", lambda: 0)
    _sampled(f, a, b)
    assert T.state["now"] == T.state["size"] == size
    assert S.helpers() == size - 1
    monkeypatch.setattr(T, "others_runnable", lambda: 64)
    T.state["next"] = 0.0
    f(a, b)
    assert T.state["now"] == 1, "one busy sample is enough to use fewer threads"
    monkeypatch.setattr(T, "others_runnable", lambda: 0)
    T.state["next"] = 0.0
    f(a, b)
    assert T.state["now"] == 1, "one quiet sample is not enough to use more"
    _sampled(f, a, b)
    assert T.state["now"] == size


def test_a_new_thread_setting_looks_at_the_machine_at_once(fresh_threads, monkeypatch):
    # from a fixed count back to "auto" on a busy machine: the next step already runs on
    # the calling thread alone, not on the fixed count until the interval has passed
    f, a, b = _step()
    monkeypatch.setattr(T, "others_runnable", lambda: 64)
    monkeypatch.setattr(fj.config, "threads", 2)
    f(a, b)
    assert T.state["now"] == 2
    monkeypatch.setattr(fj.config, "threads", "auto")
    f(a, b)
    assert T.state["now"] == 1 and S.helpers() == 0


def test_same_bits_when_a_worker_is_late_or_never_starts(fresh_threads, monkeypatch):
    """The caller-runs-everything path: workers kept from taking blocks (paused), or
    sleeping 2 ms before they take one; the pool is given 2 threads even on 1 core."""
    f, a, b = _step()
    monkeypatch.setattr(fj.config, "threads", 2)
    want = _numpy(f(a, b))
    _check_reference(want, a, b)
    S.set_test_hooks(paused=True)
    for _ in range(3):
        _same_bits(_numpy(f(a, b)), want)
    S.set_test_hooks(paused=False, delay_us=2000)
    for _ in range(3):
        _same_bits(_numpy(f(a, b)), want)


def test_fixed_thread_count(fresh_threads, monkeypatch):
    f, a, b = _step()
    monkeypatch.setattr(fj.config, "threads", 1)
    one = _numpy(f(a, b))
    assert S.size() == 1 and S.helpers() == 0
    _check_reference(one, a, b)
    monkeypatch.setattr(fj.config, "threads", 3)
    f(a, b)
    assert S.size() == 3 and S.helpers() == 2


def test_blas_count_is_the_pool_size_and_is_restored(fresh_threads):
    """The GEMMs' OpenBLAS count (OPENBLAS_NUM_THREADS, threadpoolctl) sizes the pool; the
    step runs BLAS single-threaded and gives the count back."""
    if blas.get_threads() is None:
        pytest.skip("OpenBLAS's thread count cannot be read")
    f, a, b = _step()
    before = blas.get_threads()
    try:
        blas.set_threads(1)           # what threadpool_limits(1) does
        f(a, b)
        assert S.size() == 1 and blas.get_threads() == 1
        blas.set_threads(2)
        f(a, b)
        assert S.size() == min(2, T._cores()) and blas.get_threads() == 2
    finally:
        blas.set_threads(before)


def test_blas_count_restored_when_a_step_raises(fresh_threads):
    if blas.get_threads() is None:
        pytest.skip("OpenBLAS's thread count cannot be read")

    @fj.jit
    def bad(a, i):
        return fj.gather(fj.matmul(a, a), i)
    a = np.ones((64, 64), np.float32)
    before = blas.get_threads()
    with pytest.raises(fj.errors.InvalidArgumentError):
        bad(a, np.array([70], np.int32))
    assert blas.get_threads() == before and T.state["depth"] == 0 and not T.held()


def test_a_training_steps_forward_and_backward_share_one_setup(fresh_threads, monkeypatch):
    """A jitted training step runs its forward and backward programs under one setup of
    the threads (the step's own begin/end; theirs only count): OpenBLAS's count is read
    once a step, not once a program, and is back when the step returns."""
    if blas.get_threads() is None:
        pytest.skip("OpenBLAS's thread count cannot be read")
    rng = np.random.default_rng(1)
    w = fj.Variable(rng.standard_normal((64, 32)).astype(np.float32))
    x = rng.standard_normal((48, 64)).astype(np.float32)

    @fj.jit
    def step(x):
        with fj.GradientTape() as tape:
            loss = fj.reduce_sum(fj.square(fj.matmul(x, w)))
        w.assign_sub(0.001 * tape.gradient(loss, w))
        return loss
    for _ in range(3):       # past the first calls' tiers
        step(x)
    c, _ = step._lookup((x,), {})
    assert c.bwd is not None and (c.exe.parallel or c.bwd.exe.parallel)
    reads = []
    real = blas.get_threads
    monkeypatch.setattr(blas, "get_threads", lambda: reads.append(1) or real())
    before = real()
    w0 = w.numpy().astype(np.float64)
    loss = float(step(x))
    assert len(reads) == 1
    assert real() == before and T.state["depth"] == 0 and not T.held()
    np.testing.assert_allclose(loss, ((x.astype(np.float64) @ w0) ** 2).sum(), rtol=1e-4)
    want = w0 - 0.001 * 2 * x.astype(np.float64).T @ (x.astype(np.float64) @ w0)
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-4, atol=1e-5)


def test_steps_in_two_python_threads(fresh_threads):
    """Steps running at once share one setup: same bits as alone, and OpenBLAS's count
    comes back when the last one ends."""
    f, a, b = _step()
    want = _numpy(f(a, b))
    before = blas.get_threads()
    errors = []

    def call():
        try:
            for _ in range(20):
                got = _numpy(f(a, b))
                if not all(np.array_equal(p, q) for p, q in zip(got, want)):
                    errors.append("bits differ")
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=call) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert blas.get_threads() == before and T.state["depth"] == 0


# ---- the scheduler on its own ---------------------------------------------------------
@cfunc(types.void(types.CPointer(types.int64)))
def _fill_task(p):
    """Record [address, size, first, end, tag]: out[first:end] = i * 3 + tag."""
    out = pool.record_array(p, 0, "int64:1")
    for i in range(p[2], p[3]):
        out[i] = i * 3 + p[4]


def _records(out, blocks, tag):
    n = len(out)
    return np.array([[out.ctypes.data, n, b * n // blocks, (b + 1) * n // blocks, tag]
                     for b in range(blocks)], np.int64)


def test_many_jobs_in_a_row_with_late_workers(fresh_threads):
    """Job after job while workers wake late: a worker that claims must never run a
    block of one job with another job's task or records."""
    S.configure(2, 1)
    S.set_test_hooks(delay_us=50)
    out = np.zeros(4096, np.int64)
    for tag in range(300):
        S.run_python(16, _fill_task.address, _records(out, 16, tag))
        assert np.array_equal(out, np.arange(4096) * 3 + tag), tag


def test_two_callers_at_once(fresh_threads):
    """A second caller that finds the pool busy runs its own blocks."""
    S.configure(2, 1)
    outs = [np.zeros(1 << 15, np.int64) for _ in range(2)]
    errors = []

    def call(k):
        try:
            for tag in range(100):
                S.run_python(8, _fill_task.address, _records(outs[k], 8, tag + k))
                if not np.array_equal(outs[k], np.arange(1 << 15) * 3 + tag + k):
                    errors.append((k, tag))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=call, args=(k,)) for k in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_runs_steps(fresh_threads):
    """...and samples the machine from its own threads' files, not the parent's."""
    f, a, b = _step()
    want = _numpy(f(a, b))
    proc = os.path.isdir("/proc/self/task")
    if proc:
        with T._fds_lock:
            T._my_runnable()           # the parent's thread files, open
    pid = os.fork()
    if pid == 0:                       # the child: none of the parent's workers exist
        code = 1
        try:
            parents = [p for p in T._fds if p.startswith("/proc/self/task/")]
            T.state["next"] = 0.0
            got = _numpy(f(a, b))
            code = 0 if all(np.array_equal(p, q) for p, q in zip(got, want)) else 2
            if proc and (parents or T.others_runnable() is None):
                code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_numpy_blas_leaves_a_compile_process_a_core_and_gets_its_count_back(monkeypatch):
    """Tier 0 beside a compile process: NumPy's OpenBLAS (found among the loaded
    libraries) runs on the cores minus one, and has the user's count again after."""
    controls = T._openblas_controls()
    if not controls:
        pytest.skip("no OpenBLAS thread controls in this process")
    get, set_threads = controls[0]
    before = int(get())
    set_threads(3)
    monkeypatch.setattr(T, "_cores", lambda: 3)
    try:
        with T.beside_a_compile():
            assert int(get()) == 2
        assert int(get()) == 3
        with pytest.raises(RuntimeError):
            with T.beside_a_compile():
                raise RuntimeError("a failing tier-0 call")
        assert int(get()) == 3
    finally:
        set_threads(before)


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="no /proc")


@needs_proc
def test_a_sample_reads_the_pool_workers_by_their_ids(fresh_threads):
    """The workers note their kernel thread ids, so a sample on a quiet machine reads
    only their states and this thread's (not every thread of the process)."""
    import time
    S.configure(2, 1)
    deadline = time.monotonic() + 5
    while S.worker_tids() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    tids = S.worker_tids()
    if tids is None:
        pytest.skip("this libc has no gettid: the workers' ids are not known")
    assert tids and set(map(str, tids)) <= set(os.listdir("/proc/self/task"))
    assert str(threading.get_native_id()) in T._pool_runnable()
    assert T._pool_runnable() <= {str(threading.get_native_id())} | set(map(str, tids))


@needs_proc
def test_a_thread_that_ended_leaves_no_file_open():
    """The /proc files a sample reads stay open between samples; a thread that ended
    has its file closed at the next read of every thread."""
    gate = threading.Event()
    t = threading.Thread(target=gate.wait)
    t.start()
    path = f"/proc/self/task/{t.native_id}/stat"
    with T._fds_lock:
        T._my_runnable()
    assert path in T._fds
    gate.set()
    t.join()
    import time
    deadline = time.monotonic() + 5     # (join returns before the kernel's task is gone)
    while os.path.exists(os.path.dirname(path)) and time.monotonic() < deadline:
        time.sleep(0.01)
    with T._fds_lock:
        T._my_runnable()
    assert path not in T._fds


@needs_proc
def test_samples_keep_few_files_open_and_drop_them_after_a_bad_read(monkeypatch):
    """At most MAX_KEPT /proc files stay open (the rest are opened for each read); a
    read that cannot be parsed (a kept descriptor the program closed and reused, say)
    closes them all, so the next sample opens them afresh."""
    monkeypatch.setattr(T, "MAX_KEPT", 1)
    with T._fds_lock:
        T._forget_fds()
        assert str(threading.get_native_id()) in T._my_runnable()
        assert len(T._fds) <= 1
    monkeypatch.setattr(T, "_kernel_runnable", lambda: int(b"garbage"))
    assert T.others_runnable() is None
    assert not T._fds
    monkeypatch.undo()
    assert T.others_runnable() is not None


def test_a_worker_going_to_sleep_during_a_sample_is_not_another_process(monkeypatch):
    """Our threads are read before and after the kernel's runnable count: a worker that
    was runnable in the first read and asleep in the second is still ours, so a quiet
    machine does not look busy (it dropped a step to one thread for 150 ms before).
    The pool's threads are read first; the process's other threads only when a
    runnable thread is left unexplained."""
    pool = iter([{"101", "102"}, {"101"}])
    every = iter([])                          # not read: the pool explains the count
    monkeypatch.setattr(T, "_pool_runnable", lambda: next(pool))
    monkeypatch.setattr(T, "_my_runnable", lambda: next(every))
    monkeypatch.setattr(T, "_kernel_runnable", lambda: 2)
    assert T.others_runnable() == 0
    pool = iter([{"101"}, {"101"}])
    every = iter([{"101", "103"}, {"101"}])   # a thread of ours outside the pool
    assert T.others_runnable() == 0
    pool = iter([{"101"}, {"101"}])
    every = iter([{"101"}, {"101"}])
    assert T.others_runnable() == 1          # a thread of another process
    if os.path.exists("/proc/loadavg"):
        monkeypatch.undo()
        assert T.others_runnable() is not None
