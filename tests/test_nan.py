"""NaN and infinities: jit and eager agree with each other and with NumPy/TF.

The decisions (TF and NumPy agree on all of them):
- maximum/minimum, relu, relu6, leaky_relu, elu, clip_by_value: a NaN input gives NaN
  (tf.maximum(nan, 0) is nan, tf.nn.relu(nan) is nan); infinities are ordinary values.
- reduce_max/reduce_min: NaN if the reduced elements hold a NaN (np.max, tf.reduce_max);
  reduce_sum/reduce_prod: IEEE arithmetic (inf + -inf is NaN).
- argmax/argmin: the index of the first NaN if there is one (np.argmax), else of the
  first extremum.
- max_pool2d: NaN if its window holds a NaN; its gradient goes to the window's first
  NaN, else to its first maximum. avg_pool2d: IEEE arithmetic.
- softmax/log_softmax: a row holding a NaN or +inf is NaN (x - max(x) is NaN there).
- comparisons: IEEE (every comparison with NaN is False except !=).
- cast of NaN or an infinity to an integer is undefined (NumPy warns and returns the
  minimum integer; compiled code may return anything): not tested.

Every elementwise and reduction op in the registry that takes floats is run here (a new
op is picked up, and must get a NumPy reference below), on inputs holding NaN, +inf
and -inf at the first, a middle and the last position of a row or window, in vectors
long enough for the compiled loops' vector bodies and tails, and as single elements
(which the entry computes inline).
"""
import numpy as np
import pytest

import flowjit as fj
from flowjit import dtypes as D
from flowjit.frontend.tensor import apply_op
from flowjit.ir.registry import REGISTRY
from flowjit.ir import scalar as S

NAN, INF = np.nan, np.inf
SPECIALS = [NAN, INF, -INF, 0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 7.0]
DTYPES = [np.float32, np.float64]


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


# NumPy meaning of each elementwise op (an independent reference for the eager refs)
NUMPY = {
    "negative": np.negative, "abs": np.abs, "sign": np.sign, "square": np.square,
    "sqrt": np.sqrt, "rsqrt": lambda x: 1 / np.sqrt(x), "exp": np.exp, "log": np.log,
    "expm1": np.expm1, "log1p": np.log1p, "tanh": np.tanh, "sigmoid": _sigmoid,
    "sin": np.sin, "cos": np.cos, "floor": np.floor, "ceil": np.ceil,
    "identity": lambda x: x, "stop_gradient": lambda x: x, "relu": lambda x: np.maximum(x, 0),
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
    "floordiv": np.floor_divide, "floormod": np.mod, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal,
    "where": np.where,
}
# ops with a row in op_table.OPS bring their NumPy reference from there
from op_table import OPS as _TABLE  # noqa: E402
NUMPY.update({name: row[1] for name, row in _TABLE.items() if name not in NUMPY})
# elementwise ops with float inputs that are not run with NaN here, and why
SPECIAL_CASES = {
    "cast": "run below with float and bool targets (to integers: undefined for NaN/inf)",
    "broadcast_to": "run below (needs a target shape)",
    "iota": "no inputs", "random": "no float inputs",
}


def _arity(name):
    """How many operands an elementwise op reads: the variables its scalar expression uses."""
    dt = D.float32
    e = REGISTRY[name].emit([S.var(f"ARG{k}") for k in range(3)], {}, [dt] * 3, dt)
    used = {n.name for n in S.walk(e) if n.op == "var"}
    return sum(f"ARG{k}" in used for k in range(3))


def _takes_floats(name):
    op = REGISTRY[name]
    n = _arity(name)
    try:
        op.infer([(3,)] * n, [D.float32] * n, {})
        return True
    except Exception:
        return False


# (custom ops that other test modules register are the users' ops: test_custom_op.py)
ELEMENTWISE = sorted(n for n, op in REGISTRY.items()
                     if op.symbol is None and op.kind == "elementwise" and n not in SPECIAL_CASES and n != "where"
                     and _takes_floats(n))
REDUCTIONS = sorted(n for n, op in REGISTRY.items() if op.kind == "reduce")


def _rtol(dtype):
    return 2e-6 if np.dtype(dtype) == np.float32 else 1e-13


def assert_same(actual, expected, dtype, exact=False, what=""):
    """Same NaN positions, same infinities, finite values equal (or within a few ulp
    for transcendental functions)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if expected.dtype.kind in "biu" or exact:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        np.testing.assert_allclose(actual, expected, rtol=_rtol(dtype), atol=0, equal_nan=True,
                                   err_msg=what)


def _vector(dtype, n=67, seed=0):
    """n values: every special at the first, a middle and the last position of some
    run of 8 lanes, between ordinary values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 3
    for k, v in enumerate(SPECIALS):
        x[(k * 8) % n] = v
        x[(k * 8 + 3) % n] = v
        x[(k * 8 + 7) % n] = v
    x[-1] = NAN
    return x.astype(dtype)


def _pairs(dtype):
    """Every (special, special) pair, in a vector long enough to be vectorised."""
    a, b = np.meshgrid(np.array(SPECIALS), np.array(SPECIALS), indexing="ij")
    return a.reshape(-1).astype(dtype), b.reshape(-1).astype(dtype)


def _jit_and_eager(name, arrays, attrs=None):
    """(jit, eager) results of op `name` on NumPy arrays."""
    attrs = attrs or {}
    with np.errstate(all="ignore"):
        eager = apply_op(name, [fj.constant(a) for a in arrays], dict(attrs)).numpy()
        jitted = fj.jit(lambda *xs: apply_op(name, list(xs), dict(attrs)))(*arrays).numpy()
    return jitted, eager


def _numpy(name, arrays):
    with np.errstate(all="ignore"):
        return np.asarray(NUMPY[name](*arrays))


EXACT = {"negative", "abs", "sign", "square", "floor", "ceil", "identity", "stop_gradient", "relu",
         "add", "subtract", "multiply", "maximum", "minimum", "equal", "not_equal", "less",
         "less_equal", "greater", "greater_equal", "where", "divide", "sqrt", "floordiv", "floormod"}


def test_every_float_elementwise_op_has_a_numpy_reference():
    missing = [n for n in ELEMENTWISE if n not in NUMPY]
    assert not missing, f"add a NumPy reference (or a reason in SPECIAL_CASES) for {missing}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_with_nan_and_inf(name, dtype):
    n = _arity(name)
    if n == 1:
        cases = [[_vector(dtype)], [np.array(NAN, dtype)], [np.array(-INF, dtype)]]
    else:
        a, b = _pairs(dtype)
        cases = [[a, b], [np.array(NAN, dtype), np.array(1, dtype)],
                 [np.array(1, dtype), np.array(NAN, dtype)], [np.array(-INF, dtype), np.array(0, dtype)]]
    exact = name in EXACT
    if name == "pow":            # the libm pow both sides call, up to an ulp
        exact = False
    for arrays in cases:
        jitted, eager = _jit_and_eager(name, arrays)
        ref = _numpy(name, arrays)
        what = f"{name}({', '.join(str(a.shape) for a in arrays)}, {np.dtype(dtype).name})"
        assert_same(eager, ref, dtype, exact, what + ": eager vs NumPy")
        assert_same(jitted, eager, dtype, exact, what + ": jit vs eager")


@pytest.mark.parametrize("dtype", DTYPES)
def test_where_cast_broadcast_with_nan(dtype):
    x = _vector(dtype)
    y = _vector(dtype, seed=1)[::-1].copy()
    cond = np.arange(x.size) % 3 == 0
    jitted, eager = _jit_and_eager("where", [cond, x, y])
    assert_same(eager, np.where(cond, x, y), dtype, True)
    assert_same(jitted, eager, dtype, True)
    for target in (D.float32, D.float64, D.bool_):
        jitted, eager = _jit_and_eager("cast", [x], {"dtype": target})
        assert_same(eager, x.astype(target.np), dtype, True, f"cast to {target.name}")
        assert_same(jitted, eager, dtype, True, f"cast to {target.name}")
    jitted, eager = _jit_and_eager("broadcast_to", [x[:5]], {"shape": (3, 5)})
    assert_same(jitted, np.broadcast_to(x[:5], (3, 5)), dtype, True)


def test_relu_of_nan_is_nan_under_jit():
    # the reported bug: 0 where eager (and TF) give nan
    x = np.array([NAN, 1, -1], np.float32)
    got = fj.jit(lambda x: fj.nn.relu(x))(x).numpy()
    np.testing.assert_array_equal(got, [NAN, 1, 0])
    np.testing.assert_array_equal(fj.nn.relu(x).numpy(), [NAN, 1, 0])


# --------------------------------------------------------------------------------
# reductions
# --------------------------------------------------------------------------------
def _rows(dtype, length):
    """Rows with specials at the first, a middle and the last position, and mixtures."""
    rng = np.random.default_rng(2)
    base = rng.standard_normal(length) * 2
    rows = []
    for v in (NAN, INF, -INF):
        for pos in (0, length // 2, length - 1):
            r = base.copy()
            r[pos] = v
            rows.append(r)
    for vals in ((INF, -INF), (NAN, INF), (-INF, NAN), (NAN, NAN)):
        r = base.copy()
        r[1 % length], r[-1] = vals
        rows.append(r)
    rows += [np.full(length, -INF), np.full(length, INF), np.full(length, NAN), base.copy()]
    return np.array(rows).astype(dtype)


NP_REDUCE = {"reduce_sum": np.sum, "reduce_prod": np.prod, "reduce_max": np.max, "reduce_min": np.min}


def test_every_reduction_has_a_numpy_reference():
    assert set(REDUCTIONS) <= set(NP_REDUCE), set(REDUCTIONS) - set(NP_REDUCE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REDUCTIONS)
def test_reductions_with_nan_and_inf(name, dtype):
    exact = name in ("reduce_max", "reduce_min")
    for length in (3, 37):
        m = _rows(dtype, length)
        # rows (the innermost loop reduced), columns (an outer loop), everything
        for x, axes in ((m, (1,)), (np.ascontiguousarray(m.T), (0,)), (m, (0, 1))):
            for keep in (False, True):
                jitted, eager = _jit_and_eager(name, [x], {"axes": axes, "keepdims": keep})
                with np.errstate(all="ignore"):
                    ref = NP_REDUCE[name](x, axis=axes, keepdims=keep)
                what = f"{name}{x.shape} axes={axes} keepdims={keep}"
                if name in ("reduce_sum", "reduce_prod"):
                    # the order of a float sum/product differs; NaN and inf must not
                    assert_same(np.isnan(jitted), np.isnan(ref), dtype, True, what)
                    assert_same(np.isinf(jitted), np.isinf(ref), dtype, True, what)
                    assert_same(np.isnan(eager), np.isnan(ref), dtype, True, what)
                    fin = np.isfinite(ref)
                    np.testing.assert_allclose(jitted[fin], ref[fin], rtol=1e-5 if dtype == np.float32
                                               else 1e-12, err_msg=what)
                    continue
                assert_same(eager, ref, dtype, exact, what + ": eager vs NumPy")
                assert_same(jitted, eager, dtype, exact, what + ": jit vs eager")


def test_fused_max_reduction_and_relu_chain_propagate_nan():
    # reductions fused with elementwise producers and a keepdims epilogue (softmax-like)
    x = _rows(np.float32, 37)

    @fj.jit
    def f(x):
        y = fj.nn.relu(x) - 1.0
        return fj.reduce_max(y, axis=1), fj.reduce_min(y, axis=0), y - fj.reduce_max(y, axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        y = np.maximum(x, 0) - 1
        ref = (np.max(y, axis=1), np.min(y, axis=0), y - np.max(y, axis=1, keepdims=True))
    for got, want in zip(f(x), ref):
        assert_same(got.numpy(), want, np.float32, True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_loops_on_the_thread_pool_propagate_nan(dtype):
    # >= 2^16 elements: row blocks run in parallel; a max over the first loop combines
    # per-block partial results
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 256)).astype(dtype)
    x[7, 0], x[150, 100], x[299, 255], x[40, 3] = NAN, NAN, NAN, INF
    x[200, :] = -INF

    @fj.jit
    def f(x):
        r = fj.nn.relu(x)
        return r, fj.reduce_max(x, axis=1), fj.reduce_max(x, axis=0), fj.reduce_min(x)
    with np.errstate(invalid="ignore"):
        ref = (np.maximum(x, 0), np.max(x, axis=1), np.max(x, axis=0), np.min(x))
    for got, want in zip(f(x), ref):
        assert_same(got.numpy(), want, dtype, True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["argmax", "argmin"])
def test_arg_reductions_pick_the_first_nan(kind, dtype):
    for length in (3, 37):
        m = _rows(dtype, length)
        for x, axis in ((m, 1), (np.ascontiguousarray(m.T), 0)):
            attrs = {"axis": axis, "output_type": D.int64}
            jitted, eager = _jit_and_eager(kind, [x], attrs)
            ref = getattr(np, kind)(x, axis=axis)
            np.testing.assert_array_equal(eager, ref)
            np.testing.assert_array_equal(jitted, ref)


# --------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------
def _np_pool(x, k, s, how):
    """VALID pooling over NHWC by explicit windows."""
    n, h, w, c = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.empty((n, oh, ow, c), x.dtype)
    for i in range(oh):
        for j in range(ow):
            win = x[:, i * s:i * s + k, j * s:j * s + k, :].reshape(n, -1, c)
            out[:, i, j, :] = np.max(win, axis=1) if how == "max" else np.mean(win, axis=1)
    return out


def _pool_input(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 5, 3)).astype(dtype)
    x[0, 0, 0, 0] = NAN          # first element of the first window
    x[0, 1, 1, 1] = NAN          # last element of a 2x2 window, middle of 3x3 windows
    x[0, 3, 2, 2] = NAN          # first element of a window that is not the first
    x[1, 2, 4, 0] = INF
    x[1, 4, 0, 1] = -INF
    x[1, 1, 3, 2] = NAN
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("how", ["max", "avg"])
def test_pooling_with_nan_and_inf(how, dtype):
    x = _pool_input(dtype)
    pool = fj.nn.max_pool2d if how == "max" else fj.nn.avg_pool2d
    for k, s, padding in ((2, 1, "VALID"), (3, 2, "VALID"), (2, 2, "SAME"), (3, 1, "SAME")):
        with np.errstate(invalid="ignore"):
            eager = pool(x, k, s, padding).numpy()
            jitted = fj.jit(lambda x: pool(x, k, s, padding))(x).numpy()
        what = f"{how}_pool k={k} s={s} {padding}"
        assert_same(jitted, eager, dtype, how == "max", what + ": jit vs eager")
        if padding == "VALID":
            with np.errstate(invalid="ignore"):
                assert_same(eager, _np_pool(x, k, s, how), dtype, how == "max", what + ": vs NumPy")


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_gradient_goes_to_the_first_nan(dtype):
    x = _pool_input(dtype)
    w = np.random.default_rng(5).standard_normal((2, 4, 4, 3)).astype(dtype)

    def loss(x):
        return fj.reduce_sum(fj.nn.max_pool2d(x, 2, 1, "VALID") * w)
    with np.errstate(invalid="ignore"):
        eager = fj.grad(loss)(fj.constant(x)).numpy()
        jitted = fj.jit(fj.grad(loss))(x).numpy()
    assert_same(jitted, eager, dtype, True)
    # window (0, 0) of image 0, channel 0 starts with the NaN: it gets that window's
    # gradient (and so on); NumPy's argmax over each window says where
    ref = np.zeros_like(x)
    for n in range(2):
        for i in range(4):
            for j in range(4):
                for c in range(3):
                    win = x[n, i:i + 2, j:j + 2, c].reshape(-1)
                    a = int(np.argmax(win))
                    ref[n, i + a // 2, j + a % 2, c] += w[n, i, j, c]
    assert_same(eager, ref, dtype, False)


# --------------------------------------------------------------------------------
# nn activations
# --------------------------------------------------------------------------------
def _np_softmax(x, log):
    with np.errstate(invalid="ignore", over="ignore"):
        z = x - np.max(x, axis=-1, keepdims=True)
        if log:
            return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
        e = np.exp(z)
        return e / np.sum(e, axis=-1, keepdims=True)


ACTIVATIONS = {
    "relu": (fj.nn.relu, lambda x: np.maximum(x, 0), True),
    "relu6": (fj.nn.relu6, lambda x: np.minimum(np.maximum(x, 0), 6), True),
    "leaky_relu": (fj.nn.leaky_relu, lambda x: np.where(x > 0, x, x * np.asarray(0.2, x.dtype)), True),
    "elu": (fj.nn.elu, lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))), False),
    "sigmoid": (fj.sigmoid, _sigmoid, False),
    "tanh": (fj.tanh, np.tanh, False),
    "clip_by_value": (lambda x: fj.clip_by_value(x, -1.0, 2.0), lambda x: np.clip(x, -1, 2), True),
    "softmax": (fj.nn.softmax, lambda x: _np_softmax(x, False), False),
    "log_softmax": (fj.nn.log_softmax, lambda x: _np_softmax(x, True), False),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_with_nan_and_inf(name, dtype):
    fn, ref_fn, exact = ACTIVATIONS[name]
    x = _rows(dtype, 37) if "softmax" in name else _vector(dtype)
    with np.errstate(all="ignore"):
        eager = fn(x).numpy()
        jitted = fj.jit(fn)(x).numpy()
        ref = ref_fn(x).astype(dtype)
    assert_same(eager, ref, dtype, exact, f"{name}: eager vs NumPy")
    assert_same(jitted, eager, dtype, exact, f"{name}: jit vs eager")
