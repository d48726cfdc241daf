"""Products with a weight packed once (packed_ir.py): against NumPy in float64, over
shapes that leave partial tiles and panels, strided and transposed operands, adding
into the output or adding another array as it is stored, and the same bits whichever
threads ran the blocks. The tests run with this CPU's geometry (AVX-512's tiles or
AVX2's), and once more in a process made to use the other one."""
import os
import subprocess
import sys

import numpy as np
import pytest

import flowjit as fj
from conftest import on_every_thread_setting, run_in_the_other_geometry
from flowjit.backends.cpu import packed, scheduler
from flowjit.backends.cpu.runtime_lib import NO_BIAS, pack_pgemm, pack_weight, pgemm

pytestmark = pytest.mark.skipif(not packed.start(), reason="no packed products here")

PANEL = packed.PANEL
# rows: every remainder modulo the tile's rows (6 or 8), more than one row chunk (192 or
# 256 rows); columns: partial panels of 16 and of 32
SHAPES = [(1, 1, 1), (2, 3, 5), (3, 7, 16), (4, 5, 17), (5, 9, 31), (6, 2, 33), (7, 4, 48),
          (13, 0, 9), (0, 4, 4), (3, 4, 0), (64, 32, 70), (200, 17, 40), (301, 5, 65)]


def _reference(a, w, tr, c0, acc):
    prod = a.astype(np.float64) @ (w.T if tr else w).astype(np.float64)
    return prod + c0 if acc else prod


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("tr", [False, True])
@pytest.mark.parametrize("acc", [False, True])
def test_packed_products_match_numpy(rng, M, K, N, tr, acc):
    w = rng.standard_normal((N, K) if tr else (K, N)).astype(np.float32)
    a = rng.standard_normal((M, K)).astype(np.float32)
    c = rng.standard_normal((M, N)).astype(np.float32)
    c0 = c.astype(np.float64)
    p = pack_weight(w, np.bool_(tr))
    assert p.shape == (-(-N // PANEL), K, PANEL)
    pgemm(a, p, c, c, NO_BIAS, np.bool_(acc))
    np.testing.assert_allclose(c, _reference(a, w, tr, c0, acc), rtol=1e-5, atol=1e-5 * max(K, 1))


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_an_addend_of_its_own(rng, M, K, N):
    # out = d + a @ W with d another array (strided: every other column of a wider one,
    # rows reversed), which is only read; the same bits as adding into a copy of d
    w = rng.standard_normal((K, N)).astype(np.float32)
    a = rng.standard_normal((M, K)).astype(np.float32)
    wide = rng.standard_normal((M, 2 * N)).astype(np.float32)
    d = wide[::-1, ::2]
    before = wide.copy()
    p = pack_weight(w, np.bool_(False))
    out = np.full((M, N), np.nan, np.float32)
    pgemm(a, p, out, d, NO_BIAS, np.bool_(True))
    np.testing.assert_allclose(out, _reference(a, w, False, d.astype(np.float64), True),
                               rtol=1e-5, atol=1e-5 * max(K, 1))
    np.testing.assert_array_equal(wide, before)
    inplace = d.copy()
    pgemm(a, p, inplace, inplace, NO_BIAS, np.bool_(True))
    np.testing.assert_array_equal(out, inplace)
    with pytest.raises(ValueError, match="matmul: operand shapes do not match"):
        pgemm(a, p, out, np.zeros((M + 1, N), np.float32), NO_BIAS, np.bool_(True))


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("acc", [False, True])
def test_a_bias_row(rng, M, K, N, acc):
    # out = (d +) bias + a @ W, bias added to d first: the same bits as adding the bias
    # to d before the product is added
    w = rng.standard_normal((K, N)).astype(np.float32)
    a = rng.standard_normal((M, K)).astype(np.float32)
    d = rng.standard_normal((M, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    p = pack_weight(w, np.bool_(False))
    out = np.full((M, N), np.nan, np.float32)
    pgemm(a, p, out, d, bias, np.bool_(acc))
    first = (d + bias) if acc else np.broadcast_to(bias, (M, N)).copy()
    want = np.empty((M, N), np.float32)
    pgemm(a, p, want, first, NO_BIAS, np.bool_(True))
    np.testing.assert_array_equal(out, want)
    np.testing.assert_allclose(out, _reference(a, w, False, first.astype(np.float64), True),
                               rtol=1e-5, atol=1e-5 * max(K, 1))
    # the strided path (the scratch tile): every other column of a wider output
    wide = np.zeros((M, 2 * N), np.float32)
    pgemm(a, p, wide[:, ::2], d, bias, np.bool_(acc))
    np.testing.assert_array_equal(wide[:, ::2], want)
    with pytest.raises(ValueError, match="matmul: operand shapes do not match"):
        pgemm(a, p, out, d, np.zeros(N + 1, np.float32), np.bool_(acc))


@pytest.mark.parametrize("acc", [False, True])
def test_strided_and_reversed_operands(rng, acc):
    # A with every other column and its rows reversed, W a strided view, C every other
    # column of a wider array: the columns past C's are untouched
    M, K, N = 11, 9, 21
    a_full = rng.standard_normal((M, 2 * K)).astype(np.float32)
    a = a_full[::-1, ::2]
    w = rng.standard_normal((2 * K, N + 3)).astype(np.float32)[::2, 1:N + 1]
    wide = rng.standard_normal((M, 2 * N)).astype(np.float32)
    keep = wide[:, 1::2].copy()
    c = wide[:, ::2]
    c0 = c.astype(np.float64)
    pgemm(a, pack_weight(w, np.bool_(False)), c, c, NO_BIAS, np.bool_(acc))
    np.testing.assert_allclose(c, _reference(a, w, False, c0, acc), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(wide[:, 1::2], keep)


@pytest.mark.parametrize("K,N", [(8, 16), (17, 33), (64, 40), (16, 64), (9, 5)])
@pytest.mark.parametrize("view", ["plain", "rows reversed", "columns strided"])
def test_packing_a_transposed_weight(rng, K, N, view):
    # op(w) = w.T packed from w's rows (8 values of a panel's rows at a time where w's
    # rows are contiguous, one value at a time otherwise): the layout against NumPy
    w = rng.standard_normal((N, 2 * K)).astype(np.float32)
    w = {"plain": w[:, :K], "rows reversed": w[::-1, :K], "columns strided": w[:, ::2]}[view]
    p = pack_weight(w, np.bool_(True))
    want = np.zeros((-(-N // PANEL), K, PANEL), np.float32)
    for q in range(want.shape[0]):
        cols = w.T[:, PANEL * q:PANEL * (q + 1)]
        want[q, :, :cols.shape[1]] = cols
    np.testing.assert_array_equal(p, want)


def test_shapes_that_do_not_make_a_product_raise(rng):
    p = pack_weight(np.zeros((5, 6), np.float32), np.bool_(False))
    with pytest.raises(ValueError, match="matmul: operand shapes do not match"):
        z = np.zeros((3, 6), np.float32)
        pgemm(np.zeros((3, 4), np.float32), p, z, z, NO_BIAS, np.bool_(False))
    with pytest.raises(ValueError, match="matmul: operand shapes do not match"):
        z = np.zeros((3, 40), np.float32)
        pgemm(np.zeros((3, 5), np.float32), p, z, z, NO_BIAS, np.bool_(False))
    with pytest.raises(ValueError, match="matmul: operand shapes do not match"):
        # panels of another geometry's width (one panel either way)
        z = np.zeros((3, 5), np.float32)
        other = np.zeros((1, 6, PANEL // 2), np.float32)
        pgemm(np.zeros((3, 6), np.float32), other, z, z, NO_BIAS, np.bool_(False))


def test_the_bits_do_not_depend_on_the_threads(rng):
    # every output element is one sum over k in order, whichever block computes it:
    # one block, blocks on two threads, and blocks the caller runs alone (worker paused)
    a = rng.standard_normal((64, 256)).astype(np.float32)
    p = pack_weight(rng.standard_normal((256, 1024)).astype(np.float32), np.bool_(False))

    def product():
        c = np.empty((64, 1024), np.float32)
        pgemm(a, p, c, c, NO_BIAS, np.bool_(False))
        return c
    outs = on_every_thread_setting(product)
    for c in outs[1:]:
        np.testing.assert_array_equal(c, outs[0])


@pytest.mark.parametrize("T", [0, 3])
@pytest.mark.parametrize("owned", [True, False])
def test_an_rnn_loop_packs_its_weights_once_and_matches_numpy(rng, tier, T, owned):
    # a tanh RNN with a weight read plainly, one read transposed, and a product added to
    # the step's slice of a sequence (one the loop computed, or an argument): all three
    # multiply packed weights
    B, H = 7, 20
    xs = rng.standard_normal((T, B, H)).astype(np.float32)
    W = (rng.standard_normal((H, H)) * 0.3).astype(np.float32)
    U = (rng.standard_normal((H, H)) * 0.3).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)

    def run(h0, xs, W, U):
        def step(h, x):
            z = x + fj.matmul(h, W)
            h = fj.tanh(z + fj.matmul(fj.tanh(z), U, transpose_b=True))
            return h, h
        return fj.scan(step, h0, xs * 1.0 if owned else xs)
    h, hs = h0.astype(np.float64), []
    for t in range(T):
        z = xs[t] + h @ W
        h = np.tanh(z + np.tanh(z) @ U.T)
        hs.append(h)
    f = fj.jit(run)
    got_h, got_hs = f(h0, xs, W, U)
    np.testing.assert_allclose(got_h.numpy(), h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_hs.numpy(), np.array(hs).reshape(T, B, H), rtol=1e-4, atol=1e-5)
    src = f.inspect(h0, xs, W, U).forward_source
    assert src.count("= pack_weight(") == 2, src
    assert src.count("pgemm(") == 2, src


def _product_and_gradients(rng, M, K, N, tr, part="forward_source"):
    """x @ op(w) (M x K, K x N) and its gradients under fj.jit against NumPy's; returns
    the forward's generated source (or `part` of the inspection)."""
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K) if tr else (K, N)).astype(np.float32)
    g = rng.standard_normal((M, N)).astype(np.float32)

    def run(x, w, g):
        with fj.GradientTape() as tape:
            tape.watch(x)
            tape.watch(w)
            y = fj.matmul(x, w, transpose_b=tr)
            loss = fj.reduce_sum(y * g)
        return (y,) + tuple(tape.gradient(loss, [x, w]))
    f = fj.jit(run)
    y, dx, dw = f(x, w, g)
    w64 = (w.T if tr else w).astype(np.float64)
    np.testing.assert_allclose(y.numpy(), x.astype(np.float64) @ w64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx.numpy(), g.astype(np.float64) @ w64.T, rtol=1e-4, atol=1e-3)
    dw64 = x.astype(np.float64).T @ g.astype(np.float64)
    np.testing.assert_allclose(dw.numpy(), dw64.T if tr else dw64, rtol=1e-4, atol=1e-3)
    return getattr(f.inspect(x, w, g), part)


@pytest.mark.parametrize("tr", [False, True])
def test_a_product_with_many_rows_runs_packed_and_matches_numpy(rng, tier, tr):
    # an RNN's input projection for all its steps: enough rows (codegen.PACKED_MIN_ROWS)
    # to pack the weight for one product; a gradient through it too (its dx reads the
    # weight transposed, its dW the input transposed: BLAS)
    from flowjit.backends.cpu.codegen import PACKED_MIN_ROWS
    src = _product_and_gradients(rng, PACKED_MIN_ROWS + 13, 24, 16 * PANEL + 5, tr)
    assert src.count("pack_pgemm(") == 1, src         # its blocks pack the weight as they go


def test_the_other_geometry_in_a_process_of_its_own(tmp_path):
    # this file's tests with the tiles this CPU does not pick
    run_in_the_other_geometry(__file__, "other_geometry or rnn_loop", tmp_path)


def test_the_geometry_is_the_one_asked_for():
    # (in the process above: the one it asked for)
    import llvmlite.binding as ll
    asked = os.environ.get("FLOWJIT_PACKED_WIDTH")
    width = int(asked) if asked else (16 if ll.get_host_cpu_features().get("avx512f") else 8)
    assert packed.GEOMETRY.width == width and PANEL == 2 * width


LAZY = """
import numpy as np, flowjit as fj
from flowjit.backends.cpu import packed
a = np.ones((4, 4), np.float32)
fj.jit(lambda a, b: fj.tanh(fj.matmul(a, b)) + 1.0)(a, a)
first = packed.state["started"]
h, hs = fj.jit(lambda h0, xs, w: fj.scan(lambda h, x: (fj.tanh(x + fj.matmul(h, w)),) * 2, h0, xs))(
    a, np.ones((3, 4, 4), np.float32), a)
print(first, packed.state["started"], float(h.numpy()[0, 0]))
"""


def test_only_a_program_with_packed_products_compiles_them(tmp_path):
    # the packed module (0.2-0.27 s to compile) is built in a process only once code
    # calling it is loaded: not for a plain matmul, yes for a loop's product with a
    # weight; twice, so the second process loads both programs from the disk cache
    env = dict(os.environ, FLOWJIT_CACHE_DIR=str(tmp_path), FLOWJIT_BACKGROUND_COMPILE="0")
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", LAZY], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        first, then, h = r.stdout.split()[-3:]
        assert (first, then) == ("None", "True"), r.stdout
        assert abs(float(h) - np.tanh(1 + 4 * np.tanh(1 + 4 * np.tanh(1 + 4)))) < 1e-5


DIRECT = """
import numpy as np
from flowjit.backends.cpu import packed
from flowjit.backends.cpu.runtime_lib import NO_BIAS, pack_pgemm, pack_weight, pgemm
w = np.arange(12, dtype=np.float32).reshape(3, 4)
a = np.ones((2, 3), np.float32)
out = np.empty((2, 4), np.float32)
before = packed.state["started"]
pgemm(a, pack_weight(w, np.bool_(False)), out, out, NO_BIAS, np.bool_(False))
print(before, out.tolist())
"""


def test_helpers_called_directly_build_the_packed_module_first(tmp_path):
    # the second process reads pack_weight and pgemm from Numba's disk cache, where no
    # typing starts the packed module: they used to jump to a null address there
    env = dict(os.environ, FLOWJIT_CACHE_DIR=str(tmp_path))
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", DIRECT], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.split(None, 1) == ["None", f"{[[12.0, 15.0, 18.0, 21.0]] * 2}\n"]


CACHED = """
import numpy as np
from flowjit.backends.cpu import packed
from flowjit.backends.cpu.runtime_lib import NO_BIAS, pack_pgemm, pack_weight, pgemm
w = np.arange(40, dtype=np.float32).reshape(4, 10)
a = np.ones((3, 4), np.float32)
out = np.empty((3, 10), np.float32)
pgemm(a, pack_weight(w, np.bool_(False)), out, out, NO_BIAS, np.bool_(False))
print(packed.state["object"], out.sum())
"""


def test_the_packed_machine_code_is_kept_in_the_disk_cache(tmp_path):
    # compiled by the first process and saved; loaded by the next; a damaged file is
    # compiled and saved again; with the disk cache off nothing is read or written
    env = dict(os.environ, FLOWJIT_CACHE_DIR=str(tmp_path))
    want = float((np.ones((3, 4)) @ np.arange(40).reshape(4, 10)).sum())

    def run(**extra):
        r = subprocess.run([sys.executable, "-c", CACHED], env=dict(env, **extra), capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        how, total = r.stdout.split()
        assert float(total) == want
        return how
    assert run() == "compiled"
    files = list((tmp_path / "packed").glob("*.o"))
    assert len(files) == 1
    assert run() == "loaded"
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    files[0].write_bytes(bytes(data))
    assert run() == "compiled"
    assert run() == "loaded"
    files[0].unlink()
    assert run(FLOWJIT_CACHE="0") == "compiled"
    assert not files[0].exists()


ASIDE = """
import os
import numpy as np, flowjit as fj
from flowjit.backends.cpu import packed
a = np.full((4, 4), 0.25, np.float32)
h, hs = fj.jit(lambda h0, xs, w: fj.scan(lambda h, x: (fj.tanh(x + fj.matmul(h, w)),) * 2, h0, xs))(
    a, np.ones((3, 4, 4), np.float32), a)
try:
    os.waitpid(-1, os.WNOHANG)
    left = "a child left unreaped"
except ChildProcessError:
    left = "none"
print(packed.state["object"], left, float(h.numpy()[0, 0]))
"""


def test_a_cold_loop_compiles_the_packed_products_aside(tmp_path):
    # cold: a child forked at code generation compiles the packed products into the
    # disk cache while the parent goes on, and is reaped; warm: loaded; no cache: here
    env = dict(os.environ, FLOWJIT_CACHE_DIR=str(tmp_path), FLOWJIT_BACKGROUND_COMPILE="0")
    h = 0.25                # h0; each step tanh(1 + h @ w), w all 0.25 over 4 rows
    for _ in range(3):
        h = np.tanh(1 + 4 * 0.25 * h)

    def run(**extra):
        r = subprocess.run([sys.executable, "-c", ASIDE], env=dict(env, **extra), capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        how, left, value = r.stdout.split("\n")[-2].rsplit(" ", 2)
        assert left == "none" and abs(float(value) - h) < 1e-5, r.stdout
        return how
    assert run() == "compiled aside"
    assert run() == "loaded"
    assert run(FLOWJIT_CACHE="0") == "compiled"


def test_pack_weight_and_pgemm_from_python_give_the_compiled_helpers_bits(rng):
    """The Python tier's first calls run pack_weight and pgemm through ctypes
    (runtime_lib.PYTHON_TWINS): the same LLVM functions as the compiled helpers, so the
    same bits, with the same checks of the operands before any of them is read."""
    from flowjit.backends.cpu import runtime_lib as rl
    for tr in (False, True):
        w = rng.standard_normal((70, 37) if tr else (37, 70)).astype(np.float32)
        w = np.asfortranarray(w) if tr else w
        p = pack_weight(w, np.bool_(tr))
        np.testing.assert_array_equal(rl.pack_weight_py(w, tr), p)
        a = rng.standard_normal((13, 74)).astype(np.float32)[:, ::2]       # strided rows
        bias = rng.standard_normal(70).astype(np.float32)
        for acc, b in ((False, NO_BIAS), (True, bias)):
            c0 = rng.standard_normal((13, 70)).astype(np.float32)
            got, want = c0.copy(), c0.copy()
            pgemm(a, p, want, want, b, np.bool_(acc))
            rl.pgemm_py(a, p, got, got, b, acc)
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="operand shapes do not match"):
        rl.pgemm_py(a[:, :5], p, got, got, NO_BIAS, False)
    with pytest.raises(TypeError, match="pgemm takes C-contiguous 3-D float32"):
        rl.pgemm_py(a, p[:, :, ::2], got, got, NO_BIAS, False)
    with pytest.raises(TypeError, match="pack_weight takes 2-D float32"):
        rl.pack_weight_py(w.astype(np.float64), False)


def _scratch(w, tr):
    k, n = (w.shape[1], w.shape[0]) if tr else w.shape
    return np.full((-(-n // PANEL), k, PANEL), np.nan, np.float32)    # nothing left unwritten is read


@pytest.mark.parametrize("M,K,N", SHAPES + [(128, 300, 5 * PANEL + 3)])
@pytest.mark.parametrize("tr", [False, True])
def test_a_product_packing_as_it_goes_gives_pack_then_pgemm_bits(rng, M, K, N, tr):
    # pack_pgemm: each block packs its own panels of the weight into the scratch array,
    # then multiplies by them; the same bits as packing the whole weight first, on one
    # thread, two, or two with the worker paused (the caller packs and runs every block)
    w = rng.standard_normal((N, K) if tr else (K, N)).astype(np.float32)
    a = rng.standard_normal((M, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    d = rng.standard_normal((M, N)).astype(np.float32)
    want = np.empty((M, N), np.float32)
    pgemm(a, pack_weight(w, np.bool_(tr)), want, d, bias, np.bool_(True))
    np.testing.assert_allclose(want, d + bias + a.astype(np.float64) @ (w.T if tr else w), rtol=1e-4, atol=1e-4)
    saved = (scheduler.size(), scheduler.helpers())
    try:
        for size, helping, paused in ((1, 0, False), (2, 1, False), (2, 1, True)):
            scheduler.configure(size, helping)
            scheduler.set_test_hooks(paused=paused)
            got = np.empty((M, N), np.float32)
            scratch = _scratch(w, tr)
            pack_pgemm(a, w, np.bool_(tr), scratch, got, d, bias, np.bool_(True))
            np.testing.assert_array_equal(got, want)
            if M:                   # (with no rows there is nothing to multiply, nothing packed)
                np.testing.assert_array_equal(scratch, pack_weight(w, np.bool_(tr)))
    finally:
        scheduler.set_test_hooks(paused=False)
        scheduler.configure(*saved)


def test_packing_as_it_goes_reads_strided_weights_and_checks_shapes(rng):
    from flowjit.backends.cpu import runtime_lib as rl
    w = rng.standard_normal((40, 150)).astype(np.float32)[:, ::2]       # 40 x 75, strided columns
    a = rng.standard_normal((9, 80)).astype(np.float32)[:, ::2]         # strided rows
    want, got, twin = (np.empty((9, 75), np.float32) for _ in range(3))
    pgemm(a, pack_weight(w, np.bool_(False)), want, want, NO_BIAS, np.bool_(False))
    pack_pgemm(a, w, np.bool_(False), _scratch(w, False), got, got, NO_BIAS, np.bool_(False))
    rl.pack_pgemm_py(a, w, False, _scratch(w, False), twin, twin, NO_BIAS, False)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(twin, want)
    bad = [(a[:, :30], w, _scratch(w, False)),                         # inner sizes differ
           (a, w[:, :70], _scratch(w, False)),                         # the output has more columns
           (a, w, _scratch(w, False)[:, :39].copy()),                  # scratch rows
           (a, w, np.zeros((3, 40, PANEL // 2), np.float32))]          # another geometry's panels
    for x, ww, s in bad:
        for fn in (pack_pgemm, rl.pack_pgemm_py):
            with pytest.raises(ValueError, match="matmul: operand shapes do not match"):
                fn(x, ww, np.bool_(False), s, got, got, NO_BIAS, np.bool_(False))
    with pytest.raises(TypeError, match="pack_pgemm takes C-contiguous 3-D float32"):
        rl.pack_pgemm_py(a, w, False, _scratch(w, False)[:, :, ::2], got, got, NO_BIAS, False)


@pytest.mark.parametrize("tr", [False, True])
def test_a_training_products_weight_is_packed_by_its_blocks(rng, tier, tr):
    # a product big enough (codegen.PACK_MIN_MACS) packs its weight for the one call as
    # it goes on a CPU with AVX-512's tiles, and OpenBLAS runs it elsewhere: both match
    # NumPy, and the gradient's products (the weight transposed, the input transposed)
    from flowjit.backends.cpu import codegen
    M, K, N = 96, 400, 4 * PANEL + 7
    src = _product_and_gradients(rng, M, K, N, tr)
    packs = M * K * N >= codegen.PACK_MIN_MACS and packed.GEOMETRY.width == 16
    assert ("pack_pgemm(" in src) == packs, src


@pytest.mark.parametrize("tr", [False, True])
def test_a_weight_gradient_reads_its_input_transposed_from_the_packed_product(rng, tier, tr):
    # dW = x^T @ g with a batch of at most codegen.PACK_MAX_INNER_TRANSPOSED_A rows runs
    # on the packed product, x read in place through its transpose, on a CPU with
    # AVX-512's tiles; with more rows (an RNN's steps stacked) OpenBLAS keeps it
    import re
    from flowjit.backends.cpu import codegen
    wide = packed.GEOMETRY.width == 16
    for batch, packs in ((220, wide), (codegen.PACK_MAX_INNER_TRANSPOSED_A + 9, False)):
        K, N = 600, 2 * PANEL + 3          # dW is K x N: 600 x 67 (or 35), inner `batch`
        assert K * N * batch >= codegen.PACK_MIN_MACS
        src = _product_and_gradients(rng, batch, K, N, tr, "backward_source")
        assert bool(re.search(r"pack_pgemm\(\w+\.T, ", src)) == packs, src
