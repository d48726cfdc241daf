"""The compile model: fusion, signatures, symbolic sizes, specialisation, statics."""
import gc
import sys
import weakref

import numpy as np
import pytest

import flowjit as fj
from conftest import assert_close


def test_elementwise_chain_and_reduction_is_one_fused_loop(rng):
    @fj.jit
    def f(x, y):
        z = fj.maximum(fj.abs(x * y + 1.0) - y, 0.5) * x    # 6 elementwise ops
        return fj.reduce_sum(fj.exp(-z * z))                 # + 3 more and a reduction
    x = rng.standard_normal(1000).astype(np.float32)
    y = rng.standard_normal(1000).astype(np.float32)
    info = f.inspect(x, y)
    assert info.steps == ["loop"]
    assert info.num_fused_loops == 1
    assert "reduce_sum" in info.fusion_groups
    # one loop over the elements (a blocked float32 sum counts within its block: j0)
    assert "for i0 in range" in info.forward_source or "for j0 in range" in info.forward_source
    z = np.maximum(np.abs(x * y + 1) - y, 0.5) * x
    assert_close(f(x, y), np.sum(np.exp(-z * z)), rtol=1e-5)
    assert "fused loop" in str(info)


def test_new_batch_size_does_not_recompile(rng):
    w = rng.standard_normal((8, 4)).astype(np.float32)

    @fj.jit
    def f(x, w):
        return fj.reduce_mean(fj.tanh(x @ w), axis=0)
    for _ in range(fj.config.compile_entry_after):     # reach the njit-compiled entry tier
        f(rng.standard_normal((16, 8)).astype(np.float32), w)
    before = fj.stats()
    for batch in (5, 100, 7, 33):
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        assert_close(f(x, w), np.mean(np.tanh(x @ w), axis=0), rtol=1e-5)
    after = fj.stats()
    assert after["traces"] == before["traces"]
    assert after["compiles"] == before["compiles"]
    assert after["cache_hits"] == before["cache_hits"] + 4


def test_size_one_dims_are_part_of_the_signature(rng):
    f = fj.jit(lambda x, y: x + y)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    f(a, a)
    t0 = fj.stats()["traces"]
    assert_close(f(a, a[:1]), a + a[:1])          # broadcasting pattern changed
    assert fj.stats()["traces"] == t0 + 1


def test_shape_mismatch_between_calls_retraces_and_errors(rng):
    f = fj.jit(lambda x, y: x + y)
    f(np.ones((4, 3), np.float32), np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="broadcastable"):
        f(np.ones((4, 3), np.float32), np.ones((5, 3), np.float32))


def test_python_int_on_a_size_specialises_and_says_so(rng):
    @fj.jit
    def f(x):
        n = int(x.shape[0])          # a Python value: the trace depends on it
        return x * float(n)
    x = np.ones((3, 2), np.float32)
    assert_close(f(x), x * 3)
    info = f.inspect(x)
    assert any("specialised to 3" in s for s in info.specializations)
    t0 = fj.stats()["traces"]
    assert_close(f(np.ones((5, 2), np.float32)), np.full((5, 2), 5, np.float32))
    assert fj.stats()["traces"] == t0 + 1


def test_fj_shape_keeps_sizes_symbolic(rng):
    @fj.jit
    def f(x):
        n = fj.shape(x)[0]
        return fj.reduce_sum(x) / fj.cast(n, fj.float32)
    info = f.inspect(np.ones((3, 2), np.float32))
    assert info.specializations == []
    t0 = fj.stats()["traces"]
    for b in (3, 4, 9):
        x = rng.standard_normal((b, 2)).astype(np.float32)
        assert_close(f(x), x.sum() / b, rtol=1e-5)
    assert fj.stats()["traces"] == t0


def test_reduce_mean_uses_runtime_count(rng):
    f = fj.jit(lambda x: fj.reduce_mean(x, axis=0))
    for b in (2, 7):
        x = rng.standard_normal((b, 3)).astype(np.float32)
        assert_close(f(x), x.mean(0), rtol=1e-6)


def test_slices_with_symbolic_sizes(rng):
    f = fj.jit(lambda x: x[1:] - x[:-1])
    for n in (5, 9):
        x = rng.standard_normal(n).astype(np.float32)
        assert_close(f(x), x[1:] - x[:-1])


def test_pytrees_statics_and_weak_floats(rng):
    @fj.jit
    def f(params, x, scale, flag):
        y = x @ params["w"] + params["b"]
        return {"y": y * scale if flag else y, "n": 3}
    p = {"w": rng.standard_normal((3, 2)).astype(np.float32), "b": np.zeros(2, np.float32)}
    x = rng.standard_normal((4, 3)).astype(np.float32)
    out = f(p, x, 0.5, True)
    assert out["n"] == 3
    assert out["y"].dtype is fj.float32            # the Python float took float32
    assert_close(out["y"], (x @ p["w"]) * 0.5, rtol=1e-6)
    t0 = fj.stats()["traces"]
    assert_close(f(p, x, 2.0, True)["y"], (x @ p["w"]) * 2, rtol=1e-6)
    assert fj.stats()["traces"] == t0              # floats are dynamic
    f(p, x, 2.0, False)
    assert fj.stats()["traces"] == t0 + 1          # bools are static


def test_static_argnames(rng):
    @fj.jit(static_argnames=("axis",))
    def f(x, axis):
        return fj.reduce_sum(x, axis=axis)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    assert_close(f(x, axis=0), x.sum(0), rtol=1e-6)
    assert_close(f(x, axis=1), x.sum(1), rtol=1e-6)


def test_eager_tensors_captured_as_constants(rng):
    w = fj.constant(rng.standard_normal((3, 3)).astype(np.float32))
    f = fj.jit(lambda x: x @ w)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    assert_close(f(x), x @ w.numpy(), rtol=1e-6)
    out = f(fj.constant(x))
    assert isinstance(out, fj.Tensor)


def test_cse_and_constant_folding(rng):
    @fj.jit
    def f(x):
        a = fj.exp(x) + fj.exp(x)              # exp computed once
        c = fj.constant(2.0) * 3.0 + 1.0       # folded to 7
        return a * c
    x = rng.standard_normal(5).astype(np.float32)
    info = f.inspect(x)
    ops = [line.split(" = ")[1].split("(")[0] for line in info.optimized_graph.splitlines()
           if line.startswith("%")]
    assert ops.count("exp") == 1
    assert ops.count("multiply") == 1 and "const" in ops
    assert_close(f(x), 2 * np.exp(x) * 7, rtol=1e-6)


def test_nested_jit_is_inlined(rng):
    inner = fj.jit(lambda x: x * 2.0)
    outer = fj.jit(lambda x: inner(x) + 1.0)
    x = rng.standard_normal(4).astype(np.float32)
    assert_close(outer(x), x * 2 + 1)
    assert outer.inspect(x).num_fused_loops == 1


def test_entry_tiers_give_the_same_results(rng, monkeypatch):
    # calls 1-2 run the Python entry, call 3 on the njit-compiled entry
    f = fj.jit(lambda x, w: fj.reduce_sum(fj.sigmoid(x @ w) * 2.0, axis=1))
    x = rng.standard_normal((6, 5)).astype(np.float32)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    outs = [f(x, w).numpy() for _ in range(4)]
    for o in outs[1:]:
        assert_close(o, outs[0])
    c, _ = f._lookup((x, w), {})
    assert c.exe.run == c.exe._run_njit


def _dense_training_step(sizes):
    vs = [fj.Variable(np.zeros(s, np.float32)) for a, b in zip(sizes[:-1], sizes[1:]) for s in ((a, b), (b,))]
    opt = fj.optimizers.SGD(0.1)

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            h = x
            for i in range(len(sizes) - 1):
                h = fj.sigmoid(fj.matmul(h, vs[2 * i]) + vs[2 * i + 1])
            loss = fj.reduce_mean(fj.square(h - y))
        opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
        return loss
    return step


@pytest.mark.parametrize("sizes, batch, compiled", [
    ((784, 256, 128, 10), 128, True),        # compiled, 10% faster a step on one thread
    ((784, 256, 64, 256, 784), 256, False),  # compiled, 5%: stays interpreted
])
def test_which_training_steps_compile_their_entries(sizes, batch, compiled):
    """The tier decision, from the traced sizes alone (traced, never run): an entry is
    compiled where the Python tier's estimated overhead is at least
    fj.config.entry_overhead_share of a call."""
    step = _dense_training_step(sizes)
    x = np.zeros((batch, sizes[0]), np.float32)
    y = np.zeros((batch, sizes[-1]), np.float32)
    c, _ = step._lookup((x, y), {})
    shares = [stage.exe.python_share for stage in c.stages]
    assert len(shares) == 2 and all(0.0 < s < 1.0 for s in shares)
    assert all((s >= fj.config.entry_overhead_share) == compiled for s in shares), shares


def test_a_scan_body_counts_once_a_step_in_the_tier_estimate():
    """examples/char_rnn.py's step (an LSTM, hidden 128, over 32 steps): its loop is a
    compiled function of its own whichever tier runs the entry, so the loop's lines are
    not counted as interpreted, and its body's work counts once a step; the entry stays
    in the Python tier."""
    from flowjit.backends.cpu.backend import _work_seconds
    k = fj.Variable(np.zeros((32 + 128, 4 * 128), np.float32))
    b = fj.Variable(np.zeros(4 * 128, np.float32))

    def step(x):
        with fj.GradientTape() as tape:
            out, _ = fj.nn.lstm(x, k, b)
            loss = fj.reduce_sum(out)
        return tape.gradient(loss, [k, b])
    works, shares = [], []
    for t in (32, 64):      # traced afresh: the length's traced size is the estimate's
        c, _ = fj.jit(step)._lookup((np.zeros((32, t, 32), np.float32),), {})
        works.append([_work_seconds(s.program) for s in c.stages])
        shares += [s.exe.python_share for s in c.stages]
    for w32, w64 in zip(*works):
        assert 1.8 * w32 < w64 < 2.2 * w32, works
    assert all(0.0 < s < fj.config.entry_overhead_share for s in shares), shares


def test_tracer_misuse_is_a_clear_error():
    f = fj.jit(lambda x: x.numpy())
    with pytest.raises(TypeError, match="traced"):
        f(np.ones(2, np.float32))
    g = fj.jit(lambda x: 1.0 if x[0] > 0 else 2.0)
    with pytest.raises(TypeError, match="truth value"):
        g(np.ones(2, np.float32))


@pytest.mark.parametrize("pool_available", [True, False])
def test_large_parallel_kernels(rng, monkeypatch, pool_available):
    # above the parallel threshold both kernels get a parallel path: row blocks on the
    # pool, or Numba's prange where there is none
    from flowjit.backends.cpu import pool
    if pool_available and not pool.available():
        pytest.skip("no thread pool here")
    monkeypatch.setitem(pool.state, "available", pool_available)
    x = rng.standard_normal(600_000 + pool_available).astype(np.float32)
    f = fj.jit(lambda a: (fj.sigmoid(a) * 2.0, fj.reduce_sum(a * a)))
    s, t = f(x)
    src = f.inspect(x).forward_source
    assert src.count("pool_launch(" if pool_available else "prange(") == 2, src
    assert_close(s, 2 / (1 + np.exp(-x)), rtol=1e-5)
    assert_close(t, np.sum(x.astype(np.float64) ** 2), rtol=1e-5)


def test_big_buffers_are_reused_only_once_the_caller_dropped_them():
    # 512 KB outputs: the Python tier recycles them across calls, but never one the
    # caller still holds (directly or through a view)
    f = fj.jit(lambda x: x * 2.0 + 1.0)
    x = np.arange(1 << 17, dtype=np.float32)
    held = []
    for k in range(4):
        held.append(f(x + k).numpy())
    view = held[0][10:]
    for k, h in enumerate(held):
        np.testing.assert_array_equal(h, (x + k) * 2.0 + 1.0)
    assert len({h.ctypes.data for h in held}) == 4
    refs = [weakref.ref(h) for h in held[1:]]
    del held[1:]
    again = [f(x - k).numpy() for k in range(2)]
    for k, a in enumerate(again):
        np.testing.assert_array_equal(a, (x - k) * 2.0 + 1.0)
    np.testing.assert_array_equal(view, ((x * 2.0) + 1.0)[10:])     # untouched
    np.testing.assert_array_equal(held[0], x * 2.0 + 1.0)
    assert any(again[0] is r() for r in refs)    # recycled: no fresh pages to fault in
    assert held[0].ctypes.data not in {a.ctypes.data for a in again}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps are Linux's")
def test_big_fresh_buffers_are_not_advised_for_huge_pages():
    # NumPy asks for transparent huge pages on arrays from 4 MB; the kernel's compaction
    # to find one stalled the first write of a step's big buffers (the Python tier keeps
    # them, so only the first call pays): they are advised back to normal pages
    from flowjit.backends.cpu.backend import BufferCache
    a = BufferCache(1).alloc(0, (3 << 20,), np.float32)       # 12 MB, not yet touched

    def flags(addr):
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                head = line.split()[0]
                if "-" in head and ":" not in head:
                    lo, hi = (int(v, 16) for v in head.split("-"))
                    inside = lo <= addr < hi
                elif inside and head == "VmFlags:":
                    return line.split()[1:]
    middle = a.ctypes.data + a.nbytes // 2
    assert "nh" in flags(middle)
    a[:] = 1.5
    assert float(a.sum()) == 1.5 * a.size
    assert "nh" not in flags(np.empty(3 << 20, np.float32).ctypes.data + (6 << 20))


def test_a_call_returning_a_pytree_leaves_no_reference_cycle():
    # the outputs of a call the caller dropped must be free at once, not at the next
    # garbage collection: otherwise the Python tier cannot recycle their buffers and
    # every call page-faults fresh memory (a loss+gradient step of 2x4 MB ran 2x slower)
    vg = fj.value_and_grad(lambda a, b: fj.reduce_sum(fj.tanh(a * b)), argnums=(0, 1))
    f = fj.jit(lambda a, b: {"loss": vg(a, b)[0], "grads": vg(a, b)[1]})
    x = np.linspace(-1, 1, 1 << 17, dtype=np.float32)
    y = x[::-1].copy()
    # past the entry compile (call compile_entry_after), whose Numba/llvmlite objects
    # are cyclic garbage of their own
    for _ in range(fj.config.compile_entry_after + 1):
        first = f(x, y)
    addresses = {first["grads"][0].numpy().ctypes.data}
    del first
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            out = f(x, y)
            addresses.add(out["grads"][0].numpy().ctypes.data)
            del out
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert garbage == []
    assert len(addresses) <= 2      # the two buffers of its allocation site, recycled
    out = f(x, y)
    np.testing.assert_allclose(out["grads"][0].numpy(), y * (1 - np.tanh(x * y) ** 2), rtol=1e-5, atol=1e-6)


def test_a_loss_without_variable_updates_is_computed_in_the_backward_loop(rng):
    """value_and_grad of an elementwise loss: the loss joins the backward's loop over the
    same inputs (one pass over the data, not one per function), with the same values."""
    def loss(x, y):
        return fj.reduce_sum(fj.tanh(x * y + 1.0) * fj.sigmoid(x) - fj.exp(-y * y))
    vg = fj.value_and_grad(loss, argnums=(0, 1))
    f = fj.jit(lambda x, y: vg(x, y))
    x, y = rng.standard_normal(1000), rng.standard_normal(1000)
    (val, (gx, gy)), (ev, (ex, ey)) = f(x, y), vg(fj.constant(x), fj.constant(y))
    np.testing.assert_allclose(val.numpy(), ev.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gx.numpy(), ex.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gy.numpy(), ey.numpy(), rtol=1e-12)
    ins = f.inspect(x, y)
    assert ins.num_fused_loops == 0 and ins.saved == []
    assert ins.backward_fusion_groups.count("fused loop") == 1


def test_eval_shape_traces_without_running():
    w = fj.Variable(np.ones((3, 4), np.float32))
    calls = []

    def f(x, k):
        calls.append(1)
        return fj.matmul(x, w), fj.reshape(x, (-1, 1)), fj.reduce_sum(x, 0) * k
    a, b, c = fj.eval_shape(f, fj.ShapeDtypeStruct((None, 3)), 2.0)
    assert (a.shape, b.shape, c.shape) == ((None, 4), (None, 1), (3,))
    assert a.dtype is fj.float32 and calls == [1] and fj.stats()["compiles"] >= 0
    # a convolution fixes its spatial sizes while tracing: they come back None, not the stand-in
    x = fj.ShapeDtypeStruct((None, 10, None, 3))
    k = np.ones((3, 3, 3, 4), np.float32)
    out = fj.eval_shape(lambda x: fj.nn.conv2d(x, k, 1, "VALID"), x)
    assert out.shape == (None, 8, None, 4)


def test_compile_seconds_count_compiling_not_the_run():
    """fj.stats()["compile_seconds"] for a first call counts the time Numba compiled or
    loaded on the way, not the call's own run (a long first step read as compiling)."""
    import time
    from types import MethodType, SimpleNamespace
    import numba
    from flowjit.backends.cpu.backend import CpuExecutable
    exe = SimpleNamespace(_dispatchers=lambda: [])
    exe._count = MethodType(CpuExecutable._count, exe)

    def counted(fn):
        before = fj.stats()["compile_seconds"]
        CpuExecutable._counted(exe, fn, ())
        return fj.stats()["compile_seconds"] - before

    assert counted(lambda: time.sleep(0.2)) == 0.0

    def compiles():
        numba.njit(lambda a: a + 1)(np.float64(1.0))
        time.sleep(0.2)
    assert counted(compiles) > 0.0
