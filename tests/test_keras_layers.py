"""flowjit.keras's convolution, pooling, normalization and recurrent layers against NumPy
references of Keras 3's formulas (written here: conv/pool loops with TF's "same" rule,
BN/LN, the SimpleRNN/LSTM/GRU step equations with Keras's gate orders), eagerly and
inside fj.jit; float64 gradients against finite differences; Keras 3's parameter counts,
weight names and order; BatchNormalization's moving statistics under jit; a new sequence
length reuses the compiled loop."""
import re

import numpy as np
import pytest

import flowjit as fj
from flowjit.keras import layers as L
from flowjit.keras import optimizers

from conftest import assert_close, finite_differences


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def relu(z):
    return np.maximum(z, 0.0)


def jit_same(layer, *args, **kwargs):
    """The layer's output eagerly and inside fj.jit: the same values; returns the eager one."""
    eager = layer(*args, **kwargs)
    jitted = fj.jit(lambda *a: layer(*a, **kwargs))(*args)
    e_l = eager if isinstance(eager, (list, tuple)) else [eager]
    j_l = jitted if isinstance(jitted, (list, tuple)) else [jitted]
    assert len(e_l) == len(j_l)
    for e, j in zip(e_l, j_l):
        assert_close(j.numpy(), e.numpy(), rtol=1e-6, atol=1e-6)
    return eager


# --------------------------------------------------------------------------------------
# NumPy references
# --------------------------------------------------------------------------------------
def _out_pad(n, k, s, d, padding):
    eff = (k - 1) * d + 1
    if padding == "valid":
        return (n - eff) // s + 1, 0
    out = -(-n // s)
    return out, max((out - 1) * s + eff - n, 0) // 2


def np_conv2d(x, k, strides=(1, 1), padding="valid", dilation=(1, 1)):
    """NHWC x, HWIO k (groups = channels // k.shape[2]), TF's SAME rule (odd pad at the end)."""
    n, h, w, c = x.shape
    kh, kw, ci, co = k.shape
    groups, cog = c // ci, co // (c // ci)
    oh, pt = _out_pad(h, kh, strides[0], dilation[0], padding)
    ow, pl = _out_pad(w, kw, strides[1], dilation[1], padding)
    y = np.zeros((n, oh, ow, co))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    hi, wi = i * strides[0] - pt + a * dilation[0], j * strides[1] - pl + b * dilation[1]
                    if 0 <= hi < h and 0 <= wi < w:
                        for g in range(groups):
                            y[:, i, j, g * cog:(g + 1) * cog] += \
                                x[:, hi, wi, g * ci:(g + 1) * ci] @ k[a, b, :, g * cog:(g + 1) * cog]
    return y


def np_pool2d(x, size, strides, padding, op):
    n, h, w, c = x.shape
    oh, pt = _out_pad(h, size[0], strides[0], 1, padding)
    ow, pl = _out_pad(w, size[1], strides[1], 1, padding)
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * strides[0] - pt, j * strides[1] - pl
            win = x[:, max(h0, 0):h0 + size[0], max(w0, 0):w0 + size[1], :]
            y[:, i, j] = win.max(axis=(1, 2)) if op == "max" else win.mean(axis=(1, 2))
    return y


def np_rnn(kind, x, ws, init=None, go_backwards=False, mask=None, zero_output=False, act=np.tanh,
           ract=sig, reset_after=True, din=None, drec=None):
    """Keras 3's step equations over batch-major x: (sequence in processing order, last
    output, final states). din / drec: dropout masks of the inputs / the recurrent state,
    one for all gates or one per gate (Keras's implementation 1)."""
    b_, t_, _ = x.shape
    k, r = ws[0], ws[1]
    b = ws[2] if len(ws) > 2 else None
    u = r.shape[0]
    g_n = {"simple": 1, "lstm": 4, "gru": 3}[kind]
    n_states = 2 if kind == "lstm" else 1
    states = list(init) if init is not None else [np.zeros((b_, u))] * n_states

    def per_gate(v, masks):
        return [v * (1.0 if masks is None else masks[min(g, len(masks) - 1)]) for g in range(g_n)]

    def blk(w, g):
        return w[..., g * u:(g + 1) * u]
    if kind == "gru" and reset_after:
        bi, br = (np.zeros(3 * u), np.zeros(3 * u)) if b is None else (b[0], b[1])
    else:
        bi, br = (np.zeros(g_n * u) if b is None else b), np.zeros(g_n * u)
    outs = []
    for t in (range(t_ - 1, -1, -1) if go_backwards else range(t_)):
        h = states[0]
        xg, hg = per_gate(x[:, t], din), per_gate(h, drec)
        xp = [xg[g] @ blk(k, g) + blk(bi, g) for g in range(g_n)]
        if kind == "simple":
            new = [act(xp[0] + hg[0] @ r)]
        elif kind == "lstm":
            i, f, c_, o = (xp[g] + hg[g] @ blk(r, g) for g in range(4))
            c = ract(f) * states[1] + ract(i) * act(c_)
            new = [ract(o) * act(c), c]
        else:
            z = ract(xp[0] + hg[0] @ blk(r, 0) + blk(br, 0))
            rg = ract(xp[1] + hg[1] @ blk(r, 1) + blk(br, 1))
            if reset_after:
                hh = act(xp[2] + rg * (hg[2] @ blk(r, 2) + blk(br, 2)))
            else:
                hh = act(xp[2] + (rg * hg[2]) @ blk(r, 2))
            new = [z * h + (1 - z) * hh]
        out = new[0]
        if mask is not None:
            live = mask[:, t:t + 1]
            out = np.where(live, new[0], 0.0 if zero_output else h)
            new = [np.where(live, a, s) for a, s in zip(new, states)]
        states = new
        outs.append(out)
    return np.stack(outs, 1), outs[-1], states


def rnn_weights(rng, layer, scale=0.5):
    ws = [rng.standard_normal(tuple(w.shape)) * scale for w in layer.weights]
    layer.set_weights(ws)
    return [w.numpy().astype(np.float64) for w in layer.weights]


# --------------------------------------------------------------------------------------
# convolution and pooling
# --------------------------------------------------------------------------------------
CONV2D = [
    dict(filters=4, kernel_size=3),
    dict(filters=4, kernel_size=(3, 2), strides=2, padding="same"),
    dict(filters=3, kernel_size=3, dilation_rate=2, padding="same", activation="relu"),
    dict(filters=4, kernel_size=2, strides=(2, 3), padding="SAME", use_bias=False),
    dict(filters=6, kernel_size=3, groups=3, padding="same"),
]


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("cfg", CONV2D, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_conv2d_forward(rng, cfg, channels_first):
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    layer = L.Conv2D(data_format="channels_first" if channels_first else None, **cfg)
    xin = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_first else x
    layer(xin)
    layer.set_weights([rng.standard_normal(tuple(w.shape)).astype(np.float32) for w in layer.weights])
    got = jit_same(layer, xin).numpy()
    k = layer.kernel.numpy().astype(np.float64)
    strides = (cfg.get("strides"),) * 2 if isinstance(cfg.get("strides"), int) else cfg.get("strides", (1, 1))
    dil = (cfg.get("dilation_rate", 1),) * 2
    want = np_conv2d(x.astype(np.float64), k, strides, cfg.get("padding", "valid").lower(), dil)
    if cfg.get("use_bias", True):
        want = want + layer.bias.numpy()
    if cfg.get("activation") == "relu":
        want = relu(want)
    if channels_first:
        want = want.transpose(0, 3, 1, 2)
    assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("cfg", [dict(kernel_size=3), dict(kernel_size=3, padding="causal", dilation_rate=2),
                                 dict(kernel_size=4, strides=2, padding="same"),
                                 dict(kernel_size=2, padding="causal", groups=3)],
                         ids=["valid", "causal-dil2", "same-s2", "causal-groups"])
def test_conv1d_forward(rng, cfg, channels_first):
    x = rng.standard_normal((2, 9, 3)).astype(np.float32)
    layer = L.Conv1D(6, data_format="channels_first" if channels_first else None, **cfg)
    xin = np.ascontiguousarray(x.transpose(0, 2, 1)) if channels_first else x
    layer(xin)
    layer.set_weights([rng.standard_normal(tuple(w.shape)).astype(np.float32) for w in layer.weights])
    got = jit_same(layer, xin).numpy()
    k = layer.kernel.numpy().astype(np.float64)
    assert k.shape == (cfg["kernel_size"], 3 // cfg.get("groups", 1), 6)
    pad, xx = cfg.get("padding", "valid"), x.astype(np.float64)
    d = cfg.get("dilation_rate", 1)
    if pad == "causal":
        xx = np.pad(xx, ((0, 0), ((cfg["kernel_size"] - 1) * d, 0), (0, 0)))
        pad = "valid"
    want = np_conv2d(xx[:, None], k[None], (1, cfg.get("strides", 1)), pad, (1, d))[:, 0] + layer.bias.numpy()
    if channels_first:
        want = want.transpose(0, 2, 1)
    assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("cfg", [dict(pool_size=2), dict(pool_size=3, strides=2, padding="same"),
                                 dict(pool_size=(2, 3), padding="same"), dict(pool_size=3, strides=1)],
                         ids=["2", "3-s2-same", "2x3-same", "3-s1"])
def test_pooling2d_forward(rng, cfg, op, channels_first):
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    cls = L.MaxPooling2D if op == "max" else L.AveragePooling2D
    layer = cls(data_format="channels_first" if channels_first else None, **cfg)
    xin = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_first else x
    got = jit_same(layer, xin).numpy()
    size = cfg["pool_size"] if isinstance(cfg["pool_size"], tuple) else (cfg["pool_size"],) * 2
    strides = (cfg["strides"],) * 2 if "strides" in cfg else size
    want = np_pool2d(x.astype(np.float64), size, strides, cfg.get("padding", "valid"), op)
    assert_close(got, want.transpose(0, 3, 1, 2) if channels_first else want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("op", ["max", "avg"])
def test_pooling1d_forward(rng, op, channels_first):
    x = rng.standard_normal((2, 9, 3)).astype(np.float32)
    fmt = "channels_first" if channels_first else None
    xin = np.ascontiguousarray(x.transpose(0, 2, 1)) if channels_first else x
    for cfg, size, strides, pad in [({}, 2, 2, "valid"), (dict(pool_size=3, strides=2, padding="same"), 3, 2, "same")]:
        layer = (L.MaxPooling1D if op == "max" else L.AveragePooling1D)(data_format=fmt, **cfg)
        got = jit_same(layer, xin).numpy()
        want = np_pool2d(x[:, None].astype(np.float64), (1, size), (1, strides), pad, op)[:, 0]
        assert_close(got, want.transpose(0, 2, 1) if channels_first else want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling(rng, keepdims):
    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    for cls, fn in [(L.GlobalAveragePooling2D, np.mean), (L.GlobalMaxPooling2D, np.max)]:
        assert_close(jit_same(cls(keepdims=keepdims), x).numpy(), fn(x, axis=(1, 2), keepdims=keepdims),
                     rtol=1e-6, atol=1e-6)
        assert_close(cls(data_format="channels_first", keepdims=keepdims)(x).numpy(),
                     fn(x, axis=(2, 3), keepdims=keepdims), rtol=1e-6, atol=1e-6)
    x3 = x[:, :, 0]
    for cls, fn in [(L.GlobalAveragePooling1D, np.mean), (L.GlobalMaxPooling1D, np.max)]:
        assert_close(jit_same(cls(keepdims=keepdims), x3).numpy(), fn(x3, axis=1, keepdims=keepdims),
                     rtol=1e-6, atol=1e-6)
        assert_close(cls(data_format="channels_first", keepdims=keepdims)(x3).numpy(),
                     fn(x3, axis=2, keepdims=keepdims), rtol=1e-6, atol=1e-6)


def test_conv_and_pool_arguments():
    assert L.Conv2D(2, 3).strides == (1, 1) and L.Conv2D(2, 3).padding == "valid"
    assert L.MaxPooling2D().pool_size == (2, 2) and L.MaxPooling2D().strides == (2, 2)
    assert L.MaxPooling2D(3, strides=1).strides == (1, 1)
    with pytest.raises(ValueError, match="dilation_rate"):
        L.Conv2D(2, 3, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="padding"):
        L.Conv2D(2, 3, padding="causal")
    with pytest.raises(ValueError, match="groups"):
        L.Conv2D(3, 3, groups=2)
    with pytest.raises(ValueError, match="data_format"):
        L.Conv2D(3, 3, data_format="NHWC")
    with pytest.raises(ValueError, match="groups"):
        L.Conv2D(4, 3, groups=2)(np.zeros((1, 4, 4, 3), np.float32))


# --------------------------------------------------------------------------------------
# normalization
# --------------------------------------------------------------------------------------
def np_bn(x, mean, var, gamma, beta, eps, shape):
    inv = 1 / np.sqrt(var.reshape(shape) + eps)
    if gamma is not None:
        inv = inv * gamma.reshape(shape)
    return (x - mean.reshape(shape)) * inv + (0 if beta is None else beta.reshape(shape))


@pytest.mark.parametrize("cfg", [{}, dict(axis=1), dict(axis=1, center=False),
                                 dict(scale=False, momentum=0.9, epsilon=0.01)],
                         ids=["default", "axis1", "axis1-nocenter", "noscale"])
def test_batchnorm_training_inference_and_frozen(rng, cfg):
    x = (rng.standard_normal((4, 3, 5, 6)) * 2 + 1).astype(np.float32)
    layer = L.BatchNormalization(**cfg)
    layer(x)
    ws = [rng.uniform(0.5, 1.5, tuple(w.shape)).astype(np.float32) for w in layer.weights]
    layer.set_weights(ws)
    axis = cfg.get("axis", -1) % 4
    shape = [1] * 4
    shape[axis] = x.shape[axis]
    red = tuple(a for a in range(4) if a != axis)
    gamma = ws[0] if cfg.get("scale", True) else None
    beta = ws[int(gamma is not None)] if cfg.get("center", True) else None
    mm, mv = ws[-2], ws[-1]
    x64 = x.astype(np.float64)
    mean, var = x64.mean(red), x64.var(red)
    eps, m = cfg.get("epsilon", 1e-3), cfg.get("momentum", 0.99)

    got = layer(x, training=True).numpy()
    assert_close(got, np_bn(x64, mean, var, gamma, beta, eps, shape), rtol=1e-5, atol=1e-5)
    assert_close(layer.moving_mean.numpy(), mm * m + mean * (1 - m), rtol=1e-5, atol=1e-6)
    assert_close(layer.moving_variance.numpy(), mv * m + var * (1 - m), rtol=1e-5, atol=1e-6)
    mm2, mv2 = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    want_inf = np_bn(x64, mm2, mv2, gamma, beta, eps, shape)
    for training in (None, False):
        assert_close(jit_same(layer, x, training=training).numpy(), want_inf, rtol=1e-5, atol=1e-5)
    assert_close(layer.moving_mean.numpy(), mm2)                  # inference changes nothing
    layer.trainable = False                                        # frozen: inference mode
    assert_close(layer(x, training=True).numpy(), want_inf, rtol=1e-5, atol=1e-5)
    assert_close(layer.moving_mean.numpy(), mm2)
    assert_close(layer.moving_variance.numpy(), mv2)


def test_batchnorm_weights_and_counts():
    layer = L.BatchNormalization()
    layer(np.zeros((2, 16), np.float32))
    assert layer.count_params() == 64
    assert sum(int(np.prod(w.shape)) for w in layer.non_trainable_weights) == 32
    assert [w.name.split("/")[-1] for w in layer.weights] == ["gamma:0", "beta:0", "moving_mean:0",
                                                              "moving_variance:0"]
    assert [w.name.split("/")[-1] for w in layer.trainable_weights] == ["gamma:0", "beta:0"]
    assert_close(layer.moving_variance.numpy(), np.ones(16, np.float32))
    assert_close(layer.moving_mean.numpy(), np.zeros(16, np.float32))


def test_batchnorm_moving_statistics_under_jit(rng):
    """A jitted step (tape over BN in training, then an optimizer step), run twice, gives
    the eager run's moving statistics, weights and outputs: the assignments are compiled
    into the step."""
    xs = [(rng.standard_normal((8, 3)) * 2 + 1).astype(np.float32) for _ in range(2)]
    y = rng.standard_normal((8, 3)).astype(np.float32)

    def run(jit):
        layer = L.BatchNormalization(momentum=0.8)
        layer(xs[0])
        layer.set_weights([np.full(3, 1.5, np.float32), np.full(3, 0.1, np.float32),
                           np.full(3, 0.2, np.float32), np.full(3, 2.0, np.float32)])
        opt = optimizers.SGD(0.1)

        def step(x, y):
            with fj.GradientTape() as tape:
                out = layer(x, training=True)
                loss = fj.reduce_mean(fj.square(out - y))
            grads = tape.gradient(loss, layer.trainable_weights)
            opt.apply_gradients(zip(grads, layer.trainable_weights))
            return out, loss
        fn = fj.jit(step) if jit else step
        outs = [fn(x, y) for x in xs]
        return [o.numpy() for o, _ in outs] + [float(l) for _, l in outs] + layer.get_weights()
    eager, jitted = run(False), run(True)
    assert len(eager) == 8
    for a, b in zip(jitted, eager):
        assert_close(a, b, rtol=1e-6, atol=1e-6)
    # the statistics really moved twice: 0.2 -> 0.2 * 0.8^2 + ...
    m1 = 0.2 * 0.8 + xs[0].mean(0) * 0.2
    assert_close(eager[-2], m1 * 0.8 + xs[1].mean(0) * 0.2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", [{}, dict(axis=1), dict(axis=[1, 2]), dict(axis=[-1, -2], center=False),
                                 dict(scale=False, epsilon=0.1)],
                         ids=["default", "axis1", "axis12", "axis-1-2-nocenter", "noscale"])
def test_layernorm_forward(rng, cfg):
    x = (rng.standard_normal((2, 3, 4, 5)) * 3 + 1).astype(np.float32)
    layer = L.LayerNormalization(**cfg)
    layer(x)
    ws = [rng.standard_normal(tuple(w.shape)).astype(np.float32) for w in layer.weights]
    layer.set_weights(ws)
    ax = cfg.get("axis", -1)
    axes = tuple(sorted(a % 4 for a in (ax if isinstance(ax, list) else [ax])))
    shape = [x.shape[a] if a in axes else 1 for a in range(4)]
    gamma = ws[0].reshape(shape) if cfg.get("scale", True) else 1.0
    beta = ws[-1].reshape(shape) if cfg.get("center", True) else 0.0
    assert all(w.shape == tuple(x.shape[a] for a in axes) for w in ws)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axes, keepdims=True), x64.var(axes, keepdims=True)
    want = (x64 - mean) / np.sqrt(var + cfg.get("epsilon", 1e-3)) * gamma + beta
    assert_close(jit_same(layer, x).numpy(), want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# recurrent layers
# --------------------------------------------------------------------------------------
RNN_KINDS = {"simple": L.SimpleRNN, "lstm": L.LSTM, "gru": L.GRU}
RNN_CASES = [("simple", {}), ("lstm", {}), ("gru", {}), ("gru", dict(reset_after=False)),
             ("lstm", dict(use_bias=False)), ("simple", dict(activation="relu"))]


def _ref_kwargs(kind, cfg):
    out = {}
    if cfg.get("activation") == "relu":
        out["act"] = relu
    if kind == "gru":
        out["reset_after"] = cfg.get("reset_after", True)
    return out


@pytest.mark.parametrize("opts", [dict(return_sequences=True, return_state=True), dict(go_backwards=True),
                                  dict(return_sequences=True, go_backwards=True, return_state=True),
                                  dict(initial_state=True, return_sequences=True), dict(mask=True),
                                  dict(mask=True, return_sequences=True, go_backwards=True)],
                         ids=["seq-state", "backwards", "seq-backwards-state", "initial-state", "mask",
                              "mask-seq-backwards"])
@pytest.mark.parametrize("kind,cfg", RNN_CASES, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}{w}" for k, w in v.items()) or "default")
def test_rnn_forward(rng, kind, cfg, opts):
    opts = dict(opts)
    use_init, use_mask = opts.pop("initial_state", False), opts.pop("mask", False)
    layer = RNN_KINDS[kind](3, **cfg, **opts)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    layer(x)
    ws = rnn_weights(rng, layer)
    kw, ref = {}, {}
    n_states = 2 if kind == "lstm" else 1
    if use_init:
        init = [rng.standard_normal((3, 3)).astype(np.float32) for _ in range(n_states)]
        kw["initial_state"] = init if n_states > 1 else init[0]
        ref["init"] = [s.astype(np.float64) for s in init]
    if use_mask:
        mask = np.ones((3, 5), bool)
        mask[0, 3:] = False
        mask[1, :2] = False
        mask[2, 2] = False
        kw["mask"] = ref["mask"] = mask
    seq, last, states = np_rnn(kind, x.astype(np.float64), ws, go_backwards=layer.go_backwards,
                               **ref, **_ref_kwargs(kind, cfg))
    got = jit_same(layer, x, **kw)
    got = list(got) if isinstance(got, tuple) else [got]
    want = [seq if layer.return_sequences else last] + (states if layer.return_state else [])
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_close(g.numpy(), w, rtol=1e-5, atol=1e-5)


def test_rnn_shapes_and_return_state():
    x = np.zeros((2, 7, 4), np.float32)
    assert L.LSTM(5)(x).shape == (2, 5)
    assert L.LSTM(5, return_sequences=True)(x).shape == (2, 7, 5)
    out, h, c = L.LSTM(5, return_state=True)(x)
    assert (out.shape, h.shape, c.shape) == ((2, 5), (2, 5), (2, 5))
    out, h = L.GRU(5, return_sequences=True, return_state=True)(x)
    assert (out.shape, h.shape) == ((2, 7, 5), (2, 5))
    out, h = L.SimpleRNN(5, return_state=True)(x)
    assert (out.shape, h.shape) == ((2, 5), (2, 5))
    assert L.Bidirectional(L.LSTM(5, return_sequences=True))(x).shape == (2, 7, 10)
    assert L.Bidirectional(L.GRU(5), merge_mode="sum")(x).shape == (2, 5)
    outs = L.Bidirectional(L.LSTM(5, return_state=True))(x)
    assert [tuple(o.shape) for o in outs] == [(2, 10)] + [(2, 5)] * 4
    # functional API: symbolic batch and time
    from flowjit.keras.layer import Input
    inp = Input((None, 4))
    seq = L.LSTM(6, return_sequences=True)(inp)
    assert seq.shape == (None, None, 6)
    assert L.GRU(3)(seq).shape == (None, 3)


@pytest.mark.parametrize("kind,units,features,params", [
    ("lstm", 64, 32, 24832), ("gru", 64, 32, 18816), ("simple", 64, 32, 6208), ("lstm", 3, 2, 72)])
def test_rnn_param_counts_and_weights(kind, units, features, params):
    layer = RNN_KINDS[kind](units)
    layer(np.zeros((1, 2, features), np.float32))
    assert layer.count_params() == params
    g = {"simple": 1, "lstm": 4, "gru": 3}[kind]
    bias = (2, 3 * units) if kind == "gru" else (g * units,)
    assert [tuple(w.shape) for w in layer.weights] == [(features, g * units), (units, g * units), bias]
    cell = {"simple": "simple_rnn_cell", "lstm": "lstm_cell", "gru": "gru_cell"}[kind]
    assert [w.name for w in layer.weights] == [f"{layer.name}/{cell}/{n}:0" for n in
                                               ("kernel", "recurrent_kernel", "bias")]
    assert layer.cell.kernel is layer.weights[0]


def test_param_counts_conv_gru_reset_before_and_lstm_forget_bias():
    c = L.Conv2D(32, (3, 3))
    assert c(np.zeros((1, 28, 28, 1), np.float32)).shape == (1, 26, 26, 32)
    assert c.count_params() == 320 and tuple(c.kernel.shape) == (3, 3, 1, 32)
    c1 = L.Conv1D(8, 5)
    c1(np.zeros((1, 10, 4), np.float32))
    assert c1.count_params() == 5 * 4 * 8 + 8
    g = L.GRU(64, reset_after=False)
    g(np.zeros((1, 2, 32), np.float32))
    assert g.count_params() == 18624 and tuple(g.cell.bias.shape) == (192,)
    lstm = L.LSTM(3)
    lstm(np.zeros((1, 2, 2), np.float32))
    assert_close(lstm.cell.bias.numpy(), np.array([0, 0, 0, 1, 1, 1] + [0] * 6, np.float32))
    lstm = L.LSTM(3, unit_forget_bias=False)
    lstm(np.zeros((1, 2, 2), np.float32))
    assert_close(lstm.cell.bias.numpy(), np.zeros(12, np.float32))
    # orthogonal recurrent kernel
    r = L.SimpleRNN(4)
    r(np.zeros((1, 2, 3), np.float32))
    rk = r.cell.recurrent_kernel.numpy()
    assert_close(rk.T @ rk, np.eye(4, dtype=np.float32), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_bidirectional(rng, merge_mode):
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    layer = L.Bidirectional(L.GRU(2, return_sequences=True), merge_mode=merge_mode)
    layer(x)
    names = [w.name for w in layer.weights]
    assert all(n.startswith("forward_gru") for n in names[:3]) and all(n.startswith("backward_gru") for n in names[3:])
    assert [n.split("/")[-1] for n in names] == ["kernel:0", "recurrent_kernel:0", "bias:0"] * 2
    assert layer.backward_layer.go_backwards and not layer.forward_layer.go_backwards
    ws = [rng.standard_normal(tuple(w.shape)) * 0.5 for w in layer.weights]
    layer.set_weights(ws)
    fwd, _, _ = np_rnn("gru", x.astype(np.float64), [w.astype(np.float32).astype(np.float64) for w in ws[:3]])
    bwd, _, _ = np_rnn("gru", x.astype(np.float64), [w.astype(np.float32).astype(np.float64) for w in ws[3:]],
                       go_backwards=True)
    bwd = bwd[:, ::-1]
    want = {"concat": lambda: np.concatenate([fwd, bwd], -1), "sum": lambda: fwd + bwd,
            "mul": lambda: fwd * bwd, "ave": lambda: (fwd + bwd) / 2, None: lambda: [fwd, bwd]}[merge_mode]()
    got = jit_same(layer, x)
    for g, w in zip(got if merge_mode is None else [got], want if merge_mode is None else [want]):
        assert_close(g.numpy(), w, rtol=1e-5, atol=1e-5)


def test_bidirectional_states_and_initial_state(rng):
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    layer = L.Bidirectional(L.LSTM(2, return_state=True))
    layer(x)
    ws = rnn_weights(rng, layer)
    init = [rng.standard_normal((2, 2)).astype(np.float32) for _ in range(4)]
    out, fh, fc, bh, bc = layer(x, initial_state=init)
    _, f_last, f_states = np_rnn("lstm", x.astype(np.float64), ws[:3], init=init[:2])
    _, b_last, b_states = np_rnn("lstm", x.astype(np.float64), ws[3:], init=init[2:], go_backwards=True)
    assert_close(out.numpy(), np.concatenate([f_last, b_last], -1), rtol=1e-5, atol=1e-5)
    for g, w in zip((fh, fc, bh, bc), f_states + b_states):
        assert_close(g.numpy(), w, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="go_backwards"):
        L.Bidirectional(L.LSTM(2, go_backwards=True))


def test_cells_single_step(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    for cls, kind in [(L.LSTMCell, "lstm"), (L.GRUCell, "gru"), (L.SimpleRNNCell, "simple")]:
        cell = cls(4)
        states = [rng.standard_normal((2, 4)).astype(np.float32) for _ in range(2 if kind == "lstm" else 1)]
        cell(x, states)
        ws = rnn_weights(rng, cell)
        h, new = cell(x, states)
        _, want_h, want_states = np_rnn(kind, x[:, None].astype(np.float64), ws,
                                        init=[s.astype(np.float64) for s in states])
        assert_close(h.numpy(), want_h, rtol=1e-5, atol=1e-5)
        for g, w in zip(new, want_states):
            assert_close(g.numpy(), w, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# dropout: one mask per sequence, the same at every step, drawn outside the loop
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_rnn_input_dropout_mask_is_the_same_at_every_step(jit):
    layer = L.SimpleRNN(6, activation=None, dropout=0.5, return_sequences=True, seed=3)
    x = np.ones((4, 5, 6), np.float32)
    layer(x)
    layer.set_weights([np.eye(6, dtype=np.float32), np.zeros((6, 6), np.float32), np.zeros(6, np.float32)])
    fn = fj.jit(lambda x: layer(x, training=True)) if jit else (lambda x: layer(x, training=True))
    out = fn(x).numpy()                      # h_t = (x_t * mask) @ I = mask
    assert np.all(out == out[:, :1])
    assert set(np.unique(out)) <= {0.0, 2.0} and 0 < (out == 0).mean() < 1
    assert_close(layer(x).numpy(), x)        # inference: no dropout
    assert not np.array_equal(fn(x).numpy(), out)    # a fresh mask per call


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_rnn_recurrent_dropout_mask_is_the_same_at_every_step(jit):
    layer = L.SimpleRNN(8, activation=None, recurrent_dropout=0.5, return_sequences=True)
    x = np.zeros((3, 3, 8), np.float32)
    x[:, 0] = 1.0
    layer(x)
    layer.set_weights([np.eye(8, dtype=np.float32), np.eye(8, dtype=np.float32), np.zeros(8, np.float32)])
    fn = fj.jit(lambda x: layer(x, training=True)) if jit else (lambda x: layer(x, training=True))
    out = fn(x).numpy()                      # h_0 = 1, h_1 = m, h_2 = m * m
    assert np.all(out[:, 0] == 1)
    assert set(np.unique(out[:, 1])) <= {0.0, 2.0} and 0 < (out[:, 1] == 0).mean() < 1
    assert_close(out[:, 2], out[:, 1] ** 2)


@pytest.mark.parametrize("kind,cfg,n_masks", [("lstm", {}, 4), ("gru", {}, 3), ("gru", dict(reset_after=False), 3),
                                              ("simple", {}, 1), ("lstm", dict(recurrent_dropout=0.0), 1),
                                              ("gru", dict(recurrent_dropout=0.0), 1)],
                         ids=["lstm", "gru", "gru-reset-before", "simple", "lstm-input-only", "gru-input-only"])
def test_rnn_dropout_equations_with_given_masks(rng, kind, cfg, n_masks):
    """With recurrent dropout every gate has its own input and recurrent masks (Keras's
    implementation 1), else one input mask; the masks fixed here, eager and jit agree with
    the NumPy equations."""
    cfg = {"dropout": 0.5, "recurrent_dropout": 0.5, **cfg}
    layer = RNN_KINDS[kind](3, return_sequences=True, **cfg)
    x = rng.standard_normal((2, 4, 2)).astype(np.float32)
    layer(x)
    ws = rnn_weights(rng, layer)
    din = [(rng.uniform(size=(2, 2)) > 0.5) * 2.0 for _ in range(n_masks)]
    drec = [(rng.uniform(size=(2, 3)) > 0.5) * 2.0 for _ in range(n_masks)] if cfg["recurrent_dropout"] else None
    calls = []

    def masks(step_input, state, training):
        calls.append(training)
        assert tuple(step_input.shape)[1:] == (2,) and tuple(state.shape)[1:] == (3,)
        return ([fj.constant(m.astype(np.float32)) for m in din],
                None if drec is None else [fj.constant(m.astype(np.float32)) for m in drec])
    layer.cell.dropout_masks = masks
    want, _, _ = np_rnn(kind, x.astype(np.float64), ws, din=din, drec=drec, **_ref_kwargs(kind, cfg))
    assert_close(jit_same(layer, x, training=True).numpy(), want, rtol=1e-5, atol=1e-5)
    assert calls and all(calls)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_lstm_gru_dropout_train_step_under_jit(rng, kind):
    layer = RNN_KINDS[kind](4, dropout=0.3, recurrent_dropout=0.3)
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    infer = layer(x).numpy()
    assert_close(layer(x, training=False).numpy(), infer)
    opt = optimizers.Adam(0.01)

    @fj.jit
    def step(x):
        with fj.GradientTape() as tape:
            out = layer(x, training=True)
            loss = fj.reduce_mean(fj.square(out))
        opt.apply_gradients(zip(tape.gradient(loss, layer.trainable_weights), layer.trainable_weights))
        return out
    a = step(x).numpy()
    b = layer(x, training=True).numpy()
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    assert not np.allclose(a, infer)


# --------------------------------------------------------------------------------------
# no retrace for a new sequence length
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lstm", "gru", "simple"])
def test_new_sequence_length_does_not_retrace(rng, kind):
    layer = RNN_KINDS[kind](4, return_sequences=True)
    layer(np.zeros((2, 3, 3), np.float32))
    opt = optimizers.SGD(0.05)

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            loss = fj.reduce_mean(fj.square(layer(x, training=True) - y))
        opt.apply_gradients(zip(tape.gradient(loss, layer.trainable_weights), layer.trainable_weights))
        return loss
    fj.reset_stats()
    losses = [float(step(rng.standard_normal((2, t, 3)).astype(np.float32), np.zeros((2, t, 4), np.float32)))
              for t in (3, 9, 4)]
    assert fj.stats()["traces"] == 1 and np.all(np.isfinite(losses))
    a = step.inspect(np.zeros((2, 3, 3), np.float32), np.zeros((2, 3, 4), np.float32))
    b = step.inspect(np.zeros((2, 11, 3), np.float32), np.zeros((2, 11, 4), np.float32))
    assert a.forward_source == b.forward_source
    assert len(re.findall(r"for l\d+_t in", a.forward_source)) == 1     # one loop, not unrolled


def test_input_projection_is_hoisted_out_of_the_loop(rng):
    """The loop body holds one matmul (h @ recurrent_kernel); x @ kernel for every step is
    a single matmul before it."""
    layer = L.LSTM(4)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    layer(x)
    src = fj.jit(lambda x: layer(x)).inspect(x).forward_source
    loop = re.search(r"\n(\s*)for l\d+_t in[^\n]*\n((?:\1\s+[^\n]*\n)+)", src)
    assert loop is not None
    body = loop.group(2)
    # the loop is a function of its own (defined first); the entry calls it
    before = src[src.rindex("def e_"):].split("_loop0(", 1)[0]
    n_body = len(re.findall(r"\b(?:bmm|gemm|pgemm|matmul|dot)\w*\(", body))
    n_before = len(re.findall(r"\b(?:bmm|gemm|matmul|dot)\w*\(", before))
    assert n_body == 1 and n_before >= 1, (n_body, n_before)


# --------------------------------------------------------------------------------------
# float64 gradients against finite differences
# --------------------------------------------------------------------------------------
def _grad_check(rng, layer, x, call_kw=None, rtol=1e-6, atol=1e-8):
    """d sum(outputs * R) / d (inputs, trainable weights): tape (eager and jitted) vs
    central differences."""
    call_kw = call_kw or {}
    x = np.asarray(x, np.float64)
    outs = layer(x, **call_kw)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    rs = [rng.standard_normal(tuple(o.shape)) for o in outs]
    ws = layer.trainable_weights
    assert all(w.dtype == fj.float64 for w in ws)
    values = [x] + [w.numpy() for w in ws]

    def loss_fj(xt):
        o = layer(xt, **call_kw)
        o = list(o) if isinstance(o, (list, tuple)) else [o]
        return fj.add_n([fj.reduce_sum(a * r) for a, r in zip(o, rs)])

    def grads(xt):
        with fj.GradientTape() as tape:
            tape.watch(xt)
            loss = loss_fj(xt)
        return tape.gradient(loss, [xt] + ws)
    eager = [g.numpy() for g in grads(fj.constant(x))]
    jitted = [g.numpy() for g in fj.jit(grads)(x)]

    def f(*arrays):
        for w, a in zip(ws, arrays[1:]):
            w.assign(a)
        return float(loss_fj(arrays[0]))
    for i in range(len(values)):
        want = finite_differences(f, [v.copy() for v in values], i)
        assert_close(eager[i], want, rtol=rtol, atol=atol)
        assert_close(jitted[i], eager[i], rtol=1e-9, atol=1e-10)
    for w, v in zip(ws, values[1:]):
        w.assign(v)


@pytest.mark.parametrize("cfg", [dict(kernel_size=2, strides=2, padding="same", activation="tanh"),
                                 dict(kernel_size=3, padding="same", dilation_rate=2, data_format="channels_first"),
                                 dict(kernel_size=2, groups=2)], ids=["s2-same", "dil2-cf", "groups"])
def test_conv2d_gradients(rng, cfg):
    layer = L.Conv2D(2, dtype="float64", **cfg)
    _grad_check(rng, layer, rng.standard_normal((1, 4, 3, 2)) if "data_format" not in cfg
                else rng.standard_normal((1, 2, 4, 3)))


def test_conv1d_and_pooling_gradients(rng):
    _grad_check(rng, L.Conv1D(2, 3, padding="causal", dilation_rate=2, dtype="float64"),
                rng.standard_normal((1, 5, 2)))
    for layer in (L.MaxPooling2D(2, strides=1, padding="same", dtype="float64"),
                  L.AveragePooling2D(3, strides=2, padding="same", dtype="float64"),
                  L.GlobalAveragePooling2D(dtype="float64"), L.GlobalMaxPooling2D(dtype="float64"),
                  L.MaxPooling1D(2, dtype="float64")):
        x = rng.standard_normal((1, 4, 3) if isinstance(layer, L.MaxPooling1D) else (1, 3, 4, 2))
        _grad_check(rng, layer, x)


def test_normalization_gradients(rng):
    _grad_check(rng, L.BatchNormalization(dtype="float64"), rng.standard_normal((4, 3)) * 2,
                dict(training=True))
    _grad_check(rng, L.BatchNormalization(axis=1, dtype="float64"), rng.standard_normal((2, 2, 3)),
                dict(training=True))
    _grad_check(rng, L.BatchNormalization(dtype="float64"), rng.standard_normal((4, 3)))
    _grad_check(rng, L.LayerNormalization(dtype="float64"), rng.standard_normal((2, 4)))
    _grad_check(rng, L.LayerNormalization(axis=[1, 2], dtype="float64"), rng.standard_normal((2, 2, 3)))


@pytest.mark.parametrize("kind,cfg", [("lstm", dict(return_sequences=True)), ("lstm", dict(go_backwards=True,
                                      return_state=True)), ("gru", dict(return_sequences=True)),
                                      ("gru", dict(reset_after=False)), ("simple", dict(return_state=True))],
                         ids=["lstm-seq", "lstm-back-state", "gru-seq", "gru-reset-before", "simple-state"])
def test_rnn_gradients(rng, kind, cfg):
    layer = RNN_KINDS[kind](3, dtype="float64", **cfg)
    x = rng.standard_normal((2, 3, 2))
    layer(x)
    rnn_weights(rng, layer)
    _grad_check(rng, layer, x)


def test_rnn_gradient_with_mask(rng):
    layer = L.GRU(2, return_sequences=True, dtype="float64")
    mask = np.array([[True, True, False], [False, True, True]])
    _grad_check(rng, layer, rng.standard_normal((2, 3, 2)), dict(mask=mask))
