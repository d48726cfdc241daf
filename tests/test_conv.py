"""conv2d, max_pool2d and avg_pool2d (TF semantics) against a plain-loop NumPy reference
written here from TF's definitions, their gradients against that reference and finite
differences (float64), jitted against eager, NCHW, symbolic batch/channel sizes, and
clear errors. Shapes are tiny; one jitted function per op is reused (static args for
the configuration: each new one retraces, the compiled kernels are shared)."""
import itertools

import numpy as np
import pytest

import flowjit as fj
from conftest import assert_close

N = fj.nn


@pytest.fixture(autouse=True)
def _python_entry_tier(monkeypatch):
    # compiling each signature's njit entry costs seconds and is covered by test_jit.py
    monkeypatch.setattr(fj.config, "compile_entry_after", 10**9)


# ------------------------------------------------------------------------------------
# the reference: TF's definitions as plain loops
# ------------------------------------------------------------------------------------
def tf_out_and_pad(n, k, s, d, padding):
    eff = (k - 1) * d + 1
    if padding == "VALID":
        return (n - eff) // s + 1, 0
    out = -(-n // s)
    total = max((out - 1) * s + eff - n, 0)
    return out, total // 2             # the odd pad goes at the end


def windows(h, w, kh, kw, s, d, padding):
    """{(oh, ow): [(i, j, ih, iw) in row-major window order, inside the input]}."""
    oh_n, pt = tf_out_and_pad(h, kh, s[0], d[0], padding)
    ow_n, pl = tf_out_and_pad(w, kw, s[1], d[1], padding)
    out = {}
    for oh in range(oh_n):
        for ow in range(ow_n):
            taps = []
            for i in range(kh):
                for j in range(kw):
                    ih, iw = oh * s[0] - pt + i * d[0], ow * s[1] - pl + j * d[1]
                    if 0 <= ih < h and 0 <= iw < w:
                        taps.append((i, j, ih, iw))
            out[oh, ow] = taps
    return oh_n, ow_n, out


def ref_conv(x, w, s, padding, d=(1, 1)):
    n, h, wd, _ = x.shape
    oh, ow, win = windows(h, wd, w.shape[0], w.shape[1], s, d, padding)
    y = np.zeros((n, oh, ow, w.shape[3]))
    for (a, b), taps in win.items():
        for i, j, ih, iw in taps:
            y[:, a, b] += x[:, ih, iw] @ w[i, j]
    return y


def ref_conv_grads(x, w, g, s, padding, d=(1, 1)):
    """d sum(conv(x, w) * g) / dx and / dw."""
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    _, _, win = windows(x.shape[1], x.shape[2], w.shape[0], w.shape[1], s, d, padding)
    for (a, b), taps in win.items():
        for i, j, ih, iw in taps:
            dx[:, ih, iw] += g[:, a, b] @ w[i, j].T
            dw[i, j] += x[:, ih, iw].T @ g[:, a, b]
    return dx, dw


def ref_pool(x, k, s, padding, kind, g=None):
    """Pooled output, and with g the gradient of sum(pool(x) * g) (max: to the window's
    first maximum; avg: over the window's elements inside the input)."""
    n, h, wd, c = x.shape
    oh, ow, win = windows(h, wd, k[0], k[1], s, (1, 1), padding)
    y = np.zeros((n, oh, ow, c))
    dx = np.zeros_like(x)
    for (a, b), taps in win.items():
        vals = np.stack([x[:, ih, iw] for _, _, ih, iw in taps])     # [taps, n, c]
        if kind == "max":
            y[:, a, b] = vals.max(0)
            first = vals.argmax(0)                                   # first maximum
            if g is not None:
                for t, (_, _, ih, iw) in enumerate(taps):
                    dx[:, ih, iw] += np.where(first == t, g[:, a, b], 0.0)
        else:
            y[:, a, b] = vals.mean(0)
            if g is not None:
                for _, _, ih, iw in taps:
                    dx[:, ih, iw] += g[:, a, b] / len(taps)
    return y, dx


# ------------------------------------------------------------------------------------
# the functions under test: one jitted function per op, configuration static
# ------------------------------------------------------------------------------------
def _conv_loss(x, w, g, strides, padding, dilations, data_format="NHWC"):
    with fj.GradientTape() as tape:
        tape.watch(x)
        tape.watch(w)
        y = N.conv2d(x, w, strides, padding, data_format=data_format, dilations=dilations)
        loss = fj.reduce_sum(y * g)
    dx, dw = tape.gradient(loss, [x, w])
    return y, dx, dw


def _pool_loss(x, g, ksize, strides, padding, kind, data_format="NHWC"):
    with fj.GradientTape() as tape:
        tape.watch(x)
        fn = N.max_pool2d if kind == "max" else N.avg_pool2d
        y = fn(x, ksize, strides, padding, data_format=data_format)
        loss = fj.reduce_sum(y * g)
    return y, tape.gradient(loss, x)


conv_jit = fj.jit(_conv_loss, static_argnames=("strides", "padding", "dilations", "data_format"))
pool_jit = fj.jit(_pool_loss, static_argnames=("ksize", "strides", "padding", "kind", "data_format"))


def _eager(fn, *arrays, **kw):
    return [t.numpy() for t in fn(*[fj.constant(a) for a in arrays], **kw)]


def _jitted(fn, *arrays, **kw):
    return [t.numpy() for t in fn(*arrays, **kw)]


# (input NHWC, filter HW, out channels, strides, padding, dilations)
CONV_CASES = [
    ((2, 5, 5, 1), (3, 3), 1, (1, 1), "SAME", (1, 1)),     # 1 channel, odd size
    ((1, 6, 6, 3), (3, 3), 2, (2, 2), "SAME", (1, 1)),     # even size: pad only at the end
    ((2, 7, 6, 2), (3, 2), 3, (2, 1), "VALID", (1, 1)),    # mixed strides, odd/even
    ((1, 8, 7, 2), (5, 5), 2, (3, 3), "SAME", (1, 1)),     # kernel > stride, stride 3
    ((1, 7, 8, 2), (2, 3), 2, (3, 2), "VALID", (1, 1)),    # stride 3, rows left unused
    ((2, 7, 7, 2), (3, 3), 2, (1, 1), "SAME", (2, 2)),     # dilation 2
    ((1, 9, 8, 3), (2, 3), 2, (1, 1), "VALID", (2, 1)),    # dilation 2 x 1
    ((1, 9, 9, 2), (3, 3), 4, (2, 2), "SAME", (2, 2)),     # stride and dilation together
    ((2, 4, 5, 3), (1, 1), 2, (1, 1), "SAME", (1, 1)),     # 1x1: a plain matmul
    ((1, 6, 5, 4), (4, 4), 3, (2, 2), "SAME", (1, 1)),     # k = 2 * stride
    ((1, 10, 9, 4), (3, 3), 5, (1, 1), "VALID", (1, 1)),   # K = 36: unfold + BLAS
]


@pytest.mark.parametrize("xs,k,co,s,padding,d", CONV_CASES)
def test_conv2d_matches_reference_eager_and_jit(xs, k, co, s, padding, d):
    rng = np.random.default_rng(hash((xs, k, s, padding, d)) % 2**32)
    x = rng.standard_normal(xs)
    w = rng.standard_normal(k + (xs[3], co))
    want = ref_conv(x, w, s, padding, d)
    g = rng.standard_normal(want.shape)
    want_dx, want_dw = ref_conv_grads(x, w, g, s, padding, d)
    for got in (_eager(_conv_loss, x, w, g, strides=list(s), padding=padding, dilations=list(d)),
                _jitted(conv_jit, x, w, g, strides=s, padding=padding, dilations=d)):
        assert_close(got[0], want)
        assert_close(got[1], want_dx)
        assert_close(got[2], want_dw)


def test_conv2d_float32_jit_matches_eager_and_many_chunks():
    # 4*28*28 unfolded rows of K = 400: more than one chunk (CHUNK_ELEMS) per kernel
    from flowjit.backends.cpu import conv_cpu as conv
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 28, 28, 16)).astype(np.float32)
    w = rng.standard_normal((5, 5, 16, 3)).astype(np.float32)
    g = rng.standard_normal((4, 28, 28, 3)).astype(np.float32)
    assert 4 * 28 * 28 * 400 > conv.CHUNK_ELEMS
    e = _eager(_conv_loss, x, w, g, strides=1, padding="SAME", dilations=1)
    j = _jitted(conv_jit, x, w, g, strides=1, padding="SAME", dilations=1)
    for a, b in zip(j, e):
        assert_close(a, b, rtol=2e-5, atol=5e-4)
    want = ref_conv(x.astype(np.float64), w.astype(np.float64), (1, 1), "SAME")
    assert_close(j[0], want.astype(np.float32), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("strides,padding,dilations", [(1, "SAME", 1), (1, "VALID", (2, 1)), ((2, 1), "VALID", (1, 2))])
def test_conv2d_one_channel_specialised_unfold(strides, padding, dilations):
    # a one-channel input this big gets an unfold specialised to the layer (filter size,
    # strides, dilations, pads as literals) in the forward and filter-gradient kernels;
    # the same compiled kernels must still be right for a later call with 2 channels
    from flowjit.backends.cpu import conv_lowering as conv
    rng = np.random.default_rng(5)
    x = rng.standard_normal((48, 28, 28, 1)).astype(np.float32)
    w = rng.standard_normal((5, 5, 1, 3)).astype(np.float32)
    s = (strides, strides) if isinstance(strides, int) else strides
    d = (dilations, dilations) if isinstance(dilations, int) else dilations
    y = ref_conv(x.astype(np.float64), w.astype(np.float64), s, padding, d)
    assert y.shape[0] * y.shape[1] * y.shape[2] * 25 >= conv.FIXED_MIN_ELEMS
    assert conv._fixed_conv({"strides": s, "dilations": d, "pads": _pads(x.shape, w.shape, s, d, padding)},
                            [x.shape, w.shape]) is not None
    for c in (1, 2):
        xc = np.concatenate([x] * c, axis=3)
        wc = np.concatenate([w] * c, axis=2)
        g = rng.standard_normal(y.shape).astype(np.float32)
        want = ref_conv(xc.astype(np.float64), wc.astype(np.float64), s, padding, d)
        want_dx, want_dw = ref_conv_grads(xc.astype(np.float64), wc.astype(np.float64), g, s, padding, d)
        got = _jitted(conv_jit, xc, wc, g, strides=strides, padding=padding, dilations=dilations)
        assert_close(got[0], want.astype(np.float32), rtol=1e-4, atol=1e-3)
        assert_close(got[1], want_dx.astype(np.float32), rtol=1e-4, atol=1e-3)
        assert_close(got[2], want_dw.astype(np.float32), rtol=1e-4, atol=2e-3)


def _pads(xs, ws, s, d, padding):
    """(top, bottom, left, right) as TF pads a conv of input xs with filter ws."""
    out = []
    for n, k, st, dl in ((xs[1], ws[0], s[0], d[0]), (xs[2], ws[1], s[1], d[1])):
        o, lo = tf_out_and_pad(n, k, st, dl, padding)
        total = max((o - 1) * st + (k - 1) * dl + 1 - n, 0) if padding == "SAME" else 0
        out += [lo, total - lo]
    return tuple(out)


def test_conv2d_parallel_chunks_for_few_output_channels():
    # few output channels and enough work, but dilated (no direct kernels): the kernels
    # unfold and multiply chunks in a Numba prange (one thread and one small BLAS call
    # per chunk; the input gradient one image per task); results must match the
    # reference like the serial path's
    from flowjit.backends.cpu import conv_lowering as conv, conv_cpu
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 28, 28, 16)).astype(np.float32)
    w = rng.standard_normal((5, 5, 16, 8)).astype(np.float32)
    s, d = (1, 1), (2, 2)
    y = ref_conv(x.astype(np.float64), w.astype(np.float64), s, "SAME", d)
    m = y.shape[0] * y.shape[1] * y.shape[2]
    assert conv_cpu.par_rows.py_func(m, 400, 8) > 0
    assert conv._fixed_conv({"strides": s, "dilations": d, "pads": _pads(x.shape, w.shape, s, d, "SAME")},
                            [x.shape, w.shape]) is None
    g = rng.standard_normal(y.shape).astype(np.float32)
    want_dx, want_dw = ref_conv_grads(x.astype(np.float64), w.astype(np.float64), g, s, "SAME", d)
    got = _jitted(conv_jit, x, w, g, strides=s, padding="SAME", dilations=d)
    assert_close(got[0], y.astype(np.float32), rtol=1e-4, atol=1e-3)
    assert_close(got[1], want_dx.astype(np.float32), rtol=1e-4, atol=1e-3)
    assert_close(got[2], want_dw.astype(np.float32), rtol=1e-4, atol=5e-3)


def test_conv2d_direct_kernels_small_cnn_layer():
    # the small CNN's second layer (5x5 stride 2, 16 -> 8 channels) at batch 16: direct
    # kernels specialised to the layer, in float32
    from flowjit.backends.cpu import conv_lowering as conv
    rng = np.random.default_rng(10)
    x = rng.standard_normal((16, 28, 28, 16)).astype(np.float32)
    w = rng.standard_normal((5, 5, 16, 8)).astype(np.float32)
    s = (2, 2)
    fixed = conv._fixed_conv({"strides": s, "dilations": (1, 1), "pads": _pads(x.shape, w.shape, s, (1, 1), "SAME")},
                             [x.shape, w.shape])
    assert fixed is not None and fixed.get("direct")
    y = ref_conv(x.astype(np.float64), w.astype(np.float64), s, "SAME")
    g = rng.standard_normal(y.shape).astype(np.float32)
    want_dx, want_dw = ref_conv_grads(x.astype(np.float64), w.astype(np.float64), g, s, "SAME")
    got = _jitted(conv_jit, x, w, g, strides=s, padding="SAME", dilations=1)
    assert_close(got[0], y.astype(np.float32), rtol=1e-4, atol=1e-3)
    assert_close(got[1], want_dx.astype(np.float32), rtol=1e-4, atol=1e-3)
    assert_close(got[2], want_dw.astype(np.float32), rtol=1e-4, atol=5e-3)


@pytest.mark.parametrize("parallel", ["pool", "pool_one_thread", "prange"])
def test_conv2d_direct_kernels_float64_edges_tails_and_fallback(monkeypatch, parallel):
    # direct kernels on a small float64 layer (thresholds lowered): odd sizes, mixed
    # strides, SAME and explicit pads cutting windows at every edge, 7 output channels
    # (a tail after every channel block); then the same compiled kernels with another
    # channel count (symbolic) must take the generic path and still be right. Their
    # parallel loops run on flowjit's pool (or serially, with one BLAS thread),
    # or as a Numba prange where there is no pool.
    import contextlib
    from flowjit.backends.cpu import pool
    from flowjit.backends.cpu import conv_lowering as conv
    if parallel.startswith("pool") and not pool.available():
        pytest.skip("no thread pool here")
    monkeypatch.setitem(pool.state, "available", parallel != "prange")
    monkeypatch.setattr(conv, "DIRECT_MIN_MACS", 0)
    monkeypatch.setattr(conv, "DIRECT_MIN_BLOCKED", 0.0)
    limit = contextlib.nullcontext
    if parallel == "pool_one_thread":
        threadpoolctl = pytest.importorskip("threadpoolctl")
        limit = lambda: threadpoolctl.threadpool_limits(1, user_api="blas")  # noqa: E731
    jitted = fj.jit(_conv_loss, static_argnames=("strides", "padding", "dilations", "data_format"))
    rng = np.random.default_rng(12)
    s = (2, 1)
    for c in (4, 6):
        x = rng.standard_normal((3, 13, 17, c))
        w = rng.standard_normal((3, 4, c, 7))
        if c == 4:
            assert conv._fixed_conv({"strides": s, "dilations": (1, 1),
                                     "pads": _pads(x.shape, w.shape, s, (1, 1), "SAME")},
                                    [x.shape, w.shape]).get("direct")
        y = ref_conv(x, w, s, "SAME")
        g = rng.standard_normal(y.shape)
        want_dx, want_dw = ref_conv_grads(x, w, g, s, "SAME")
        with limit():
            got = _jitted(jitted, x, w, g, strides=s, padding="SAME", dilations=1)
        assert_close(got[0], y, rtol=1e-12, atol=1e-12)
        assert_close(got[1], want_dx, rtol=1e-12, atol=1e-12)
        assert_close(got[2], want_dw, rtol=1e-12, atol=1e-12)


def test_conv2d_gradients_match_finite_differences():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 5, 4, 2))
    w = rng.standard_normal((3, 2, 2, 2))
    g = rng.standard_normal(ref_conv(x, w, (2, 1), "SAME", (1, 2)).shape)
    _, dx, dw = _jitted(conv_jit, x, w, g, strides=(2, 1), padding="SAME", dilations=(1, 2))

    def f(xx, ww):
        return float(np.sum(ref_conv(xx, ww, (2, 1), "SAME", (1, 2)) * g))
    eps = 1e-6
    for arr, got, which in ((x, dx, 0), (w, dw, 1)):
        num = np.zeros_like(arr)
        for idx in itertools.product(*map(range, arr.shape)):
            p, m = arr.copy(), arr.copy()
            p[idx] += eps
            m[idx] -= eps
            args_p = (p, w) if which == 0 else (x, p)
            args_m = (m, w) if which == 0 else (x, m)
            num[idx] = (f(*args_p) - f(*args_m)) / (2 * eps)
        assert_close(got, num, rtol=1e-6, atol=1e-7)


def test_conv2d_nchw_and_direct_path():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 6, 7, 1))        # K = 3*3*1: the direct loops
    w = rng.standard_normal((3, 3, 1, 4))
    want = ref_conv(x, w, (1, 2), "SAME")
    g = rng.standard_normal(want.shape)
    want_dx, want_dw = ref_conv_grads(x, w, g, (1, 2), "SAME")
    xt, gt = x.transpose(0, 3, 1, 2), g.transpose(0, 3, 1, 2)
    y, dx, dw = _jitted(conv_jit, xt, w, gt, strides=(1, 1, 1, 2), padding="SAME", dilations=1,
                        data_format="NCHW")
    assert_close(y, want.transpose(0, 3, 1, 2))
    assert_close(dx, want_dx.transpose(0, 3, 1, 2))
    assert_close(dw, want_dw)
    y2 = _jitted(conv_jit, x, w, g, strides=(1, 1, 2, 1), padding="SAME", dilations=1)[0]
    assert_close(y2, want)


def test_conv2d_batch_and_channels_stay_symbolic():
    rng = np.random.default_rng(5)
    f = fj.jit(lambda x, w: N.conv2d(x, w, 2, "SAME"))
    x = rng.standard_normal((2, 6, 6, 3))
    w = rng.standard_normal((3, 3, 3, 4))
    assert_close(f(x, w).numpy(), ref_conv(x, w, (2, 2), "SAME"))
    before = fj.stats()["traces"]
    x2 = rng.standard_normal((5, 6, 6, 2))
    w2 = rng.standard_normal((3, 3, 2, 7))
    assert_close(f(x2, w2).numpy(), ref_conv(x2, w2, (2, 2), "SAME"))
    assert fj.stats()["traces"] == before          # new batch and channels: no retrace
    notes = "\n".join(f.inspect(x, w).specializations)
    assert "conv2d" in notes and "padding" in notes      # spatial sizes: specialised, said why


# ------------------------------------------------------------------------------------
# pooling
# ------------------------------------------------------------------------------------
POOL_CASES = [
    ((2, 5, 5, 1), (2, 2), (2, 2), "SAME"),     # odd size: the last window is partial
    ((1, 6, 6, 3), (3, 3), (2, 2), "SAME"),     # kernel > stride: overlapping windows
    ((1, 7, 6, 2), (3, 2), (1, 2), "VALID"),
    ((2, 8, 7, 2), (2, 3), (3, 3), "VALID"),    # stride 3 > kernel: elements skipped
    ((1, 4, 5, 2), (4, 4), (1, 1), "SAME"),     # windows mostly padding
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("xs,k,s,padding", POOL_CASES)
def test_pool_matches_reference_eager_and_jit(kind, xs, k, s, padding):
    rng = np.random.default_rng(hash((xs, k, s, padding)) % 2**32)
    x = rng.standard_normal(xs)
    want, _ = ref_pool(x, k, s, padding, kind)
    g = rng.standard_normal(want.shape)
    _, want_dx = ref_pool(x, k, s, padding, kind, g)
    for got in (_eager(_pool_loss, x, g, ksize=list(k), strides=list(s), padding=padding, kind=kind),
                _jitted(pool_jit, x, g, ksize=k, strides=s, padding=padding, kind=kind)):
        assert_close(got[0], want)
        assert_close(got[1], want_dx)


def test_max_pool_gradient_goes_to_first_maximum_on_ties():
    x = np.zeros((1, 4, 4, 2))
    x[0, 1, 1, 1] = -1.0                       # negative values: padding never wins
    x[..., 1] -= 5.0
    g = np.arange(1.0, 1.0 + 2 * 2 * 2).reshape(1, 2, 2, 2)
    for run in (_eager, _jitted):
        fn = _pool_loss if run is _eager else pool_jit
        y, dx = run(fn, x, g, ksize=(3, 3), strides=(2, 2), padding="SAME", kind="max")
        _, want = ref_pool(x, (3, 3), (2, 2), "SAME", "max", g)
        assert_close(dx, want)
        # channel 0 is all zeros: each window's first element (row-major) takes its gradient
        assert dx[0, 0, 0, 0] == g[0, 0, 0, 0] and dx[0, 0, 2, 0] == g[0, 0, 1, 0]
        assert dx[0, 2, 2, 0] == g[0, 1, 1, 0] and dx[0, 1, 1, 0] == 0
        assert_close(y[..., 1], np.full((1, 2, 2), -5.0))


def test_pool_finite_differences_and_nchw_and_aliases():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 5, 4, 2))
    g = rng.standard_normal((1, 3, 2, 2))
    for kind in ("max", "avg"):
        _, dx = _jitted(pool_jit, x, g, ksize=(3, 2), strides=(2, 2), padding="SAME", kind=kind)
        eps = 1e-6
        num = np.zeros_like(x)
        for idx in itertools.product(*map(range, x.shape)):
            p, m = x.copy(), x.copy()
            p[idx] += eps
            m[idx] -= eps
            num[idx] = (np.sum(ref_pool(p, (3, 2), (2, 2), "SAME", kind)[0] * g) -
                        np.sum(ref_pool(m, (3, 2), (2, 2), "SAME", kind)[0] * g)) / (2 * eps)
        assert_close(dx, num, rtol=1e-6, atol=1e-7)
        y, dxt = _jitted(pool_jit, x.transpose(0, 3, 1, 2), g.transpose(0, 3, 1, 2),
                         ksize=(1, 1, 3, 2), strides=(1, 1, 2, 2), padding="SAME", kind=kind,
                         data_format="NCHW")
        assert_close(y, ref_pool(x, (3, 2), (2, 2), "SAME", kind)[0].transpose(0, 3, 1, 2))
        assert_close(dxt, dx.transpose(0, 3, 1, 2))
    assert N.max_pool is N.max_pool2d and N.avg_pool is N.avg_pool2d


# ------------------------------------------------------------------------------------
# errors: the op, the shapes and this file's line
# ------------------------------------------------------------------------------------
def _raises(exc, fn, *words):
    with pytest.raises(exc) as ei:
        fn()
    msg = str(ei.value)
    for w in words + ("test_conv.py",):
        assert w in msg, (w, msg)


def test_errors_name_op_shapes_and_line():
    x = np.zeros((1, 5, 5, 3), np.float32)
    w = np.zeros((3, 3, 3, 4), np.float32)
    _raises(ValueError, lambda: N.conv2d(x[0], w, 1, "SAME"), "conv2d", "4-D", "(5, 5, 3)")
    _raises(ValueError, lambda: N.conv2d(x, w[:, :, :2], 1, "SAME"), "conv2d", "channels",
            "(1, 5, 5, 3)", "(3, 3, 2, 4)")
    _raises(ValueError, lambda: N.conv2d(x, w, 0, "SAME"), "conv2d", "strides")
    _raises(ValueError, lambda: N.conv2d(x, w, [1, 2, 2], "SAME"), "conv2d", "strides")
    _raises(ValueError, lambda: N.conv2d(x, w, [2, 1, 1, 1], "SAME"), "conv2d", "batch")
    _raises(ValueError, lambda: N.conv2d(x, w, 1, "FULL"), "conv2d", "padding", "'FULL'")
    _raises(ValueError, lambda: N.conv2d(x, np.zeros((7, 7, 3, 1), np.float32), 1, "VALID"),
            "conv2d", "7x7", "5x5")
    _raises(ValueError, lambda: N.conv2d(x, w, 1, "SAME", data_format="NWHC"), "data_format")
    _raises(TypeError, lambda: N.conv2d(x.astype(np.int32), w.astype(np.int32), 1, "SAME"),
            "conv2d", "int32")
    _raises(ValueError, lambda: N.max_pool2d(x, 2, 2, "same-ish"), "max_pool2d", "padding")
    _raises(ValueError, lambda: N.avg_pool2d(x, [1, 2, 2, 2], 1, "SAME"), "avg_pool2d", "ksize")
    f = fj.jit(lambda a, b: N.conv2d(a, b, 1, "SAME"))
    _raises(ValueError, lambda: f(x, w[:, :, :2]), "conv2d", "channels")


# ------------------------------------------------------------------------------------
# the example trainer, quick mode
# ------------------------------------------------------------------------------------
def _example():
    import os
    import sys
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    if here not in sys.path:
        sys.path.insert(0, here)
    import cnn_digits
    return cnn_digits


def test_cnn_example_quick_runs_and_learns(capsys, tmp_path):
    pytest.importorskip("tensorboard")
    ex = _example()
    acc = ex.main(["--steps", "30", "--no-progress", "--logdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.rglob("*"))
    assert acc > 0.5, out                        # 10 classes: chance is 0.1
    assert "conv2 at stride 1" in out and "test_accuracy" in out
    # the deep model (its jitted training is the same machinery): eager forward, layout
    params, model, how = ex.deep_cnn(8)
    assert "2x2x64 = 256 features" in how
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    assert model(params, fj.constant(x), training=True).shape == (3, 10)


def test_small_cnn_on_28x28_has_the_talks_layout():
    ex = _example()
    params, model, how = ex.small_cnn(28)
    assert "7x7x12 = 588 features" in how
    want = (5 * 5 * 1 * 16 + 16) + (5 * 5 * 16 * 8 + 8) + (4 * 4 * 8 * 12 + 12) + \
        (588 * 200 + 200) + (200 * 10 + 10)
    assert ex.count_params(params) == want
    x = np.random.default_rng(0).random((2, 784), dtype=np.float32)
    assert model(params, fj.constant(x)).shape == (2, 10)


def test_conv2d_explicit_padding():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 5, 6, 2))
    w = rng.standard_normal((3, 3, 2, 3))
    pads = [[0, 0], [2, 0], [1, 3], [0, 0]]
    want = ref_conv(np.pad(x, pads), w, (2, 2), "VALID")
    got = N.conv2d(fj.constant(x), w, 2, pads).numpy()
    assert_close(got, want)
    f = fj.jit(lambda a, b: N.conv2d(a, b, 2, [[0, 0], [2, 0], [1, 3], [0, 0]]))
    assert_close(f(x, w).numpy(), want)


def test_conv2d_second_derivative_matches_finite_differences():
    # z(w) = sum(dx^2) with dx = d sum(conv(x, w) * g) / dx: differentiates the backprop op
    rng = np.random.default_rng(17)
    x = rng.standard_normal((1, 4, 5, 2))
    w = rng.standard_normal((2, 3, 2, 2))
    g = rng.standard_normal(ref_conv(x, w, (2, 1), "SAME").shape)
    xt, wt = fj.constant(x), fj.constant(w)
    with fj.GradientTape() as outer:
        outer.watch(wt)
        with fj.GradientTape() as inner:
            inner.watch(xt)
            loss = fj.reduce_sum(N.conv2d(xt, wt, (2, 1), "SAME") * g)
        dx = inner.gradient(loss, xt)
        z = fj.reduce_sum(dx * dx)
    got = outer.gradient(z, wt).numpy()

    def zf(ww):
        return float(np.sum(ref_conv_grads(x, ww, g, (2, 1), "SAME")[0] ** 2))
    num = np.zeros_like(w)
    for idx in itertools.product(*map(range, w.shape)):
        p, m = w.copy(), w.copy()
        p[idx] += 1e-6
        m[idx] -= 1e-6
        num[idx] = (zf(p) - zf(m)) / 2e-6
    assert_close(got, num, rtol=1e-6, atol=1e-6)


def test_direct_kernel_pool_tasks_are_named_per_dtype():
    # a pool task is found by its registered name in every process: a float32 and a
    # float64 kernel for the same layer must not share one (the float32 kernel would
    # run the float64 task on its buffers)
    import re
    from flowjit.backends.cpu import conv_direct
    f = dict(C=16, CO=8, KH=5, KW=5, SH=2, SW=2, PT=1, PL=1)
    names = set()
    for gen in (conv_direct.forward_source, conv_direct.filter_source, conv_direct.input_source):
        for dt in ("float32", "float64"):
            names.update(re.findall(r"register_task\('([^']+)'", gen(f, dt)))
    c1 = conv_direct.c1_literals((2, 12, 12, 1), (5, 5, 1, 4), {"strides": (1, 1), "dilations": (1, 1),
                                                                 "pads": (2, 2, 2, 2)}, (12, 12))
    for dt in ("float32", "float64"):
        names.update(re.findall(r"register_task\('([^']+)'", conv_direct.c1_filter_source(c1, dt)))
    from flowjit.backends.cpu import pool
    assert len(names) == (8 if pool.available() else 0)
