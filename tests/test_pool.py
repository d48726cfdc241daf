"""Loop kernels on flowjit's thread pool (backends/cpu/pool.py): with the size threshold
lowered to one element, every poolable kernel of these small programs is split into
row blocks run on the pool; results must equal NumPy's (and the serial kernels', with
the pool limited to one thread)."""
import ctypes

import numpy as np
import pytest

import flowjit as fj
from flowjit.backends.cpu import blas, codegen, loader, pool, scheduler
from conftest import assert_close

pytestmark = pytest.mark.skipif(not pool.available(), reason="no thread pool here")


@pytest.fixture
def pooled(monkeypatch):
    """Kernels generated inside the test run on the pool from one element up; returns a
    function listing the loaded kernel modules generated that way."""
    monkeypatch.setattr(codegen, "POOL_MIN", 1)

    def pooled_modules():
        out = []
        for name, mod in loader._modules.items():
            with open(mod.__file__) as f:
                text = f.read()
            if "pool_launch(" in text and " >= 1 else 1\n" in text:
                out.append(name)
        return out
    return pooled_modules


def test_broadcast_elementwise_on_pool(pooled, rng):
    x = rng.standard_normal((7, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)

    @fj.jit
    def f(x, b):
        return fj.sigmoid(x + b) * 3.0 - fj.tanh(x)

    got = f(x, b).numpy()
    want = 3.0 / (1.0 + np.exp(-(x + b))) - np.tanh(x)
    assert_close(got, want.astype(np.float32), rtol=2e-6, atol=2e-6)
    assert pooled(), "no kernel was generated for the pool"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_full_and_column_reductions_combine_blocks(pooled, rng, dtype):
    x = rng.standard_normal((9, 6)).astype(dtype)
    y = rng.standard_normal((9, 6)).astype(dtype)

    @fj.jit
    def f(x, y):
        d = x * 1.5 - y
        return (fj.reduce_sum(fj.square(d)), fj.reduce_sum(d * y, axis=0),
                fj.reduce_max(x - y, axis=0), fj.reduce_min(x + y, axis=0), fj.reduce_sum(d, axis=1))

    got = [t.numpy() for t in f(x, y)]
    d = x * 1.5 - y
    want = [np.sum(d * d), np.sum(d * y, axis=0), np.max(x - y, axis=0), np.min(x + y, axis=0),
            np.sum(d, axis=1)]
    for g, w in zip(got, want):
        assert_close(g, w.astype(dtype), rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert pooled()


def test_reductions_over_the_first_loop_with_rank_two_partials(pooled, rng):
    """A sum and a max over axis 0 of a 3-D array: each block's partial result is a 2-D
    slice of the (blocks, 6, 4) partials array (pool_launch passes block t's slice to
    record t), combined in block order."""
    x = rng.standard_normal((9, 6, 4)).astype(np.float32)
    b = rng.standard_normal((6, 1)).astype(np.float32)     # keeps the two kept dims apart

    @fj.jit
    def f(x, b):
        return fj.reduce_sum(x * b, axis=0), fj.reduce_max(x - b, axis=0)

    s, m = f(x, b)
    assert_close(s.numpy(), np.sum(x * b, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(m.numpy(), np.max(x - b, axis=0))
    sources = [open(loader._modules[n].__file__).read() for n in pooled()]
    assert any("part:float32:2" in text for text in sources), "no kernel with 2-D block partials"


def test_integer_kernels_on_pool(pooled, rng):
    a = rng.integers(-50, 50, size=(6, 4)).astype(np.int32)
    b = rng.integers(-50, 50, size=(4,)).astype(np.int32)

    @fj.jit
    def f(a, b):
        return a * b + a, fj.reduce_sum(a - b, axis=0)

    s, c = f(a, b)
    np.testing.assert_array_equal(s.numpy(), a * b + a)
    np.testing.assert_array_equal(c.numpy(), np.sum(a - b, axis=0))
    assert pooled()


def test_train_step_in_place_updates_on_pool(pooled, rng):
    """An RMSprop step whose updates write the variables in place from pool threads,
    against the same step computed in NumPy."""
    w0 = rng.standard_normal((5, 3)).astype(np.float32)
    b0 = rng.standard_normal(3).astype(np.float32) * 0.1
    x = rng.random((8, 5)).astype(np.float32)
    y = rng.random((8, 3)).astype(np.float32)
    w, b = fj.Variable(w0.copy()), fj.Variable(b0.copy())
    opt = fj.optimizers.RMSprop(0.01)

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            loss = fj.reduce_mean(fj.square(fj.sigmoid(fj.matmul(x, w) + b) - y))
        opt.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
        return loss

    ws, bs = w0.astype(np.float64), b0.astype(np.float64)
    ms_w, ms_b = np.zeros_like(ws), np.zeros_like(bs)
    for _ in range(3):
        loss = step(x, y).numpy()
        z = x @ ws + bs
        s = 1 / (1 + np.exp(-z))
        want_loss = np.mean((s - y) ** 2)
        dz = 2 * (s - y) / s.size * s * (1 - s)
        gw, gb = x.T @ dz, dz.sum(0)
        ms_w = 0.9 * ms_w + 0.1 * gw * gw
        ms_b = 0.9 * ms_b + 0.1 * gb * gb
        ws = ws - 0.01 * gw / (np.sqrt(ms_w) + 1e-7)
        bs = bs - 0.01 * gb / (np.sqrt(ms_b) + 1e-7)
        assert_close(loss, np.float32(want_loss), rtol=1e-5)
    assert_close(w.numpy(), ws.astype(np.float32), rtol=1e-4, atol=1e-5)
    assert_close(b.numpy(), bs.astype(np.float32), rtol=1e-4, atol=1e-5)
    assert pooled()


def test_one_blas_thread_runs_the_same_kernels_serially(pooled, rng):
    """Limited to one thread (threadpoolctl), the pooled kernel takes its serial loop:
    same results as with the pool."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x = rng.standard_normal((11, 3)).astype(np.float32)

    @fj.jit
    def f(x):
        return fj.exp(x) * 0.5, fj.reduce_sum(fj.exp(x), axis=0)

    a1, s1 = (t.numpy() for t in f(x))
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        a2, s2 = (t.numpy() for t in f(x))
    np.testing.assert_array_equal(a1, a2)
    assert_close(s1, s2, rtol=1e-6)
    assert_close(a1, (np.exp(x) * 0.5).astype(np.float32))
    assert pooled()


def test_fewer_rows_than_threads_and_uneven_blocks(pooled, rng):
    for rows in (1, 3):
        x = rng.standard_normal((rows, 40)).astype(np.float64)

        @fj.jit
        def f(x):
            return fj.reduce_sum(x * x), x * 2.0

        s, d = f(x)
        assert_close(s.numpy(), np.sum(x * x))
        assert_close(d.numpy(), x * 2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_helper_on_strided_operands_and_output(rng, dtype):
    """The GEMM helper's path for operands BLAS cannot read in place (both strides
    bigger than one element) and an output with gaps between its elements: contiguous
    copies, one BLAS call, the result written back; with and without accumulating, for
    the four transposes. Shapes that do not fit are an error, not a read out of bounds."""
    from flowjit.backends.cpu.runtime_lib import gemm
    M, K, N = 6, 5, 7
    for ta in (False, True):
        for tb in (False, True):
            a_full = rng.standard_normal((2 * K, 2 * M) if ta else (2 * M, 2 * K)).astype(dtype)
            b_full = rng.standard_normal((2 * N, 2 * K) if tb else (2 * K, 2 * N)).astype(dtype)
            a, b = a_full[::2, ::2], b_full[::2, ::2]
            want = (a.T if ta else a) @ (b.T if tb else b)
            for acc in (False, True):
                out_full = rng.standard_normal((M, 2 * N)).astype(dtype)
                out = out_full[:, ::2]
                before, gaps = out.copy(), out_full[:, 1::2].copy()
                gemm(a, b, out, np.bool_(ta), np.bool_(tb), np.bool_(acc))
                np.testing.assert_allclose(out, want + before if acc else want,
                                           rtol=1e-5, atol=1e-5)
                np.testing.assert_array_equal(out_full[:, 1::2], gaps)   # untouched
    with pytest.raises(ValueError, match="matmul: operand shapes"):
        gemm(a_full, b_full[:3], np.empty((3, 3), dtype), np.bool_(False), np.bool_(False),
             np.bool_(False))


def _layouts(x):
    """x as a C array, a Fortran array, a reversed view and a view with gaps (the
    same values every time)."""
    gapped = np.zeros((x.shape[0], 2 * x.shape[1]), x.dtype)
    gapped[:, ::2] = x
    return {"C": np.ascontiguousarray(x), "F": np.asfortranarray(x),
            "reversed": np.ascontiguousarray(x[::-1])[::-1], "gaps": gapped[:, ::2]}


def _pool_jobs():
    """How many jobs the pool has been given (the generation in its job word)."""
    return ctypes.c_int64.from_address(scheduler.state["addr"]["word"]).value >> 32


@pytest.fixture
def pool_of_three():
    """The pool at 3 threads for direct helper calls (a step sets it itself)."""
    saved = scheduler.size(), scheduler.helpers()
    scheduler.configure(3, 2)
    yield
    scheduler.configure(*saved)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(5, 3, 4), (96, 72, 80), (40, 150, 200), (200, 150, 24)])
def test_gemm_helper_matches_numpy_for_every_layout_and_size(rng, pool_of_three, dtype, M, K, N):
    """The GEMM call (LLVM IR, gemm_ir.py) against NumPy: operands in every layout
    (in place when one stride is one element, else copied), the four transposes, with
    and without accumulating, for products small enough for one call and big enough
    for blocks of rows or of columns on the pool."""
    from flowjit.backends.cpu.runtime_lib import gemm
    tol = 1e-4 if dtype == np.float32 else 1e-10
    jobs = _pool_jobs()
    for ta in (False, True):
        for tb in (False, True):
            a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
            b = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
            want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
            for (la, av), (lb, bv) in zip(_layouts(a).items(), list(_layouts(b).items())[::-1]):
                for lc, out in _layouts(np.zeros((M, N), dtype)).items():
                    start = rng.standard_normal((M, N)).astype(dtype)
                    for acc in (False, True):
                        out[...] = start
                        gemm(av, bv, out, np.bool_(ta), np.bool_(tb), np.bool_(acc))
                        np.testing.assert_allclose(out, want + start if acc else want,
                                                   rtol=tol, atol=tol * K,
                                                   err_msg=f"{la} {lb} {lc} ta={ta} tb={tb} acc={acc}")
    split = M * N * K >= 2 * blas.GEMM_BLOCK_MACS
    assert (_pool_jobs() > jobs) == split, "big products go to the pool in blocks, small ones do not"


def test_gemm_helper_with_empty_sizes():
    """No inner terms: zeros, or the output unchanged when accumulating; an empty output
    is left alone."""
    from flowjit.backends.cpu.runtime_lib import gemm
    F = np.bool_(False)
    out = np.full((3, 4), 7.0, np.float32)
    gemm(np.ones((3, 0), np.float32), np.ones((0, 4), np.float32), out, F, F, np.bool_(True))
    np.testing.assert_array_equal(out, 7.0)
    gemm(np.ones((3, 0), np.float32), np.ones((0, 4), np.float32), out, F, F, F)
    np.testing.assert_array_equal(out, 0.0)
    gemm(np.ones((0, 5), np.float32), np.ones((5, 4), np.float32), np.empty((0, 4), np.float32), F, F, F)
    with pytest.raises(ValueError, match="matmul: operand shapes"):
        gemm(np.ones((3, 5), np.float32), np.ones((4, 4), np.float32), np.empty((3, 4), np.float32), F, F, F)


def test_reads_through_slices_pads_and_transposes_on_pool(pooled, rng):
    """Loads through access chains (a slice's start, a step, a transpose, a pad read
    outside its source) run in pool tasks too: their starts are signed offsets added
    to the task's unsigned row index, and a pad's zeros come from the bounds test. The
    gradient of a slice is a pad with a negative start."""
    x = rng.standard_normal((9, 12)).astype(np.float32)
    y = rng.standard_normal((12, 5)).astype(np.float32)

    @fj.jit
    def f(x, y):
        a = x[2:7, 1:9:2] * 2.0 + fj.transpose(y)[:, 3:7]
        b = fj.pad(x, [[1, 2], [3, 0]]) - 1.0
        return a, b

    a, b = f(x, y)
    assert_close(a.numpy(), x[2:7, 1:9:2] * 2.0 + y.T[:, 3:7])
    assert_close(b.numpy(), np.pad(x, [[1, 2], [3, 0]]) - 1.0)

    def loss(x):
        return fj.reduce_sum(fj.tanh(x[3:8, 2:10]) * 3.0)
    g = fj.jit(fj.grad(loss))(x).numpy()
    want = np.zeros_like(x)
    want[3:8, 2:10] = 3.0 * (1.0 - np.tanh(x[3:8, 2:10]) ** 2)
    assert_close(g, want, rtol=1e-5, atol=1e-6)
    chained = [n for n in pooled() if "P0" in loader._modules[n].__dict__[n].py_func.__code__.co_varnames]
    assert chained, "no pooled kernel read through an access chain"


def test_a_heavy_loop_body_kernel_goes_to_the_pool_from_fewer_elements(rng):
    """An elementwise kernel with five sigmoids/tanhs per element and 8 x 32 elements:
    below POOL_MIN, so run once per call it stays serial, while in a scan body (run once
    per step) it is pooled with a threshold lowered by its work per element, down to a
    quarter of POOL_MIN; the cell computes what NumPy's loop computes either way."""
    rows, cols = 8, 32
    least = codegen.POOL_MIN // 4
    assert rows * cols < least * 4

    def cell(c, g):
        i, j, f, o = fj.split(g, 4, axis=1)
        c = c * fj.sigmoid(f) + fj.sigmoid(i) * fj.tanh(j)
        return c, fj.tanh(c) * fj.sigmoid(o)

    def looped(c0, gs):
        def step(c, g):
            c, h = cell(c, g)
            return c, h
        return fj.scan(step, c0, gs)

    c0 = rng.standard_normal((rows, cols)).astype(np.float32)
    gs = rng.standard_normal((3, rows, 4 * cols)).astype(np.float32)
    scale = least // (rows * cols)          # sizes whose element count reaches `least`
    big_c0, big_gs = np.tile(c0, (scale, 1)), np.tile(gs, (1, scale, 1))

    def numpy_loop(c, gs):
        sig = lambda v: 1 / (1 + np.exp(-v.astype(np.float64)))
        hs = []
        for g in gs:
            i, j, f, o = np.split(g.astype(np.float64), 4, axis=1)
            c = c * sig(f) + sig(i) * np.tanh(j)
            hs.append(np.tanh(c) * sig(o))
        return c, np.stack(hs)

    f = fj.jit(looped)
    c, hs = f(big_c0, big_gs)
    wc, whs = numpy_loop(big_c0, big_gs)
    assert_close(c.numpy(), wc.astype(np.float32), rtol=1e-5, atol=1e-5)
    assert_close(hs.numpy(), whs.astype(np.float32), rtol=1e-5, atol=1e-5)
    src = f.inspect(big_c0, big_gs).forward_source
    thresholds = [int(line.split(">= ")[1].split()[0]) for line in src.splitlines()
                  if line.strip().startswith("nt = block_count(")]
    assert thresholds and min(thresholds) == least, thresholds

    g = fj.jit(lambda c, g: cell(c, g))
    out = g(big_c0, big_gs[0])
    assert_close(out[1].numpy(), numpy_loop(big_c0, big_gs[:1])[1][0].astype(np.float32),
                 rtol=1e-5, atol=1e-5)
    assert "pool_launch(" not in g.inspect(big_c0, big_gs[0]).forward_source


_EITHER_BLAS = r"""
import numpy as np
from flowjit.backends.cpu import blas, threads
from flowjit.backends.cpu.runtime_lib import gemm
rng = np.random.default_rng(3)
worst = 0.0
threads.begin()
try:
    for dtype in (np.float32, np.float64):
        for M, K, N in ((5, 3, 4), (200, 150, 24), (64, 640, 96)):
            for ta in (False, True):
                for tb in (False, True):
                    a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
                    b = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
                    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
                    for acc in (False, True):
                        out = np.ones((M, N), dtype)
                        gemm(a, b, out, np.bool_(ta), np.bool_(tb), np.bool_(acc))
                        worst = max(worst, float(np.abs(out - (want + 1 if acc else want)).max() / K))
finally:
    threads.end()
print(blas.state["why"])
print(worst)
"""


@pytest.mark.parametrize("which", ["default", "scipy"])
def test_gemm_in_either_openblas(which):
    """The GEMMs call NumPy's bundled OpenBLAS (64-bit integers) where NumPy has one, and
    SciPy's (32-bit integers) with FLOWJIT_BLAS=scipy or where it has not: both give
    NumPy's products, small and in blocks, all four transposes, with and without
    accumulating (a fresh process each: the choice is made once per process)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ)
    env.pop("FLOWJIT_BLAS", None)
    if which == "scipy":
        env["FLOWJIT_BLAS"] = "scipy"
    out = subprocess.run([sys.executable, "-c", _EITHER_BLAS], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    why, worst = out.stdout.split("\n")[-3:-1]
    assert float(worst) < 1e-5, why
    if which == "scipy":
        assert why.startswith("SciPy's BLAS"), why
    elif blas._numpy_openblas() is not None:
        assert why.startswith("NumPy's OpenBLAS"), why


def _stages(f, args):
    c, _ = f._lookup(args, {})
    return [s.exe for s in c.stages]


def _launched_from_python_then_compiled(f, args, want, combine):
    """Call f until its Python tier calls the compiled launchers of the kernels it first
    launched from Python (one of them combining block partials with `combine`): the
    results match NumPy's and stay the same to the bit all along."""
    from numba.core.registry import CPUDispatcher
    first = [t.numpy() for t in f(*args)]
    for g, w in zip(first, want):
        assert_close(g, w.astype(np.float32), rtol=1e-5, atol=1e-5)
    (exe,) = _stages(f, args)
    assert exe.stand_ins, "no pooled kernel was launched from Python"
    assert any(combine + "(" in exe.kernel_srcs[k] for k in exe.stand_ins)
    for k in exe.stand_ins:
        assert not isinstance(exe._py_ns[k], CPUDispatcher)
        assert not loader.kernel(k).overloads            # its launcher is not compiled
    launched = list(exe.stand_ins)
    for _ in range(400):
        for g, e in zip([t.numpy() for t in f(*args)], first):
            np.testing.assert_array_equal(g, e)
        if exe.calls > fj.config.compile_entry_after and not exe.stand_ins and exe.pending is None:
            break
        if exe.pending is not None and exe.pending.proc is not None:
            exe.pending.proc.wait(120)
    assert not exe.stand_ins
    for k in launched:                                     # now the compiled launcher
        assert exe._py_ns[k] is loader.kernel(k) and loader.kernel(k).overloads
    for g, e in zip([t.numpy() for t in f(*args)], first):
        np.testing.assert_array_equal(g, e)


@pytest.fixture
def cold_python_tier(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOWJIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fj.config, "entry_overhead_share", 1.5)     # stays in the Python tier
    monkeypatch.setattr(fj.config, "tier", "compiled")              # no tier 0 first


@pytest.mark.parametrize("background_compile", [False, True])
def test_the_python_tier_launches_pooled_kernels_from_python_until_their_launchers_compile(
        pooled, cold_python_tier, rng, monkeypatch, background_compile):
    """On a cold cache the Python tier's first calls run a pooled kernel's launcher as
    plain Python (pool.python_launcher: its compiled launcher would cost as much as half
    the kernel's compile), a column sum's block partials added by combine_sum's NumPy
    twin; the later compile brings the compiled launcher, which the tier then calls.
    Same blocks, same task, the same bits all along."""
    monkeypatch.setattr(fj.config, "background_compile", background_compile)
    x = rng.standard_normal((37, 9)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)

    # kernels of this test's own: this process keeps a launcher compiled by another test
    @fj.jit
    def f(x, b):
        y = fj.tanh(x * b) * fj.sigmoid(x - b) - (fj.exp(b - x) if background_compile else b)
        return y, fj.reduce_sum(y * x, axis=0)

    y = np.tanh(x * b) / (1.0 + np.exp(b - x)) - (np.exp(b - x) if background_compile else b)
    _launched_from_python_then_compiled(f, (x, b), [y, (y * x).sum(0)], "combine_sum")


def test_a_whole_sum_launched_from_python_adds_its_blocks_in_float64(pooled, cold_python_tier, rng,
                                                                      monkeypatch):
    monkeypatch.setattr(fj.config, "background_compile", False)
    x = rng.standard_normal((41, 7)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)

    @fj.jit
    def f(x, b):
        return (fj.reduce_sum(fj.square(b * 0.5 - x)),)

    _launched_from_python_then_compiled(f, (x, b), [np.square(b * 0.5 - x).sum()], "combine_sum_wide")


def test_a_task_launched_from_python_checks_its_arrays_first():
    """launch_from_python checks every array against the layout before any task reads
    it (the compiled launcher's typing does that): the dtype, rank, contiguity and the
    count of arguments, naming the kernel."""
    good = np.zeros((4, 8), np.float32)
    bad = [np.zeros((4, 8), np.float64), np.zeros(32, np.float32), good[:, ::2], good.tolist()]
    for a in bad:
        with pytest.raises(TypeError, match="k_test takes a C-contiguous float32 array of rank 2"):
            pool.launch_from_python(0, 1, 4, "i,float32:2", (4, a), "k_test")
    with pytest.raises(TypeError, match="k_test takes 2 arguments, got 1"):
        pool.launch_from_python(0, 1, 4, "i,float32:2", (4,), "k_test")
    with pytest.raises(TypeError, match="k_test takes a C-contiguous float32 array of rank 2 with 3 blocks"):
        pool.launch_from_python(0, 3, 4, "i,part:float32:1", (4, np.zeros((2, 5), np.float32)), "k_test")


@pytest.mark.parametrize("dtype,wide", [(np.float32, False), (np.float32, True), (np.float64, False),
                                        (np.int64, False)])
def test_combine_sum_and_its_numpy_twin_add_blocks_in_order_to_the_same_bits(rng, dtype, wide):
    """A sum's block partials: pool.combine_sum (LLVM IR in a compiled launcher) and the
    NumPy twin a launcher run from Python uses give the same bits, those of adding the
    blocks in order (in float64 where wide)."""
    from numba import njit
    parts = (rng.standard_normal((5, 3, 4)) * 1e4).astype(dtype)
    combine = pool.combine_sum_wide if wide else pool.combine_sum

    @njit
    def compiled(out, parts, nt):
        combine(out, parts, nt)
    got, twin = np.empty((3, 4), dtype), np.empty((3, 4), dtype)
    compiled(got, parts, 5)
    pool._combine_sum_py(twin, parts, 5, wide)
    acc = parts[0].astype(np.float64 if wide else dtype)
    for t in range(1, 5):
        acc = acc + parts[t]
    np.testing.assert_array_equal(got, acc.astype(dtype))
    np.testing.assert_array_equal(twin, got)
    compiled(got, parts[:1], 1)                          # one block: copied as it is
    np.testing.assert_array_equal(got, parts[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_gemm_helper_from_python_gives_the_compiled_helpers_bits(rng, dtype):
    """runtime_lib.gemm_py (the Python tier's first calls: the same LLVM function through
    ctypes) against the compiled gemm: every transpose, strided operands, accumulating
    or not, and the same errors."""
    from flowjit.backends.cpu import runtime_lib as rl
    for ta in (False, True):
        for tb in (False, True):
            for acc in (False, True):
                a = rng.standard_normal((9, 14) if ta else (7, 18)).astype(dtype)[:, ::2]
                b = rng.standard_normal((5, 9) if tb else (9, 5)).astype(dtype)
                out = rng.standard_normal((7, 10)).astype(dtype)[:, ::2]
                want, got = out.copy(), out.copy()
                rl.gemm(a, b, want, np.bool_(ta), np.bool_(tb), np.bool_(acc))
                rl.gemm_py(a, b, got, ta, tb, acc)
                np.testing.assert_array_equal(got, want)
                ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b) + (out if acc else 0)
                assert_close(got, ref.astype(dtype), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="operand shapes do not match"):
        rl.gemm_py(a, b[:3], got, False, False, False)
    with pytest.raises(TypeError, match="gemm takes 2-D"):
        rl.gemm_py(a.astype(np.float16), b, got, False, False, False)


_TWINS_CHILD = r"""
import numpy as np, flowjit as fj
from flowjit.backends.cpu import runtime_lib
fj.config.entry_overhead_share = 1.5          # stays in the Python tier
fj.config.background_compile = False
rng = np.random.default_rng(0)
x = rng.standard_normal((40, 30)).astype(np.float32)
w = rng.standard_normal((30, 20)).astype(np.float32)
f = fj.jit(lambda x, w: fj.tanh(fj.matmul(x, w)))
first = f(x, w).numpy()
(exe,) = [s.exe for s in f._lookup((x, w), {})[0].stages]
assert "gemm" in exe.stand_ins and exe._py_ns["gemm"] is runtime_lib.gemm_py, exe.stand_ins
assert not runtime_lib.gemm.overloads
for _ in range(fj.config.compile_entry_after + 2):
    assert np.array_equal(f(x, w).numpy(), first)
assert not exe.stand_ins and exe._py_ns["gemm"] is runtime_lib.gemm and runtime_lib.gemm.overloads
np.testing.assert_allclose(first, np.tanh(x.astype(np.float64) @ w), rtol=1e-5, atol=1e-5)
print("ok")
"""


def test_a_cold_python_tier_runs_the_gemm_helper_from_python_until_it_compiles(tmp_path):
    """In a fresh process with an empty cache, the Python tier's first calls run gemm
    through its Python twin; the later compile brings the compiled helper, which the
    tier then calls: the same bits all along."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, FLOWJIT_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _TWINS_CHILD], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
