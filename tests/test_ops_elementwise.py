"""Elementwise ops: eager against NumPy, jit against eager, over 0-d, broadcasting,
size-1 and non-contiguous shapes, float32 and float64 (and ints where defined)."""
import numpy as np
import pytest

import flowjit as fj
from conftest import assert_close

UNARY = {
    "negative": (fj.negative, np.negative, None),
    "abs": (fj.abs, np.abs, None),
    "sign": (fj.sign, np.sign, None),
    "square": (fj.square, np.square, None),
    "sqrt": (fj.sqrt, np.sqrt, "pos"),
    "rsqrt": (fj.rsqrt, lambda x: 1 / np.sqrt(x), "pos"),
    "exp": (fj.exp, np.exp, None),
    "expm1": (fj.expm1, np.expm1, None),
    "log": (fj.log, np.log, "pos"),
    "log1p": (fj.log1p, np.log1p, "pos"),
    "tanh": (fj.tanh, np.tanh, None),
    "sigmoid": (fj.sigmoid, lambda x: 1 / (1 + np.exp(-x)), None),
    "floor": (fj.floor, np.floor, None),
    "ceil": (fj.ceil, np.ceil, None),
}

SHAPES = [(), (7,), (3, 5), "noncontig"]


def make(shape, dtype, rng, domain=None):
    if shape == "noncontig":
        base = rng.standard_normal((6, 5)).astype(dtype) * 3
        x = base.T[:, ::2]
    else:
        x = np.asarray(rng.standard_normal(shape) * 3).astype(dtype)
    if domain == "pos":
        x = np.abs(x) + np.asarray(0.1, dtype)
    return x


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unary(name, dtype, rng):
    f, ref, domain = UNARY[name]
    jf = fj.jit(lambda x: f(x))
    for shape in SHAPES:
        x = make(shape, dtype, rng, domain)
        with np.errstate(all="ignore"):
            expected = ref(x.astype(np.float64)).astype(dtype)
        eager = f(x)
        assert eager.dtype.np == np.dtype(dtype)
        assert_close(eager, expected)
        assert_close(jf(x), eager)


@pytest.mark.parametrize("name", ["negative", "abs", "sign", "square"])
def test_unary_int(name, rng):
    f, ref, _ = UNARY[name]
    x = rng.integers(-5, 5, (4, 3)).astype(np.int32)
    assert_close(f(x), ref(x))
    assert_close(fj.jit(lambda a: f(a))(x), ref(x))


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "tanh"])
def test_float_only_ops_reject_ints(name):
    with pytest.raises(TypeError, match=name):
        UNARY[name][0](fj.constant([1, 2]))


BINARY = {
    "add": (fj.add, np.add),
    "subtract": (fj.subtract, np.subtract),
    "multiply": (fj.multiply, np.multiply),
    "divide": (fj.divide, np.true_divide),
    "maximum": (fj.maximum, np.maximum),
    "minimum": (fj.minimum, np.minimum),
    "pow": (fj.pow, np.power),
    "floordiv": (fj.floordiv, np.floor_divide),
    "floormod": (fj.floormod, np.mod),
    "equal": (fj.equal, np.equal),
    "not_equal": (fj.not_equal, np.not_equal),
    "less": (fj.less, np.less),
    "less_equal": (fj.less_equal, np.less_equal),
    "greater": (fj.greater, np.greater),
    "greater_equal": (fj.greater_equal, np.greater_equal),
}

PAIRS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3)), ((2, 1, 3), (4, 1))]


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_binary(name, dtype, rng):
    f, ref = BINARY[name]
    jf = fj.jit(lambda a, b: f(a, b))
    for sa, sb in PAIRS:
        if np.dtype(dtype).kind == "i":
            a = rng.integers(-6, 7, sa).astype(dtype)
            b = rng.integers(1, 5, sb).astype(dtype)
            if name == "pow":
                a = np.abs(a)
        else:
            a = np.asarray(rng.standard_normal(sa)).astype(dtype)
            b = np.asarray(rng.standard_normal(sb)).astype(dtype)
            if name == "pow":
                a = np.abs(a) + np.asarray(0.5, dtype)
            if name in ("floordiv", "floormod"):
                b = b + np.sign(b).astype(dtype)
        with np.errstate(all="ignore"):
            expected = ref(a, b)
        eager = f(a, b)
        assert_close(eager, expected)
        assert_close(jf(a, b), eager)


def test_nan_propagation_in_maximum_minimum():
    a = np.array([np.nan, 1.0, 2.0], np.float32)
    b = np.array([0.0, np.nan, 1.0], np.float32)
    for f, ref in ((fj.maximum, np.maximum), (fj.minimum, np.minimum)):
        assert_close(f(a, b), ref(a, b))
        assert_close(fj.jit(lambda x, y: f(x, y))(a, b), ref(a, b))


def test_logical_ops(rng):
    a = rng.random((3, 4)) > 0.5
    b = rng.random((4,)) > 0.5
    for f, ref in ((fj.logical_and, np.logical_and), (fj.logical_or, np.logical_or),
                   (fj.logical_xor, np.logical_xor)):
        assert_close(f(a, b), ref(a, b))
        assert_close(fj.jit(lambda x, y: f(x, y))(a, b), ref(a, b))
    assert_close(fj.logical_not(a), ~a)
    assert_close(fj.jit(lambda x: ~fj.convert_to_tensor(x))(a), ~a)


def test_where_and_clip(rng):
    c = rng.random((3, 4)) > 0.5
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y = rng.standard_normal((4,)).astype(np.float32)
    assert_close(fj.where(c, x, y), np.where(c, x, y))
    assert_close(fj.jit(lambda c, x, y: fj.where(c, x, y))(c, x, y), np.where(c, x, y))
    assert_close(fj.clip_by_value(x, -0.5, 0.5), np.clip(x, -0.5, 0.5))
    assert_close(fj.jit(lambda x: fj.clip_by_value(x, -0.5, 0.5))(x), np.clip(x, -0.5, 0.5))


@pytest.mark.parametrize("src,dst", [(np.float32, np.int32), (np.float64, np.float32),
                                     (np.int32, np.float64), (np.int64, np.int32),
                                     (np.float32, np.bool_), (np.bool_, np.float32)])
def test_cast(src, dst, rng):
    x = (rng.standard_normal((3, 4)) * 4).astype(src)
    expected = x.astype(dst)
    assert_close(fj.cast(x, dst), expected)
    assert_close(fj.jit(lambda a: fj.cast(a, dst))(x), expected)


def test_add_n_and_operators(rng):
    a, b, c = (rng.standard_normal((2, 3)).astype(np.float32) for _ in range(3))
    assert_close(fj.add_n([a, b, c]), a + b + c, rtol=1e-6)
    ta, tb = fj.constant(a), fj.constant(b)
    assert_close(ta + tb, a + b)
    assert_close(ta - 1, a - 1)
    assert_close(2 * ta, 2 * a)
    assert_close(ta / tb, a / b)
    assert_close(-ta, -a)
    assert_close(ta ** 2, a ** 2)
    assert_close(1 - ta, 1 - a)
    assert_close(abs(ta), np.abs(a))
    assert_close(ta < tb, a < b)
    assert_close(ta == ta, np.ones_like(a, bool))
    assert_close(np.asarray(ta), a)


def test_int_division_gives_float64():
    r = fj.constant([3, 4]) / fj.constant([2, 8])
    assert r.dtype is fj.float64
    assert_close(r, np.array([1.5, 0.5]))


def test_python_scalars_take_tensor_dtype():
    x = fj.constant([1.0, 2.0], fj.float64)
    assert (x + 1).dtype is fj.float64
    assert (x * 0.5).dtype is fj.float64
    i = fj.constant([1, 2])
    assert i.dtype is fj.int32 and (i + 1).dtype is fj.int32


def test_mixing_tensor_dtypes_is_type_error():
    a = fj.constant([1.0], fj.float32)
    b = fj.constant([1.0], fj.float64)
    with pytest.raises(TypeError, match="fj.cast"):
        a + b
    with pytest.raises(TypeError, match="fj.cast"):
        fj.jit(lambda x, y: x + y)(np.ones(2, np.float32), np.ones(2, np.float64))


def test_float_literal_into_int_tensor_is_type_error():
    with pytest.raises(TypeError):
        fj.constant([1, 2]) + 0.5


def test_trig_identity_stop_gradient(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for f, ref in ((fj.sin, np.sin), (fj.cos, np.cos), (fj.identity, lambda a: a),
                   (fj.stop_gradient, lambda a: a)):
        assert_close(f(x), ref(x))
        assert_close(fj.jit(lambda a: f(a) * 1.0)(x), ref(x))


def test_reduce_any_all(rng):
    b = rng.random((3, 4)) > 0.3
    for f, ref in ((fj.reduce_any, np.any), (fj.reduce_all, np.all)):
        for axis in (None, 0, 1):
            assert_close(f(b, axis=axis), ref(b, axis=axis))
            assert_close(fj.jit(lambda a: f(a, axis=axis))(b), ref(b, axis=axis))
