"""TF1 compatibility: what `sess.run` adds on top of the `fj.jit` function it compiles.

The same softmax-regression training step (digits-sized: batch 100 x 64 features, 10
classes, gradient descent) written twice: as a TF1 graph run by
`flowjit.compat.v1.Session.run(train, feed_dict)` and as an `@fj.jit` function with
GradientTape. ratio = fj.jit / sess.run, so 1.0 means the session costs nothing extra;
below 1 the difference is the session's per-call Python work (fetch/feed handling,
dtype/shape checks of the feeds)."""
import numpy as np

import flowjit as fj
from perf.common import Result, check_close, median_times_interleaved, register


def _data():
    rng = np.random.default_rng(0)
    x = rng.random((100, 64), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 100)]
    return x, y


def _tf1_step():
    import flowjit.compat.v1 as tf
    g = tf.Graph()
    with g.as_default():
        x = tf.placeholder(tf.float32, [None, 64])
        y_ = tf.placeholder(tf.float32, [None, 10])
        W = tf.Variable(tf.zeros([64, 10]))
        b = tf.Variable(tf.zeros([10]))
        logits = tf.matmul(x, W) + b
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y_, logits=logits))
        train = tf.train.GradientDescentOptimizer(0.5).minimize(loss)
        sess = tf.Session(graph=g)
        sess.run(tf.global_variables_initializer())
    return sess, train, x, y_, W


def _jit_step():
    W = fj.Variable(np.zeros((64, 10), np.float32))
    b = fj.Variable(np.zeros(10, np.float32))
    opt = fj.optimizers.SGD(0.5)

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            logits = x @ W + b
            loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits))
        opt.apply_gradients(zip(tape.gradient(loss, [W, b]), [W, b]))
        return loss
    return step, W


@register
def bench_tf1_session_run(cfg):
    xv, yv = _data()
    sess, train, x, y_, W_tf = _tf1_step()
    step, W_fj = _jit_step()
    before = fj.stats()
    for _ in range(5):             # same number of updates on both sides, entry tiers reached
        sess.run(train, feed_dict={x: xv, y_: yv})
        step(xv, yv)
    check_close("tf1 softmax step", sess.run(W_tf), W_fj.numpy(), rtol=1e-4, atol=1e-6)
    st = {k: fj.stats()[k] - before[k] for k in ("traces", "compiles")}
    feed = {x: xv, y_: yv}
    t = median_times_interleaved([("tf1", lambda: sess.run(train, feed_dict=feed)),
                                  ("jit", lambda: step(xv, yv))],
                                 steps=max(cfg.steps, 200), warmup=max(cfg.warmup, 20))
    sess.close()
    return [Result("tf1 sess.run(train) softmax b100 vs fj.jit step", t["tf1"], t["jit"],
                   notes=f"baseline = the same step as @fj.jit; traces +{st['traces']}, "
                         f"compiles +{st['compiles']}")]
