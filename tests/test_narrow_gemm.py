"""Weight gradients with few columns (narrow_ir.py, runtime_lib.ngemm): x^T @ dz against
NumPy in float64 over shapes that leave partial tiles and partial groups of columns,
strided and transposed operands, adding into the output, the products it leaves to
BLAS, the same bits whichever threads ran the blocks, and a jitted gradient calling
it. The tests run with this CPU's geometry, and once more in a process made to use the
other one."""

import numpy as np
import pytest

import flowjit as fj
from conftest import on_every_thread_setting, run_in_the_other_geometry
from flowjit.backends.cpu import narrow_ir, packed
from flowjit.backends.cpu.runtime_lib import ngemm

pytestmark = pytest.mark.skipif(not packed.start(), reason="no packed products here")

T, F = np.bool_(True), np.bool_(False)
# rows: whole tiles of 32 (or 8) rows, partial vectors, fewer rows than a vector;
# columns: under, at and over a group of 10, up to the 16 it takes; k up to MOST_K
SHAPES = [(1, 1, 1), (5, 3, 2), (31, 7, 9), (32, 4, 10), (33, 12, 11), (47, 100, 10), (64, 2, 16),
          (100, 5, 3), (784, 100, 10), (17, narrow_ir.MOST_K, 10), (3, 0, 4), (0, 5, 4), (6, 5, 0)]


def _check(c, want):
    # float32 sums of k products against float64
    np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-5 * max(1, want.shape[0] ** 0.5) * 10)


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("acc", [False, True])
def test_products_match_numpy(rng, M, K, N, acc):
    x = rng.standard_normal((K, M)).astype(np.float32)
    dz = rng.standard_normal((K, N)).astype(np.float32)
    # without acc, C's old values (NaN here) are never read
    c = rng.standard_normal((M, N)).astype(np.float32) if acc else np.full((M, N), np.nan, np.float32)
    c0 = c.astype(np.float64)
    ngemm(x, dz, c, T, F, np.bool_(acc))
    want = x.T.astype(np.float64) @ dz
    _check(c, want + c0 if acc else want)


@pytest.mark.parametrize("acc", [False, True])
def test_strided_and_transposed_operands(rng, acc):
    # x every other row (its rows still contiguous), dz given transposed (tb) and with
    # strided columns, C every other column of a wider array, rows reversed: the
    # columns between C's are untouched
    M, K, N = 45, 13, 7
    x = rng.standard_normal((2 * K, M + 5)).astype(np.float32)[::2, 2:M + 2]
    dzt = rng.standard_normal((N, 3 * K)).astype(np.float32)[:, ::3]
    wide = rng.standard_normal((M, 2 * N)).astype(np.float32)
    keep = wide[:, 1::2].copy()
    c = wide[::-1, ::2]
    c0 = c.astype(np.float64)
    ngemm(x, dzt, c, T, T, np.bool_(acc))
    want = x.T.astype(np.float64) @ dzt.T.astype(np.float64)
    _check(c, want + c0 if acc else want)
    np.testing.assert_array_equal(wide[:, 1::2], keep)


@pytest.mark.parametrize("case", ["17 columns", "k past MOST_K", "x's columns strided", "not transposed"])
def test_products_it_does_not_take_go_to_blas(rng, case):
    K, M, N = 20, 40, 10
    if case == "17 columns":
        N = 17
    if case == "k past MOST_K":
        K = narrow_ir.MOST_K + 1
    x = rng.standard_normal((K, 2 * M)).astype(np.float32)
    x = x[:, ::2] if case == "x's columns strided" else x[:, :M]
    dz = rng.standard_normal((K, N)).astype(np.float32)
    c = np.full((M, N), np.nan, np.float32)
    if case == "not transposed":           # op(a) = a: rows along k, which BLAS takes
        a = np.ascontiguousarray(x.T)
        ngemm(a, dz, c, F, F, F)
    else:
        ngemm(x, dz, c, T, F, F)
    _check(c, x.T.astype(np.float64) @ dz)


def test_shapes_that_do_not_make_a_product_raise():
    z = np.zeros
    with pytest.raises(ValueError, match="matmul: operand shapes do not match"):
        ngemm(z((5, 8), np.float32), z((6, 3), np.float32), z((8, 3), np.float32), T, F, F)
    with pytest.raises(ValueError, match="matmul: operand shapes do not match"):
        ngemm(z((5, 8), np.float32), z((5, 3), np.float32), z((8, 4), np.float32), T, F, F)
    with pytest.raises(ValueError, match="matmul: operand shapes do not match"):
        ngemm(z((5, 8), np.float32), z((5, 3), np.float32), z((7, 3), np.float32), T, F, F)


def test_the_bits_do_not_depend_on_the_threads(rng):
    # blocks of whole tiles of rows, each element one sum over k in order: one block, blocks
    # on two threads, blocks the caller runs alone (worker paused), four threads' blocks
    x = rng.standard_normal((300, 1000)).astype(np.float32)
    dz = rng.standard_normal((300, 10)).astype(np.float32)

    def product():
        c = np.empty((1000, 10), np.float32)
        ngemm(x, dz, c, T, F, F)
        return c
    outs = on_every_thread_setting(product)
    _check(outs[0], x.T.astype(np.float64) @ dz)
    for c in outs[1:]:
        np.testing.assert_array_equal(c, outs[0])


@pytest.mark.parametrize("dtype,rows", [(np.float32, 137), (np.float64, 137), (np.float32, 37)])
def test_a_jitted_weight_gradient_calls_it_for_float32(rng, tier, dtype, rows):
    # a softmax regression's gradient: dW = x^T @ dz, 10 columns, through ngemm in
    # float32 only (float64 stays with BLAS) and from codegen.NARROW_MIN_MACS
    # multiply-adds (137 x 100 x 10, not 37 x 100 x 10); against NumPy and the eager result
    from flowjit.backends.cpu.codegen import NARROW_MIN_MACS
    x = rng.standard_normal((rows, 100)).astype(dtype)
    w = (0.1 * rng.standard_normal((100, 10))).astype(dtype)
    y = np.eye(10, dtype=dtype)[rng.integers(0, 10, rows)]

    def grad(x, w, y):
        with fj.GradientTape() as tape:
            tape.watch(w)
            loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, fj.matmul(x, w)))
        return tape.gradient(loss, w)
    got = fj.jit(grad)(x, w, y).numpy()
    z = x.astype(np.float64) @ w
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    want = x.astype(np.float64).T @ (p - y) / len(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    eager = grad(*(fj.constant(a) for a in (x, w, y))).numpy()
    np.testing.assert_allclose(got, eager, rtol=1e-4, atol=1e-6)
    if tier == "compiled":
        report = fj.jit(grad).inspect(x, w, y)
        src = report.forward_source + (report.backward_source or "")
        assert ("ngemm(" in src) == (dtype is np.float32 and rows * 100 * 10 >= NARROW_MIN_MACS), src
    # the same compiled code for a weight of 20 columns: ngemm leaves that one to BLAS
    w20 = (0.1 * rng.standard_normal((100, 20))).astype(dtype)
    y20 = np.eye(20, dtype=dtype)[rng.integers(0, 20, rows)]
    z = x.astype(np.float64) @ w20
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(fj.jit(grad)(x, w20, y20).numpy(), x.astype(np.float64).T @ (p - y20) / len(x),
                               rtol=1e-4, atol=1e-6)


def test_the_other_geometry_in_a_process_of_its_own(tmp_path):
    # this file's tests with the vectors this CPU does not pick (AVX2's where it has
    # AVX-512: tiles of one vector of 8 rows)
    run_in_the_other_geometry(__file__, "other_geometry or jitted", tmp_path)
