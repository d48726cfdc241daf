"""End to end: the MLP 64-128-10 on the bundled digits, against a NumPy implementation
of the same model from the same initial weights, and the example's accuracy."""
import os
import sys

import numpy as np
import pytest

import flowjit as fj

pytest.importorskip("sklearn")
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)
import mlp_digits  # noqa: E402


def numpy_adam_mlp(params, batches, lr, b1=0.9, b2=0.999, eps=1e-7):
    # float32 throughout, like the model it checks
    w1, b1_, w2, b2_ = [p.astype(np.float32) for p in params]
    ps = [w1, b1_, w2, b2_]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    losses = []
    for t, (x, y) in enumerate(batches, start=1):
        x = x.astype(np.float32)
        h_pre = x @ ps[0] + ps[1]
        h = np.maximum(h_pre, 0)
        z = h @ ps[2] + ps[3]
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        losses.append(-(y * logp).sum(1).mean())
        dz = (np.exp(logp) - y) / np.float32(len(x))
        grads = [None, None, h.T @ dz, dz.sum(0)]
        dh = dz @ ps[2].T * (h_pre > 0)
        grads[0], grads[1] = x.T @ dh, dh.sum(0)
        # the bias corrections in float32, as TF computes them in the variable's dtype
        one = np.float32(1)
        lr_t = np.float32(lr) * np.sqrt(one - np.float32(b2) ** np.float32(t)) / (one - np.float32(b1) ** np.float32(t))
        for k in range(4):
            m[k] = np.float32(b1) * m[k] + np.float32(1 - b1) * grads[k]
            v[k] = np.float32(b2) * v[k] + np.float32(1 - b2) * grads[k] ** 2
            ps[k] = ps[k] - lr_t * m[k] / (np.sqrt(v[k]) + np.float32(eps))
    return np.array(losses)


def jitted_step(params, opt):
    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, mlp_digits.model(params, x)))
        opt.apply_gradients(zip(tape.gradient(loss, params), params))
        return loss
    return step


def test_loss_curve_matches_numpy_first_20_steps():
    data = fj.data.load_digits()
    params = mlp_digits.build()
    init = [p.numpy() for p in params]
    batches = [data.train.next_batch(64) for _ in range(20)]
    step = jitted_step(params, fj.optimizers.Adam(0.005))
    ours = np.array([float(step(x, y)) for x, y in batches])
    ref = numpy_adam_mlp(init, batches, 0.005)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert ours[-1] < ours[0] * 0.5
    assert fj.stats()["traces"] >= 1
    info = step.inspect(*batches[0])
    assert info.backward_source is not None and info.saved


def test_mlp_example_reaches_96_percent():
    acc = mlp_digits.main(["--epochs", "20"])
    assert acc >= 0.96


def test_variable_updates_are_written_in_place():
    params = mlp_digits.build()
    bufs = [p._buf for p in params]
    step = jitted_step(params, fj.optimizers.SGD(0.1, momentum=0.9))
    x = np.random.default_rng(0).random((8, 64)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[np.arange(8)]
    before = [b.copy() for b in bufs]
    step(x, y)
    c, _ = step._lookup((x, y), {})
    # the backward function writes the new weights and momenta over the old buffers
    assert c.effect_copy.count(False) >= 2 * len(params)
    assert all(p._buf is b for p, b in zip(params, bufs))
    assert all(not np.array_equal(b, o) for b, o in zip(bufs, before))
