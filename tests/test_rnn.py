"""fj.nn's recurrent cells and layers against NumPy references of TF1's formulas (gate
order i, j, f, o; forget bias; GRU's r/u gates), values and float64 gradients, eager and
jitted in both tiers; sequence lengths mask like TF's dynamic_rnn."""
import numpy as np
import pytest

import flowjit as fj

from conftest import assert_close, finite_differences as _fd



def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_lstm_step(x, c, h, K, b, fb=1.0):
    i, j, f, o = np.split(np.concatenate([x, h], 1) @ K + b, 4, axis=1)
    c = c * sig(f + fb) + sig(i) * np.tanh(j)
    return np.tanh(c) * sig(o), c


def np_gru_step(x, h, Kg, bg, Kc, bc):
    r, u = np.split(sig(np.concatenate([x, h], 1) @ Kg + bg), 2, axis=1)
    cand = np.tanh(np.concatenate([x, r * h], 1) @ Kc + bc)
    return u * h + (1 - u) * cand


def np_rnn_step(x, h, K, b):
    return np.tanh(np.concatenate([x, h], 1) @ K + b)


def np_layer(kind, xs, weights, state, lengths=None, reverse=False):
    """batch-major xs; returns (outputs, final state) with TF's masking."""
    B, T, _ = xs.shape
    outs = np.zeros(xs.shape[:2] + (weights[-1].shape[-1] if kind != "lstm" else weights[1].shape[0] // 4,))
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        live = np.ones((B, 1), bool) if lengths is None else (t < np.asarray(lengths)).reshape(-1, 1)
        if kind == "lstm":
            c, h = state
            h2, c2 = np_lstm_step(xs[:, t], c, h, *weights)
            state = (np.where(live, c2, c), np.where(live, h2, h))
            out = h2
        else:
            h2 = np_gru_step(xs[:, t], state, *weights) if kind == "gru" else np_rnn_step(xs[:, t], state, *weights)
            state, out = np.where(live, h2, state), h2
        outs[:, t] = np.where(live, out, 0.0)
    return outs, state


def weights(rng, kind, n_in, units, dtype):
    def w(*shape, scale=0.5):
        return (rng.standard_normal(shape) * scale).astype(dtype)
    if kind == "lstm":
        return [w(n_in + units, 4 * units), w(4 * units, scale=0.1)]
    if kind == "gru":
        return [w(n_in + units, 2 * units), w(2 * units, scale=0.1) + 1.0, w(n_in + units, units),
                w(units, scale=0.1)]
    return [w(n_in + units, units), w(units, scale=0.1)]


def fj_layer(kind, x, ws, state, lengths=None, reverse=False):
    fn = {"lstm": fj.nn.lstm, "gru": fj.nn.gru, "rnn": fj.nn.simple_rnn}[kind]
    return fn(x, *ws, initial_state=state, sequence_length=lengths, reverse=reverse)


def initial(rng, kind, B, units, dtype):
    s = lambda: (rng.standard_normal((B, units)) * 0.3).astype(dtype)  # noqa: E731
    return (s(), s()) if kind == "lstm" else s()


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_cells_match_tf1_formulas(rng, kind):
    x = rng.standard_normal((3, 2)).astype(np.float32)
    ws = weights(rng, kind, 2, 4, np.float32)
    st = initial(rng, kind, 3, 4, np.float32)
    if kind == "lstm":
        want_h, want_c = np_lstm_step(x, st[0], st[1], *ws)
        h, (c, h2) = fj.nn.lstm_cell(x, st, *ws)
        assert_close(c.numpy(), want_c, rtol=1e-5, atol=1e-6)
    elif kind == "gru":
        want_h = np_gru_step(x, st, *ws)
        h, h2 = fj.nn.gru_cell(x, st, *ws)
    else:
        want_h = np_rnn_step(x, st, *ws)
        h, h2 = fj.nn.simple_rnn_cell(x, st, *ws)
    assert_close(h.numpy(), want_h, rtol=1e-5, atol=1e-6)
    assert_close(h2.numpy(), want_h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("masked", [False, True])
def test_layers_match_numpy_loops(rng, tier, kind, masked):
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    ws = weights(rng, kind, 2, 4, np.float32)
    st = initial(rng, kind, 3, 4, np.float32)
    lengths = np.array([5, 2, 0], np.int32) if masked else None
    for reverse in (False, True):
        want_out, want_state = np_layer(kind, x, ws, st, lengths, reverse)
        got = [fj_layer(kind, fj.convert_to_tensor(x), ws, st, lengths, reverse),
               fj.jit(lambda x: fj_layer(kind, x, ws, st, lengths, reverse))(x)]
        for out, state in got:
            assert_close(out.numpy(), want_out, rtol=1e-5, atol=1e-6)
            for a, b in zip(state if kind == "lstm" else [state], want_state if kind == "lstm" else [want_state]):
                assert_close(a.numpy(), b, rtol=1e-5, atol=1e-6)


def test_dynamic_rnn_with_a_cell_function_equals_the_layer(rng, tier):
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    K, b = weights(rng, "lstm", 3, 5, np.float32)
    zero = np.zeros((2, 5), np.float32)

    def run(x):
        a = fj.nn.dynamic_rnn(lambda x_t, s: fj.nn.lstm_cell(x_t, s, K, b), x, (zero, zero),
                              sequence_length=[4, 3])
        b_ = fj.nn.lstm(x, K, b, sequence_length=[4, 3])
        return a[0], b_[0], a[1][1], b_[1][1]
    for out in (run(fj.convert_to_tensor(x)), fj.jit(run)(x)):
        assert_close(out[0].numpy(), out[1].numpy(), rtol=1e-5, atol=1e-6)
        assert_close(out[2].numpy(), out[3].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_gradients_match_finite_differences(rng, tier, kind):
    B, T, n_in, units = 2, 3, 2, 2
    x = rng.standard_normal((B, T, n_in))
    ws = weights(rng, kind, n_in, units, np.float64)
    lengths = np.array([3, 2], np.int32)
    proj = rng.standard_normal((T, units))

    def np_loss(x, *ws):
        out, state = np_layer(kind, x, list(ws), initial(np.random.default_rng(7), kind, B, units, np.float64),
                              lengths)
        last = state[1] if kind == "lstm" else state
        return (out * proj).sum() + (last ** 2).sum()

    def grads(x, *ws):
        ts = [fj.convert_to_tensor(a) for a in (x,) + ws]
        st = initial(np.random.default_rng(7), kind, B, units, np.float64)
        with fj.GradientTape() as tape:
            tape.watch(ts)
            out, state = fj_layer(kind, ts[0], ts[1:], st, lengths)
            last = state[1] if kind == "lstm" else state
            val = fj.reduce_sum(out * proj) + fj.reduce_sum(last * last)
        return [val] + tape.gradient(val, ts)
    args = [x] + ws
    for got in (grads(*args), fj.jit(grads)(*args)):
        assert_close(got[0].numpy(), np_loss(*args), rtol=1e-12)
        for i in range(len(args)):
            assert_close(got[i + 1].numpy(), _fd(np_loss, args, i), rtol=1e-6, atol=1e-8)


def test_lstm_training_step_does_not_retrace_for_a_new_length(rng):
    K = fj.Variable(weights(rng, "lstm", 3, 4, np.float32)[0])
    b = fj.Variable(np.zeros(16, np.float32))
    opt = fj.optimizers.Adam(0.01)

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            out, (c, h) = fj.nn.lstm(x, K, b)
            loss = fj.reduce_mean(fj.square(h - y))
        opt.apply_gradients(zip(tape.gradient(loss, [K, b]), [K, b]))
        return loss
    y = rng.standard_normal((2, 4)).astype(np.float32)
    fj.reset_stats()
    losses = [float(step(rng.standard_normal((2, T, 3)).astype(np.float32), y)) for T in (3, 9, 3, 20)]
    assert fj.stats()["traces"] == 1 and np.all(np.isfinite(losses))


def test_lstm_kernels_take_each_array_once(rng):
    # the cell's backward reads one constant (1.0) in several places and writes several
    # gradients into one concatenation's buffer: each array is one kernel parameter
    # (an array parameter costs compile time), and the gradients stay those of the loop
    import re
    B, T, I, H = 4, 3, 5, 6
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    K = (rng.standard_normal((I + H, 4 * H)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(4 * H) * 0.1).astype(np.float32)

    def loss(x, K, b):
        _, (c, h) = fj.nn.lstm(x, K, b)
        return fj.reduce_sum(h * h)
    grads = fj.jit(fj.grad(loss, argnums=(1, 2)))
    info = grads.inspect(x, K, b)
    calls = [m for src in (info.forward_source, info.backward_source)
             for m in re.finditer(r"^\s*(k_\w+)\((.*)\)$", src, re.M)]
    assert len(calls) >= 2
    for m in calls:
        arrays = [a.strip() for a in re.split(r",(?![^(]*\))", m.group(2)) if not a.strip().startswith("np.int64")]
        assert len(arrays) == len(set(arrays)), m.group(0)
    got = grads(x, K, b)
    want = fj.grad(loss, argnums=(1, 2))(x, K, b)
    for g, w in zip(got, want):
        assert_close(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)
