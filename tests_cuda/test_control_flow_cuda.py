"""Loops and branches placed on the GPU give the CPU's results (tiny shapes). Each is a
loop or an `if` of the host entry launching its body's kernels on the device (the
placement log shows them; nothing runs as NumPy on the host)."""
import re

import numpy as np

import flowjit as fj


def run(device, fn, *args):
    with fj.device(device):
        return [np.asarray(o) for o in fj.jit(fn)(*args)]


def run_logged(capsys, fn, *args):
    """fn's results on the GPU, and the placement log of its compile."""
    fj.config.log_device_placement = True
    try:
        got = run("/gpu:0", fn, *args)
    finally:
        fj.config.log_device_placement = False
    return got, capsys.readouterr().out


def test_scan_cond_while_and_a_scan_gradient_match_the_cpu(capsys):
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((4, 2, 3)).astype(np.float32)
    W = rng.standard_normal((3, 3)).astype(np.float32) * 0.5

    def f(h0, xs):
        with fj.GradientTape() as tape:
            tape.watch(h0)
            h, ys = fj.scan(lambda c, x: (fj.tanh(fj.matmul(c, W) + x), fj.reduce_sum(c * c)), h0, xs)
            loss = fj.reduce_sum(ys) + fj.reduce_sum(h)
        g = tape.gradient(loss, h0)
        b = fj.cond(loss > 0, lambda: h * 2.0, lambda: h - 1.0)
        n = fj.while_loop(lambda i: i < 7, lambda i: i + 2, fj.constant(0))
        return loss, g, b, n
    h0 = np.zeros((2, 3), np.float32)
    got, log = run_logged(capsys, f, h0, xs)
    assert "cond (a loop or branch" in log and "while (a loop or branch" in log, log
    assert "NumPy on the host" not in log, log
    for a, b in zip(got, run("/cpu:0", f, h0, xs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_scan_runs_its_body_on_the_device(capsys):
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((5, 2, 3)).astype(np.float32)
    W = rng.standard_normal((3, 3)).astype(np.float32) * 0.5

    def f(h0, xs):
        with fj.GradientTape() as tape:
            tape.watch(h0)
            h, ys = fj.scan(lambda c, x: (fj.tanh(fj.matmul(c, W) + x), fj.reduce_sum(c * c)), h0, xs)
            loss = fj.reduce_sum(ys) + fj.reduce_sum(h)
        return loss, tape.gradient(loss, h0)
    h0 = rng.standard_normal((2, 3)).astype(np.float32)
    got, log = run_logged(capsys, f, h0, xs)
    assert "scan (a loop or branch of the host entry" in log and "NumPy on the host" not in log, log
    # the body's matmul (with or without a fused epilogue) runs on the device
    assert re.search(r": matmul[^\n]* -> /job:localhost/replica:0/task:0/device:GPU:0", log), log
    for a, b in zip(got, run("/cpu:0", f, h0, xs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_cond_and_a_while_inside_a_scan_body_with_a_gradient():
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((4, 3)).astype(np.float32)

    def f(c0, w):
        with fj.GradientTape() as tape:
            tape.watch([c0, w])

            def step(c, x):
                c = fj.cond(fj.reduce_sum(x) > 0, lambda: c * w + x, lambda: c - x * w)
                n = fj.while_loop(lambda i: i < 3, lambda i: i + 1, fj.constant(0))
                return c, fj.cast(n, "float32") * fj.reduce_sum(c)
            c, ys = fj.scan(step, c0, xs)
            loss = fj.reduce_sum(ys) + fj.reduce_sum(c * c)
        return [loss] + tape.gradient(loss, [c0, w])
    c0, w = rng.standard_normal(3).astype(np.float32), np.float32(0.7)
    for a, b in zip(run("/gpu:0", f, c0, w), run("/cpu:0", f, c0, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _lstm_training(device, params0, data):
    """perf/bench_rnn.py's model (fj.nn.lstm, a dense softmax head, Adam) at tiny sizes:
    the losses of a few steps and the parameters after them."""
    with fj.device(device):
        vs = [fj.Variable(p) for p in params0]
        opt = fj.optimizers.Adam(0.05)

        @fj.jit
        def step(x, y):
            K, b, Wo, bo = vs
            with fj.GradientTape() as tape:
                _, (c, h) = fj.nn.lstm(x, K, b)
                logits = fj.matmul(h, Wo) + bo
                loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits))
            opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
            return loss
        losses = [float(np.asarray(step(x, y))) for x, y in data]
    return losses, [v.numpy() for v in vs]


def test_an_lstm_training_step_on_the_gpu_matches_the_cpu(capsys):
    rng = np.random.default_rng(3)
    B, T, I, H, C = 2, 3, 3, 4, 3
    params0 = [rng.uniform(-0.5, 0.5, (I + H, 4 * H)).astype(np.float32),
               rng.uniform(-0.1, 0.1, 4 * H).astype(np.float32),
               rng.standard_normal((H, C)).astype(np.float32) * 0.5, np.zeros(C, np.float32)]
    data = [(rng.standard_normal((B, T, I)).astype(np.float32),
             np.eye(C, dtype=np.float32)[rng.integers(0, C, B)]) for _ in range(3)]
    fj.config.log_device_placement = True
    try:
        got_losses, got_params = _lstm_training("/gpu:0", params0, data)
    finally:
        fj.config.log_device_placement = False
    log = capsys.readouterr().out
    assert "scan (a loop or branch of the host entry" in log and "NumPy on the host" not in log, log
    want_losses, want_params = _lstm_training("/cpu:0", params0, data)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_params, want_params):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
