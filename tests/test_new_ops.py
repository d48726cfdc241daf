"""conv2d_transpose, batch_normalization, embedding_lookup, count_nonzero, nce_loss and
sampled_softmax_loss, the candidate samplers, shuffle/categorical, random ops with
run-time shapes, and fj.print / tf.Print: each against a NumPy reference written here
from TF's definitions, jitted against eager, gradients against float64 central finite
differences, and their TF1 names in graphs run by a Session."""
import io
import sys

import numpy as np
import pytest

import flowjit as fj
import flowjit.compat.v1 as tf
from conftest import assert_close, finite_differences

N = fj.nn


@pytest.fixture(autouse=True)
def _python_entry_tier(monkeypatch):
    # compiling each signature's njit entry costs seconds and is covered by test_jit.py
    # (test_print_in_compiled_entry compiles one on purpose)
    monkeypatch.setattr(fj.config, "compile_entry_after", 10**9)


def _grad_check(loss, arrays, argnums, rtol=1e-6, atol=1e-8, jit=True):
    """fj.grad (eager, and jitted) of `loss` against central differences (float64)."""
    numeric = [finite_differences(lambda *a: float(loss(*a)), arrays, i) for i in argnums]
    fns = [fj.grad(loss, argnums=tuple(argnums))] + ([fj.jit(fj.grad(loss, argnums=tuple(argnums)))] if jit else [])
    for g in fns:
        got = g(*arrays)
        for a, b in zip(got, numeric):
            np.testing.assert_allclose(np.asarray(a), b, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------
# conv2d_transpose
# ------------------------------------------------------------------------------------
def _out_and_pad(n_out, k, s, d, padding):
    """conv2d's output size and leading pad over an image of n_out (TF's rules)."""
    eff = (k - 1) * d + 1
    if padding == "VALID":
        return (n_out - eff) // s + 1, 0
    if not isinstance(padding, str):
        lo, hi = padding
        return (n_out + lo + hi - eff) // s + 1, lo
    o = -(-n_out // s)
    total = max((o - 1) * s + eff - n_out, 0)
    return o, total // 2


def ref_conv2d_transpose(x, w, out_shape, s, padding, d=(1, 1)):
    """Each input pixel spreads x[n, a, b] @ w[i, j].T over the output pixels that the
    forward conv2d's tap (i, j) of window (a, b) reads (plain loops)."""
    n, h, wd, _ = x.shape
    kh, kw = w.shape[:2]
    ph = padding if isinstance(padding, str) else padding[0]
    pw = padding if isinstance(padding, str) else padding[1]
    oh, pt = _out_and_pad(out_shape[1], kh, s[0], d[0], ph)
    ow, pl = _out_and_pad(out_shape[2], kw, s[1], d[1], pw)
    assert (oh, ow) == (h, wd)
    y = np.zeros(out_shape)
    for a in range(h):
        for b in range(wd):
            for i in range(kh):
                for j in range(kw):
                    ih, iw = a * s[0] - pt + i * d[0], b * s[1] - pl + j * d[1]
                    if 0 <= ih < out_shape[1] and 0 <= iw < out_shape[2]:
                        y[:, ih, iw] += x[:, a, b] @ w[i, j].T
    return y


CONV_T_CASES = [
    # (input hw, output hw, kernel, stride, padding, dilation)
    ((4, 4), (7, 7), (3, 3), (2, 2), "SAME", (1, 1)),
    ((4, 3), (8, 6), (3, 3), (2, 2), "SAME", (1, 1)),
    ((3, 3), (7, 7), (3, 3), (2, 2), "VALID", (1, 1)),
    ((5, 5), (5, 5), (3, 3), (1, 1), "SAME", (2, 2)),
    ((2, 2), (6, 6), (2, 2), (3, 3), "VALID", (1, 1)),
    ((3, 3), (8, 8), (1, 1), (3, 3), "SAME", (1, 1)),
    ((4, 4), (6, 6), (3, 3), (2, 2), ((2, 1), (1, 2)), (1, 1)),
]


@pytest.mark.parametrize("case", range(len(CONV_T_CASES)))
def test_conv2d_transpose_matches_reference(case, rng):
    (h, w_), (oh, ow), (kh, kw), s, pad, d = CONV_T_CASES[case]
    x = rng.standard_normal((2, h, w_, 3))
    w = rng.standard_normal((kh, kw, 4, 3))
    padding = pad if isinstance(pad, str) else [[0, 0], list(pad[0]), list(pad[1]), [0, 0]]
    want = ref_conv2d_transpose(x, w, (2, oh, ow, 4), s, pad, d)
    for dt, tol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        got = N.conv2d_transpose(x.astype(dt), w.astype(dt), [2, oh, ow, 4], list(s), padding,
                                 dilations=list(d))
        assert got.dtype.np == np.dtype(dt) and got.shape == (2, oh, ow, 4)
        assert_close(got.numpy(), want.astype(dt), rtol=tol, atol=tol)


def test_conv2d_transpose_jit_nchw_and_symbolic_batch(rng, tier):
    w = rng.standard_normal((3, 3, 4, 2)).astype(np.float32)

    @fj.jit
    def f(x):
        # output_shape computed from the input's (symbolic) batch size
        return N.conv2d_transpose(x, w, fj.stack([fj.shape(x)[0], 8, 8, 4]), 2)

    traces = fj.stats()["traces"]
    for n in (2, 5):
        x = rng.standard_normal((n, 4, 4, 2)).astype(np.float32)
        eager = N.conv2d_transpose(x, w, [n, 8, 8, 4], 2)
        assert_close(f(x).numpy(), eager.numpy(), rtol=2e-5, atol=2e-5)
        assert_close(eager.numpy(), ref_conv2d_transpose(x.astype(np.float64), w.astype(np.float64),
                                                         (n, 8, 8, 4), (2, 2), "SAME"), rtol=2e-5, atol=2e-5)
    assert fj.stats()["traces"] == traces + 1          # one trace serves both batch sizes
    x = rng.standard_normal((2, 4, 4, 2)).astype(np.float32)
    nchw = N.conv2d_transpose(x.transpose(0, 3, 1, 2), w, [2, 4, 8, 8], 2, data_format="NCHW")
    assert_close(nchw.numpy().transpose(0, 2, 3, 1), N.conv2d_transpose(x, w, [2, 8, 8, 4], 2).numpy())


def test_conv2d_transpose_gradients(rng):
    x = rng.standard_normal((1, 2, 3, 2))
    w = rng.standard_normal((3, 2, 3, 2))
    g = rng.standard_normal((1, 4, 5, 3))
    loss = lambda x, w: fj.reduce_sum(N.conv2d_transpose(x, w, [1, 4, 5, 3], 2, "SAME") * g)
    _grad_check(loss, [x, w], [0, 1])
    # its gradients are conv2d (input) and conv2d's filter backprop (filters)
    dx, dw = fj.grad(loss, argnums=(0, 1))(x, w)
    assert_close(dx.numpy(), N.conv2d(g, w, 2, "SAME").numpy())
    fwd = lambda y: fj.reduce_sum(N.conv2d(y, w, 2, "SAME") * x)
    # <conv2d_transpose(x, w), g> == <x, conv2d(g, w)>: the adjoint of conv2d
    assert float(loss(x, w)) == pytest.approx(float(fwd(g)), rel=1e-12)


def test_conv2d_transpose_errors_name_the_op_and_shapes():
    x, w = np.zeros((1, 4, 4, 3), np.float32), np.zeros((3, 3, 4, 3), np.float32)
    with pytest.raises(fj.errors.ShapeError, match=r"conv2d_transpose .*gives 5x5, but the input is "
                                                   r"4x4 .*output_shape \[1, 9, 9, 4\]"):
        N.conv2d_transpose(x, w, [1, 9, 9, 4], 2)
    with pytest.raises(fj.errors.ShapeError, match=r"input has 3 channels but the filters expect 2"):
        N.conv2d_transpose(x, w[..., :2], [1, 8, 8, 4], 2)
    with pytest.raises(fj.errors.ShapeError, match=r"asks for 5 channels but the filters make 4"):
        N.conv2d_transpose(x, w, [1, 8, 8, 5], 2)
    with pytest.raises(fj.errors.ShapeError, match=r"batch size 2 but the input has 1"):
        N.conv2d_transpose(x, w, [2, 8, 8, 4], 2)
    with pytest.raises(fj.errors.InvalidArgumentError, match=r"conv2d_transpose .*4 entries"):
        N.conv2d_transpose(x, w, [8, 8, 4], 2)
    with pytest.raises(fj.errors.InvalidArgumentError, match=r"filters must be 4-D"):
        N.conv2d_transpose(x, w[0], [1, 8, 8, 4], 2)
    # under jit the message shows the call's sizes
    with pytest.raises(fj.errors.ShapeError, match=r"input \(3, 4, 4, 3\)"):
        fj.jit(lambda x: N.conv2d_transpose(x, w, [3, 9, 9, 4], 2))(np.zeros((3, 4, 4, 3), np.float32))


def test_conv2d_transpose_tf1_with_computed_output_shape(rng):
    tf.reset_default_graph()
    x = tf.placeholder(tf.float32, [None, 4, 4, 2])
    w = tf.constant(rng.standard_normal((3, 3, 5, 2)).astype(np.float32))
    y = tf.nn.conv2d_transpose(x, w, tf.stack([tf.shape(x)[0], 8, 8, 5]), [1, 2, 2, 1], "SAME")
    assert y.shape.as_list() == [None, 8, 8, 5]
    xv = rng.standard_normal((3, 4, 4, 2)).astype(np.float32)
    with tf.Session() as sess:
        got = sess.run(y, {x: xv})
    assert_close(got, N.conv2d_transpose(xv, w.op.attrs["value"], [3, 8, 8, 5], 2).numpy())


# ------------------------------------------------------------------------------------
# batch_normalization, embedding_lookup, count_nonzero
# ------------------------------------------------------------------------------------
def test_batch_normalization(rng):
    x = rng.standard_normal((4, 3))
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    off, scale = rng.standard_normal(3), rng.standard_normal(3)
    want = (x - mean) / np.sqrt(var + 1e-3) * scale + off
    assert_close(N.batch_normalization(x, mean, var, off, scale, 1e-3).numpy(), want)
    assert_close(N.batch_normalization(x, mean, var, None, None, 1e-3).numpy(),
                 (x - mean) / np.sqrt(var + 1e-3))
    f = fj.jit(lambda *a: N.batch_normalization(*a, 1e-3))
    assert_close(f(x, mean, var, off, scale).numpy(), want)
    loss = lambda x, m, v, o, s: fj.reduce_sum(N.batch_normalization(x, m, v, o, s, 1e-3) ** 2)
    _grad_check(loss, [x, mean, var, off, scale], [0, 1, 2, 3, 4], rtol=1e-6, atol=1e-7)
    tf.reset_default_graph()
    with tf.Session() as sess:
        got = sess.run(tf.nn.batch_normalization(tf.constant(x), mean, var, off, scale, 1e-3))
    assert_close(got, want)


def test_embedding_lookup(rng):
    p = rng.standard_normal((7, 3))
    ids = np.array([[0, 6], [3, 3]])
    assert_close(N.embedding_lookup(p, ids).numpy(), p[ids])
    assert_close(fj.jit(N.embedding_lookup)(p, ids).numpy(), p[ids])
    # shards: "div" keeps consecutive rows together, "mod" deals rows out in turn
    div = [p[:3], p[3:5], p[5:]]
    assert_close(N.embedding_lookup(div, ids).numpy(), p[ids])
    mod = [p[0::3], p[1::3], p[2::3]]
    assert_close(N.embedding_lookup(mod, ids, partition_strategy="mod").numpy(), p[ids])
    with pytest.raises(fj.errors.OutOfRangeError):
        N.embedding_lookup(mod, np.array([7]), partition_strategy="mod")
    e = p[ids]
    norm = np.linalg.norm(e, axis=-1, keepdims=True)
    assert_close(N.embedding_lookup(p, ids, max_norm=1.0).numpy(), e / np.maximum(norm, 1.0))
    loss = lambda p: fj.reduce_sum(N.embedding_lookup(p, ids) ** 2)
    _grad_check(loss, [p], [0])
    tf.reset_default_graph()
    with tf.Session() as sess:
        got = sess.run(tf.nn.embedding_lookup([tf.constant(q) for q in mod], ids))
    assert_close(got, p[ids])


def test_count_nonzero():
    x = np.array([[0.0, 1.5, -2.0], [0.0, 0.0, 3.0]])
    assert fj.count_nonzero(x).numpy() == 3 and fj.count_nonzero(x).dtype == fj.int64
    assert_close(fj.count_nonzero(x, axis=1).numpy(), np.count_nonzero(x, axis=1))
    got = fj.count_nonzero(x, axis=0, keepdims=True, dtype=fj.int32)
    assert got.dtype == fj.int32 and got.shape == (1, 3)
    assert_close(got.numpy(), np.count_nonzero(x, axis=0, keepdims=True).astype(np.int32))
    assert fj.count_nonzero(x > 0).numpy() == 2               # bool input
    assert fj.math.count_nonzero is fj.count_nonzero
    assert_close(fj.jit(lambda x: fj.count_nonzero(x, axis=-1))(x).numpy(), [2, 1])
    tf.reset_default_graph()
    with tf.Session() as sess:
        assert sess.run(tf.count_nonzero(tf.constant(x), reduction_indices=[1])).tolist() == [2, 1]


# ------------------------------------------------------------------------------------
# nce_loss and sampled_softmax_loss
# ------------------------------------------------------------------------------------
FLT_MAX = np.finfo(np.float32).max


def ref_sampled(w, b, labels, x, sampled, true_ec, sampled_ec, remove_hits):
    """TF's _compute_sampled_logits, in NumPy."""
    nt = labels.shape[1]
    true_logits = np.einsum("bd,bnd->bn", x, w[labels]) + b[labels]
    sampled_logits = x @ w[sampled].T + b[sampled]
    if remove_hits:
        hit = (labels[:, :, None] == sampled[None, None, :]).any(axis=1)
        sampled_logits = sampled_logits + np.where(hit, -FLT_MAX, 0.0)
    logits = np.concatenate([true_logits - np.log(true_ec), sampled_logits - np.log(sampled_ec)], 1)
    target = np.concatenate([np.full(true_logits.shape, 1.0 / nt), np.zeros(sampled_logits.shape)], 1)
    return logits, target


def ref_nce(*a):
    z, t = ref_sampled(*a)
    return (np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))).sum(axis=1)


def ref_sampled_softmax(*a):
    z, t = ref_sampled(*a)
    m = z.max(axis=1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    return -(t * logp).sum(axis=1)


def _sampled_problem(rng, num_true):
    V, d, B = 12, 4, 3
    w, b = rng.standard_normal((V, d)), rng.standard_normal(V)
    x = rng.standard_normal((B, d))
    labels = np.array([[1, 5], [0, 3], [3, 11]])[:, :num_true]
    sampled = np.array([3, 7, 0, 9])           # 3 and 0 are true classes of some rows
    true_ec = rng.uniform(0.2, 1.0, (B, num_true)).astype(np.float32)
    sampled_ec = rng.uniform(0.2, 1.0, 4).astype(np.float32)
    return w, b, labels, x, (sampled, true_ec, sampled_ec)


@pytest.mark.parametrize("num_true", [1, 2])
@pytest.mark.parametrize("kind", ["nce", "sampled_softmax"])
def test_sampled_losses_match_reference(kind, num_true, rng):
    w, b, labels, x, sv = _sampled_problem(rng, num_true)
    fn, ref = (N.nce_loss, ref_nce) if kind == "nce" else (N.sampled_softmax_loss, ref_sampled_softmax)
    for hits in (False, True):
        want = ref(w, b, labels, x, *[np.asarray(v, np.float64) if k else v for k, v in enumerate(sv)], hits)
        got = fn(w, b, labels, x, 4, 12, num_true, sampled_values=sv, remove_accidental_hits=hits)
        assert got.shape == (3,)
        assert_close(got.numpy(), want, rtol=1e-12, atol=1e-12)
        jf = fj.jit(lambda w, b, x: fn(w, b, labels, x, 4, 12, num_true, sampled_values=sv,
                                       remove_accidental_hits=hits))
        assert_close(jf(w, b, x).numpy(), want, rtol=1e-12, atol=1e-12)
    # gradients reach weights, biases and inputs
    loss = lambda w, b, x: fj.reduce_sum(fn(w, b, labels, x, 4, 12, num_true, sampled_values=sv,
                                            remove_accidental_hits=True))
    _grad_check(loss, [w, b, x], [0, 1, 2], rtol=1e-6, atol=1e-7)


def test_nce_loss_samples_afresh_and_jit_matches_eager(rng):
    V, d, B = 50, 6, 8
    w, b = rng.standard_normal((V, d)).astype(np.float32), np.zeros(V, np.float32)
    x = rng.standard_normal((B, d)).astype(np.float32)
    labels = rng.integers(0, V, (B, 1))
    fj.random.set_seed(11)
    eager = [N.nce_loss(w, b, labels, x, 10, V, seed=3).numpy() for _ in range(2)]
    fj.random.set_seed(11)
    f = fj.jit(lambda w, b, x, lab: N.nce_loss(w, b, lab, x, 10, V, seed=3))
    jitted = [f(w, b, x, labels).numpy() for _ in range(2)]
    assert_close(jitted[0], eager[0], rtol=1e-5, atol=1e-5)
    assert_close(jitted[1], eager[1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(jitted[0], jitted[1])             # new negatives every call
    assert np.all(np.isfinite(jitted[0])) and np.all(jitted[0] > 0)


def test_tf1_nce_loss_trains(rng):
    """A TF1 graph (placeholders, variables, the optimizer) with the default sampler."""
    tf.reset_default_graph()
    V, d = 30, 8
    ids = tf.placeholder(tf.int32, [None])
    lab = tf.placeholder(tf.int64, [None, 1])
    emb = tf.Variable(tf.random_uniform([V, d], -1.0, 1.0, seed=1))
    nw = tf.Variable(tf.truncated_normal([V, d], stddev=0.3, seed=2))
    nb = tf.Variable(tf.zeros([V]))
    loss = tf.reduce_mean(tf.nn.nce_loss(nw, nb, lab, tf.nn.embedding_lookup(emb, ids), 5, V))
    ssm = tf.reduce_mean(tf.nn.sampled_softmax_loss(nw, nb, lab, tf.nn.embedding_lookup(emb, ids), 5, V))
    step = tf.train.GradientDescentOptimizer(0.5).minimize(loss)
    xs = rng.integers(0, V, 64)
    ys = ((xs + 1) % V)[:, None]                 # each word predicts the next id
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        first = np.mean([sess.run(loss, {ids: xs, lab: ys}) for _ in range(5)])
        for _ in range(150):
            sess.run(step, {ids: xs, lab: ys})
        last = np.mean([sess.run(loss, {ids: xs, lab: ys}) for _ in range(5)])
        assert np.isfinite(sess.run(ssm, {ids: xs, lab: ys}))
    assert last < 0.5 * first


# ------------------------------------------------------------------------------------
# candidate samplers, shuffle, categorical
# ------------------------------------------------------------------------------------
def test_log_uniform_sampler_distribution_and_expected_counts():
    from flowjit.ops.sampling import sample_candidates
    R = 20
    p = np.log((np.arange(R) + 2.0) / (np.arange(R) + 1.0)) / np.log(R + 1.0)
    draws = np.concatenate([sample_candidates(np.uint64(k), 50, R, False, "log_uniform")[:50]
                            for k in range(400)])
    freq = np.bincount(draws, minlength=R) / draws.size
    np.testing.assert_allclose(freq, p, atol=0.01)
    tc = np.array([[0], [7]])
    fj.random.set_seed(0)
    s, tec, sec = fj.random.log_uniform_candidate_sampler(tc, 1, 6, False, R, seed=1)
    assert s.dtype == fj.int64 and tec.dtype == fj.float32 and sec.shape == (6,)
    assert_close(tec.numpy(), (p[tc] * 6).astype(np.float32))
    assert_close(sec.numpy(), (p[s.numpy()] * 6).astype(np.float32))
    s, tec, sec = fj.random.log_uniform_candidate_sampler(tc, 1, 6, True, R, seed=2)
    assert len(set(s.numpy().tolist())) == 6
    # unique: the expected count after the sampler's `tries` draws, -expm1(tries * log1p(-p))
    from flowjit.frontend.random import Stream
    fj.random.set_seed(0)
    ref = sample_candidates(np.int64(Stream(2).next_key()).view(np.uint64), 6, R, True, "log_uniform")
    assert s.numpy().tolist() == ref[:6].tolist() and ref[6] > 6
    assert_close(sec.numpy(), (-np.expm1(ref[6] * np.log1p(-p[ref[:6]]))).astype(np.float32))
    assert_close(tec.numpy(), (-np.expm1(ref[6] * np.log1p(-p[tc]))).astype(np.float32))
    u, _, uec = fj.random.uniform_candidate_sampler(tc, 1, 5, False, 10, seed=3)
    assert u.numpy().min() >= 0 and u.numpy().max() < 10 and np.allclose(uec.numpy(), 0.5)
    with pytest.raises(fj.errors.InvalidArgumentError, match="must be <= range_max"):
        fj.random.log_uniform_candidate_sampler(tc, 1, 30, True, R)


def test_sampler_kernel_matches_reference(tier):
    """The compiled kernel and the NumPy reference draw the same ids for the same key."""
    from flowjit.frontend.random import Stream
    from flowjit.ops.sampling import sample_candidates
    f = fj.jit(lambda t: fj.random.log_uniform_candidate_sampler(t, 1, 40, True, 100, seed=9)[0])
    tc = np.zeros((2, 1), np.int64)
    fj.random.set_seed(4)
    got = [f(tc).numpy() for _ in range(3)]
    fj.random.set_seed(4)
    stream = Stream(9)
    for g in got:
        key = np.int64(stream.next_key()).view(np.uint64)
        assert g.tolist() == sample_candidates(key, 40, 100, True, "log_uniform")[:40].tolist()
    assert len(set(got[0].tolist())) == 40 and got[0].tolist() != got[1].tolist()


def test_shuffle(rng, tier):
    x = np.arange(40.0).reshape(20, 2)
    fj.random.set_seed(5)
    s = fj.random.shuffle(x, seed=1).numpy()
    assert sorted(s[:, 0].tolist()) == x[:, 0].tolist() and np.all(s[:, 1] == s[:, 0] + 1)
    assert not np.array_equal(s, x)
    f = fj.jit(lambda x: fj.random.shuffle(x, seed=1))
    fj.random.set_seed(5)
    traces = fj.stats()["traces"]
    assert np.array_equal(f(x).numpy(), s)                   # eager and jit: the same draw
    y = np.arange(7)
    assert sorted(f(y).numpy().tolist()) == list(range(7))
    assert fj.stats()["traces"] == traces + 2               # (rank 2, then rank 1)
    got = [tuple(f(np.arange(3)).numpy()) for _ in range(60)]
    assert len(set(got)) == 6                                # every permutation of 3 shows up
    # the gradient of a shuffle routes each row's cotangent back
    g = fj.grad(lambda x: fj.reduce_sum(fj.random.shuffle(x, seed=2) * np.arange(20.0)[:, None]))(x)
    assert sorted(g.numpy()[:, 0].tolist()) == list(range(20))
    tf.reset_default_graph()
    v = tf.placeholder(tf.float32, [None])
    op = tf.random_shuffle(v)
    with tf.Session() as sess:
        a = sess.run(op, {v: np.arange(10, dtype=np.float32)})
        b = sess.run(op, {v: np.arange(12, dtype=np.float32)})
    assert sorted(a.tolist()) == list(range(10)) and sorted(b.tolist()) == list(range(12))


def test_categorical():
    with np.errstate(divide="ignore"):       # log(0) = -inf: never drawn
        logits = np.log(np.array([[0.2, 0.5, 0.3], [0.0, 0.1, 0.9]]))
    fj.random.set_seed(2)
    s = fj.random.categorical(logits, 4000, seed=7)
    assert s.shape == (2, 4000) and s.dtype == fj.int64
    for row, p in zip(s.numpy(), np.exp(logits)):
        np.testing.assert_allclose(np.bincount(row, minlength=3) / 4000, p, atol=0.03)
    assert (s.numpy()[1] != 0).all()
    f = fj.jit(lambda z: fj.random.categorical(z, 4000, seed=7))
    fj.random.set_seed(2)
    assert np.array_equal(f(logits).numpy(), s.numpy())
    m = fj.random.multinomial(logits, 5, output_dtype=fj.int32)
    assert m.dtype == fj.int32 and m.shape == (2, 5)
    tf.reset_default_graph()
    z = tf.placeholder(tf.float32, [None, 3])
    a, b = tf.multinomial(z, 3000), tf.random.categorical(z, 10, dtype=tf.int32)
    with tf.Session() as sess:
        av, bv = sess.run([a, b], {z: logits.astype(np.float32)})
    assert av.shape == (2, 3000) and bv.dtype == np.int32 and bv.shape == (2, 10)
    np.testing.assert_allclose(np.bincount(av[0], minlength=3) / 3000, [0.2, 0.5, 0.3], atol=0.04)


# ------------------------------------------------------------------------------------
# random ops (and other shape arguments) with run-time shapes
# ------------------------------------------------------------------------------------
def test_random_shapes_from_symbolic_sizes():
    @fj.jit
    def f(x):
        a = fj.random.normal(fj.shape(x), seed=1)
        b = fj.random.normal([fj.shape(x)[0], 3], seed=2)
        c = fj.random.uniform(fj.shape(x)[0] * 2, seed=3)
        d = fj.zeros(fj.stack([fj.shape(x)[1], fj.shape(x)[0]]))
        return a, b, c, fj.reshape(x, [fj.shape(x)[0], -1, 1]), d

    traces = fj.stats()["traces"]
    for n in (4, 9):
        a, b, c, r, d = f(np.ones((n, 5), np.float32))
        assert (a.shape, b.shape, c.shape, r.shape, d.shape) == ((n, 5), (n, 3), (2 * n,), (n, 5, 1), (5, n))
    assert fj.stats()["traces"] == traces + 1
    assert abs(float(np.mean(a.numpy()))) < 0.5
    with pytest.raises(fj.errors.TracerError, match="depends on data"):
        fj.jit(lambda x: fj.random.normal(fj.cast(fj.reduce_sum(x), fj.int32)))(np.ones(3, np.float32))


def test_tf1_vae_sampling_step_with_runtime_batch(rng):
    """z = mu + exp(logvar / 2) * eps with eps = tf.random_normal(tf.shape(mu)): the
    batch size is fed, the sample differs per run, and gradients flow through it."""
    tf.reset_default_graph()
    x = tf.placeholder(tf.float32, [None, 4])
    w_mu = tf.Variable(rng.standard_normal((4, 2)).astype(np.float32) * 0.3)
    w_lv = tf.Variable(rng.standard_normal((4, 2)).astype(np.float32) * 0.3)
    mu, logvar = tf.matmul(x, w_mu), tf.matmul(x, w_lv)
    eps = tf.random_normal(tf.shape(mu), seed=4)
    z = mu + tf.exp(0.5 * logvar) * eps
    assert eps.shape.as_list() == [None, 2] and z.shape.as_list() == [None, 2]
    other = tf.random_uniform([tf.shape(x)[0], 7], seed=5)
    assert other.shape.as_list() == [None, 7]
    # other shape arguments computed in the graph: reshape, ones, tile
    flat = tf.reshape(x, [1, tf.shape(x)[0] * 4])
    ones = tf.ones([tf.shape(x)[0], 2])
    tiled = tf.tile(tf.reduce_sum(x, 1, keep_dims=True), [1, tf.shape(x)[1]])
    assert flat.shape.as_list() == [1, None] and ones.shape.as_list() == [None, 2]
    kl = -0.5 * tf.reduce_sum(1.0 + logvar - tf.square(mu) - tf.exp(logvar))
    loss = tf.reduce_mean(tf.square(z)) + 0.01 * kl
    step = tf.train.GradientDescentOptimizer(0.1).minimize(loss)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for n in (3, 10):
            xv = rng.standard_normal((n, 4)).astype(np.float32)
            e1, e2, o = sess.run(eps, {x: xv}), sess.run(eps, {x: xv}), sess.run(other, {x: xv})
            assert e1.shape == (n, 2) and o.shape == (n, 7) and not np.array_equal(e1, e2)
            fv, ov, tv = sess.run([flat, ones, tiled], {x: xv})
            assert_close(fv, xv.reshape(1, -1))
            assert ov.shape == (n, 2) and tv.shape == (n, 4)
            sess.run(step, {x: xv})


# ------------------------------------------------------------------------------------
# fj.print, tf.Print, tf.print
# ------------------------------------------------------------------------------------
def test_print_eager_formats_like_tf():
    out = io.StringIO()
    fj.print("loss:", fj.constant(0.5), [1, fj.constant([1, 2])], {"w": np.arange(3)}, 7,
             output_stream=out)
    fj.print(fj.range(10), fj.constant([[1.0, 2.5], [3.0, 4.0]]), sep="|", end="!\n", output_stream=out)
    fj.print(fj.range(10), summarize=-1, output_stream=out)
    assert out.getvalue() == ("loss: 0.5 [1, [1 2]] {'w': [0 1 2]} 7\n"
                              "[0 1 2 ... 7 8 9]|[[1 2.5]\n [3 4]]!\n"
                              "[0 1 2 3 4 5 6 7 8 9]\n")


def test_print_default_stream_is_stderr_at_print_time(capsys):
    fj.print("hello", fj.constant(3))
    assert capsys.readouterr().err == "hello 3\n"


def test_print_inside_jit_prints_every_call_in_order(tier, tmp_path):
    out = io.StringIO()

    @fj.jit
    def f(x):
        fj.print("x:", x, output_stream=out)
        y = x * 2.0
        fj.print("sum of y:", fj.reduce_sum(y), output_stream=out)
        return y

    for k in range(3):
        f(np.full(2, k, np.float32))
    assert out.getvalue() == "".join(f"x: [{k} {k}]\nsum of y: {4 * k}\n" for k in range(3))
    path = tmp_path / "log.txt"
    g = fj.jit(lambda x: (fj.print("n", fj.shape(x)[0], output_stream=f"file://{path}"), x + 1)[1])
    g(np.zeros(3, np.float32))
    g(np.zeros(5, np.float32))
    assert path.read_text() == "n 3\nn 5\n"


def test_print_in_a_training_step_and_compiled_entry(monkeypatch):
    monkeypatch.setattr(fj.config, "compile_entry_after", 2)
    out = io.StringIO()
    w = fj.Variable(np.ones(3, np.float32))
    opt = fj.optimizers.SGD(0.1)

    @fj.jit
    def step(x):
        with fj.GradientTape() as tape:
            loss = fj.reduce_sum((w * x) ** 2)
        g = tape.gradient(loss, w)
        fj.print("loss", loss, "grad", g, output_stream=out)
        opt.apply_gradients([(g, w)])
        return loss

    before = fj.stats()["calls_compiled_tier"]
    losses = [float(step(np.ones(3, np.float32))) for _ in range(4)]
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and fj.stats()["calls_compiled_tier"] > before     # the njit entry ran
    from flowjit.ops.host_ops import format_tensor
    for line, l in zip(lines, losses):
        assert line.startswith(f"loss {format_tensor(np.float32(l))} grad [")
    assert lines[0] == "loss 3 grad [2 2 2]" and losses[1] < losses[0]


def test_print_inside_a_loop_body_under_jit_is_refused():
    f = fj.jit(lambda x: fj.scan(lambda c, v: (fj.print(v) or c + v, c), x[0], x)[0])
    with pytest.raises(fj.errors.TracerError, match="inside the body of fj.scan"):
        f(np.ones(3, np.float32))


def test_tf1_print_and_tf_print(capsys):
    tf.reset_default_graph()
    x = tf.placeholder(tf.float32, [None])
    y = tf.Print(x, [x, tf.shape(x)], "x = ")
    z = tf.Print(x * 2.0, [x], "first twice: ", first_n=2, summarize=5)
    total = tf.reduce_sum(y)
    p = tf.print("total", total, output_stream=sys.stdout)
    with tf.Session() as sess:
        assert sess.run(total, {x: np.arange(5, dtype=np.float32)}) == 10
        assert capsys.readouterr().err == "x = [0 1 2...][5]\n"
        for n in (2, 3, 4):
            sess.run(z, {x: np.arange(n, dtype=np.float32)})
        assert capsys.readouterr().err == "first twice: [0 1]\nfirst twice: [0 1 2]\n"
        sess.run(p, {x: np.ones(2, np.float32)})
        captured = capsys.readouterr()
        assert captured.out == "total 2\n" and captured.err == "x = [1 1][2]\n"


def test_new_ops_on_the_gpu_device(rng):
    """On fj.device("/gpu:0") (a GPU, or NUMBA_ENABLE_CUDASIM=1) the ops without a CUDA
    kernel (conv2d_transpose's backprop op, argsort, the sampler, print) run their
    references on the host and give the CPU's results."""
    if not any(d.kind == "GPU" for d in fj.list_devices()):
        pytest.skip("no GPU device (NUMBA_ENABLE_CUDASIM=1 runs this on the simulator)")
    out = io.StringIO()
    x = rng.standard_normal((2, 3, 3, 2)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 2)).astype(np.float32)

    def f(x, w):
        fj.print("sum", fj.reduce_sum(x), output_stream=out)
        y = N.conv2d_transpose(x, w, [fj.shape(x)[0], 6, 6, 4], 2)
        s = fj.random.log_uniform_candidate_sampler(fj.zeros([2, 1], fj.int64), 1, 4, True, 10, seed=3)
        return (y, fj.random.shuffle(x, seed=1), fj.random.categorical(fj.reshape(x, [2, -1]), 3, seed=2),
                s[0], s[2])
    fj.random.set_seed(0)
    cpu = fj.jit(f)(x, w)
    fj.random.set_seed(0)
    with fj.device("/gpu:0"):
        gpu = fj.jit(f)(x, w)
    for a, b in zip(cpu, gpu):
        assert_close(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    assert out.getvalue().count("sum ") == 2
    grad = fj.jit(fj.grad(lambda x, w: fj.reduce_sum(N.conv2d_transpose(x, w, [2, 6, 6, 4], 2) ** 2),
                          argnums=(0, 1)))
    c = grad(x, w)
    with fj.device("/gpu:0"):
        d = grad(x, w)
    for a, b in zip(c, d):
        assert_close(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-4)
