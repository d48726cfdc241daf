"""flowjit.compat.v1: `tf.layers` and `tf.contrib`, written as TF1 programs are: each layer
against NumPy's version of TF 1.15's formula with the variables read back from the
session; TF1's variable names and default-name counting; batch normalization's
UPDATE_OPS; variable sharing between a train and a test tower (reuse=True, AUTO_REUSE);
the contrib aliases; the UnimplementedError of what is left out; and a tf.layers CNN
trained on the bundled digits."""
import numpy as np
import pytest

import flowjit as fj
import flowjit.compat.v1 as tf
from conftest import assert_close


@pytest.fixture(autouse=True)
def _fresh_graph(monkeypatch):
    while tf.get_default_session() is not None:
        tf.get_default_session().close()
    tf.reset_default_graph()
    # the kernel-compiled entry tier, as tests/test_compat_v1.py (njit entry compiles are
    # covered by tests/test_jit.py)
    monkeypatch.setattr(fj.config, "compile_entry_after", 10**9)
    yield


def close(a, b, tol=2e-5):
    assert_close(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol)


def set_value(sess, var, value):
    sess.run(tf.assign(var, np.asarray(value, var.dtype.as_numpy_dtype)))


# --- NumPy references of TF's ops -----------------------------------------------------------
def _same_pads(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


def np_conv2d(x, k, strides=(1, 1), padding="VALID", dilation=(1, 1)):
    """NHWC x, HWIO k: TF's conv2d (SAME puts the odd pad at the end)."""
    x, k = x.astype(np.float64), k.astype(np.float64)
    (sh, sw), (dh, dw) = strides, dilation
    kh, kw = (k.shape[0] - 1) * dh + 1, (k.shape[1] - 1) * dw + 1
    n, h, w, _ = x.shape
    if padding == "SAME":
        oh, t, b = _same_pads(h, kh, sh)
        ow, l, r = _same_pads(w, kw, sw)
        x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    else:
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((n, oh, ow, k.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * sh:i * sh + kh:dh, j * sw:j * sw + kw:dw, :]
            out[:, i, j, :] = np.tensordot(patch, k, axes=([1, 2, 3], [0, 1, 2]))
    return out


def np_pool(x, size, strides, padding, kind):
    """NHWC pooling; SAME windows count only the elements inside the input."""
    (ph, pw), (sh, sw) = size, strides
    n, h, w, c = x.shape
    if padding == "SAME":
        oh, t, _ = _same_pads(h, ph, sh)
        ow, l, _ = _same_pads(w, pw, sw)
    else:
        oh, ow, t, l = (h - ph) // sh + 1, (w - pw) // sw + 1, 0, 0
    out = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * sh - t, j * sw - l
            win = x[:, max(r0, 0):r0 + ph, max(c0, 0):c0 + pw, :].astype(np.float64)
            out[:, i, j, :] = win.max(axis=(1, 2)) if kind == "max" else win.mean(axis=(1, 2))
    return out


def np_conv2d_transpose(x, k, strides, padding):
    """Keras' Conv2DTranspose: k is [kh, kw, filters, in]; output in*s ('same') or
    in*s + max(k - s, 0) ('valid'), cropped from the full scatter as TF's backprop."""
    n, h, w, _ = x.shape
    kh, kw, f, _ = k.shape
    sh, sw = strides
    if padding == "same":
        oh, ow = h * sh, w * sw
        top = max((h - 1) * sh + kh - oh, 0) // 2
        left = max((w - 1) * sw + kw - ow, 0) // 2
    else:
        oh, ow = h * sh + max(kh - sh, 0), w * sw + max(kw - sw, 0)
        top = left = 0
    full = np.zeros((n, max((h - 1) * sh + kh, oh + top), max((w - 1) * sw + kw, ow + left), f))
    for i in range(h):
        for j in range(w):
            full[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :] += np.einsum(
                "nc,hwfc->nhwf", x[:, i, j, :].astype(np.float64), k.astype(np.float64))
    return full[:, top:top + oh, left:left + ow, :]


def np_batch_norm(x, mean, var, gamma, beta, eps):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


# ------------------------------------------------------------------------------------------
# each layer against NumPy
# ------------------------------------------------------------------------------------------

def test_dense_conv_pool_flatten_against_numpy():
    rng = np.random.default_rng(0)
    x = tf.placeholder(tf.float32, [None, 7, 6, 3])
    c1 = tf.layers.conv2d(x, 4, 3, activation=tf.nn.relu)                       # valid, stride 1
    c2 = tf.layers.conv2d(x, 2, (3, 2), strides=(2, 1), padding="same")
    c3 = tf.layers.conv2d(x, 2, 3, padding="same", dilation_rate=2, use_bias=False)
    mp = tf.layers.max_pooling2d(x, 2, 2)
    ap = tf.layers.average_pooling2d(x, 3, 2, padding="same")
    fl = tf.layers.flatten(mp)
    d = tf.layers.dense(fl, 5, activation=tf.nn.tanh)
    seq = tf.placeholder(tf.float32, [None, 4, 3])
    d3 = tf.layers.dense(seq, 2)                                                 # rank 3: tensordot
    xcf = tf.placeholder(tf.float32, [None, 3, 5, 4])                            # channels_first
    ccf = tf.layers.conv2d(xcf, 2, 2, data_format="channels_first", padding="same")
    fcf = tf.layers.flatten(xcf, data_format="channels_first")
    assert c1.get_shape().as_list() == [None, 5, 4, 4]
    assert c2.get_shape().as_list() == [None, 4, 6, 2]
    assert mp.get_shape().as_list() == [None, 3, 3, 3] and ap.get_shape().as_list() == [None, 4, 3, 3]
    assert fl.get_shape().as_list() == [None, 27] and d.get_shape().as_list() == [None, 5]
    assert d3.get_shape().as_list() == [None, 4, 2] and ccf.get_shape().as_list() == [None, 2, 5, 4]
    assert fcf.get_shape().as_list() == [None, 60]
    g = tf.get_default_graph()
    var = g.get_tensor_by_name
    xv = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    sv = rng.standard_normal((3, 4, 3)).astype(np.float32)
    xcfv = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        # non-zero biases, so the bias add is checked too
        for b in ("conv2d/bias:0", "conv2d_1/bias:0", "dense/bias:0", "dense_1/bias:0", "conv2d_3/bias:0"):
            v = var(b)
            set_value(sess, v, rng.standard_normal(v.shape.as_list()))
        got = sess.run([c1, c2, c3, mp, ap, fl, d, d3, ccf, fcf], {x: xv, seq: sv, xcf: xcfv})
        w = {v.op.name: sess.run(v) for v in tf.global_variables()}
    close(got[0], np.maximum(np_conv2d(xv, w["conv2d/kernel"]) + w["conv2d/bias"], 0))
    close(got[1], np_conv2d(xv, w["conv2d_1/kernel"], (2, 1), "SAME") + w["conv2d_1/bias"])
    close(got[2], np_conv2d(xv, w["conv2d_2/kernel"], (1, 1), "SAME", (2, 2)))
    assert "conv2d_2/bias" not in w
    close(got[3], np_pool(xv, (2, 2), (2, 2), "VALID", "max"))
    close(got[4], np_pool(xv, (3, 3), (2, 2), "SAME", "avg"))
    close(got[5], got[3].reshape(2, -1))
    close(got[6], np.tanh(got[5] @ w["dense/kernel"] + w["dense/bias"]))
    close(got[7], sv @ w["dense_1/kernel"] + w["dense_1/bias"])
    nhwc = np_conv2d(xcfv.transpose(0, 2, 3, 1), w["conv2d_3/kernel"], (1, 1), "SAME") + w["conv2d_3/bias"]
    close(got[8], nhwc.transpose(0, 3, 1, 2))
    close(got[9], xcfv.transpose(0, 2, 3, 1).reshape(2, -1))       # made channels_last, as TF1


@pytest.mark.parametrize("strides,padding,kernel", [((2, 2), "same", 3), ((2, 1), "valid", (3, 2)),
                                                    ((3, 3), "valid", 2)])
def test_conv2d_transpose_against_numpy(strides, padding, kernel):
    rng = np.random.default_rng(1)
    x = tf.placeholder(tf.float32, [None, 4, 5, 3])
    y = tf.layers.conv2d_transpose(x, 2, kernel, strides=strides, padding=padding)
    k = tf.get_default_graph().get_tensor_by_name("conv2d_transpose/kernel:0")
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    assert k.get_shape().as_list() == [kh, kw, 2, 3]                 # [kh, kw, filters, in]
    xv = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        b = tf.get_default_graph().get_tensor_by_name("conv2d_transpose/bias:0")
        set_value(sess, b, [0.5, -1.0])
        got, kv = sess.run([y, k], {x: xv})
    want = np_conv2d_transpose(xv, kv, strides, padding) + [0.5, -1.0]
    assert y.get_shape().as_list() == [None] + list(want.shape[1:])
    close(got, want)


def test_dropout_layer_rate_is_the_drop_rate_and_training_switches_it():
    x = tf.placeholder(tf.float32, [None, 2000])
    training = tf.placeholder_with_default(False, [])
    off = tf.layers.dropout(x)                                   # training=False by default
    on = tf.layers.dropout(x, rate=0.25, training=True, seed=3)
    fed = tf.layers.dropout(x, rate=0.5, training=training)
    ones = np.ones((5, 2000), np.float32)
    with tf.Session() as sess:
        assert_close(sess.run(off, {x: ones}), ones)
        v = sess.run(on, {x: ones})
        assert set(np.unique(v)) <= {0.0, np.float32(1 / 0.75)}
        assert abs((v == 0).mean() - 0.25) < 0.02                # rate = the fraction dropped
        assert_close(sess.run(fed, {x: ones}), ones)
        v = sess.run(fed, {x: ones, training: True})
        assert set(np.unique(v)) <= {0.0, 2.0} and abs((v == 0).mean() - 0.5) < 0.02


# ------------------------------------------------------------------------------------------
# names and default-name counting
# ------------------------------------------------------------------------------------------

def test_variable_and_op_names_are_tf1s():
    x = tf.placeholder(tf.float32, [None, 8, 8, 1])
    h = tf.layers.conv2d(x, 4, 3, padding="same")
    h = tf.layers.batch_normalization(h, training=True)
    h = tf.layers.conv2d(h, 4, 3)
    h = tf.layers.max_pooling2d(h, 2, 2)
    h = tf.layers.flatten(h)
    with tf.variable_scope("head"):
        h = tf.layers.dense(h, 8, activation=tf.nn.relu)
        out = tf.layers.dense(h, 3, name="logits")
    extra = tf.layers.dense(h, 2)
    names = [v.op.name for v in tf.global_variables()]
    assert names == [
        "conv2d/kernel", "conv2d/bias",
        "batch_normalization/gamma", "batch_normalization/beta",
        "batch_normalization/moving_mean", "batch_normalization/moving_variance",
        "conv2d_1/kernel", "conv2d_1/bias",
        "head/dense/kernel", "head/dense/bias", "head/logits/kernel", "head/logits/bias",
        "dense/kernel", "dense/bias"]                 # counted per variable scope
    assert [v.op.name for v in tf.trainable_variables()] == [
        n for n in names if "moving" not in n]
    assert out.name == "head/logits/BiasAdd:0" and extra.name == "dense/BiasAdd:0"
    assert h.name == "head/dense/Relu:0"
    g = tf.get_default_graph()
    assert g.get_tensor_by_name("conv2d_1/kernel:0").get_shape().as_list() == [3, 3, 4, 4]
    assert g.get_operation_by_name("conv2d/Conv2D").type == "Conv2D"
    assert g.get_operation_by_name("head/dense/MatMul").type == "MatMul"
    assert g.get_operation_by_name("max_pooling2d/MaxPool").type == "MaxPool"
    # the default kernel initializer is glorot_uniform, the bias starts at zero
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        k, b = sess.run(["conv2d_1/kernel:0", "conv2d_1/bias:0"])
    limit = np.sqrt(6.0 / (9 * 4 + 9 * 4))
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.8 * limit and not b.any()


def test_layer_objects_share_their_variables_and_scope_initializers_apply():
    x = tf.placeholder(tf.float32, [None, 3])
    layer = tf.layers.Dense(4, activation=tf.nn.relu)
    y1, y2 = layer(x), layer.apply(x * 2.0)
    assert layer.built and [v.op.name for v in layer.trainable_weights] == ["dense/kernel", "dense/bias"]
    assert layer.kernel is tf.trainable_variables()[0] and len(tf.global_variables()) == 2
    assert layer.name == "dense_1"            # TF1's layer.name counts from 1 (the scope from 0)
    bn = tf.layers.BatchNormalization()
    bn(y1, training=True)
    assert [v.op.name for v in bn.non_trainable_variables] == [
        "batch_normalization/moving_mean", "batch_normalization/moving_variance"]
    assert tf.get_collection(tf.GraphKeys.UPDATE_OPS) == bn.updates and len(bn.updates) == 2
    with tf.variable_scope("init", initializer=tf.constant_initializer(0.25)):
        z = tf.layers.dense(x, 2)             # the scope's initializer for the kernel, zeros bias
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        xv = np.array([[1.0, -2.0, 0.5]], np.float32)
        k, b = sess.run([layer.kernel, layer.bias])
        a, c, zv = sess.run([y1, y2, z], {x: xv})
    close(a, np.maximum(xv @ k + b, 0))
    close(c, np.maximum(2 * xv @ k + b, 0))
    close(zv, xv @ np.full((3, 2), 0.25))


def test_variable_scope_rules_of_tf1():
    assert tf.get_variable_scope().reuse is False
    with tf.variable_scope("m") as m:
        pass
    with tf.variable_scope(m):                # a scope object re-entered: a new name scope
        c = tf.constant(1.0)
    assert c.name == "m_1/Const:0"
    with tf.variable_scope(m, auxiliary_name_scope=False):
        c = tf.constant(1.0)
    assert c.name == "Const:0"
    with pytest.raises(ValueError, match="reuse=True cannot be used without a name_or_scope"):
        with tf.variable_scope(None, default_name="x", reuse=True):
            pass
    with pytest.raises(ValueError, match="reuse parameter must be True or False or None"):
        with tf.variable_scope("a", reuse="yes"):
            pass
    with tf.variable_scope("outer", reuse=True):
        with tf.variable_scope(m):            # a captured scope keeps its own reuse
            assert tf.get_variable_scope().reuse is False
        with tf.variable_scope("inner"):      # a named one inherits
            assert tf.get_variable_scope().reuse is True

    # a custom getter sees the full name, and can rename
    def getter(getter, name, *args, **kwargs):
        return getter(name + "_renamed", *args, **kwargs)
    with tf.variable_scope("cg", custom_getter=getter):
        v = tf.get_variable("w", [2])
    assert v.op.name == "cg/w_renamed"
    with pytest.raises(ValueError, match="Trying to share variable cg/w_renamed, but specified dtype"):
        with tf.variable_scope("cg", reuse=True, custom_getter=getter):
            tf.get_variable("w", [2], dtype=tf.float64)


# ------------------------------------------------------------------------------------------
# batch normalization and UPDATE_OPS
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,axis", [((None, 4, 3, 2), -1), ((None, 5), -1), ((None, 2, 4, 3), 1)])
def test_batch_normalization_update_ops_follow_tf1s_recurrence(shape, axis):
    """BN applied to the fed x, trained N steps with the update ops as control
    dependencies of the train op: the moving averages are TF1's recurrence over the
    batches (the unbiased batch variance where TF1's fused kernel runs: 4-D inputs)."""
    rng = np.random.default_rng(2)
    x = tf.placeholder(tf.float32, shape)
    h = tf.layers.batch_normalization(x, axis=axis, momentum=0.9, training=True)
    loss = tf.reduce_mean(tf.square(tf.layers.flatten(h) if len(shape) > 2 else h) * 0.5
                          + tf.reduce_sum(h) * 0.01)
    update_ops = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
    assert len(update_ops) == 2
    with tf.control_dependencies(update_ops):
        train_op = tf.train.GradientDescentOptimizer(0.1).minimize(loss)
    mm = tf.get_default_graph().get_tensor_by_name("batch_normalization/moving_mean:0")
    mv = tf.get_default_graph().get_tensor_by_name("batch_normalization/moving_variance:0")
    ax = axis % len(shape)
    red = tuple(i for i in range(len(shape)) if i != ax)
    bshape = [1] * len(shape)
    bshape[ax] = shape[ax]
    fused = len(shape) == 4
    m_np, v_np = np.zeros(shape[ax]), np.ones(shape[ax])
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for step in range(6):
            xv = (rng.standard_normal((8,) + tuple(shape[1:])) * 2.0 + 1.5).astype(np.float32)
            if step == 0:
                out = sess.run(h, {x: xv})          # forward only: no update, batch statistics
                mean = xv.mean(axis=red, keepdims=True)
                var = xv.var(axis=red, keepdims=True)
                close(out, np_batch_norm(xv, mean, var, 1.0, 0.0, 1e-3), 1e-4)
                assert_close(sess.run(mm), np.zeros(shape[ax], np.float32))
            sess.run(train_op, {x: xv})
            n = xv.size / shape[ax]
            bvar = xv.var(axis=red) * (n / (n - 1) if fused else 1.0)
            m_np = m_np - (m_np - xv.mean(axis=red)) * (1 - 0.9)
            v_np = v_np - (v_np - bvar) * (1 - 0.9)
        close(sess.run(mm), m_np, 1e-5)
        close(sess.run(mv), v_np, 1e-5)
        gamma, beta = sess.run(["batch_normalization/gamma:0", "batch_normalization/beta:0"])
        assert not np.allclose(gamma, 1.0) and not np.allclose(beta, 0.0)    # trained


def test_batch_normalization_inference_and_a_fed_training_flag():
    rng = np.random.default_rng(3)
    x = tf.placeholder(tf.float32, [None, 3])
    training = tf.placeholder_with_default(False, [])
    h = tf.layers.batch_normalization(x, training=training, name="bn", epsilon=0.01)
    infer = tf.layers.batch_normalization(x, name="bn", reuse=True, epsilon=0.01)   # no updates
    assert len(tf.get_collection(tf.GraphKeys.UPDATE_OPS)) == 2
    mean, var = np.array([1.0, -2.0, 0.5], np.float32), np.array([4.0, 0.25, 1.0], np.float32)
    gamma, beta = np.array([2.0, 1.0, 0.5], np.float32), np.array([0.0, 1.0, -1.0], np.float32)
    xv = rng.standard_normal((6, 3)).astype(np.float32)
    g = tf.get_default_graph()
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for n, v in (("moving_mean", mean), ("moving_variance", var), ("gamma", gamma), ("beta", beta)):
            set_value(sess, g.get_tensor_by_name(f"bn/{n}:0"), v)
        want = np_batch_norm(xv, mean, var, gamma, beta, 0.01)
        close(sess.run(infer, {x: xv}), want)
        close(sess.run(h, {x: xv}), want)                        # the flag's default: moving stats
        sess.run(tf.get_collection(tf.GraphKeys.UPDATE_OPS), {x: xv})
        close(sess.run("bn/moving_mean:0"), mean)                # not training: updates do nothing
        close(sess.run(h, {x: xv, training: True}),
              np_batch_norm(xv, xv.mean(0), xv.var(0), gamma, beta, 0.01), 1e-4)
        sess.run(tf.get_collection(tf.GraphKeys.UPDATE_OPS), {x: xv, training: True})
        close(sess.run("bn/moving_mean:0"), mean - (mean - xv.mean(0)) * np.float32(1 - 0.99))


# ------------------------------------------------------------------------------------------
# sharing: a train and a test tower, AUTO_REUSE
# ------------------------------------------------------------------------------------------

def _net(x, training, reuse):
    with tf.variable_scope("model", reuse=reuse):
        h = tf.layers.conv2d(x, 4, 3, padding="same", activation=tf.nn.relu)
        h = tf.layers.batch_normalization(h, training=training)
        h = tf.layers.max_pooling2d(h, 2, 2)
        h = tf.layers.flatten(h)
        h = tf.layers.dense(h, 8, activation=tf.nn.relu)
        h = tf.layers.dropout(h, 0.5, training=training)
        return tf.layers.dense(h, 3)


def test_train_and_test_towers_share_the_variables_with_reuse_true():
    rng = np.random.default_rng(4)
    x_train = tf.placeholder(tf.float32, [None, 6, 6, 1])
    y_train = tf.placeholder(tf.int64, [None])
    x_test = tf.placeholder(tf.float32, [None, 6, 6, 1])
    train_logits = _net(x_train, True, None)
    n_vars = len(tf.global_variables())
    test_logits = _net(x_test, False, True)            # rebuilt: model/dense again, not dense_2
    assert len(tf.global_variables()) == n_vars == 10
    assert [v.op.name for v in tf.trainable_variables()] == [
        "model/conv2d/kernel", "model/conv2d/bias", "model/batch_normalization/gamma",
        "model/batch_normalization/beta", "model/dense/kernel", "model/dense/bias",
        "model/dense_1/kernel", "model/dense_1/bias"]
    assert test_logits.name == "model_1/dense_1/BiasAdd:0"   # its own name scope, shared variables
    assert len(tf.get_collection(tf.GraphKeys.UPDATE_OPS)) == 2      # the train tower's only
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y_train,
                                                                        logits=train_logits))
    with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
        train_op = tf.train.AdamOptimizer(0.01).minimize(loss)
    xv = rng.standard_normal((16, 6, 6, 1)).astype(np.float32)
    yv = rng.integers(0, 3, 16)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for _ in range(5):
            sess.run(train_op, {x_train: xv, y_train: yv})
        got = sess.run(test_logits, {x_test: xv[:4]})
        w = {v.op.name[len("model/"):]: sess.run(v) for v in tf.global_variables()}
    # the test tower from the trained variables, in NumPy (inference: moving statistics)
    h = np.maximum(np_conv2d(xv[:4], w["conv2d/kernel"], padding="SAME") + w["conv2d/bias"], 0)
    h = np_batch_norm(h, w["batch_normalization/moving_mean"], w["batch_normalization/moving_variance"],
                      w["batch_normalization/gamma"], w["batch_normalization/beta"], 1e-3)
    h = np_pool(h, (2, 2), (2, 2), "VALID", "max").reshape(4, -1)
    h = np.maximum(h @ w["dense/kernel"] + w["dense/bias"], 0)
    close(got, h @ w["dense_1/kernel"] + w["dense_1/bias"], 1e-4)
    assert not np.allclose(w["batch_normalization/moving_mean"], 0)
    # building again without reuse is TF1's error
    with pytest.raises(ValueError, match="Variable model/conv2d/kernel already exists, disallowed"):
        _net(x_test, False, None)


def test_reentering_a_captured_scope_or_auto_reuse_shares_unnamed_layers():
    x = tf.placeholder(tf.float32, [None, 6, 6, 1])
    with tf.variable_scope("model") as scope:
        a = tf.layers.dense(tf.layers.flatten(tf.layers.conv2d(x, 2, 3)), 3)
    with tf.variable_scope(scope, reuse=True):
        b = tf.layers.dense(tf.layers.flatten(tf.layers.conv2d(x, 2, 3)), 3)
    for _ in range(2):
        with tf.variable_scope("auto", reuse=tf.AUTO_REUSE):
            c = tf.layers.dense(tf.layers.flatten(tf.layers.conv2d(x, 2, 3)), 3)
    assert [v.op.name for v in tf.global_variables()] == [
        "model/conv2d/kernel", "model/conv2d/bias", "model/dense/kernel", "model/dense/bias",
        "auto/conv2d/kernel", "auto/conv2d/bias", "auto/dense/kernel", "auto/dense/bias"]
    xv = np.random.default_rng(7).standard_normal((2, 6, 6, 1)).astype(np.float32)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        av, bv, cv = sess.run([a, b, c], {x: xv})
    close(av, bv)
    assert cv.shape == (2, 3)


def test_reuse_variables_within_one_scope_and_reuse_errors():
    x = tf.placeholder(tf.float32, [None, 4])
    with tf.variable_scope("tower") as scope:
        a = tf.layers.dense(x, 3, name="fc")
        scope.reuse_variables()
        b = tf.layers.dense(x, 3, name="fc")
    assert len(tf.global_variables()) == 2 and a.op.inputs[0].op.inputs[1] is b.op.inputs[0].op.inputs[1]
    with tf.variable_scope("tower", reuse=True):
        with pytest.raises(ValueError, match="Variable tower/dense/kernel does not exist"):
            tf.layers.dense(x, 3)
    with pytest.raises(ValueError, match="Trying to share variable fc/kernel, but specified shape"):
        tf.layers.dense(x, 3, name="fc")
        tf.layers.dense(tf.placeholder(tf.float32, [None, 5]), 3, name="fc", reuse=True)


def test_auto_reuse():
    x = tf.placeholder(tf.float32, [None, 4])

    def encoder(inp):
        with tf.variable_scope("enc", reuse=tf.AUTO_REUSE):
            h = tf.layers.dense(inp, 5, activation=tf.nn.relu)
            return tf.layers.dense(h, 2)
    e1, e2 = encoder(x), encoder(x * 2.0)
    assert [v.op.name for v in tf.global_variables()] == [
        "enc/dense/kernel", "enc/dense/bias", "enc/dense_1/kernel", "enc/dense_1/bias"]
    f1 = tf.layers.dense(x, 3, name="fc", reuse=tf.AUTO_REUSE)
    f2 = tf.layers.dense(x, 3, name="fc", reuse=tf.AUTO_REUSE)
    assert len(tf.global_variables()) == 6
    with tf.variable_scope("plain"):
        tf.layers.dense(x, 2)
        shared = tf.layers.dense(x, 2, reuse=True)     # an unnamed layer with reuse: plain `dense`
    assert len(tf.global_variables()) == 8
    xv = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        v1, v2, g1, g2 = sess.run([e1, e2, f1, f2], {x: xv})
        sess.run(shared, {x: xv})
        w = {v.op.name: sess.run(v) for v in tf.global_variables()}
    ref = lambda z: np.maximum(z @ w["enc/dense/kernel"] + w["enc/dense/bias"], 0) @ \
        w["enc/dense_1/kernel"] + w["enc/dense_1/bias"]                          # noqa: E731
    close(v1, ref(xv))
    close(v2, ref(2 * xv))
    close(g1, g2)


# ------------------------------------------------------------------------------------------
# regularizers
# ------------------------------------------------------------------------------------------

def test_kernel_regularizers_fill_regularization_losses_once():
    x = tf.placeholder(tf.float32, [None, 3])
    reg = tf.contrib.layers.l2_regularizer(0.1)
    with tf.variable_scope("net"):
        h = tf.layers.dense(x, 4, kernel_regularizer=reg)
        tf.layers.conv2d(tf.placeholder(tf.float32, [None, 5, 5, 2]), 3, 2,
                         kernel_regularizer=tf.contrib.layers.l1_regularizer(0.5))
    with tf.variable_scope("net", reuse=True):
        tf.layers.dense(x, 4, kernel_regularizer=reg)         # shared: no second penalty
    losses = tf.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES)
    assert len(losses) == 2 and losses[0].name.startswith("net/dense/kernel/Regularizer/")
    total = tf.losses.get_regularization_loss()
    w = tf.get_variable("w", [3, 2])
    penalty = tf.contrib.layers.apply_regularization(tf.contrib.layers.l2_regularizer(2.0), [w])
    assert tf.contrib.layers.l2_regularizer(0.0)(w) is None
    with pytest.raises(ValueError, match="scale cannot be an integer"):
        tf.contrib.layers.l2_regularizer(1)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        k1, k2, wv = sess.run(["net/dense/kernel:0", "net/conv2d/kernel:0", w])
        l1, l2, t, p = sess.run(losses + [total, penalty])
    close(l1, 0.1 * (k1 ** 2).sum() / 2)
    close(l2, 0.5 * np.abs(k2).sum())
    close(t, l1 + l2)
    close(p, 2.0 * (wv ** 2).sum() / 2)
    assert len(tf.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES)) == 3
    assert h.get_shape().as_list() == [None, 4]


# ------------------------------------------------------------------------------------------
# tf.contrib
# ------------------------------------------------------------------------------------------

def test_contrib_layers_names_defaults_and_values():
    rng = np.random.default_rng(5)
    x = tf.placeholder(tf.float32, [None, 6, 6, 2])
    c = tf.contrib.layers.conv2d(x, 3, 3)                        # SAME, relu, Conv/weights
    p = tf.contrib.layers.max_pool2d(c, 2)                       # stride 2, VALID
    f = tf.contrib.layers.flatten(p)
    fc = tf.contrib.layers.fully_connected(f, 4)
    lin = tf.contrib.layers.fully_connected(fc, 2, activation_fn=None, scope="out")
    fc2 = tf.contrib.layers.fully_connected(f, 4, normalizer_fn=tf.contrib.layers.batch_norm)
    assert [v.op.name for v in tf.global_variables()] == [
        "Conv/weights", "Conv/biases", "fully_connected/weights", "fully_connected/biases",
        "out/weights", "out/biases", "fully_connected_1/weights",        # no biases with a normalizer
        "fully_connected_1/BatchNorm/beta", "fully_connected_1/BatchNorm/moving_mean",
        "fully_connected_1/BatchNorm/moving_variance"]                   # no gamma (scale=False)
    assert tf.get_collection(tf.GraphKeys.MODEL_VARIABLES) == tf.global_variables()
    assert p.name.startswith("MaxPool2D/") and f.get_shape().as_list() == [None, 27]
    assert len(tf.get_collection(tf.GraphKeys.UPDATE_OPS)) == 2
    xv = rng.standard_normal((3, 6, 6, 2)).astype(np.float32)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        got = sess.run([c, p, fc, lin, fc2], {x: xv})
        w = {v.op.name: sess.run(v) for v in tf.global_variables()}
    conv = np.maximum(np_conv2d(xv, w["Conv/weights"], padding="SAME") + w["Conv/biases"], 0)
    close(got[0], conv)
    close(got[1], np_pool(conv, (2, 2), (2, 2), "VALID", "max"))
    h = np.maximum(got[1].reshape(3, -1) @ w["fully_connected/weights"] + w["fully_connected/biases"], 0)
    close(got[2], h)
    close(got[3], h @ w["out/weights"] + w["out/biases"])
    z = got[1].reshape(3, -1) @ w["fully_connected_1/weights"]
    close(got[4], np.maximum(np_batch_norm(z, z.mean(0), z.var(0), 1.0, w["fully_connected_1/BatchNorm/beta"],
                                     1e-3), 0), 1e-4)


def test_contrib_batch_norm_decay_and_unbiased_variance():
    rng = np.random.default_rng(6)
    x = tf.placeholder(tf.float32, [None, 3])
    y = tf.contrib.layers.batch_norm(x, updates_collections=None)        # updates run with y
    assert tf.get_collection(tf.GraphKeys.UPDATE_OPS) == []
    xv = rng.standard_normal((10, 3)).astype(np.float32)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(y, {x: xv})
        sess.run(y, {x: xv})
        mm, mv = sess.run(["BatchNorm/moving_mean:0", "BatchNorm/moving_variance:0"])
    m, v = np.zeros(3), np.ones(3)
    for _ in range(2):
        m = m - (m - xv.mean(0)) * (1 - 0.999)
        v = v - (v - xv.var(0, ddof=1)) * (1 - 0.999)
    close(mm, m)
    close(mv, v)


def test_contrib_initializers_framework_and_rnn():
    xavier = tf.contrib.layers.xavier_initializer(seed=1)
    a = tf.get_variable("a", [40, 60], initializer=xavier)
    b = tf.get_variable("b", [3, 3, 8, 16], initializer=tf.contrib.layers.xavier_initializer_conv2d(False))
    c = tf.get_variable("c", [200, 300], initializer=tf.contrib.layers.variance_scaling_initializer())
    d = tf.get_variable("d", [200, 300], initializer=tf.contrib.layers.variance_scaling_initializer(
        factor=1.0, mode="FAN_OUT", uniform=True))
    step = tf.contrib.framework.get_or_create_global_step()
    assert step is tf.train.get_global_step() and step is tf.contrib.framework.get_or_create_global_step()
    assert step.op.name == "global_step" and step.dtype == tf.int64
    assert [v.op.name for v in tf.contrib.framework.get_variables("a")] == ["a"]
    assert [v.op.name for v in tf.contrib.framework.get_variables(suffix="b")] == ["b"]
    assert tf.contrib.rnn.BasicLSTMCell is tf.nn.rnn_cell.BasicLSTMCell
    assert tf.contrib.rnn.static_rnn is not None and tf.contrib.rnn.LSTMStateTuple is not None
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        av, bv, cv, dv, s = sess.run([a, b, c, d, step])
    # (uniform draws are rounded to float32, which may round up to the float32 limit)
    lim = np.float32(np.sqrt(6.0 / 100))
    assert np.abs(av).max() <= lim and np.abs(av).max() > 0.9 * lim
    # contrib's truncated normal: stddev sqrt(1.3 / n) before truncation at 2 stddev
    std_b = np.sqrt(1.3 / ((9 * 8 + 9 * 16) / 2))
    assert np.abs(bv).max() <= 2 * std_b and 0.75 * std_b < bv.std() < 0.95 * std_b
    std_c = np.sqrt(1.3 * 2.0 / 200)
    assert np.abs(cv).max() <= 2 * std_c and 0.83 * std_c < cv.std() < 0.9 * std_c
    lim_d = np.float32(np.sqrt(3.0 / 300))
    assert np.abs(dv).max() <= lim_d and np.abs(dv).max() > 0.99 * lim_d and s == 0


def test_left_out_contrib_and_layers_raise_unimplemented_naming_them():
    cases = [
        (lambda: tf.contrib.factorization.KMeans, "tf.contrib.factorization.KMeans", "KMeans"),
        (lambda: tf.contrib.tensor_forest.RandomForestGraphs, "tf.contrib.tensor_forest", "RandomForest"),
        (lambda: tf.contrib.learn.DNNClassifier, "tf.contrib.learn.DNNClassifier", "tf.layers"),
        (lambda: tf.contrib.learn.datasets, "tf.contrib.learn.datasets", "fj.data"),
        (lambda: tf.contrib.slim.conv2d, "tf.contrib.slim.conv2d", "tf.contrib.layers"),
        (lambda: tf.contrib.keras.layers, "tf.contrib.keras.layers", "flowjit.keras"),
        (lambda: tf.contrib.nonexistent_lib, "tf.contrib.nonexistent_lib", "tf.layers"),
        (lambda: tf.contrib.layers.optimize_loss, "tf.contrib.layers.optimize_loss", "minimize"),
        (lambda: tf.contrib.layers.layer_norm, "tf.contrib.layers.layer_norm", "tf.layers"),
        (lambda: tf.contrib.framework.arg_scope, "tf.contrib.framework.arg_scope", "arg_scope"),
        (lambda: tf.contrib.rnn.AttentionCellWrapper, "tf.contrib.rnn.AttentionCellWrapper", "LSTMCell"),
        (lambda: tf.layers.conv3d, "tf.layers.conv3d", "conv2d"),
    ]
    for get, name, advice in cases:
        with pytest.raises(tf.errors.UnimplementedError) as info:
            get()
        msg = str(info.value)
        assert name in msg and advice in msg, msg
        assert isinstance(info.value, AttributeError)        # hasattr() stays usable
    assert not hasattr(tf.contrib, "nonexistent_lib") and not hasattr(tf.contrib.factorization, "GMM")
    with pytest.raises(tf.errors.UnimplementedError, match="renorm"):
        tf.layers.batch_normalization(tf.zeros([2, 3]), renorm=True)


# ------------------------------------------------------------------------------------------
# an end-to-end program
# ------------------------------------------------------------------------------------------

def test_tf_layers_cnn_trained_on_digits():
    mnist = fj.data.load_digits(reshape=False)
    tf.set_random_seed(0)
    x = tf.placeholder(tf.float32, [None, 8, 8, 1])
    y_ = tf.placeholder(tf.float32, [None, 10])
    is_training = tf.placeholder_with_default(False, [])
    h = tf.layers.conv2d(x, 16, 3, padding="same", activation=tf.nn.relu)
    h = tf.layers.max_pooling2d(h, 2, 2)
    h = tf.layers.conv2d(h, 32, 3, padding="same", activation=tf.nn.relu)
    h = tf.layers.max_pooling2d(h, 2, 2)
    h = tf.layers.flatten(h)
    h = tf.layers.dense(h, 64, activation=tf.nn.relu)
    h = tf.layers.dropout(h, rate=0.25, training=is_training)
    logits = tf.layers.dense(h, 10)
    assert h.get_shape().as_list() == [None, 64]
    loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits_v2(labels=y_, logits=logits))
    train_step = tf.train.AdamOptimizer(3e-3).minimize(loss)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), tf.argmax(y_, 1)), tf.float32))
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for _ in range(250):
            bx, by = mnist.train.next_batch(64)
            sess.run(train_step, {x: bx, y_: by, is_training: True})
        acc = sess.run(accuracy, {x: mnist.test.images, y_: mnist.test.labels})
    assert acc > 0.93, acc
