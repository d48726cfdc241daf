"""The thread count of parallel work adapts to the machine (backends/cpu/threads.py):
results are the same on one thread as on the whole pool, the count drops to one while
other processes want every core, and fj.config.threads fixes it."""
import numpy as np
import pytest

import flowjit as fj
from flowjit.backends.cpu import pool, threads as T


@pytest.fixture
def fresh_threads(monkeypatch):
    """A clean sampling state (sampled at the next call), restored afterwards."""
    saved, size = dict(T.state), T._pool_size()
    monkeypatch.setattr(fj.config, "threads", "auto")
    T.state.update(next=0.0, fixed=None, recent=[])
    yield
    T.state["now"] = None
    T.set_threads(size)
    T.state.update(saved)


def _step():
    # big enough for the BLAS pool (>= 2^16 elements) and a threaded GEMM
    @fj.jit
    def f(a, b):
        h = fj.sigmoid(fj.matmul(a, b))
        return fj.reduce_sum(h * h, axis=0), fj.reduce_sum(h)
    rng = np.random.default_rng(0)
    return f, rng.standard_normal((384, 256)).astype(np.float32), \
        rng.standard_normal((256, 384)).astype(np.float32)


def _sampled(f, a, b):
    """f(a, b) after AGREE fresh samples (the count changes once they agree)."""
    for _ in range(T.AGREE):
        T.state["next"] = 0.0
        out = f(a, b)
    return out


def _reference(a, b):
    h = 1 / (1 + np.exp(-(a.astype(np.float64) @ b.astype(np.float64))))
    return (h * h).sum(axis=0), h.sum()


def test_step_has_parallel_work():
    f, a, b = _step()
    f(a, b)
    (c,) = [e for es in f._cache.values() for e in es]
    assert c.exe.parallel


def test_busy_machine_runs_everything_on_the_calling_thread(fresh_threads, monkeypatch):
    f, a, b = _step()
    want = _reference(a, b)
    monkeypatch.setattr(T, "others_runnable", lambda: 64)      # every core taken by others
    for _ in range(2):
        col, total = _sampled(f, a, b)
        assert T.state["now"] == 1
        if pool.available() and "get" in pool.state:
            assert pool.state["get"]() == 1
        np.testing.assert_allclose(col.numpy(), want[0], rtol=2e-4)
        np.testing.assert_allclose(float(total), want[1], rtol=2e-4)


def test_quiet_machine_uses_the_whole_pool(fresh_threads, monkeypatch):
    f, a, b = _step()
    monkeypatch.setattr(T, "others_runnable", lambda: 0)
    _sampled(f, a, b)
    assert T.state["now"] == T.state["max"]
    monkeypatch.setattr(T, "others_runnable", lambda: 64)
    T.state["next"] = 0.0
    f(a, b)
    assert T.state["now"] == T.state["max"], "one busy sample is not enough to change"
    _sampled(f, a, b)
    assert T.state["now"] == 1
    monkeypatch.setattr(T, "others_runnable", lambda: 0)
    col, _ = _sampled(f, a, b)
    assert T.state["now"] == T.state["max"]
    np.testing.assert_allclose(col.numpy(), _reference(a, b)[0], rtol=2e-4)


def test_config_threads_fixes_the_count(fresh_threads, monkeypatch):
    f, a, b = _step()
    monkeypatch.setattr(T, "others_runnable", lambda: pytest.fail("sampled despite a fixed count"))
    monkeypatch.setattr(fj.config, "threads", 1)
    col, _ = f(a, b)
    assert T.state["now"] == 1
    np.testing.assert_allclose(col.numpy(), _reference(a, b)[0], rtol=2e-4)


def test_others_runnable_reads_the_machine():
    n = T.others_runnable()
    assert n is None or (isinstance(n, int) and n >= 0)
