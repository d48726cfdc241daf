"""Reductions, shape ops, matmul and indexing: eager against NumPy, jit against eager."""
import re

import numpy as np
import pytest

import flowjit as fj
from conftest import assert_close

RED = {"reduce_sum": (fj.reduce_sum, np.sum), "reduce_mean": (fj.reduce_mean, np.mean),
       "reduce_max": (fj.reduce_max, np.max), "reduce_min": (fj.reduce_min, np.min),
       "reduce_prod": (fj.reduce_prod, np.prod)}
AXES = [None, 0, 1, -1, (0, 2)]


@pytest.mark.parametrize("name", sorted(RED))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reductions(name, dtype, rng):
    f, ref = RED[name]
    x = (rng.standard_normal((3, 4, 5)) * (0.5 if name == "reduce_prod" else 2)).astype(dtype)
    for keepdims in (False, True):
        for axis in AXES:
            expected = ref(x.astype(np.float64), axis=axis, keepdims=keepdims).astype(dtype)
            eager = f(x, axis=axis, keepdims=keepdims)
            assert_close(eager, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)
            jf = fj.jit(lambda a: f(a, axis=axis, keepdims=keepdims))
            assert_close(jf(x), eager, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("shape,axis", [(((1 << 20) + 7,), None), ((3, 2500), 1), ((3, 2500), None),
                                        ((2, 1024), 1)])
def test_float32_sum_blocks_are_accurate(shape, axis, rng):
    # jitted float32 sums over the innermost axis add blocks of SUM_BLOCK terms in float32
    # and the block sums in float64: a million terms, block remainders, exact block sizes
    from flowjit.backends.cpu import codegen
    assert max(shape) > codegen.SUM_BLOCK or shape[-1] == codegen.SUM_BLOCK
    x = (rng.random(shape) + 0.5).astype(np.float32)        # no cancellation: rtol is fair
    expected = np.sum(x.astype(np.float64), axis=axis)
    got = fj.jit(lambda a: fj.reduce_sum(a, axis=axis))(x).numpy().astype(np.float64)
    np.testing.assert_allclose(got, expected, rtol=2e-7)
    ones = np.ones(shape, np.float32)                       # exact: every partial is an integer
    assert np.array_equal(fj.jit(lambda a: fj.reduce_sum(a, axis=axis))(ones).numpy(),
                          np.sum(ones, axis=axis, dtype=np.float64).astype(np.float32))


def test_a_blocked_sum_over_rows_loads_its_rows_contiguously(rng):
    """A float32 sum over a 2-D loop that cannot be flattened (a broadcast bias) adds its
    blocks over a count from 0: from `range(start, stop)` LLVM kept Numba's negative-index
    test and loaded every operand with gathers (2.4x slower). The kernel is compiled here
    again without the disk cache, whose code cannot be inspected."""
    from flowjit.backends.cpu import loader
    f = fj.jit(lambda a, c, b: fj.reduce_sum(fj.square(fj.sigmoid(a + c) - b)))
    a, b = rng.standard_normal((2, 50, 1500)).astype(np.float32)     # a pool task
    c = rng.standard_normal(1500).astype(np.float32)
    expected = np.sum(np.square(1 / (1 + np.exp(-(a + c).astype(np.float64))) - b))
    np.testing.assert_allclose(float(f(a, c, b)), expected, rtol=1e-6)
    src = f.inspect(a, c, b).forward_source
    ns = {}
    exec(loader.HEADER, ns)
    ns["CACHE"] = False
    exec(src[src.index("import flowjit.backends.cpu.scalar "):], ns)
    tasks = [v for k, v in ns.items() if k.startswith("k_") and k.endswith("_task")]
    assert len(tasks) == 1
    ir = tasks[0].inspect_llvm()
    assert re.search(r"<\d+ x float>", ir)                     # vectorised ...
    assert "gather" not in ir                                    # ... with plain loads


@pytest.mark.parametrize("shape,axis", [((), None), ((6,), 0), ((3, 1, 4), 1), ((3, 1, 4), (0, 2)),
                                        ((1, 5), None)])
def test_reduction_shapes(shape, axis, rng):
    x = np.asarray(rng.standard_normal(shape)).astype(np.float32)
    for f, ref in ((fj.reduce_sum, np.sum), (fj.reduce_max, np.max), (fj.reduce_mean, np.mean)):
        expected = np.asarray(ref(x, axis=axis)).astype(np.float32)
        assert_close(f(x, axis=axis), expected, rtol=1e-6)
        assert_close(fj.jit(lambda a: f(a, axis=axis))(x), expected, rtol=1e-6)


def test_int_reductions(rng):
    x = rng.integers(-5, 5, (4, 6)).astype(np.int32)
    for f, ref in ((fj.reduce_sum, np.sum), (fj.reduce_max, np.max), (fj.reduce_min, np.min)):
        for axis in (None, 0, 1):
            e = f(x, axis=axis)
            assert e.dtype is fj.int32
            assert_close(e, ref(x, axis=axis).astype(np.int32))
            assert_close(fj.jit(lambda a: f(a, axis=axis))(x), e)
    assert_close(fj.reduce_mean(x, axis=1), (np.sum(x, axis=1) // 6).astype(np.int32))


def test_reduce_max_nan_and_empty():
    x = np.array([[1.0, np.nan], [2.0, 3.0]], np.float32)
    assert_close(fj.reduce_max(x, axis=1), np.max(x, axis=1))
    assert_close(fj.jit(lambda a: fj.reduce_max(a, axis=1))(x), np.max(x, axis=1))


@pytest.mark.parametrize("fn,ref", [(fj.argmax, np.argmax), (fj.argmin, np.argmin)])
def test_arg_reductions(fn, ref, rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    for axis in (0, 1, 2, -1):
        e = fn(x, axis=axis)
        assert e.dtype is fj.int64
        assert_close(e, ref(x, axis=axis))
        assert_close(fj.jit(lambda a: fn(a, axis=axis))(x), e)
    assert fn(x[0, 0], output_type=fj.int32).dtype is fj.int32


def test_argmax_nan_like_numpy():
    x = np.array([[1.0, np.nan, 3.0], [5.0, 2.0, 1.0]], np.float32)
    assert_close(fj.argmax(x, axis=1), np.argmax(x, axis=1))
    assert_close(fj.jit(lambda a: fj.argmax(a, axis=1))(x), np.argmax(x, axis=1))


# --- shape ops ------------------------------------------------------------------------------
def check(fn, *args, ref, **kw):
    eager = fn(*args)
    assert_close(eager, ref, **kw)
    assert_close(fj.jit(fn)(*args), eager, **kw)


def test_reshape_expand_squeeze(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    check(lambda a: fj.reshape(a, [-1]), x, ref=x.reshape(-1))
    check(lambda a: fj.reshape(a, (3, -1, 2)), x, ref=x.reshape(3, -1, 2))
    check(lambda a: fj.reshape(a, [2, 12]) + 1.0, x, ref=x.reshape(2, 12) + 1)
    check(lambda a: fj.expand_dims(a, 1), x, ref=x[:, None])
    check(lambda a: fj.expand_dims(a, -1), x, ref=x[..., None])
    y = x.reshape(4, 1, 6, 1)
    check(lambda a: fj.squeeze(a), y, ref=x)
    check(lambda a: fj.squeeze(a, axis=1), y, ref=x.reshape(4, 6, 1))
    with pytest.raises(ValueError, match="reshape"):
        fj.reshape(x, [5, -1])


@pytest.mark.parametrize("perm", [None, (1, 0, 2), (2, 0, 1), (0, 2, 1)])
def test_transpose(perm, rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    check(lambda a: fj.transpose(a, perm), x, ref=np.transpose(x, perm))
    check(lambda a: fj.transpose(a, perm) * 2.0 + 1.0, x, ref=np.transpose(x, perm) * 2 + 1)


def test_concat_stack_split_unstack(rng):
    a = rng.standard_normal((2, 3)).astype(np.float32)
    b = rng.standard_normal((2, 5)).astype(np.float32)
    check(lambda x, y: fj.concat([x, y], axis=1), a, b, ref=np.concatenate([a, b], 1))
    check(lambda x, y: fj.concat([x, x * 2.0], axis=0), a, b, ref=np.concatenate([a, a * 2], 0))
    check(lambda x: fj.stack([x, x + 1.0, x], axis=1), a, ref=np.stack([a, a + 1, a], 1))
    c = rng.standard_normal((6, 4)).astype(np.float32)
    for k, part in enumerate(np.split(c, 3, axis=0)):
        check(lambda x: fj.split(x, 3, axis=0)[k], c, ref=part)
    for k, part in enumerate(np.split(c, [1], axis=1)):
        check(lambda x: fj.split(x, [1, 3], axis=1)[k], c, ref=part)
    parts = fj.unstack(fj.constant(a), axis=1)
    assert len(parts) == 3
    assert_close(parts[2], a[:, 2])


def test_tile_pad(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    check(lambda a: fj.tile(a, [2, 3]), x, ref=np.tile(x, (2, 3)))
    check(lambda a: fj.pad(a, [[1, 2], [0, 3]]), x, ref=np.pad(x, [(1, 2), (0, 3)]))
    check(lambda a: fj.pad(a, [[1, 1], [2, 0]], constant_values=-1.5) * 2.0, x,
          ref=np.pad(x, [(1, 1), (2, 0)], constant_values=-1.5) * 2)


def test_broadcast_fill_creation():
    check(lambda: fj.zeros((2, 3)), ref=np.zeros((2, 3), np.float32))
    check(lambda: fj.ones((4,), fj.int32), ref=np.ones(4, np.int32))
    check(lambda: fj.fill([2, 2], 7.0), ref=np.full((2, 2), 7, np.float32))
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    check(lambda a: fj.zeros_like(a) + fj.ones_like(a), x, ref=np.ones_like(x))
    check(lambda a: fj.broadcast_to(a[0], (4, 3)), x, ref=np.broadcast_to(x[0], (4, 3)))
    check(lambda: fj.range(5), ref=np.arange(5, dtype=np.int32))
    check(lambda: fj.range(1.0, 3.0, 0.5), ref=np.arange(1, 3, 0.5, dtype=np.float32))
    check(lambda: fj.range(10, 2, -3), ref=np.arange(10, 2, -3, dtype=np.int32))
    check(lambda: fj.eye(3), ref=np.eye(3, dtype=np.float32))
    check(lambda: fj.eye(2, 4, dtype=fj.float64), ref=np.eye(2, 4))
    assert fj.constant(3.0).dtype is fj.float32
    assert fj.constant(3).dtype is fj.int32
    assert fj.constant(np.float64(3)).dtype is fj.float64
    assert_close(fj.constant(2.0, shape=(2, 2)), np.full((2, 2), 2, np.float32))
    assert_close(fj.constant([1, 2, 3, 4], shape=(2, 2), dtype=fj.float64),
                 np.array([[1, 2], [3, 4]], np.float64))


def test_shape_size_rank(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    check(lambda a: fj.shape(a), x, ref=np.array([3, 4], np.int32))
    check(lambda a: fj.size(a), x, ref=np.int32(12))
    assert int(fj.rank(x)) == 2
    assert fj.constant(x).shape == (3, 4)
    assert fj.constant(x).shape.as_list() == [3, 4]


# --- matmul ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_2d(ta, tb, dtype, rng):
    a = rng.standard_normal((4, 3) if ta else (3, 4)).astype(dtype)
    b = rng.standard_normal((5, 4) if tb else (4, 5)).astype(dtype)
    ref = (a.T if ta else a) @ (b.T if tb else b)
    check(lambda x, y: fj.matmul(x, y, transpose_a=ta, transpose_b=tb), a, b, ref=ref, rtol=1e-5)


def test_matmul_transpose_folding_and_epilogue(rng):
    a = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    c = rng.standard_normal((5,)).astype(np.float32)
    f = lambda x, y, z: fj.tanh(fj.matmul(fj.transpose(x), y) + z)
    check(f, a, b, c, ref=np.tanh(a.T @ b + c), rtol=1e-5)
    info = fj.jit(f).inspect(a, b, c)
    assert info.steps == ["matmul", "loop"]     # transpose folded into BLAS, epilogue fused


def test_matmul_batched_and_int(rng):
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    b = rng.standard_normal((2, 4, 5)).astype(np.float32)
    check(lambda x, y: x @ y, a, b, ref=a @ b, rtol=1e-5)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    check(lambda x, y: x @ y, a, w, ref=a @ w, rtol=1e-5)
    check(lambda x, y: fj.matmul(x, y, transpose_b=True), a, b.transpose(0, 2, 1).copy(),
          ref=a @ b, rtol=1e-5)
    i = rng.integers(-3, 3, (3, 4)).astype(np.int32)
    j = rng.integers(-3, 3, (4, 2)).astype(np.int32)
    check(lambda x, y: x @ y, i, j, ref=i @ j)
    with pytest.raises(ValueError, match="inner dimensions"):
        fj.matmul(a, a)


# --- indexing -----------------------------------------------------------------------------
@pytest.mark.parametrize("key", [
    (1,), (-1,), (slice(1, 3),), (slice(None, None, -1),), (Ellipsis, 2),
    (slice(None), slice(1, None, 2)), (None, 0), (1, slice(None), -2),
    (slice(-3, -1), None, slice(None, 2)), (slice(5, 1, -2),), (slice(10, 20),),
])
def test_getitem(key, rng):
    x = rng.standard_normal((5, 4, 3)).astype(np.float32)
    check(lambda a: fj.convert_to_tensor(a)[key], x, ref=x[key])
    check(lambda a: fj.convert_to_tensor(a)[key] * 3.0, x, ref=x[key] * 3)


def test_gather_one_hot(rng):
    p = rng.standard_normal((5, 3)).astype(np.float32)
    idx = np.array([4, 0, 2, 2], np.int32)
    check(lambda a, i: fj.gather(a, i), p, idx, ref=p[idx])
    check(lambda a, i: fj.gather(a, i, axis=1), p, idx[:2] % 3, ref=p[:, idx[:2] % 3])
    check(lambda a, i: fj.gather(a, i) + 1.0, p, idx.reshape(2, 2), ref=p[idx.reshape(2, 2)] + 1)
    labels = np.array([3, 0, 9, 5], np.int64)
    check(lambda l: fj.one_hot(l, 10), labels, ref=np.eye(10, dtype=np.float32)[labels])
    check(lambda l: fj.one_hot(l, 4, on_value=5.0, off_value=-1.0, axis=0), labels % 4,
          ref=np.where(np.eye(4, dtype=bool)[:, labels % 4], 5.0, -1.0).astype(np.float32))
    # out of range one_hot index: an all-zero row, as TF does
    check(lambda l: fj.one_hot(l, 3), np.array([1, 7, -1]), ref=np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]], np.float32))


@pytest.mark.parametrize("mode", ["REFLECT", "SYMMETRIC"])
def test_mirror_pad_and_its_gradient(mode, rng):
    x = rng.standard_normal((3, 4))
    pads = [[2, 1], [1, 3]]
    check(lambda a: fj.pad(a, pads, mode), x, ref=np.pad(x, pads, mode=mode.lower()))
    w = rng.standard_normal(np.pad(x, pads).shape)
    f = lambda a: fj.reduce_sum(fj.pad(a, pads, mode) * w)
    g = fj.grad(f)(x).numpy()
    eps, num = 1e-6, np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        num[i] = (float(f(x + d)) - float(f(x - d))) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fj.jit(fj.grad(f))(x).numpy(), g, rtol=1e-12)
    with pytest.raises(ValueError, match="too large"):
        fj.pad(x, [[3, 0], [0, 0]], "REFLECT")


def test_gather_batch_dims_and_tensor_index_positions(rng):
    p = rng.standard_normal((2, 5, 3)).astype(np.float32)
    idx = np.array([[4, 0, 1], [2, 2, 3]], np.int32)
    ref = np.stack([p[b][idx[b]] for b in range(2)])
    check(lambda a, i: fj.gather(a, i, batch_dims=1), p, idx, ref=ref)
    with pytest.raises(IndexError):
        fj.gather(p, np.array([[5, 0, 0], [0, 0, 0]], np.int32), batch_dims=1)
    with pytest.raises(IndexError):
        fj.jit(lambda a, i: fj.gather(a, i, batch_dims=1))(p, np.array([[0, 0, 0], [0, -1, 0]], np.int32))
    check(lambda a, i: fj.convert_to_tensor(a)[:, i], p, idx[0], ref=p[:, idx[0]])
    with pytest.raises(TypeError, match="fj.gather"):
        fj.constant(p)[1, idx[0]]
