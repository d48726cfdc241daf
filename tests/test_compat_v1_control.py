"""flowjit.compat.v1 control flow and RNNs, written as TF1 programs: tf.while_loop,
tf.cond, tf.scan, the tf.nn.rnn_cell cells, tf.nn.dynamic_rnn / static_rnn /
bidirectional_dynamic_rnn. Values against NumPy loops of TF1's formulas, variable names
and layouts as TF1 makes them, gradients against float64 finite differences, training
with a TF1 optimizer, and the compile model (a loop is one compiled loop: new fed
values, a new sequence length, do not retrace)."""
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
    # compiled plans stay on the kernel-compiled Python entry tier (see test_compat_v1.py)
    monkeypatch.setattr(fj.config, "compile_entry_after", 10**9)
    yield


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def cat(*xs):
    return np.concatenate(xs, axis=1)


def fd_grad(f, x, eps=1e-6):
    out = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        out[idx] = (f(x + e) - f(x - e)) / (2 * eps)
    return out


# --- NumPy references of TF1's cells -------------------------------------------------------------
def np_basic_rnn(x, h, w):
    out = np.tanh(cat(x, h) @ w["kernel"] + w["bias"])
    return out, out


def np_basic_lstm(x, state, w, forget_bias=1.0):
    c, h = state
    i, j, f, o = np.split(cat(x, h) @ w["kernel"] + w["bias"], 4, axis=1)
    new_c = c * sig(f + forget_bias) + sig(i) * np.tanh(j)
    new_h = np.tanh(new_c) * sig(o)
    return new_h, (new_c, new_h)


def np_lstm(x, state, w, forget_bias=1.0, cell_clip=None):
    """LSTMCell with peepholes and a projection when w has them."""
    c, m = state
    i, j, f, o = np.split(cat(x, m) @ w["kernel"] + w["bias"], 4, axis=1)
    if "w_f_diag" in w:
        c = sig(f + forget_bias + w["w_f_diag"] * c) * c + sig(i + w["w_i_diag"] * c) * np.tanh(j)
    else:
        c = sig(f + forget_bias) * c + sig(i) * np.tanh(j)
    if cell_clip is not None:
        c = np.clip(c, -cell_clip, cell_clip)
    m = sig(o + w["w_o_diag"] * c) * np.tanh(c) if "w_f_diag" in w else sig(o) * np.tanh(c)
    if "projection/kernel" in w:
        m = m @ w["projection/kernel"]
    return m, (c, m)


def np_gru(x, h, w):
    r, u = np.split(sig(cat(x, h) @ w["gates/kernel"] + w["gates/bias"]), 2, axis=1)
    c = np.tanh(cat(x, r * h) @ w["candidate/kernel"] + w["candidate/bias"])
    new_h = u * h + (1 - u) * c
    return new_h, new_h


def np_rnn(step, xs, state, lengths=None):
    """Run step(x_t, state) over xs [batch, time, n] with TF1's sequence_length rule:
    outputs past a sequence's length are 0, its state is carried through."""
    outs = []
    for t in range(xs.shape[1]):
        out, new = step(xs[:, t], state)
        if lengths is not None:
            keep = (t < np.asarray(lengths))[:, None]
            out = np.where(keep, out, 0.0)
            new = tuple(np.where(keep, a, b) for a, b in zip(new, state)) if isinstance(new, tuple) \
                else np.where(keep, new, state)
        outs.append(out)
        state = new
    return np.stack(outs, axis=1), state


def load_random(sess, variables, rng, scale=0.5):
    """Give each variable random values (tf.Variable.load); returns {name in its cell: value}."""
    values = {}
    for v in variables:
        val = rng.standard_normal(v.shape.as_list()) * scale
        v.load(val.astype(v.dtype.np), sess)
        parts = v.op.name.split("/")
        cell = max(k for k, p in enumerate(parts) if p.endswith("_cell"))    # the cell's own scope
        values["/".join(parts[cell + 1:])] = val.astype(v.dtype.np)
    return values


# ------------------------------------------------------------------------------------------------
# tf.while_loop
# ------------------------------------------------------------------------------------------------
def test_while_loop_data_dependent_trip_count_compiles_once():
    """Halve-or-triple until 1 (Collatz), with a float accumulator that reads a variable
    and a placeholder from outside the loop: the trip count depends on the fed value."""
    n = tf.placeholder(tf.int32, [], name="n")
    scale = tf.placeholder(tf.float32, [2], name="scale")
    w = tf.Variable(np.array([1.0, -0.5], np.float32), name="w")

    def cond(k, steps, acc):
        return tf.not_equal(k, 1)

    def body(k, steps, acc):
        k = tf.where(tf.equal(k % 2, 0), k // 2, 3 * k + 1)
        return k, steps + 1, acc * 0.5 + w * scale

    k, steps, acc = tf.while_loop(cond, body, [n, tf.constant(0), tf.zeros([2])])
    assert k.name == "while/Exit:0" and steps.dtype is tf.int32
    assert acc.get_shape().as_list() == [2]

    def np_loop(nv, sv):
        kk, st, a = nv, 0, np.zeros(2, np.float32)
        while kk != 1:
            kk = kk // 2 if kk % 2 == 0 else 3 * kk + 1
            st, a = st + 1, a * np.float32(0.5) + np.array([1.0, -0.5], np.float32) * sv
        return kk, st, a

    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        sess.run([k, steps, acc], {n: 6, scale: [1.0, 1.0]})
        traces = fj.stats()["traces"]
        for nv in (1, 6, 27, 97):
            sv = np.array([0.5, 2.0], np.float32)
            kv, stv, av = sess.run([k, steps, acc], {n: nv, scale: sv})
            wk, ws, wa = np_loop(nv, sv)
            assert (kv, stv) == (wk, ws)
            assert_close(av, wa, rtol=1e-5)
        assert fj.stats()["traces"] == traces        # one compiled loop for every trip count


def test_while_loop_structures_and_maximum_iterations():
    x = tf.placeholder(tf.float64, [None, 3])
    # a single loop variable in a list comes back as a tensor (TF1's unpacking)
    y = tf.while_loop(lambda v: tf.reduce_max(tf.abs(v)) < 100.0, lambda v: [v * 2.0 + 1.0], [x])
    assert isinstance(y, tf.Tensor) and y.get_shape().as_list() == [None, 3]
    y_max = tf.while_loop(lambda v: tf.reduce_max(tf.abs(v)) < 100.0, lambda v: v * 2.0 + 1.0, [x],
                          maximum_iterations=3)
    # nested loop variables: a tuple holding an LSTMStateTuple and a dict
    state = tf.nn.rnn_cell.LSTMStateTuple(x, x * 0.0)
    i0 = tf.constant(0)

    def body(i, s, d):
        new = tf.nn.rnn_cell.LSTMStateTuple(s.c * 0.5, s.h + s.c)
        return i + 1, new, {"sum": d["sum"] + tf.reduce_sum(s.c), "count": d["count"] + 1}

    i, s, d = tf.while_loop(lambda i, s, d: i < 4, body,
                            (i0, state, {"sum": tf.constant(0.0, tf.float64), "count": tf.constant(0)}))
    assert isinstance(s, tf.nn.rnn_cell.LSTMStateTuple) and set(d) == {"sum", "count"}
    xv = np.array([[0.5, -1.0, 3.0], [2.0, 0.25, -4.0]])
    want, want_max = xv.copy(), xv.copy()
    while np.abs(want).max() < 100:
        want = want * 2 + 1
    for _ in range(3):
        if np.abs(want_max).max() >= 100:
            break
        want_max = want_max * 2 + 1
    c, h, total = xv.copy(), np.zeros_like(xv), 0.0
    for _ in range(4):
        total += c.sum()
        c, h = c * 0.5, h + c
    with tf.Session() as sess:
        out = sess.run({"y": y, "y_max": y_max, "i": i, "s": s, "d": d}, {x: xv})
    assert_close(out["y"], want)
    assert_close(out["y_max"], want_max)
    assert out["i"] == 4 and out["d"]["count"] == 4
    assert_close(out["s"].c, c)
    assert_close(out["s"].h, h)
    assert_close(out["d"]["sum"], total, rtol=1e-12)


def test_nested_while_loops():
    """An inner loop whose trip count is the outer counter: sum_{i<n} sum_{j<i} j."""
    n = tf.placeholder(tf.int32, [])

    def outer_body(i, total):
        _, inner = tf.while_loop(lambda j, s: j < i, lambda j, s: (j + 1, s + j), (tf.constant(0), total))
        return i + 1, inner

    _, total = tf.while_loop(lambda i, t: i < n, outer_body, (tf.constant(0), tf.constant(0)))
    with tf.Session() as sess:
        for nv in (0, 1, 5, 9):
            assert sess.run(total, {n: nv}) == sum(j for i in range(nv) for j in range(i))


def test_while_loop_errors_name_the_loop():
    x = tf.placeholder(tf.float32, [3])
    w = tf.Variable(np.ones(3, np.float32))
    y = tf.while_loop(lambda v: tf.reduce_sum(v) < 10.0, lambda v: v * w + 1.0, [x])
    with pytest.raises(NotImplementedError, match=r"tf.while_loop 'while' \(created at .*test_compat_v1_control"):
        tf.gradients(tf.reduce_sum(y), w)
    with pytest.raises(NotImplementedError, match="tf.scan or tf.nn.dynamic_rnn"):
        tf.train.GradientDescentOptimizer(0.1).minimize(tf.reduce_sum(y))
    # with back_prop=False the results are constants for gradients
    z = tf.while_loop(lambda v: tf.reduce_sum(v) < 10.0, lambda v: v * w + 1.0, [x], back_prop=False)
    tf.gradients(tf.reduce_sum(z) + tf.reduce_sum(w), w)
    with pytest.raises(ValueError, match="same structure"):
        tf.while_loop(lambda a, b: a < 3, lambda a, b: a + 1, [tf.constant(0), tf.constant(1)])
    with pytest.raises(ValueError, match=r"enters the loop with shape \(3,\), but has shape \(6,\)"):
        tf.while_loop(lambda v: tf.reduce_sum(v) < 1.0, lambda v: tf.concat([v, v], 0), [x])
    with pytest.raises(NotImplementedError, match="stateful ops.*Assign"):
        tf.while_loop(lambda v: v < 3.0, lambda v: tf.assign(w, w + v)[0], [tf.constant(0.0)])
    with pytest.raises(NotImplementedError, match="draws random numbers"):
        tf.while_loop(lambda v: tf.reduce_sum(v) < 3.0, lambda v: v + tf.random_uniform([3]), [x])
    inner = []

    def body(v):
        inner.append(v * 2.0)
        return inner[-1]
    out = tf.while_loop(lambda v: tf.reduce_sum(v) < 10.0, body, [x])
    with pytest.raises(ValueError, match="inside the body of tf.while_loop"):
        tf.identity(inner[0])
    with tf.Session() as sess:
        with pytest.raises(fj.errors.InvalidArgumentError, match="inside the body of tf.while_loop"):
            sess.run(inner[0], {x: np.ones(3)})
        assert_close(sess.run(out, {x: np.ones(3, np.float32)}), np.full(3, 4.0, np.float32))


# ------------------------------------------------------------------------------------------------
# tf.cond
# ------------------------------------------------------------------------------------------------
def test_cond_runs_only_the_taken_branch_and_differentiates():
    table = tf.constant(np.arange(4.0, dtype=np.float64))
    i = tf.placeholder(tf.int32, [])
    w = tf.Variable(1.5, dtype=tf.float64)
    x = tf.placeholder(tf.float64, [])
    # the false branch would gather out of range (and raise) if it ran
    y = tf.cond(i < 4, lambda: tf.gather(table, i) * w * x, lambda: tf.gather(table, i + 10) - w)
    z = tf.cond(i >= 4, lambda: w * w, lambda: tf.sin(x * w))
    gw, gx = tf.gradients(y + z, [w, x])
    assert y.name == "cond/Merge:0" and y.get_shape().as_list() == []
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        vals = sess.run([y, z, gw, gx], {i: 2, x: 0.7})
        assert_close(vals[0], 2.0 * 1.5 * 0.7)
        assert_close(vals[1], np.sin(0.7 * 1.5))
        assert_close(vals[2], 2.0 * 0.7 + np.cos(0.7 * 1.5) * 0.7, rtol=1e-12)
        assert_close(vals[3], 2.0 * 1.5 + np.cos(0.7 * 1.5) * 1.5, rtol=1e-12)
        with pytest.raises(fj.errors.OutOfRangeError):
            sess.run(y, {i: 5, x: 0.7})
        assert sess.run(z, {i: 5, x: 0.7}) == 1.5 * 1.5


def test_cond_structures_and_errors():
    p = tf.placeholder(tf.bool, [])
    a = tf.placeholder(tf.float32, [None, 2])
    pair = tf.cond(p, lambda: (a * 2.0, tf.constant(1)), lambda: (a - 1.0, tf.constant(2)))
    single = tf.cond(p, lambda: [a], lambda: [a + 1.0])
    strict = tf.cond(p, lambda: [a], lambda: [a + 1.0], strict=True)
    assert isinstance(pair, tuple) and isinstance(single, tf.Tensor) and isinstance(strict, list)
    legacy = tf.cond(p, fn1=lambda: 1.0, fn2=lambda: 2.0)
    av = np.array([[1.0, 2.0]], np.float32)
    with tf.Session() as sess:
        r = sess.run([pair, single, legacy], {p: False, a: av})
        assert_close(r[0][0], av - 1.0) and r[0][1] == 2
        assert_close(r[1], av + 1.0) and r[2] == 2.0
    with pytest.raises(ValueError, match="same type"):
        tf.cond(p, lambda: tf.constant(1), lambda: tf.constant(1.0))
    with pytest.raises(ValueError, match="Incompatible return values"):
        tf.cond(p, lambda: (a, a), lambda: a)
    with pytest.raises(ValueError, match="same shape"):
        tf.cond(p, lambda: tf.zeros([3]), lambda: tf.zeros([2]))
    v = tf.Variable(0.0)
    with pytest.raises(NotImplementedError, match="side-effect-free"):
        tf.cond(p, lambda: tf.assign(v, 1.0), lambda: v)


def test_cond_branch_with_dropout():
    """A random op in a branch is drawn before the cond: training-mode dropout by a flag."""
    training = tf.placeholder(tf.bool, [])
    x = tf.ones([1000])
    y = tf.cond(training, lambda: tf.nn.dropout(x, keep_prob=0.5, seed=3), lambda: x)
    with tf.Session() as sess:
        assert_close(sess.run(y, {training: False}), np.ones(1000, np.float32))
        a, b = sess.run(y, {training: True}), sess.run(y, {training: True})
    assert set(np.unique(a)) <= {0.0, 2.0} and 0.4 < (a == 0).mean() < 0.6
    assert (a != b).any()


# ------------------------------------------------------------------------------------------------
# tf.scan
# ------------------------------------------------------------------------------------------------
def test_scan_values_and_gradient():
    xs = tf.placeholder(tf.float64, [None, 2])
    w = tf.Variable(np.array([0.8, -0.3]))
    ys = tf.scan(lambda acc, x: tf.tanh(acc * w + x), xs, initializer=tf.zeros([2], tf.float64))
    firsts = tf.scan(lambda acc, x: acc + x, xs)            # no initializer: xs[0] starts
    loss = tf.reduce_sum(ys * ys)
    gw = tf.gradients(loss, w)[0]
    xv = np.random.default_rng(2).standard_normal((5, 2))

    def np_loss(wv, xv=xv):
        acc, out = np.zeros(2), []
        for x in xv:
            acc = np.tanh(acc * wv + x)
            out.append(acc)
        return np.stack(out)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        yv, fv, gv = sess.run([ys, firsts, gw], {xs: xv})
        traces = fj.stats()["traces"]
        y7 = sess.run([ys, firsts, gw], {xs: np.ones((7, 2))})[0]
        assert fj.stats()["traces"] == traces and y7.shape == (7, 2)
    assert_close(yv, np_loss(np.array([0.8, -0.3])), rtol=1e-12)
    assert_close(fv, np.cumsum(xv, axis=0), rtol=1e-12)
    assert_close(gv, fd_grad(lambda wv: (np_loss(wv) ** 2).sum(), np.array([0.8, -0.3])), rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# RNN cells
# ------------------------------------------------------------------------------------------------
CELLS = {
    "BasicRNNCell": (lambda: tf.nn.rnn_cell.BasicRNNCell(3), "basic_rnn_cell",
                     {"kernel": [5, 3], "bias": [3]}, np_basic_rnn),
    "BasicLSTMCell": (lambda: tf.nn.rnn_cell.BasicLSTMCell(3), "basic_lstm_cell",
                      {"kernel": [5, 12], "bias": [12]}, np_basic_lstm),
    "BasicLSTMCell_fb": (lambda: tf.contrib.rnn.BasicLSTMCell(3, forget_bias=0.25), "basic_lstm_cell",
                         {"kernel": [5, 12], "bias": [12]}, lambda x, s, w: np_basic_lstm(x, s, w, 0.25)),
    "LSTMCell": (lambda: tf.nn.rnn_cell.LSTMCell(3), "lstm_cell",
                 {"kernel": [5, 12], "bias": [12]}, np_lstm),
    "LSTMCell_peep_proj": (lambda: tf.nn.rnn_cell.LSTMCell(3, use_peepholes=True, num_proj=2, cell_clip=0.5),
                           "lstm_cell", {"kernel": [4, 12], "bias": [12], "w_f_diag": [3], "w_i_diag": [3],
                                         "w_o_diag": [3], "projection/kernel": [3, 2]},
                           lambda x, s, w: np_lstm(x, s, w, cell_clip=0.5)),
    "GRUCell": (lambda: tf.nn.rnn_cell.GRUCell(3), "gru_cell",
                {"gates/kernel": [5, 6], "gates/bias": [6], "candidate/kernel": [5, 3],
                 "candidate/bias": [3]}, np_gru),
}


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cell_names_shapes_and_formulas(kind):
    make, scope, shapes, ref = CELLS[kind]
    cell = make()
    x = tf.placeholder(tf.float64, [None, 2])
    sizes = cell.state_size
    if isinstance(sizes, tf.nn.rnn_cell.LSTMStateTuple):
        state = tf.nn.rnn_cell.LSTMStateTuple(tf.placeholder(tf.float64, [None, sizes.c]),
                                              tf.placeholder(tf.float64, [None, sizes.h]))
    else:
        state = tf.placeholder(tf.float64, [None, sizes])
    out, new_state = cell(x, state)
    assert [(v.name, v.shape.as_list()) for v in tf.global_variables()] == \
        [(f"{scope}/{k}:0", s) for k, s in shapes.items()]
    assert cell.variables == tf.trainable_variables()
    assert out.get_shape().as_list() == [None, cell.output_size]
    out2, _ = cell(x, state)                 # a second call shares the weights
    assert len(tf.global_variables()) == len(shapes)
    rng = np.random.default_rng(5)
    xv = rng.standard_normal((3, 2))
    sv = tuple(rng.standard_normal((3, s)) for s in sizes) if isinstance(state, tuple) \
        else rng.standard_normal((3, sizes))
    feed = {x: xv}
    feed.update(zip(state, sv) if isinstance(state, tuple) else [(state, sv)])
    with tf.Session() as sess:
        w = load_random(sess, tf.global_variables(), rng)
        o, s, o2 = sess.run([out, new_state, out2], feed)
    want_o, want_s = ref(xv, sv, w)
    assert_close(o, want_o, rtol=1e-12, atol=1e-13)
    assert_close(o2, want_o, rtol=1e-12, atol=1e-13)
    for a, b in zip(s if isinstance(s, tuple) else [s], want_s if isinstance(want_s, tuple) else [want_s]):
        assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_default_initializers_and_zero_state():
    x = tf.placeholder(tf.float32, [None, 4])
    lstm = tf.nn.rnn_cell.BasicLSTMCell(3)
    gru = tf.nn.rnn_cell.GRUCell(2)
    zs = lstm.zero_state(tf.shape(x)[0], tf.float32)       # batch size known only at run time
    assert isinstance(zs, tf.nn.rnn_cell.LSTMStateTuple)
    lstm(x, zs)
    gru(x, gru.zero_state(5, tf.float32))
    names = [v.op.name for v in tf.global_variables()]
    assert names == ["basic_lstm_cell/kernel", "basic_lstm_cell/bias", "gru_cell/gates/kernel",
                     "gru_cell/gates/bias", "gru_cell/candidate/kernel", "gru_cell/candidate/bias"]
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        k, b, gk, gb, ck, cb = sess.run(tf.global_variables())
        c, h = sess.run(zs, {x: np.ones((6, 4))})
    assert c.shape == h.shape == (6, 3) and not c.any()
    for kernel in (k, gk, ck):                            # glorot_uniform
        limit = np.sqrt(6.0 / sum(kernel.shape))
        assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.5 * limit
    assert not b.any() and (gb == 1.0).all() and not cb.any()


def test_multi_rnn_cell_scopes_and_values():
    cell = tf.nn.rnn_cell.MultiRNNCell([tf.nn.rnn_cell.BasicLSTMCell(3), tf.nn.rnn_cell.GRUCell(2)])
    x = tf.placeholder(tf.float64, [2, 4])
    state = cell.zero_state(2, tf.float64)
    assert isinstance(state, tuple) and isinstance(state[0], tf.nn.rnn_cell.LSTMStateTuple)
    out, new_state = cell(x, state)
    assert [v.op.name for v in tf.global_variables()] == [
        "multi_rnn_cell/cell_0/basic_lstm_cell/kernel", "multi_rnn_cell/cell_0/basic_lstm_cell/bias",
        "multi_rnn_cell/cell_1/gru_cell/gates/kernel", "multi_rnn_cell/cell_1/gru_cell/gates/bias",
        "multi_rnn_cell/cell_1/gru_cell/candidate/kernel", "multi_rnn_cell/cell_1/gru_cell/candidate/bias"]
    rng = np.random.default_rng(9)
    xv = rng.standard_normal((2, 4))
    with tf.Session() as sess:
        w = load_random(sess, tf.global_variables(), rng)
        o, s = sess.run([out, new_state], {x: xv})
    zeros = np.zeros((2, 3))
    h1, s1 = np_basic_lstm(xv, (zeros, zeros), {k: w[k] for k in ("kernel", "bias")})
    h2, _ = np_gru(h1, np.zeros((2, 2)), w)
    assert_close(o, h2, rtol=1e-12)
    assert_close(s[0].c, s1[0], rtol=1e-12) and assert_close(s[1], h2, rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# dynamic_rnn, static_rnn, bidirectional_dynamic_rnn
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("time_major", [False, True])
def test_dynamic_rnn_matches_numpy_with_and_without_sequence_length(time_major):
    n_in, units = 3, 4
    shape = [None, None, n_in]
    x = tf.placeholder(tf.float64, shape)
    lengths = tf.placeholder(tf.int32, [None])
    cell = tf.nn.rnn_cell.BasicLSTMCell(units)
    out, state = tf.nn.dynamic_rnn(cell, x, dtype=tf.float64, time_major=time_major)
    with tf.variable_scope("masked"):
        out_m, state_m = tf.nn.dynamic_rnn(tf.nn.rnn_cell.GRUCell(units), x, sequence_length=lengths,
                                           dtype=tf.float64, time_major=time_major)
    assert [v.name for v in tf.global_variables()] == [
        "rnn/basic_lstm_cell/kernel:0", "rnn/basic_lstm_cell/bias:0",
        "masked/rnn/gru_cell/gates/kernel:0", "masked/rnn/gru_cell/gates/bias:0",
        "masked/rnn/gru_cell/candidate/kernel:0", "masked/rnn/gru_cell/candidate/bias:0"]
    assert out.get_shape().as_list() == [None, None, units]
    assert isinstance(state, tf.nn.rnn_cell.LSTMStateTuple) and state.h.get_shape().as_list() == [None, units]
    rng = np.random.default_rng(11)
    with tf.Session() as sess:
        lstm_vars = load_random(sess, tf.global_variables()[:2], rng)
        gru_vars = load_random(sess, tf.global_variables()[2:], rng)
        traces = None
        for batch, steps, lens in ((2, 4, [4, 2]), (3, 5, [0, 5, 3]), (4, 2, [1, 2, 2, 0])):
            xv = rng.standard_normal((batch, steps, n_in))
            feed = {x: xv.transpose(1, 0, 2) if time_major else xv, lengths: lens}
            o, s, om, sm = sess.run([out, state, out_m, state_m], feed)
            if traces is None:
                traces = fj.stats()["traces"]
            zeros = np.zeros((batch, units))
            wo, ws = np_rnn(lambda x_t, st: np_basic_lstm(x_t, st, lstm_vars), xv, (zeros, zeros))
            wom, wsm = np_rnn(lambda x_t, st: np_gru(x_t, st, gru_vars), xv, zeros, lens)
            if time_major:
                wo, wom = wo.transpose(1, 0, 2), wom.transpose(1, 0, 2)
            assert_close(o, wo, rtol=1e-12, atol=1e-13)
            assert_close(s.c, ws[0], rtol=1e-12, atol=1e-13) and assert_close(s.h, ws[1], rtol=1e-12, atol=1e-13)
            assert_close(om, wom, rtol=1e-12, atol=1e-13)
            assert_close(sm, wsm, rtol=1e-12, atol=1e-13)
        # a new batch size and sequence length reuse the compiled plan (sizes of 1 are
        # specialized by fj.jit, so none is used here)
        assert fj.stats()["traces"] == traces


def test_dynamic_rnn_gradient_matches_finite_differences():
    n_in, units = 2, 3
    x = tf.placeholder(tf.float64, [None, None, n_in])
    h0 = tf.placeholder(tf.float64, [None, units])
    lengths = tf.placeholder(tf.int32, [None])
    cell = tf.nn.rnn_cell.BasicRNNCell(units)
    out, state = tf.nn.dynamic_rnn(cell, x, sequence_length=lengths, initial_state=h0)
    weights = tf.constant(np.cos(np.arange(2 * 4 * units)).reshape(2, 4, units))
    loss = tf.reduce_sum(out * weights) + tf.reduce_sum(tf.square(state))
    kernel, bias = tf.global_variables()
    gk, gb, gx, gh = tf.gradients(loss, [kernel, bias, x, h0])
    rng = np.random.default_rng(3)
    xv, hv, lv = rng.standard_normal((2, 4, n_in)), rng.standard_normal((2, units)) * 0.3, [4, 3]
    with tf.Session() as sess:
        w = load_random(sess, [kernel, bias], rng)
        got = sess.run([loss, gk, gb, gx, gh], {x: xv, h0: hv, lengths: lv})

    def np_loss(K=w["kernel"], b=w["bias"], xv=xv, hv=hv):
        o, s = np_rnn(lambda x_t, st: np_basic_rnn(x_t, st, {"kernel": K, "bias": b}), xv, hv, lv)
        return (o * np.cos(np.arange(2 * 4 * units)).reshape(2, 4, units)).sum() + (s * s).sum()
    assert_close(got[0], np_loss(), rtol=1e-12)
    assert_close(got[1], fd_grad(lambda K: np_loss(K=K), w["kernel"]), rtol=1e-6, atol=1e-8)
    assert_close(got[2], fd_grad(lambda b: np_loss(b=b), w["bias"]), rtol=1e-6, atol=1e-8)
    assert_close(got[3], fd_grad(lambda v: np_loss(xv=v), xv), rtol=1e-6, atol=1e-8)
    assert_close(got[4], fd_grad(lambda v: np_loss(hv=v), hv), rtol=1e-6, atol=1e-8)
    assert not got[3][1, 3].any()             # past its length the input has no effect


def test_lstm_trained_with_adam_dynamic_equals_static_unroll():
    """The same LSTM regression trained 20 steps with Adam, once with dynamic_rnn (one
    compiled loop) and once with static_rnn (a Python unroll): the same losses."""
    steps, batch, n_in, units = 3, 3, 2, 3
    rng = np.random.default_rng(21)
    xv = rng.standard_normal((batch, steps, n_in)).astype(np.float32)
    yv = rng.standard_normal((batch, 1)).astype(np.float32)
    init = {"kernel": (rng.standard_normal((n_in + units, 4 * units)) * 0.4).astype(np.float32),
            "bias": (rng.standard_normal(4 * units) * 0.1).astype(np.float32),
            "w_out": (rng.standard_normal((units, 1)) * 0.5).astype(np.float32)}

    def model(kind):
        x = tf.placeholder(tf.float32, [None, steps, n_in])
        y = tf.placeholder(tf.float32, [None, 1])
        with tf.variable_scope(kind):
            cell = tf.contrib.rnn.BasicLSTMCell(units)
            if kind == "dynamic":
                outputs, _ = tf.nn.dynamic_rnn(cell, x, dtype=tf.float32)
                last = outputs[:, -1]
            else:
                outputs, _ = tf.contrib.rnn.static_rnn(cell, tf.unstack(x, steps, 1), dtype=tf.float32)
                last = outputs[-1]
            w_out = tf.get_variable("w_out", [units, 1])
        loss = tf.reduce_mean(tf.square(tf.matmul(last, w_out) - y))
        variables = tf.trainable_variables(kind)
        train = tf.train.AdamOptimizer(0.05).minimize(loss, var_list=variables)
        return x, y, loss, train, variables

    models = [model("dynamic"), model("static")]
    assert [v.op.name for v in models[0][4]] == ["dynamic/rnn/basic_lstm_cell/kernel",
                                                 "dynamic/rnn/basic_lstm_cell/bias", "dynamic/w_out"]
    losses = {}
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for (x, y, loss, train, variables), kind in zip(models, ("dynamic", "static")):
            for v in variables:
                v.load(init[v.op.name.rsplit("/", 1)[1]], sess)
            losses[kind] = [sess.run([loss, train], {x: xv, y: yv})[0] for _ in range(20)]
    assert_close(np.array(losses["dynamic"]), np.array(losses["static"]), rtol=1e-5, atol=1e-6)
    assert losses["dynamic"][-1] < 0.5 * losses["dynamic"][0]


def test_static_rnn_sequence_length_and_multi_cell():
    x = tf.placeholder(tf.float64, [None, 3, 2])
    lengths = tf.placeholder(tf.int32, [None])
    cell = tf.nn.rnn_cell.MultiRNNCell([tf.nn.rnn_cell.BasicRNNCell(2) for _ in range(2)])
    outs, state = tf.nn.static_rnn(cell, tf.unstack(x, axis=1), dtype=tf.float64, sequence_length=lengths)
    assert [v.op.name for v in tf.global_variables()] == [
        "rnn/multi_rnn_cell/cell_0/basic_rnn_cell/kernel", "rnn/multi_rnn_cell/cell_0/basic_rnn_cell/bias",
        "rnn/multi_rnn_cell/cell_1/basic_rnn_cell/kernel", "rnn/multi_rnn_cell/cell_1/basic_rnn_cell/bias"]
    rng = np.random.default_rng(4)
    xv, lv = rng.standard_normal((2, 3, 2)), [3, 1]
    with tf.Session() as sess:
        vs = tf.global_variables()
        w0 = load_random(sess, vs[:2], rng)
        w1 = load_random(sess, vs[2:], rng)
        o, s = sess.run([outs, state], {x: xv, lengths: lv})

    def step(x_t, st):
        a, _ = np_basic_rnn(x_t, st[0], w0)
        b, _ = np_basic_rnn(a, st[1], w1)
        return b, (a, b)
    wo, ws = np_rnn(step, xv, (np.zeros((2, 2)), np.zeros((2, 2))), lv)
    assert_close(np.stack(o, 1), wo, rtol=1e-12)
    assert_close(s[0], ws[0], rtol=1e-12) and assert_close(s[1], ws[1], rtol=1e-12)


def test_bidirectional_dynamic_rnn_matches_numpy():
    n_in, units = 2, 3
    x = tf.placeholder(tf.float64, [None, None, n_in])
    lengths = tf.placeholder(tf.int64, [None])
    cell_fw, cell_bw = tf.nn.rnn_cell.BasicLSTMCell(units), tf.nn.rnn_cell.GRUCell(units)
    (out_fw, out_bw), (st_fw, st_bw) = tf.nn.bidirectional_dynamic_rnn(
        cell_fw, cell_bw, x, sequence_length=lengths, dtype=tf.float64)
    # the same cells (so the same weights) unrolled: TF1's static_bidirectional_rnn
    x5 = tf.placeholder(tf.float64, [None, 5, n_in])
    static_outs, _, static_bw = tf.nn.static_bidirectional_rnn(
        cell_fw, cell_bw, tf.unstack(x5, axis=1), dtype=tf.float64, sequence_length=lengths)
    assert [v.op.name for v in tf.global_variables()] == [
        "bidirectional_rnn/fw/basic_lstm_cell/kernel", "bidirectional_rnn/fw/basic_lstm_cell/bias",
        "bidirectional_rnn/bw/gru_cell/gates/kernel", "bidirectional_rnn/bw/gru_cell/gates/bias",
        "bidirectional_rnn/bw/gru_cell/candidate/kernel", "bidirectional_rnn/bw/gru_cell/candidate/bias"]
    rng = np.random.default_rng(8)
    with tf.Session() as sess:
        vs = tf.global_variables()
        wf, wb = load_random(sess, vs[:2], rng), load_random(sess, vs[2:], rng)
        for batch, steps, lv in ((3, 5, [5, 2, 3]), (2, 3, [1, 3])):
            xv = rng.standard_normal((batch, steps, n_in))
            of, ob, sf, sb = sess.run([out_fw, out_bw, st_fw, st_bw], {x: xv, lengths: lv})
            zeros = np.zeros((batch, units))
            wof, wsf = np_rnn(lambda x_t, st: np_basic_lstm(x_t, st, wf), xv, (zeros, zeros), lv)
            rev = np.stack([np.concatenate([xv[b, :lv[b]][::-1], xv[b, lv[b]:]]) for b in range(batch)])
            wob, wsb = np_rnn(lambda x_t, st: np_gru(x_t, st, wb), rev, zeros, lv)
            wob = np.stack([np.concatenate([wob[b, :lv[b]][::-1], wob[b, lv[b]:]]) for b in range(batch)])
            assert_close(of, wof, rtol=1e-12, atol=1e-13) and assert_close(sf.h, wsf[1], rtol=1e-12, atol=1e-13)
            assert_close(ob, wob, rtol=1e-12, atol=1e-13) and assert_close(sb, wsb, rtol=1e-12, atol=1e-13)
            if steps == 5:
                so, sbw = sess.run([static_outs, static_bw], {x5: xv, lengths: lv})
                assert_close(np.stack(so, 1), np.concatenate([wof, wob], 2), rtol=1e-12, atol=1e-13)
                assert_close(sbw, wsb, rtol=1e-12, atol=1e-13)
    x2 = tf.placeholder(tf.float32, [2, 3, 1])
    assert_close(tf.Session().run(tf.reverse_sequence(x2, [2, 3], seq_axis=1, batch_axis=0),
                                  {x2: np.arange(6.0).reshape(2, 3, 1)})[..., 0],
                 np.array([[1.0, 0.0, 2.0], [5.0, 4.0, 3.0]], np.float32))


class PassThroughCell(tf.nn.rnn_cell.RNNCell):
    """A user-defined cell: the output is the input, the state counts steps."""

    @property
    def state_size(self):
        return 1

    @property
    def output_size(self):
        return 50

    def call(self, inputs, state):
        return inputs, state + 1.0


def test_dropout_wrapper_inside_dynamic_rnn_draws_a_mask_per_step():
    x = tf.placeholder(tf.float32, [None, None, 50])
    keep = tf.placeholder_with_default(1.0, [])
    cell = tf.nn.rnn_cell.DropoutWrapper(PassThroughCell(), input_keep_prob=keep, seed=7)
    out, count = tf.nn.dynamic_rnn(cell, x, dtype=tf.float32)
    plain, _ = tf.nn.dynamic_rnn(tf.nn.rnn_cell.DropoutWrapper(PassThroughCell(), output_keep_prob=1.0),
                                 x, dtype=tf.float32, scope="plain")
    xv = np.ones((4, 6, 50), np.float32)
    with tf.Session() as sess:
        assert_close(sess.run(out, {x: xv}), xv)                # keep_prob 1: nothing dropped
        o, c = sess.run([out, count], {x: xv, keep: 0.5})
        o2 = sess.run(out, {x: xv, keep: 0.5})
        assert_close(sess.run(plain, {x: xv}), xv)
    assert set(np.unique(o)) <= {0.0, 2.0} and 0.4 < (o == 0).mean() < 0.6
    assert (o[:, 0] != o[:, 1]).any() and (o != o2).any()     # a fresh mask per step and per run
    assert_close(c, np.full((4, 1), 6.0, np.float32))


def test_while_loop_with_a_static_maximum_iterations_is_differentiable():
    """TF1 differentiates a while loop; flowjit does when the bound is known at graph build
    (it then runs as a bounded scan under the session's tape)."""
    tf.reset_default_graph()
    x = tf.placeholder(tf.float64, [2])
    w = tf.Variable(np.float64(1.5))
    y = tf.while_loop(lambda v: tf.reduce_sum(v) < 10.0, lambda v: v * w + 1.0, [x], maximum_iterations=20)
    loss = tf.reduce_sum(y * y)
    gw, gx = tf.gradients(loss, [w, x])

    def np_loss(xv, wv):
        v = np.array(xv, np.float64)
        while v.sum() < 10:
            v = v * wv + 1
        return (v * v).sum()
    xv, eps = np.array([0.5, 0.2]), 1e-6
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        got_loss, got_w, got_x = sess.run([loss, gw, gx], {x: xv})
    np.testing.assert_allclose(got_loss, np_loss(xv, 1.5), rtol=1e-12)
    np.testing.assert_allclose(got_w, (np_loss(xv, 1.5 + eps) - np_loss(xv, 1.5 - eps)) / (2 * eps), rtol=1e-6)
    fd_x = [(np_loss(xv + d, 1.5) - np_loss(xv - d, 1.5)) / (2 * eps) for d in np.eye(2) * eps]
    np.testing.assert_allclose(got_x, fd_x, rtol=1e-6)
