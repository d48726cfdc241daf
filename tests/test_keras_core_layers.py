"""flowjit.keras's core layers (Dense, Activation, Softmax, ReLU, LeakyReLU, Flatten,
Reshape, Dropout, Embedding, Lambda, the merging layers) against NumPy references written
here, eagerly and inside fj.jit; float64 gradients of a scalar function of the outputs
w.r.t. the inputs and the weights against central finite differences; parameter counts,
get_config keys, output shapes through keras.Input; and the Layer base contract (default
initializers, names, attribute tracking, trainable, set_weights, the training flag,
input casting, losses), with the divergences from Keras 3 found while writing it (lists
filled after assignment, get_config of every layer, Dropout's noise_shape with None)."""
import math
import uuid

import numpy as np
import pytest

import flowjit as fj
import flowjit.keras as keras
from flowjit.keras import layers as L
from flowjit.keras import regularizers

from conftest import assert_close, finite_differences


# --------------------------------------------------------------------------------------
# NumPy references and helpers
# --------------------------------------------------------------------------------------
def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


NP_ACT = {None: lambda z: z, "linear": lambda z: z, "relu": lambda z: np.maximum(z, 0.0),
          "sigmoid": np_sigmoid, "softmax": np_softmax, "tanh": np.tanh}


def np_relu_layer(x, max_value=None, negative_slope=0.0, threshold=0.0):
    """Keras's ReLU layer: max_value above it, x in [threshold, max_value),
    negative_slope * (x - threshold) below the threshold."""
    y = np.where(x >= threshold, x, negative_slope * (x - threshold))
    if max_value is not None:
        y = np.where(x >= max_value, max_value, y)
    return y


def away_from(x, points, gap=1e-2):
    """x with every entry moved at least `gap` away from each of `points` (kinks), so a
    finite difference never straddles one."""
    x = np.array(x, np.float64)
    for p in points:
        near = np.abs(x - p) < gap
        x[near] = p + np.where(x[near] >= p, gap, -gap) * 2
    return x


def as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def jit_same(layer, *args, **kwargs):
    """The layer's output eagerly and inside fj.jit: the same values; returns the eager one
    as NumPy."""
    eager = layer(*args, **kwargs)
    jitted = fj.jit(lambda *a: layer(*a, **kwargs))(*args)
    for e, j in zip(as_list(eager), as_list(jitted)):
        assert j.dtype == e.dtype
        assert_close(j.numpy(), e.numpy(), rtol=1e-6, atol=1e-6)
    return eager.numpy()


def grad_check(rng, layer, inputs, call_kw=None, diff_inputs=True, rtol=1e-6, atol=1e-8):
    """d sum(layer(inputs) * R) / d (inputs, trainable weights): the tape, eagerly and
    inside fj.jit, against float64 central differences. `inputs` is one array, or a list
    of arrays for a merging layer; diff_inputs=False for integer ids."""
    call_kw = call_kw or {}
    multi = isinstance(inputs, list)
    xs = [np.asarray(x) for x in (inputs if multi else [inputs])]

    def run(*ts):
        return layer(list(ts) if multi else ts[0], **call_kw)
    out = run(*xs)
    assert out.dtype == fj.float64
    r = rng.standard_normal(tuple(out.shape))
    ws = layer.trainable_weights
    assert all(w.dtype == fj.float64 for w in ws)
    n_in = len(xs) if diff_inputs else 0

    def loss(*ts):
        return fj.reduce_sum(run(*ts) * r)

    def grads(*ts):
        with fj.GradientTape() as tape:
            for t in ts[:n_in]:
                tape.watch(t)
            value = loss(*ts)
        return tape.gradient(value, list(ts[:n_in]) + ws)
    eager = [g.numpy() for g in grads(*[fj.constant(x) for x in xs])]
    jitted = [g.numpy() for g in fj.jit(grads)(*xs)]
    values = xs[:n_in] + [w.numpy() for w in ws]
    assert len(eager) == len(jitted) == len(values)

    def f(*arrays):
        for w, a in zip(ws, arrays[n_in:]):
            w.assign(a)
        return float(loss(*(list(arrays[:n_in]) + xs[n_in:])))
    try:
        for i in range(len(values)):
            want = finite_differences(f, [v.copy() for v in values], i)
            assert_close(eager[i], want, rtol=rtol, atol=atol)
            assert_close(jitted[i], eager[i], rtol=1e-9, atol=1e-10)
    finally:
        for w, v in zip(ws, values[n_in:]):
            w.assign(v)
    return eager


def random_weights(rng, layer, dtype=np.float32):
    ws = [rng.standard_normal(tuple(w.shape)).astype(dtype) for w in layer.weights]
    layer.set_weights(ws)
    return [w.astype(np.float64) for w in ws]


BASE_KEYS = {"name", "trainable", "dtype"}


# --------------------------------------------------------------------------------------
# Dense
# --------------------------------------------------------------------------------------
DENSE = [((3, 4), None, True), ((2, 3, 4), None, True), ((3, 4), "relu", True), ((2, 3, 4), "softmax", True),
         ((3, 4), "sigmoid", False), ((2, 3, 4), "tanh", False), ((3, 4), "softmax", False)]
DENSE_IDS = [f"rank{len(s)}-{a}-{'bias' if b else 'nobias'}" for s, a, b in DENSE]


@pytest.mark.parametrize("shape,activation,use_bias", DENSE, ids=DENSE_IDS)
def test_dense_forward(rng, shape, activation, use_bias):
    x = rng.standard_normal(shape).astype(np.float32)
    layer = L.Dense(5, activation=activation, use_bias=use_bias)
    layer(x)
    ws = random_weights(rng, layer)
    got = jit_same(layer, x)
    assert got.dtype == np.float32 and got.shape == shape[:-1] + (5,)
    z = x.astype(np.float64) @ ws[0] + (ws[1] if use_bias else 0.0)
    assert_close(got, NP_ACT[activation](z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,activation,use_bias", DENSE, ids=DENSE_IDS)
def test_dense_gradients(rng, shape, activation, use_bias):
    layer = L.Dense(3, activation=activation, use_bias=use_bias, dtype="float64")
    x = rng.standard_normal(shape)
    if activation == "relu":
        layer(x)
        random_weights(rng, layer, np.float64)
        # no pre-activation within 1e-2 of the kink: move the inputs' last feature
        for _ in range(20):
            z = x @ layer.kernel.numpy() + (layer.bias.numpy() if use_bias else 0.0)
            if np.abs(z).min() > 1e-2:
                break
            x = rng.standard_normal(shape)
    grads = grad_check(rng, layer, x)
    assert len(grads) == (3 if use_bias else 2)


def test_dense_weights_counts_config_and_shapes(rng):
    layer = L.Dense(3)
    out = layer(keras.Input((4,)))
    assert isinstance(out, keras.KerasTensor) and out.shape == (None, 3) and out.dtype == fj.float32
    assert layer.built and tuple(layer.kernel.shape) == (4, 3) and tuple(layer.bias.shape) == (3,)
    assert layer.count_params() == 15
    assert [w.name.split(":")[0] for w in layer.weights] == [f"{layer.name}/kernel", f"{layer.name}/bias"]
    assert np.all(layer.bias.numpy() == 0)                     # bias_initializer="zeros"
    assert L.Dense(3)(keras.Input((2, 4))).shape == (None, 2, 3)
    assert L.Dense(3, batch_size=7)(keras.Input((4,), batch_size=7)).shape == (7, 3)
    nobias = L.Dense(3, use_bias=False)
    nobias(np.zeros((1, 4), np.float32))
    assert nobias.count_params() == 12 and nobias.bias is None and len(nobias.weights) == 1
    cfg = L.Dense(7, activation="relu", use_bias=False, name="my_dense").get_config()
    assert BASE_KEYS | {"units", "activation", "use_bias"} <= set(cfg)
    assert (cfg["name"], cfg["units"], cfg["activation"], cfg["use_bias"], cfg["dtype"]) == \
        ("my_dense", 7, "relu", False, "float32")
    clone = L.Dense.from_config({**cfg, "name": "my_dense_clone"})
    assert (clone.units, clone.use_bias, clone.activation_name) == (7, False, "relu")
    with pytest.raises(ValueError, match="last dimension"):
        L.Dense(2)(keras.Input((None,)))
    with pytest.raises(TypeError, match="unrecognized keyword"):
        L.Dense(2, not_an_argument=1)


def test_dense_kernel_regularizer_adds_to_losses(rng):
    layer = L.Dense(3, kernel_regularizer=regularizers.L2(0.1), bias_regularizer=regularizers.L1(0.5))
    assert layer.losses == []                                  # no weights yet
    x = rng.standard_normal((2, 4)).astype(np.float32)
    layer(x)
    k, b = random_weights(rng, layer)
    losses = layer.losses
    assert len(losses) == 2
    assert_close(float(losses[0]), 0.1 * np.sum(k ** 2), rtol=1e-5, atol=1e-6)
    assert_close(float(losses[1]), 0.5 * np.sum(np.abs(b)), rtol=1e-5, atol=1e-6)
    layer(x)
    assert len(layer.losses) == 2                              # not accumulated over calls
    # the string form: Keras's default l2 factor 0.01
    s = L.Dense(2, kernel_regularizer="l2")
    s(x)
    (pen,) = s.losses
    assert_close(float(pen), 0.01 * np.sum(s.kernel.numpy().astype(np.float64) ** 2), rtol=1e-5, atol=1e-7)

    # the penalty differentiates: d(l2 * sum(k^2))/dk = 2 l2 k, eagerly and under jit
    def grad():
        with fj.GradientTape() as tape:
            value = fj.add_n(layer.losses)
        return tape.gradient(value, layer.trainable_weights)
    for g in (grad(), fj.jit(grad)()):
        assert_close(g[0].numpy(), 0.2 * k, rtol=1e-5, atol=1e-6)
        assert_close(g[1].numpy(), 0.5 * np.sign(b), rtol=1e-5, atol=1e-6)

    # nested: the outer layer's losses include the inner Dense's penalty
    class Outer(L.Layer):
        def __init__(self):
            super().__init__()
            self.inner = L.Dense(2, kernel_regularizer=regularizers.L2(1.0))

        def call(self, x):
            return self.inner(x)
    outer = Outer()
    outer(x)
    (pen,) = outer.losses
    assert_close(float(pen), np.sum(outer.inner.kernel.numpy().astype(np.float64) ** 2), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# Activation, Softmax, ReLU, LeakyReLU
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["relu", "sigmoid", "softmax", "tanh", "linear", None])
def test_activation_layer(rng, name):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    layer = L.Activation(name)
    got = jit_same(layer, x)
    assert_close(got, NP_ACT[name](x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    assert layer.count_params() == 0 and layer.weights == []
    assert L.Activation(name)(keras.Input((2, 5))).shape == (None, 2, 5)
    if name != "relu":
        grad_check(rng, L.Activation(name, dtype="float64"), rng.standard_normal((2, 3)))
    else:
        grad_check(rng, L.Activation(name, dtype="float64"), away_from(rng.standard_normal((2, 3)), [0.0]))


def test_activation_callable_and_unknown_name(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    got = jit_same(L.Activation(lambda t: t * 3.0), x)
    assert_close(got, 3.0 * x)
    with pytest.raises(ValueError, match="activation"):
        L.Activation("not_an_activation")


@pytest.mark.parametrize("axis", [-1, 1, 2, -2])
def test_softmax_axis(rng, axis):
    x = (rng.standard_normal((2, 3, 4)) * 3).astype(np.float32)
    layer = L.Softmax(axis=axis)
    got = jit_same(layer, x)
    want = np_softmax(x.astype(np.float64), axis=axis)
    assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert_close(got.sum(axis=axis), np.ones(np.delete(x.shape, axis % 3)), rtol=1e-5, atol=1e-5)
    assert L.Softmax(axis=axis)(keras.Input((3, 4))).shape == (None, 3, 4)
    grad_check(rng, L.Softmax(axis=axis, dtype="float64"), rng.standard_normal((2, 3, 2)))


def test_softmax_large_logits_stay_finite():
    x = np.array([[1000.0, 0.0, -1000.0]], np.float32)
    got = jit_same(L.Softmax(), x)
    assert_close(got, np.array([[1.0, 0.0, 0.0]], np.float32))


RELU = [{}, dict(max_value=1.0), dict(negative_slope=0.1), dict(threshold=0.5),
        dict(max_value=2.0, negative_slope=0.2, threshold=0.5), dict(max_value=6.0)]


@pytest.mark.parametrize("cfg", RELU, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()) or "default")
def test_relu_layer(rng, cfg):
    kinks = [0.0, cfg.get("threshold", 0.0)] + ([cfg["max_value"]] if "max_value" in cfg else [])
    x = away_from(rng.standard_normal((4, 5)) * 3, kinks)
    layer = L.ReLU(**cfg)
    got = jit_same(layer, x.astype(np.float32))
    assert_close(got, np_relu_layer(x.astype(np.float32).astype(np.float64), **cfg), rtol=1e-6, atol=1e-6)
    assert L.ReLU(**cfg)(keras.Input((5,))).shape == (None, 5)
    grad_check(rng, L.ReLU(dtype="float64", **cfg), x)


@pytest.mark.parametrize("slope", [None, 0.1, 0.0])
def test_leaky_relu(rng, slope):
    x = away_from(rng.standard_normal((3, 4)) * 2, [0.0])
    layer = L.LeakyReLU() if slope is None else L.LeakyReLU(negative_slope=slope)
    a = 0.3 if slope is None else slope                      # Keras 3's default slope is 0.3
    got = jit_same(layer, x.astype(np.float32))
    xx = x.astype(np.float32).astype(np.float64)
    assert_close(got, np.where(xx > 0, xx, a * xx), rtol=1e-6, atol=1e-6)
    grad_check(rng, L.LeakyReLU(dtype="float64") if slope is None else
               L.LeakyReLU(negative_slope=slope, dtype="float64"), x)


# --------------------------------------------------------------------------------------
# Flatten, Reshape
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 3, 2, 2), (3, 5)])
def test_flatten(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    got = jit_same(L.Flatten(), x)
    assert_close(got, x.reshape(shape[0], -1))
    assert L.Flatten()(keras.Input(shape[1:])).shape == (None, int(np.prod(shape[1:])))
    assert L.Flatten().count_params() == 0
    grad_check(rng, L.Flatten(dtype="float64"), rng.standard_normal(shape))


@pytest.mark.parametrize("target", [(-1, 2), (4, -1), (2, 2, 3), (12,), (-1,)])
def test_reshape(rng, target):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    got = jit_same(L.Reshape(target), x)
    assert_close(got, x.reshape((2,) + target))
    want_shape = (None,) + np.empty((3, 4)).reshape(target).shape
    assert L.Reshape(target)(keras.Input((3, 4))).shape == want_shape
    grad_check(rng, L.Reshape(target, dtype="float64"), rng.standard_normal((2, 3, 4)))


def test_reshape_and_flatten_keep_the_batch_under_jit(rng):
    """A jitted function reused at a new batch size reshapes with that batch."""
    layer = L.Reshape((-1, 2))
    flat = L.Flatten()
    f = fj.jit(lambda x: (layer(x), flat(x)))
    for n in (2, 5):
        x = rng.standard_normal((n, 3, 4)).astype(np.float32)
        r, fl = f(x)
        assert_close(r.numpy(), x.reshape(n, 6, 2))
        assert_close(fl.numpy(), x.reshape(n, 12))


def test_reshape_errors():
    with pytest.raises(Exception, match="reshape"):
        L.Reshape((5,))(np.ones((2, 6), np.float32))


# --------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------
def test_dropout_is_the_identity_outside_training(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    layer = L.Dropout(0.5)
    for kw in ({}, dict(training=False), dict(training=None)):
        assert_close(layer(x, **kw).numpy(), x)
        assert_close(fj.jit(lambda t: layer(t, **kw))(x).numpy(), x)
    assert_close(L.Dropout(0.0)(x, training=True).numpy(), x)          # rate 0: identity
    assert layer.count_params() == 0
    assert L.Dropout(0.5)(keras.Input((4,))).shape == (None, 4)
    cfg = L.Dropout(0.25, seed=3).get_config()
    assert BASE_KEYS | {"rate", "seed"} <= set(cfg) and (cfg["rate"], cfg["seed"]) == (0.25, 3)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="rate"):
            L.Dropout(bad)


def _check_dropout_output(x, out, rate):
    """Every output either 0 or x / (1 - rate); the kept fraction within 5 sigma of 1 - rate."""
    kept = out != 0
    assert_close(out[kept], x[kept] / (1.0 - rate), rtol=1e-6, atol=1e-6)
    n = x.size
    frac = kept.mean()
    assert abs(frac - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / n), frac
    return kept


@pytest.mark.parametrize("rate", [0.3, 0.75])
def test_dropout_in_training(rng, rate):
    x = (rng.uniform(0.5, 1.5, (40, 500)) * rng.choice([-1, 1], (40, 500))).astype(np.float32)
    layer = L.Dropout(rate)
    m1 = _check_dropout_output(x, layer(x, training=True).numpy(), rate)
    m2 = _check_dropout_output(x, layer(x, training=True).numpy(), rate)
    assert (m1 != m2).mean() > 0.1                                   # a new mask each call
    f = fj.jit(lambda t: layer(t, training=True))
    j1 = _check_dropout_output(x, f(x).numpy(), rate)
    j2 = _check_dropout_output(x, f(x).numpy(), rate)
    assert (j1 != j2).mean() > 0.1                                   # ... under fj.jit too
    # per-element independence: the masks of two calls agree as often as chance says
    agree = (j1 == j2).mean()
    expect = rate ** 2 + (1 - rate) ** 2
    assert abs(agree - expect) < 0.02, (agree, expect)


def test_dropout_gradient_is_the_mask_scaled(rng):
    """d sum(dropout(x) * R)/dx = R * mask / (1 - rate), with the mask of the same call."""
    rate = 0.4
    x = rng.uniform(0.5, 1.5, (6, 50))
    r = rng.standard_normal((6, 50))
    layer = L.Dropout(rate, dtype="float64")

    def step(xt):
        with fj.GradientTape() as tape:
            tape.watch(xt)
            out = layer(xt, training=True)
            value = fj.reduce_sum(out * r)
        return out, tape.gradient(value, xt)
    for out, g in (step(fj.constant(x)), fj.jit(step)(x)):
        kept = out.numpy() != 0
        assert 0.4 < kept.mean() < 0.8
        assert_close(g.numpy(), r * kept / (1 - rate))


def test_dropout_noise_shape_shares_the_mask(rng):
    x = rng.uniform(0.5, 1.5, (64, 6)).astype(np.float32)
    out = L.Dropout(0.5, noise_shape=(64, 1))(x, training=True).numpy()
    kept = out != 0
    assert np.all(kept.all(axis=1) | (~kept).all(axis=1))           # whole rows kept or dropped
    assert 0 < kept[:, 0].sum() < 64
    assert_close(out[kept], 2 * x[kept])


def test_dropout_noise_shape_with_none_entries(rng):
    x = rng.uniform(0.5, 1.5, (64, 6)).astype(np.float32)
    out = L.Dropout(0.5, noise_shape=(None, 1))(x, training=True).numpy()
    kept = out != 0
    assert np.all(kept.all(axis=1) | (~kept).all(axis=1))


# --------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int32", "int64", "float32", "float64"])
def test_embedding_gather(rng, dtype):
    layer = L.Embedding(6, 3)
    ids = np.array([[0, 5, 2], [2, 2, 1]])
    layer(ids.astype(np.int32))
    (table,) = random_weights(rng, layer)
    if dtype.startswith("float"):
        given = (ids + 0.25).astype(dtype)                           # float ids truncate, as a cast
    else:
        given = ids.astype(dtype)
    got = jit_same(layer, given)
    assert got.dtype == np.float32
    assert_close(got, table[ids].astype(np.float32))
    assert layer.count_params() == 18
    assert [w.name.split(":")[0] for w in layer.weights] == [f"{layer.name}/embeddings"]


def test_embedding_shapes_config_and_initializer(rng):
    layer = L.Embedding(10, 4)
    assert layer(keras.Input((7,), dtype="int32")).shape == (None, 7, 4)
    assert L.Embedding(10, 4)(keras.Input((2, 3), dtype="int64")).shape == (None, 2, 3, 4)
    t = layer.embeddings.numpy()
    assert t.shape == (10, 4) and np.all(np.abs(t) <= 0.05) and np.std(t) > 0   # "uniform": +-0.05
    assert layer.count_params() == 40
    # any rank of ids, a scalar id included
    assert layer(np.int32(3)).numpy().shape == (4,)
    assert_close(layer(np.int32(3)).numpy(), t[3])
    assert layer(np.zeros((2, 1, 3), np.int32)).numpy().shape == (2, 1, 3, 4)
    with pytest.raises(ValueError, match="mask_zero"):
        L.Embedding(10, 4, mask_zero=True)


def test_embedding_gradient_sums_repeated_ids(rng):
    layer = L.Embedding(5, 2, dtype="float64")
    ids = np.array([[1, 3, 1], [4, 1, 0]], np.int32)
    (g,) = grad_check(rng, layer, ids, diff_inputs=False)
    assert np.all(g[2] == 0)                                         # id 2 is never used


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("bad", [np.array([[0, 5]], np.int32), np.array([[-1, 0]], np.int32),
                                 np.array([7, 0], np.int64), np.array([2 ** 32 + 1], np.int64),
                                 np.array([5.0]), np.array([-1.5], np.float32), np.array([np.nan], np.float32),
                                 np.array([1e10], np.float32)],
                         ids=["int32-5", "int32-neg", "int64-7", "int64-2^32+1", "float-5", "float-neg",
                              "float-nan", "float-huge"])
def test_embedding_out_of_range_ids_raise(tier, bad, jit):
    """An id outside [0, input_dim) raises (not a read outside the table), in both CPU
    tiers, eagerly and inside fj.jit; an int64 id that would wrap to a valid int32 one
    included."""
    layer = L.Embedding(5, 3)
    layer(np.array([0], np.int32))
    fn = fj.jit(lambda i: layer(i)) if jit else layer
    with pytest.raises(IndexError, match="out of range"):
        with np.errstate(invalid="ignore"):
            fn(bad).numpy()


# --------------------------------------------------------------------------------------
# Lambda
# --------------------------------------------------------------------------------------
def test_lambda(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    layer = L.Lambda(lambda t, k: fj.tanh(t[:, :2]) * k, arguments={"k": 3.0})
    got = jit_same(layer, x)
    assert_close(got, np.tanh(x[:, :2].astype(np.float64)) * 3.0, rtol=1e-5, atol=1e-6)
    assert layer.count_params() == 0
    assert L.Lambda(lambda t: fj.reduce_sum(t, axis=-1, keepdims=True))(keras.Input((4,))).shape == (None, 1)
    grad_check(rng, L.Lambda(lambda t, k: fj.tanh(t[:, :2]) * k, arguments={"k": 3.0}, dtype="float64"),
               rng.standard_normal((3, 4)))
    grad_check(rng, L.Lambda(lambda t: t * fj.exp(t), dtype="float64"), rng.standard_normal((2, 2)))


# --------------------------------------------------------------------------------------
# merging layers
# --------------------------------------------------------------------------------------
MERGE = {
    "Add": (L.Add, lambda xs: sum(xs)),
    "Subtract": (L.Subtract, lambda xs: xs[0] - xs[1]),
    "Multiply": (L.Multiply, lambda xs: np.prod(np.stack(xs), axis=0)),
    "Average": (L.Average, lambda xs: np.mean(np.stack(xs), axis=0)),
    "Maximum": (L.Maximum, lambda xs: np.max(np.stack(xs), axis=0)),
    "Minimum": (L.Minimum, lambda xs: np.min(np.stack(xs), axis=0)),
}
MERGE_CASES = [(name, n) for name in MERGE for n in ((2,) if name == "Subtract" else (2, 3))]


@pytest.mark.parametrize("name,n", MERGE_CASES, ids=[f"{a}-{n}" for a, n in MERGE_CASES])
def test_merge_layers(rng, tier, name, n):
    cls, ref = MERGE[name]
    xs = [rng.standard_normal((2, 3)).astype(np.float32) for _ in range(n)]
    layer = cls()
    got = jit_same(layer, xs)
    assert_close(got, ref([x.astype(np.float64) for x in xs]).astype(np.float32), rtol=1e-6, atol=1e-6)
    assert layer.count_params() == 0
    assert cls()([keras.Input((3, 2)) for _ in range(n)]).shape == (None, 3, 2)
    with pytest.raises(ValueError, match="at least 2"):
        cls()([xs[0]])


@pytest.mark.parametrize("name,n", MERGE_CASES, ids=[f"{a}-{n}" for a, n in MERGE_CASES])
def test_merge_gradients(rng, name, n):
    cls, _ = MERGE[name]
    grad_check(rng, cls(dtype="float64"), [rng.standard_normal((2, 3)) for _ in range(n)])


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_concatenate(rng, axis):
    shapes = {-1: [(2, 3, 1), (2, 3, 2), (2, 3, 3)], 1: [(2, 1, 2), (2, 4, 2)], 0: [(1, 2, 3), (2, 2, 3)]}[axis]
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    layer = L.Concatenate(axis=axis)
    got = jit_same(layer, xs)
    assert_close(got, np.concatenate(xs, axis=axis))
    assert layer.count_params() == 0
    if axis != 0:
        sym = L.Concatenate(axis=axis)([keras.Input(s[1:]) for s in shapes])
        assert sym.shape == (None,) + np.concatenate(xs, axis=axis).shape[1:]
    grad_check(rng, L.Concatenate(axis=axis, dtype="float64"), [rng.standard_normal(s) for s in shapes])


def test_add_and_concatenate_functions(rng):
    a, b = (rng.standard_normal((2, 3)).astype(np.float32) for _ in range(2))
    assert_close(L.add([a, b]).numpy(), a + b)
    assert_close(L.concatenate([a, b]).numpy(), np.concatenate([a, b], -1))
    assert_close(L.concatenate([a, b], axis=0).numpy(), np.concatenate([a, b], 0))
    assert_close(fj.jit(lambda x, y: L.add([x, y]))(a, b).numpy(), a + b)
    assert_close(fj.jit(lambda x, y: L.concatenate([x, y], axis=0))(a, b).numpy(), np.concatenate([a, b], 0))
    ia, ib = keras.Input((3,)), keras.Input((5,))
    assert L.add([ia, keras.Input((3,))]).shape == (None, 3)
    assert L.concatenate([ia, ib]).shape == (None, 8)
    named = L.add([ia, keras.Input((3,))], name="my_add")
    assert isinstance(named, keras.KerasTensor) and named._node.layer.name == "my_add"
    # float64 numpy inputs to a float32 merge layer are cast, each of them
    out = L.add([a.astype(np.float64), b.astype(np.float64)])
    assert out.dtype == fj.float32


# --------------------------------------------------------------------------------------
# get_config round trips (Keras 3 layers serialize their constructor arguments)
# --------------------------------------------------------------------------------------
CONFIG_CASES = [
    ("Embedding", lambda: L.Embedding(6, 2), {"input_dim": 6, "output_dim": 2}, np.array([[1, 4]], np.int32)),
    ("Reshape", lambda: L.Reshape((3, -1)), {"target_shape": (3, -1)}, np.ones((1, 6), np.float32)),
    ("Concatenate", lambda: L.Concatenate(axis=1), {"axis": 1},
     [np.ones((1, 2, 2), np.float32), np.zeros((1, 1, 2), np.float32)]),
    ("Softmax", lambda: L.Softmax(axis=1), {"axis": 1}, np.arange(6, dtype=np.float32).reshape(1, 2, 3)),
    ("ReLU", lambda: L.ReLU(max_value=1.0), {"max_value": 1.0}, np.array([[-1.0, 0.5, 3.0]], np.float32)),
    ("LeakyReLU", lambda: L.LeakyReLU(negative_slope=0.1), {"negative_slope": 0.1},
     np.array([[-1.0, 2.0]], np.float32)),
    ("Activation", lambda: L.Activation("sigmoid"), {"activation": "sigmoid"}, np.array([[-1.0, 2.0]], np.float32)),
    ("Dropout", lambda: L.Dropout(0.5, noise_shape=(1, 1)), {"noise_shape": (1, 1)}, None),
]


@pytest.mark.parametrize("name,make,keys,x", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_get_config_round_trip(rng, name, make, keys, x):
    layer = make()
    cfg = layer.get_config()
    assert BASE_KEYS <= set(cfg)
    for k, v in keys.items():
        assert k in cfg and tuple(np.atleast_1d(cfg[k])) == tuple(np.atleast_1d(v)), (k, cfg)
    clone = type(layer).from_config({**cfg, "name": layer.name + "_clone"})
    if x is not None:
        want = layer(x).numpy()
        clone(x)
        if clone.weights:
            clone.set_weights(layer.get_weights())
        assert_close(clone(x).numpy(), want)


def test_get_config_base_keys():
    for layer in (L.Flatten(), L.Add(), L.Lambda(lambda t: t), L.Dense(2), L.Dropout(0.1),
                  L.Dense(2, dtype="float64", trainable=False, name="cfg_dense")):
        cfg = layer.get_config()
        assert BASE_KEYS <= set(cfg)
    assert L.Dense(2, dtype="float64", trainable=False, name="cfg_dense_2").get_config()["dtype"] == "float64"
    assert L.Dense(2, trainable=False).get_config()["trainable"] is False
    clone = L.Flatten.from_config(L.Flatten(name="f_src").get_config())
    assert isinstance(clone, L.Flatten) and clone.name == "f_src"


# --------------------------------------------------------------------------------------
# the Layer base contract
# --------------------------------------------------------------------------------------
def test_add_weight_default_initializers(rng):
    class W(L.Layer):
        def build(self, input_shape):
            self.w = self.add_weight((20, 30), name="w")
            self.i = self.add_weight((3,), dtype="int32", name="i")
            self.o = self.add_weight((2,), initializer="ones", trainable=False, name="o")

        def call(self, x):
            return x

    layer = W()
    layer(np.zeros((1, 2), np.float32))
    w = layer.w.numpy()
    limit = math.sqrt(6.0 / (20 + 30))                       # glorot_uniform's bound
    assert layer.w.dtype == fj.float32
    assert np.all(np.abs(w) <= limit) and abs(np.std(w) - limit / math.sqrt(3)) < 0.15 * limit / math.sqrt(3)
    assert layer.i.dtype == fj.int32 and np.all(layer.i.numpy() == 0)
    assert np.all(layer.o.numpy() == 1)
    assert layer.trainable_weights == [layer.w, layer.i] and layer.non_trainable_weights == [layer.o]
    assert [v.name.split(":")[0] for v in layer.weights] == [f"{layer.name}/{n}" for n in "wio"]
    assert layer.count_params() == 600 + 3 + 2
    # a float64 layer's default weight dtype is float64; a scalar weight by default shape
    layer64 = W(dtype="float64")
    layer64(np.zeros((1, 2)))
    assert layer64.w.dtype == fj.float64 and layer64.i.dtype == fj.int32

    class S(L.Layer):
        def build(self, input_shape):
            self.s = self.add_weight(initializer="zeros")
    s = S()
    s(np.zeros(1, np.float32))
    assert tuple(s.s.shape) == () and float(s.s.numpy()) == 0.0

    class Bad(L.Layer):
        def build(self, input_shape):
            self.add_weight((2, 2), initializer=lambda shape, dtype=None: np.zeros((3,)))
    with pytest.raises(ValueError, match="shape"):
        Bad()(np.zeros(1, np.float32))


def test_layer_names_are_unique():
    # a class name no other layer has (new at each run of the test), so its counter starts here
    tag = "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:8])
    probe = type(f"ZebraProbe{tag.capitalize()}Layer", (L.Layer,), {})
    base = f"zebra_probe_{tag}_layer"
    assert [probe().name for _ in range(3)] == [base, f"{base}_1", f"{base}_2"]
    assert probe(name="given").name == "given"
    assert probe().name == f"{base}_3"                         # a given name takes no number

    def index(name, base):
        return 0 if name == base else int(name[len(base) + 1:])
    a, b = L.Dense(1), L.Dense(1)
    assert a.name.startswith("dense") and index(b.name, "dense") == index(a.name, "dense") + 1
    # Keras's snake_case names
    assert L.ReLU().name.startswith("re_lu") and L.LeakyReLU().name.startswith("leaky_re_lu")
    assert L.Concatenate().name.startswith("concatenate")
    # weight names follow the layer's
    d = L.Dense(2, name="named_dense")
    d(np.zeros((1, 3), np.float32))
    assert d.kernel.name.startswith("named_dense/kernel")


class Block(L.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.scale = fj.Variable(np.float32(2.0), name="scale")      # a variable attribute
        self.dense = L.Dense(units)
        self.pair = [L.Dense(units), L.Dense(units, use_bias=False)]  # a list of layers
        self.act = L.Activation("relu")

    def call(self, x):
        y = self.dense(x)
        for layer in self.pair:
            y = layer(y)
        return self.act(y) * self.scale


def test_attribute_tracking_of_nested_layers_and_lists(rng):
    block = Block(2)
    assert block._layers == [block.dense] + block.pair + [block.act]
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y = block(x)
    ws = block.weights
    assert ws[0] is block.scale
    assert ws[1:] == [block.dense.kernel, block.dense.bias, block.pair[0].kernel, block.pair[0].bias,
                      block.pair[1].kernel]
    assert block.count_params() == 1 + (4 * 2 + 2) + (2 * 2 + 2) + 2 * 2
    k0, b0, k1, b1, k2 = (w.numpy().astype(np.float64) for w in ws[1:])
    want = np.maximum(((x @ k0 + b0) @ k1 + b1) @ k2, 0) * 2.0
    assert_close(y.numpy(), want, rtol=1e-5, atol=1e-5)
    assert_close(fj.jit(lambda t: block(t))(x).numpy(), y.numpy(), rtol=1e-6, atol=1e-6)

    # a layer shared by two attributes, nested two deep, counts once
    class Outer(L.Layer):
        def __init__(self):
            super().__init__()
            self.block = Block(2)
            self.again = self.block.dense
            self.head = L.Dense(1)

        def call(self, x):
            return self.head(self.block(x))
    outer = Outer()
    outer(x)
    assert len(outer.weights) == len({id(w) for w in outer.weights}) == 6 + 2
    assert outer.count_params() == block.count_params() + 3

    # gradients reach every tracked weight
    with fj.GradientTape() as tape:
        loss = fj.reduce_sum(outer(x) ** 2)
    grads = tape.gradient(loss, outer.trainable_weights)
    assert len(grads) == 8 and all(g is not None for g in grads)


@pytest.mark.parametrize("how", ["append", "dict"])
def test_tracking_of_lists_built_by_append_and_dicts(rng, how):
    class Net(L.Layer):
        def __init__(self):
            super().__init__()
            if how == "append":
                self.blocks = []
                for _ in range(2):
                    self.blocks.append(L.Dense(3))
            else:
                self.blocks = {"a": L.Dense(3), "b": L.Dense(3)}

        def call(self, x):
            for b in (self.blocks if how == "append" else self.blocks.values()):
                x = b(x)
            return x
    net = Net()
    net(np.ones((1, 3), np.float32))
    assert len(net.weights) == 4 and net.count_params() == 24


def test_trainable_false_moves_weights_to_non_trainable(rng):
    x = rng.standard_normal((2, 4)).astype(np.float32)
    frozen = L.Dense(3, trainable=False)
    frozen(x)
    assert frozen.trainable_weights == [] and frozen.non_trainable_weights == [frozen.kernel, frozen.bias]
    assert frozen.count_params() == 15 and len(frozen.weights) == 2
    frozen.trainable = True
    assert frozen.trainable_weights == [frozen.kernel, frozen.bias] and frozen.non_trainable_weights == []

    # the setter reaches nested layers, and back
    block = Block(2)
    block(x)
    n = len(block.weights)
    block.trainable = False
    assert block.trainable_weights == [] and len(block.non_trainable_weights) == n
    assert not block.dense.trainable and not block.pair[1].trainable
    assert block.dense.trainable_weights == []
    block.trainable = True
    assert len(block.trainable_weights) == n and block.dense.trainable

    # a frozen nested layer inside a trainable one; a frozen outer built with trainable=False
    block.pair[0].trainable = False
    assert block.non_trainable_weights == [block.pair[0].kernel, block.pair[0].bias]
    assert len(block.trainable_weights) == n - 2
    outer = Block(2, trainable=False)
    outer(x)
    assert outer.trainable_weights == [] and len(outer.non_trainable_weights) == n
    # the order of weights (get_weights) does not change with trainable
    assert outer.weights[0] is outer.scale and outer.weights[1] is outer.dense.kernel


def test_set_weights_validation(rng):
    layer = L.Dense(3)
    layer(np.zeros((1, 2), np.float32))
    before = layer.get_weights()
    k = rng.standard_normal((2, 3))
    with pytest.raises(ValueError, match="expected 2 arrays, got 1"):
        layer.set_weights([k])
    with pytest.raises(ValueError, match="expected 2 arrays, got 3"):
        layer.set_weights([k, np.zeros(3), np.zeros(3)])
    with pytest.raises(ValueError, match="shape"):
        layer.set_weights([k.T, np.zeros(3)])
    # the second array is wrong: the first weight is not written either
    with pytest.raises(ValueError, match="shape"):
        layer.set_weights([k, np.zeros(4)])
    for a, b in zip(layer.get_weights(), before):
        assert np.array_equal(a, b)
    # float64 arrays are cast to the weights' dtype; get_weights gives them back
    layer.set_weights([k, np.arange(3.0)])
    got = layer.get_weights()
    assert [g.dtype for g in got] == [np.float32, np.float32]
    assert_close(got[0], k.astype(np.float32))
    assert_close(got[1], np.arange(3, dtype=np.float32))
    # a layer with no weights accepts exactly []
    L.Flatten().set_weights([])
    with pytest.raises(ValueError):
        L.Flatten().set_weights([np.zeros(1)])


class TrainingProbe(L.Layer):
    def call(self, x, training=None):
        self.seen.append(training)
        return x


class PassThrough(L.Layer):
    """Calls its nested layers without passing `training` (its call takes none)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.probe = TrainingProbe()
        self.probe.seen = []
        self.drop = L.Dropout(0.9)

    def call(self, x):
        return self.drop(self.probe(x))


class TakesTraining(PassThrough):
    """Takes `training` but does not pass it on."""

    def call(self, x, training=None):
        self.own = training
        return self.drop(self.probe(x))


@pytest.mark.parametrize("outer_cls", [PassThrough, TakesTraining])
def test_training_flag_reaches_nested_layers(outer_cls):
    x = np.ones((4, 100), np.float32)
    outer = outer_cls()
    for training, dropped in ((True, True), (False, False), (None, False)):
        kw = {} if training is None else dict(training=training)
        out = outer(x, **kw).numpy()
        assert ((out == 0).mean() > 0.5) == dropped
        assert outer.probe.seen[-1] is training
        if outer_cls is TakesTraining:
            assert outer.own is training
        out = fj.jit(lambda t: outer(t, **kw))(x).numpy()
        assert ((out == 0).mean() > 0.5) == dropped
        assert outer.probe.seen[-1] is training
    # the scope ends with the call
    outer(x, training=True)
    assert not (outer.drop(x).numpy() == 0).any()

    # an explicit flag on the nested call wins over the enclosing one
    class Override(L.Layer):
        def __init__(self):
            super().__init__()
            self.probe = TrainingProbe()
            self.probe.seen = []

        def call(self, x):
            return self.probe(x, training=False)
    o = Override()
    o(x, training=True)
    assert o.probe.seen == [False]


def test_floating_inputs_are_cast_to_the_layer_dtype(rng):
    class Seen(L.Layer):
        def call(self, x):
            self.dtypes = [t.dtype for t in (x if isinstance(x, list) else [x])]
            return x

    s = Seen()
    s(np.zeros((2, 2), np.float64))
    assert s.dtypes == [fj.float32]
    s(np.zeros((2, 2), np.float16))
    assert s.dtypes == [fj.float32]
    s(np.zeros((2, 2), np.int32))
    assert s.dtypes == [fj.int32]                                    # integers are not cast
    s([np.zeros(2, np.float64), np.zeros(2, np.int64)])
    assert s.dtypes == [fj.float32, fj.int64]
    s(fj.constant(np.zeros(2)))                                      # a float64 fj tensor
    assert s.dtypes == [fj.float32]
    fj.jit(lambda t: s(t))(np.zeros(2))
    assert s.dtypes == [fj.float32]
    s64 = Seen(dtype="float64")
    s64(np.zeros(2, np.float32))
    assert s64.dtypes == [fj.float64]
    raw = Seen(autocast=False)
    raw(np.zeros(2, np.float64))
    assert raw.dtypes == [fj.float64]

    # a float32 Dense on float64 data computes in float32
    x = rng.standard_normal((2, 3))
    d = L.Dense(2)
    out = d(x)
    assert out.dtype == fj.float32
    assert_close(out.numpy(), d(x.astype(np.float32)).numpy())
    assert fj.jit(lambda t: d(t))(x).dtype == fj.float32


def test_losses_with_add_loss_inside_call(rng):
    class Penalized(L.Layer):
        def __init__(self, factor, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            self.add_loss(self.factor * fj.reduce_sum(fj.abs(x)))
            return x * 2.0

    class Outer(L.Layer):
        def __init__(self):
            super().__init__()
            self.p = Penalized(0.5)
            self.d = L.Dense(2, kernel_regularizer=regularizers.L2(0.1))

        def call(self, x):
            return self.d(self.p(x))

    x = rng.standard_normal((2, 3)).astype(np.float32)
    layer = Penalized(0.5)
    assert layer.losses == []
    layer(x)
    (loss,) = layer.losses
    assert_close(float(loss), 0.5 * np.abs(x.astype(np.float64)).sum(), rtol=1e-5, atol=1e-6)
    layer(2 * x)                                                     # replaced, not accumulated
    (loss,) = layer.losses
    assert_close(float(loss), np.abs(x.astype(np.float64)).sum(), rtol=1e-5, atol=1e-6)

    outer = Outer()
    outer(x)
    losses = outer.losses
    assert len(losses) == 2                                          # the weight penalty, the call's
    k = outer.d.kernel.numpy().astype(np.float64)
    assert_close(float(fj.add_n(losses)), 0.1 * (k ** 2).sum() + 0.5 * np.abs(x.astype(np.float64)).sum(),
                 rtol=1e-5, atol=1e-5)

    # inside fj.jit: the losses of the traced call, summed in the same trace, and their gradient
    def step(t):
        with fj.GradientTape() as tape:
            tape.watch(t)
            outer(t)
            total = fj.add_n(outer.losses)
        return total, tape.gradient(total, t)
    total, g = fj.jit(step)(x)
    assert_close(float(total), 0.1 * (k ** 2).sum() + 0.5 * np.abs(x.astype(np.float64)).sum(),
                 rtol=1e-5, atol=1e-5)
    assert_close(g.numpy(), 0.5 * np.sign(x))

    # an activity regularizer adds a loss of the output at each call
    act = L.Dense(2, activity_regularizer=regularizers.L2(0.25))
    y = act(x).numpy().astype(np.float64)
    (loss,) = act.losses
    assert_close(float(loss), 0.25 * (y ** 2).sum(), rtol=1e-5, atol=1e-5)


def test_symbolic_calls_compute_nothing_and_record_the_graph():
    calls = []

    class Count(L.Layer):
        def call(self, x):
            calls.append(1)
            return x[:, :2]
    inp = keras.Input((5,), name="probe_in")
    layer = Count()
    out = layer(inp)
    assert isinstance(out, keras.KerasTensor) and out.shape == (None, 2)
    assert layer.output_shape == (None, 2)
    assert layer.input is inp and layer.output is out
    dense = L.Dense(4)
    h = dense(out)
    assert dense.built and tuple(dense.kernel.shape) == (2, 4) and h.shape == (None, 4)
    with pytest.raises(AttributeError):
        L.Dense(1).output_shape
    assert L.Dense(3).compute_output_shape((7, 2)) == (7, 3)
