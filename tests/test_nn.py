"""`fj.nn`: activations, softmax family, losses, bias_add and dropout against NumPy
references (TF2 semantics), eagerly and under `@fj.jit`, their gradients, and
numerical stability for large logits."""
import numpy as np
import pytest
from scipy import special

import flowjit as fj
from conftest import assert_close

N = fj.nn


@pytest.fixture(autouse=True)
def _python_entry_tier(monkeypatch):
    # keep jitted functions on the kernel-compiled Python entry tier: compiling each
    # signature's njit entry costs seconds and is covered by tests/test_jit.py
    monkeypatch.setattr(fj.config, "compile_entry_after", 10**9)


def _grad(f, x):
    """Eager gradient of sum(f(x)) with respect to x."""
    x = fj.constant(x)
    with fj.GradientTape() as tape:
        tape.watch(x)
        y = fj.reduce_sum(f(x))
    return tape.gradient(y, x).numpy()


# ------------------------------------------------------------------------------------
# activations
# ------------------------------------------------------------------------------------

def _np_activations(x):
    return {
        "relu": np.maximum(x, 0),
        "relu6": np.clip(x, 0, 6),
        "leaky_relu": np.where(x > 0, x, x * x.dtype.type(0.2)),     # TF2's default alpha
        "leaky_relu_0.1": np.where(x > 0, x, x * x.dtype.type(0.1)),
        "elu": np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
        "sigmoid": special.expit(x),
        "tanh": np.tanh(x),
    }


def _np_activation_grads(x):
    one, zero = np.ones_like(x), np.zeros_like(x)
    s = special.expit(x)
    return {
        "relu": np.where(x > 0, one, zero),
        "relu6": np.where((x > 0) & (x < 6), one, zero),
        "leaky_relu": np.where(x > 0, one, one * x.dtype.type(0.2)),
        "leaky_relu_0.1": np.where(x > 0, one, one * x.dtype.type(0.1)),
        "elu": np.where(x > 0, one, np.exp(np.minimum(x, 0))),
        "sigmoid": s * (1 - s),
        "tanh": 1 - np.tanh(x) ** 2,
    }


def _fj_activations(x):
    return {
        "relu": N.relu(x),
        "relu6": N.relu6(x),
        "leaky_relu": N.leaky_relu(x),
        "leaky_relu_0.1": N.leaky_relu(x, alpha=0.1),
        "elu": N.elu(x),
        "sigmoid": N.sigmoid(x),
        "tanh": N.tanh(x),
    }


_jit_activations = fj.jit(_fj_activations)


def _activation_input(shape, dtype):
    r = np.random.default_rng(sum(shape))
    x = (r.standard_normal(shape) * 4).astype(dtype)
    flat = x.reshape(-1)
    flat[:4] = [-7.5, -0.25, 0.5, 7.0]           # both sides of every kink, away from ties
    return x


@pytest.mark.parametrize("shape, dtype", [((7,), np.float32), ((2, 3, 4), np.float32),
                                          ((3, 5), np.float64)])
def test_activations_match_numpy_eager_and_jit(shape, dtype):
    x = _activation_input(shape, dtype)
    ref = _np_activations(x)
    eager = _fj_activations(x)
    jitted = _jit_activations(x)
    tol = dict(rtol=2e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for name in ref:
        assert eager[name].dtype == fj.as_dtype(dtype), name
        assert_close(eager[name], ref[name], **tol)
        assert_close(jitted[name], ref[name], **tol)


def test_activations_accept_tensors_variables_and_lists():
    v = fj.Variable(np.array([-1.0, 2.0, 7.0], np.float32))
    assert_close(N.relu6(v), np.array([0.0, 2.0, 6.0], np.float32))
    assert_close(N.relu(fj.constant([-1.0, 3.0])), np.array([0.0, 3.0], np.float32))
    assert_close(N.leaky_relu([-1.0, 3.0]), np.array([-0.2, 3.0], np.float32))
    # relu keeps integer dtypes, as in TF
    r = N.relu(np.array([-2, 3], np.int32))
    assert r.dtype == fj.int32
    np.testing.assert_array_equal(r.numpy(), [0, 3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_gradients_eager_and_jit(dtype):
    x = _activation_input((2, 6), dtype)
    ref = _np_activation_grads(x)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    fns = {"relu": N.relu, "relu6": N.relu6, "leaky_relu": N.leaky_relu,
           "leaky_relu_0.1": lambda t: N.leaky_relu(t, alpha=0.1), "elu": N.elu,
           "sigmoid": N.sigmoid, "tanh": N.tanh}
    for name, f in fns.items():
        assert_close(_grad(f, x), ref[name], **tol)
    if dtype == np.float64:
        return          # float64 under jit: covered by the forward test (saves a compile)

    @fj.jit
    def all_grads(x):
        with fj.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ys = {k: fj.reduce_sum(f(x)) for k, f in fns.items()}
        return {k: tape.gradient(y, x) for k, y in ys.items()}
    got = all_grads(x)
    for name in fns:
        assert_close(got[name], ref[name], **tol)


def test_activation_gradients_at_zero_follow_tf():
    # TF: relu'(0) = 0, leaky_relu'(0) = alpha, elu'(0) = 1
    x = np.zeros(3, np.float32)
    assert_close(_grad(N.relu, x), np.zeros(3, np.float32))
    assert_close(_grad(N.leaky_relu, x), np.full(3, 0.2, np.float32))
    assert_close(_grad(N.elu, x), np.ones(3, np.float32))
    assert_close(_grad(N.relu6, x), np.zeros(3, np.float32))


def test_relu6_gradient_at_six_is_zero_like_tf():
    assert_close(_grad(N.relu6, np.array([6.0], np.float32)), np.zeros(1, np.float32))


def test_activations_large_inputs_are_finite():
    x = np.array([-1000.0, -100.0, 100.0, 1000.0], np.float32)
    for name, y in _fj_activations(x).items():
        assert np.all(np.isfinite(y.numpy())), name
        assert_close(y, _np_activations(x)[name])
    g = _np_activation_grads(x)
    for name, f in [("elu", N.elu), ("sigmoid", N.sigmoid), ("tanh", N.tanh)]:
        got = _grad(f, x)
        assert np.all(np.isfinite(got)), name
        assert_close(got, g[name])


# ------------------------------------------------------------------------------------
# softmax family and losses
# ------------------------------------------------------------------------------------

@fj.jit
def _jit_softmaxes(x):
    return (N.softmax(x), N.log_softmax(x), N.softmax(x, axis=0), N.log_softmax(x, axis=0))


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5)])
def test_softmax_and_log_softmax_axis_last_and_0(shape):
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32) * 3
    refs = (special.softmax(x, axis=-1), special.log_softmax(x, axis=-1),
            special.softmax(x, axis=0), special.log_softmax(x, axis=0))
    eager = (N.softmax(x), N.log_softmax(x), N.softmax(x, axis=0), N.log_softmax(x, axis=0))
    jitted = _jit_softmaxes(x)
    for e, j, r in zip(eager, jitted, refs):
        assert_close(e, r.astype(np.float32), rtol=1e-5)
        assert_close(j, r.astype(np.float32), rtol=1e-5)
    assert_close(np.sum(jitted[0].numpy(), axis=-1), np.ones(shape[:-1], np.float32))
    assert_close(np.sum(jitted[2].numpy(), axis=0), np.ones(shape[1:], np.float32))


def _np_sigmoid_ce(z, x):
    return np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))


def _losses(labels, sparse_labels, logits):
    with fj.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        ce = N.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        sce = N.sparse_softmax_cross_entropy_with_logits(labels=sparse_labels, logits=logits)
        bce = N.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        sums = [fj.reduce_sum(t) for t in (ce, sce, bce)]
    return (ce, sce, bce) + tuple(tape.gradient(s, logits) for s in sums)


_jit_losses = fj.jit(_losses)


def _eager_losses(labels, sparse_labels, logits):
    return _losses(labels, sparse_labels, fj.constant(logits))


def _np_losses(labels, sparse_labels, logits):
    ls = special.log_softmax(logits.astype(np.float64), axis=-1)
    sm = np.exp(ls)
    onehot = np.eye(logits.shape[-1])[sparse_labels]
    ce = -np.sum(labels * ls, axis=-1)
    sce = -np.sum(onehot * ls, axis=-1)
    bce = _np_sigmoid_ce(labels.astype(np.float64), logits.astype(np.float64))
    grads = (sm - labels, sm - onehot, special.expit(logits.astype(np.float64)) - labels)
    return tuple(a.astype(logits.dtype) for a in (ce, sce, bce) + grads)


@pytest.mark.parametrize("shape, label_dtype", [((4, 3), np.int32), ((2, 3, 5), np.int64)])
def test_cross_entropies_and_their_gradients(shape, label_dtype):
    r = np.random.default_rng(11)
    logits = (r.standard_normal(shape) * 2).astype(np.float32)
    labels = r.uniform(size=shape).astype(np.float32)
    labels /= labels.sum(-1, keepdims=True)                  # soft labels (rows sum to 1)
    sparse = r.integers(0, shape[-1], shape[:-1]).astype(label_dtype)
    ref = _np_losses(labels, sparse, logits)
    for got in (_eager_losses(labels, sparse, logits), _jit_losses(labels, sparse, logits)):
        assert [tuple(g.shape) for g in got[:3]] == [shape[:-1], shape[:-1], shape]
        for g, e in zip(got, ref):
            assert_close(g, e, rtol=1e-5, atol=2e-6)


def test_softmax_cross_entropy_gradient_wrt_labels():
    # TF2's softmax_cross_entropy_with_logits backpropagates into labels too
    logits = np.array([[1.0, 2.0, 0.5]], np.float32)
    labels = fj.constant(np.array([[0.2, 0.3, 0.5]], np.float32))
    with fj.GradientTape() as tape:
        tape.watch(labels)
        loss = fj.reduce_sum(N.softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    assert_close(tape.gradient(loss, labels), -special.log_softmax(logits, -1).astype(np.float32),
                 rtol=1e-5)


LARGE = np.array([[1000.0, -1000.0, 1.0],
                  [-1000.0, -1000.0, 1000.0],
                  [1000.0, 1000.0, -1000.0]], np.float32)


def test_large_logits_are_stable_and_exact():
    ln2 = np.log(2.0)
    labels = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], np.float32)
    sparse = np.array([1, 2, 0], np.int32)
    sm = np.array([[1, 0, 0], [0, 0, 1], [0.5, 0.5, 0]], np.float32)
    lsm = np.array([[0, -2000, -999], [-2000, -2000, 0], [-ln2, -ln2, -2000 - ln2]], np.float32)
    ce = np.array([2000, 2000, ln2], np.float32)
    sce = np.array([2000, 0, ln2], np.float32)
    z, x = labels.astype(np.float64), LARGE.astype(np.float64)
    bce = (np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))).astype(np.float32)
    assert bce[0, 0] == 1000 and bce[0, 1] == 1000 and bce[1, 1] == 0 and bce[2, 2] == 0

    for f in (lambda t: t, fj.jit(lambda t: t)):     # eager, then through a jitted identity
        assert_close(N.softmax(f(LARGE)), sm)
        assert_close(N.log_softmax(f(LARGE)), lsm, rtol=1e-6)
    got = _jit_losses(labels, sparse, LARGE)
    eager = _eager_losses(labels, sparse, LARGE)
    grads_ref = (sm - labels, sm - np.eye(3, dtype=np.float32)[sparse],
                 special.expit(LARGE).astype(np.float32) - labels)
    for res in (got, eager):
        for t in res:
            assert np.all(np.isfinite(t.numpy()))
        assert_close(res[0], ce, rtol=1e-6)
        assert_close(res[1], sce, rtol=1e-6)
        assert_close(res[2], bce, rtol=1e-6)
        for g, e in zip(res[3:], grads_ref):
            assert_close(g, e)
    # softmax / log_softmax gradients stay finite too
    for f in (N.softmax, N.log_softmax, lambda t: N.softmax(t, axis=0)):
        g = _grad(lambda t: f(t) * np.arange(9, dtype=np.float32).reshape(3, 3), LARGE)
        assert np.all(np.isfinite(g))
    # log_softmax of large logits: d/dx sum(w * log_softmax(x)) = w - softmax * sum(w)
    w = np.arange(9, dtype=np.float32).reshape(3, 3)
    g = _grad(lambda t: N.log_softmax(t) * w, LARGE)
    assert_close(g, w - sm * w.sum(-1, keepdims=True), atol=1e-5)


def test_sigmoid_cross_entropy_gradient_at_zero_logits():
    logits = np.zeros((2, 3), np.float32)           # e.g. any zero-initialised logistic model
    labels = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.25]], np.float32)
    expected = np.float32(0.5) - labels
    g = _grad(lambda t: N.sigmoid_cross_entropy_with_logits(labels=labels, logits=t), logits)
    assert_close(g, expected)
    assert_close(_jit_losses(labels, np.zeros(2, np.int32), logits)[5], expected)


def test_sparse_cross_entropy_out_of_range_label_is_an_error():
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises((ValueError, IndexError)):
        N.sparse_softmax_cross_entropy_with_logits(labels=np.array([1, 3]), logits=logits).numpy()


def test_sparse_cross_entropy_rejects_float_labels():
    with pytest.raises(TypeError, match="int"):
        N.sparse_softmax_cross_entropy_with_logits(labels=np.array([1.0, 0.0], np.float32),
                                                   logits=np.zeros((2, 3), np.float32))


# ------------------------------------------------------------------------------------
# l2_loss and bias_add
# ------------------------------------------------------------------------------------

@fj.jit
def _jit_l2_bias(x, b):
    return N.l2_loss(x), N.bias_add(x, b)


@pytest.mark.parametrize("shape, dtype", [((4, 3), np.float32), ((2, 2, 3), np.float64)])
def test_l2_loss_and_bias_add(shape, dtype):
    r = np.random.default_rng(5)
    x = r.standard_normal(shape).astype(dtype)
    b = r.standard_normal(shape[-1]).astype(dtype)
    l2 = np.asarray(np.sum(x.astype(np.float64) ** 2) / 2, dtype)
    tol = dict(rtol=1e-6) if dtype == np.float32 else {}
    for l, y in ((N.l2_loss(x), N.bias_add(x, b)), _jit_l2_bias(x, b)):
        assert l.shape == () and l.dtype == fj.as_dtype(dtype)
        assert_close(l, l2, **tol)
        assert y.dtype == fj.as_dtype(dtype)
        assert_close(y, x + b)
    # gradients: d l2_loss/dx = x; d sum(bias_add)/db = number of rows
    assert_close(_grad(N.l2_loss, x), x)
    bt = fj.constant(b)
    with fj.GradientTape() as tape:
        tape.watch(bt)
        s = fj.reduce_sum(N.bias_add(x, bt))
    assert_close(tape.gradient(s, bt), np.full(shape[-1], x.size // shape[-1], dtype))


def test_bias_add_nchw():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    b = np.array([10.0, 20.0, 30.0], np.float32)
    assert_close(N.bias_add(x, b, data_format="NCHW"), x + b[:, None, None])
    assert_close(N.bias_add(x.transpose(0, 2, 3, 1), b, data_format="NHWC"),
                 x.transpose(0, 2, 3, 1) + b)


def test_bias_add_rejects_wrong_bias_shape():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError):
        N.bias_add(x, np.ones(1, np.float32))
    with pytest.raises(ValueError):
        N.bias_add(x, np.ones((2, 3), np.float32))


# ------------------------------------------------------------------------------------
# dropout
# ------------------------------------------------------------------------------------

def test_dropout_rate_zero_is_identity():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(N.dropout(x, 0.0).numpy(), x)
    np.testing.assert_array_equal(N.dropout(x, rate=0).numpy(), x)
    f = fj.jit(lambda x: N.dropout(x, 0.0) * 1.0)
    np.testing.assert_array_equal(f(x).numpy(), x)


def test_dropout_invalid_rate():
    x = np.ones(4, np.float32)
    for rate in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            N.dropout(x, rate)


def _check_dropout(x, y, rate, tol=0.03):
    x, y = np.asarray(x), np.asarray(y)
    dropped = y == 0
    assert abs(dropped.mean() - rate) < tol, dropped.mean()
    assert_close(y[~dropped], x[~dropped] / np.float32(1 - rate), rtol=1e-6)


def test_dropout_eager_statistics_and_scaling():
    fj.random.set_seed(1)
    x = np.random.default_rng(1).uniform(0.5, 2.0, (100, 100)).astype(np.float32)
    for rate in (0.1, 0.5, 0.8):
        y = N.dropout(x, rate)
        assert y.shape == x.shape and y.dtype == fj.float32
        _check_dropout(x, y, rate)
    d = N.dropout(np.ones((50, 40)), 0.25)       # float64
    assert d.dtype == fj.float64
    assert set(np.unique(d.numpy())) <= {0.0, 1 / 0.75}


def test_dropout_seeded_reproducible():
    x = np.ones((20, 30), np.float32)
    fj.random.set_seed(42)
    a1, a2 = N.dropout(x, 0.5).numpy(), N.dropout(x, 0.5).numpy()
    fj.random.set_seed(42)
    b1, b2 = N.dropout(x, 0.5).numpy(), N.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)
    fj.random.set_seed(43)
    assert not np.array_equal(N.dropout(x, 0.5).numpy(), a1)
    # an op seed gives its own sequence, different from the global one
    fj.random.set_seed(42)
    s1 = N.dropout(x, 0.5, seed=7).numpy()
    assert not np.array_equal(s1, a1)


def test_dropout_with_op_seed_repeats_after_set_seed():
    x = np.ones((20, 30), np.float32)
    fj.random.set_seed(42)
    s1, s2 = N.dropout(x, 0.5, seed=7).numpy(), N.dropout(x, 0.5, seed=7).numpy()
    assert not np.array_equal(s1, s2)
    fj.random.set_seed(42)
    np.testing.assert_array_equal(N.dropout(x, 0.5, seed=7).numpy(), s1)
    np.testing.assert_array_equal(N.dropout(x, 0.5, seed=7).numpy(), s2)


def test_dropout_noise_shape_broadcasts_the_mask():
    fj.random.set_seed(3)
    x = np.ones((200, 4), np.float32)
    y = N.dropout(x, 0.5, noise_shape=[200, 1]).numpy()
    rows_dropped = np.all(y == 0, axis=1)
    rows_kept = np.all(y == 2.0, axis=1)
    assert np.all(rows_dropped | rows_kept)
    assert 0.35 < rows_dropped.mean() < 0.65


def test_dropout_gradient_uses_the_same_mask():
    fj.random.set_seed(5)
    x = fj.constant(np.random.default_rng(2).uniform(1, 2, (10, 10)).astype(np.float32))
    with fj.GradientTape() as tape:
        tape.watch(x)
        y = N.dropout(x, 0.4)
        s = fj.reduce_sum(y)
    g = tape.gradient(s, x).numpy()
    kept = y.numpy() != 0
    assert_close(g, np.where(kept, np.float32(1 / 0.6), np.float32(0)))


def test_dropout_jit_fresh_mask_per_call_and_seeded():
    x = np.random.default_rng(4).uniform(0.5, 2.0, (60, 50)).astype(np.float32)

    def make():
        return fj.jit(lambda x: N.dropout(x, 0.3))
    fj.random.set_seed(9)
    f = make()
    t0 = fj.stats()["traces"]
    ys = [f(x).numpy() for _ in range(3)]
    assert fj.stats()["traces"] - t0 == 1
    for y in ys:
        _check_dropout(x, y, 0.3)
    masks = [y == 0 for y in ys]
    assert not np.array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[1], masks[2])
    # a new function traced after the same global seed replays the same masks
    fj.random.set_seed(9)
    g = make()
    np.testing.assert_array_equal(g(x).numpy(), ys[0])
    np.testing.assert_array_equal(g(x).numpy(), ys[1])


def test_dropout_jit_gradient_uses_the_same_mask():
    x = np.random.default_rng(6).uniform(0.5, 2.0, (40, 50)).astype(np.float32)

    @fj.jit
    def f(x):
        with fj.GradientTape() as tape:
            tape.watch(x)
            y = N.dropout(x, 0.6)
            s = fj.reduce_sum(y * y)
        return y, tape.gradient(s, x)
    fj.random.set_seed(2)
    for _ in range(2):
        y, g = f(x)
        _check_dropout(x, y, 0.6, tol=0.05)
        assert_close(g, 2 * y.numpy() / np.float32(0.4), rtol=1e-5)


def test_dropout_jit_rate_as_python_float_argument():
    x = np.random.default_rng(6).uniform(0.5, 2.0, (40, 50)).astype(np.float32)
    f = fj.jit(lambda x, rate: N.dropout(x, rate))
    fj.random.set_seed(2)
    t0 = fj.stats()["traces"]
    for rate in (0.2, 0.6):                    # a Python float is a dynamic argument
        _check_dropout(x, f(x, rate), rate, tol=0.05)
    assert_close(f(x, 0.0), x)
    assert fj.stats()["traces"] - t0 == 1
