"""2-D convolution and pooling (NHWC, HWIO filters) with TensorFlow's semantics.

Ops: conv2d, its two backprops (conv2d_backprop_input / conv2d_backprop_filter, ops of
their own so eager mode, jit and second derivatives share them), max_pool2d with
max_pool2d_grad (the gradient goes to the first maximum of each window in row-major
window order, as TF's CPU kernel does; a window holding NaN pools to NaN, as
np.maximum and TF do, and its gradient goes to its first NaN, like np.argmax),
avg_pool2d with avg_pool2d_grad (the mean over the window's elements inside the input:
padding is not counted).

Padding is "SAME" (TF's rule: out = ceil(in / stride), pad_total = max((out - 1) *
stride + (k - 1) * dilation + 1 - in, 0), the odd pad at the end), "VALID", or explicit
per-side amounts (conv2d). The shape rule fixes the spatial sizes and the filter's
spatial sizes (the pads depend on them): under jit they are specialised (inspect says
why); batch and channel sizes stay symbolic.

This file holds the ops (shape rules, NumPy references, gradients). Their CPU kernels
are the CPU backend's (backends/cpu/conv_lowering.py attaches them to these entries; the
generic ones are in backends/cpu/conv_cpu.py). The generic kernels take every size,
stride, dilation and pad as a run-time value, so one compiled kernel per op and dtype serves every layer.
Per call they choose: 1x1 stride-1 unpadded filters are one BLAS matmul on the input
as it lies; filters with very few taps (K = KH*KW*C_in <= 16) run direct loops
vectorised over output channels; otherwise the input is unfolded (im2col) a chunk of
rows at a time and each chunk is one BLAS call (the backprops likewise), the chunks
run in parallel when the layer has few output channels (see conv_cpu).
Big layers whose GEMMs would be thin get kernels specialised to the node instead
(lower["fixed"], sizes as literals; each checks its channel and filter sizes at run
time and takes the generic path when a later call brings others):
- few output channels, window rows of >= 16 values, no dilation, most windows wholly
  inside the input: direct kernels for the forward and both backprops (conv_direct);
- one input channel: an unfold specialised to the layer for the forward (the generic
  unfold's per-tap copies of one element cost ~5x more), and at stride 1 a direct
  filter gradient (conv_direct.c1_filter_source), else the specialised unfold again.
"""
import numpy as np

from ..errors import ShapeError
from ..ir.registry import register
from ..ir.shapes import Sym, hint, same, unify_dims
from .rules import fmt, require, same_dtype



# --------------------------------------------------------------------------------------
# shape rules
# --------------------------------------------------------------------------------------
def _static(d, what, op):
    """A spatial size as a Python int (specialising a symbolic one, with the reason)."""
    if isinstance(d, Sym):
        return d.env.specialise(d, f"{op}: the {what} fixes the padding and output size")
    return int(d)


def out_size(n, k, stride, dilation, padding):
    """(output size, pad before, pad after) of one spatial dim, TF's rules."""
    eff = (k - 1) * dilation + 1
    if padding == "SAME":
        out = -(-n // stride)
        total = max((out - 1) * stride + eff - n, 0)
        return out, total // 2, total - total // 2
    if padding == "VALID":
        lo = hi = 0
    else:
        lo, hi = padding
    out = (n + lo + hi - eff) // stride + 1
    return out, lo, hi


def _spatial(op, in_shape, kh, kw, attrs, what="input"):
    """Output (OH, OW) and pads for an NHWC input shape; errors name the sizes."""
    h = _static(in_shape[1], f"{what} height", op)
    w = _static(in_shape[2], f"{what} width", op)
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    pad = attrs["padding"]
    ph = pad if isinstance(pad, str) else tuple(pad[0])
    pw = pad if isinstance(pad, str) else tuple(pad[1])
    oh, pt, pb = out_size(h, kh, sh, dh, ph)
    ow, pl, pr = out_size(w, kw, sw, dw, pw)
    if oh < 1 or ow < 1:
        raise ShapeError(f"the {(kh - 1) * dh + 1}x{(kw - 1) * dw + 1} window (kernel {kh}x{kw}, "
                         f"dilations {dh}x{dw}) does not fit the {h}x{w} input with padding "
                         f"{pad if isinstance(pad, str) else list(map(list, pad))}: the output "
                         f"would be empty")
    attrs["pads"] = (pt, pb, pl, pr)
    return oh, ow


def _check_rank(shape, what):
    if len(shape) != 4:
        raise ShapeError(f"{what} must be 4-D, got shape {fmt(shape)}")


def _channels(a, b, what_a, what_b, shape_a, shape_b):
    if same(a, b):
        return a
    if hint(a) != hint(b):
        raise ShapeError(f"{what_a} has {hint(a)} channels but {what_b} expects {hint(b)} "
                         f"({fmt(shape_a)} vs {fmt(shape_b)})")
    return unify_dims(a, b)


def _conv_infer(shapes, dts, attrs):
    x, w = shapes
    dt = same_dtype(dts)
    require(dt, ("float",), "convolution")
    _check_rank(x, "input")
    _check_rank(w, "filters (HWIO)")
    kh = _static(w[0], "filter height", "conv2d")
    kw = _static(w[1], "filter width", "conv2d")
    _channels(x[3], w[2], "input", "filters", x, w)
    oh, ow = _spatial("conv2d", x, kh, kw, attrs)
    return (x[0], oh, ow, w[3]), dt


def _bp_input_infer(shapes, dts, attrs):
    g, w = shapes
    dt = same_dtype(dts)
    xs = tuple(attrs["input_shape"])
    _check_rank(g, "gradient")
    kh = _static(w[0], "filter height", "conv2d_backprop_input")
    kw = _static(w[1], "filter width", "conv2d_backprop_input")
    oh, ow = _spatial("conv2d_backprop_input", xs, kh, kw, attrs)
    if hint(g[1]) != oh or hint(g[2]) != ow:
        raise ShapeError(f"gradient {fmt(g)} does not match the conv2d output size {oh}x{ow}")
    _channels(g[3], w[3], "gradient", "filters", g, w)
    return xs, dt


def _bp_filter_infer(shapes, dts, attrs):
    x, g = shapes
    dt = same_dtype(dts)
    ws = tuple(attrs["filter_shape"])
    _check_rank(x, "input")
    kh = _static(ws[0], "filter height", "conv2d_backprop_filter")
    kw = _static(ws[1], "filter width", "conv2d_backprop_filter")
    oh, ow = _spatial("conv2d_backprop_filter", x, kh, kw, attrs)
    if hint(g[1]) != oh or hint(g[2]) != ow:
        raise ShapeError(f"gradient {fmt(g)} does not match the conv2d output size {oh}x{ow}")
    return ws, dt


def _pool_infer_for(name):
    def infer(shapes, dts, attrs):
        x = shapes[0]
        dt = dts[0]
        require(dt, ("float",), "pooling")
        _check_rank(x, "input")
        kh, kw = attrs["ksize"]
        attrs["dilations"] = (1, 1)
        oh, ow = _spatial(name, x, kh, kw, attrs)
        return (x[0], oh, ow, x[3]), dt
    return infer


def _pool_grad_infer_for(name):
    def infer(shapes, dts, attrs):
        xs = tuple(attrs["input_shape"]) if "input_shape" in attrs else tuple(shapes[0])
        g = shapes[-1]
        attrs["dilations"] = (1, 1)
        kh, kw = attrs["ksize"]
        oh, ow = _spatial(name, xs, kh, kw, attrs)
        if hint(g[1]) != oh or hint(g[2]) != ow or hint(g[3]) != hint(xs[3]):
            raise ShapeError(f"gradient {fmt(g)} does not match the pooling output "
                             f"{oh}x{ow}x{hint(xs[3])}")
        return xs, dts[-1]
    return infer


# --------------------------------------------------------------------------------------
# NumPy references (what eager mode runs): one strided window view per filter tap
# --------------------------------------------------------------------------------------
def _taps(xp, kh, kw, oh, ow, attrs):
    """Yield (i, j, view): for filter tap (i, j) the [N, OH, OW, C] view of the padded
    input xp that the tap multiplies."""
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            yield i, j, (slice(None), slice(r0, r0 + (oh - 1) * sh + 1, sh),
                         slice(c0, c0 + (ow - 1) * sw + 1, sw), slice(None))


def _padded_shape(xs, attrs, oh, ow, kh, kw):
    """Padded extent: the pads, extended where VALID/stride leave input rows unused
    (they are cropped again) or cut where explicit/VALID windows stop early."""
    pt, pb, pl, pr = attrs["pads"]
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    hp = max(xs[1] + pt + pb, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(xs[2] + pl + pr, (ow - 1) * sw + (kw - 1) * dw + 1)
    return hp, wp


def _pad(x, attrs, oh, ow, kh, kw, value=0.0):
    pt, pb, pl, pr = attrs["pads"]
    hp, wp = _padded_shape(x.shape, attrs, oh, ow, kh, kw)
    xp = np.full((x.shape[0], hp, wp, x.shape[3]), value, x.dtype)
    xp[:, pt:pt + x.shape[1], pl:pl + x.shape[2]] = x
    return xp


def _patches(xp, kh, kw, oh, ow, attrs):
    """The [N, OH, OW, KH, KW, C] windows of the padded input xp (a strided view)."""
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    win = win[:, :(oh - 1) * sh + 1:sh, :(ow - 1) * sw + 1:sw, :, ::dh, ::dw]
    return win.transpose(0, 1, 2, 4, 5, 3)


# images per GEMM: the unfolded windows of a chunk stay near 2^23 elements
def _chunk(oh, ow, kh, kw, c):
    return max(1, (1 << 23) // max(oh * ow * kh * kw * c, 1))


def _conv_ref(arrs, attrs, shape, dtype):
    # one GEMM of the unfolded windows per chunk of images (a tap-by-tap sum made 25
    # strided GEMMs for a 5x5 filter: tier 0 ran a small CNN's step 3x slower)
    x, w = arrs
    kh, kw, c, co = w.shape
    n, oh, ow, _ = (int(s) for s in shape)
    xp = _pad(x, attrs, oh, ow, kh, kw)
    out = np.empty((n, oh, ow, co), x.dtype)
    w2 = w.reshape(kh * kw * c, co)
    step = _chunk(oh, ow, kh, kw, c)
    for b in range(0, n, step):
        cols = _patches(xp[b:b + step], kh, kw, oh, ow, attrs).reshape(-1, kh * kw * c)
        out[b:b + step] = (cols @ w2).reshape(-1, oh, ow, co)
    return out


def _bp_input_ref(arrs, attrs, shape, dtype):
    # the transposed convolution as a correlation of the gradient (zeros between its
    # rows and columns for a stride, padded by the filter's extent) with the flipped
    # filter: one GEMM per chunk again, no strided scatter per tap
    g, w = arrs
    xs = tuple(int(s) for s in shape)
    kh, kw, c, co = w.shape
    n, oh, ow = g.shape[:3]
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    pt, pb, pl, pr = attrs["pads"]
    hp, wp = _padded_shape(xs, attrs, oh, ow, kh, kw)
    eh, ew = (kh - 1) * dh, (kw - 1) * dw
    uh, uw = (oh - 1) * sh + 1, (ow - 1) * sw + 1
    hu, wu = uh + eh, uw + ew            # the padded input's rows and columns windows touch
    gz = np.zeros((n, uh + 2 * eh, uw + 2 * ew, co), g.dtype)
    gz[:, eh:eh + uh:sh, ew:ew + uw:sw] = g
    wf = w[::-1, ::-1].transpose(0, 1, 3, 2).reshape(kh * kw * co, c)
    dense = {"strides": (1, 1), "dilations": (dh, dw)}
    dxp = np.zeros((n, hp, wp, c), g.dtype)
    step = _chunk(hu, wu, kh, kw, co)
    for b in range(0, n, step):
        cols = _patches(gz[b:b + step], kh, kw, hu, wu, dense).reshape(-1, kh * kw * co)
        dxp[b:b + step, :hu, :wu] = (cols @ wf).reshape(-1, hu, wu, c)
    return dxp[:, pt:pt + xs[1], pl:pl + xs[2]]


def _bp_filter_ref(arrs, attrs, shape, dtype):
    x, g = arrs
    kh, kw, c, co = (int(s) for s in shape)
    oh, ow = g.shape[1:3]
    xp = _pad(x, attrs, oh, ow, kh, kw)
    dw = np.zeros((kh * kw * c, co), x.dtype)
    step = _chunk(oh, ow, kh, kw, c)
    for b in range(0, x.shape[0], step):
        cols = _patches(xp[b:b + step], kh, kw, oh, ow, attrs).reshape(-1, kh * kw * c)
        dw += cols.T @ g[b:b + step].reshape(-1, co)
    return dw.reshape(kh, kw, c, co)


def _max_pool_ref(arrs, attrs, shape, dtype):
    x = arrs[0]
    kh, kw = attrs["ksize"]
    oh, ow = int(shape[1]), int(shape[2])
    xp = _pad(x, attrs, oh, ow, kh, kw, -np.inf)
    out = None
    for i, j, sl in _taps(xp, kh, kw, oh, ow, attrs):
        out = xp[sl].copy() if out is None else np.maximum(out, xp[sl])
    return out


def _window_argmax(x, attrs, oh, ow):
    """Flat index into the padded input of each window's first maximum (row-major window
    order, padding never chosen) and the padded shape."""
    kh, kw = attrs["ksize"]
    xp = _pad(x, attrs, oh, ow, kh, kw)
    valid = _pad(np.ones(x.shape[:3] + (1,), bool), attrs, oh, ow, kh, kw, False)
    hp, wp = xp.shape[1:3]
    n, c = x.shape[0], x.shape[3]
    flat = (np.arange(n)[:, None, None, None] * hp + np.arange(hp)[None, :, None, None]) * wp + \
        np.arange(wp)[None, None, :, None]
    flat = flat * c + np.arange(c)
    best = bidx = have = None
    for i, j, sl in _taps(xp, kh, kw, oh, ow, attrs):
        v, ok, f = xp[sl], np.broadcast_to(valid[sl], (n, oh, ow, c)), flat[sl]
        if best is None:
            best, bidx, have = v.copy(), f.copy(), ok.copy()
            continue
        # the first maximum; the first NaN (the forward's result) wins over numbers
        take = ok & (~have | (v > best) | (np.isnan(v) & ~np.isnan(best)))
        best = np.where(take, v, best)
        bidx = np.where(take, f, bidx)
        have |= ok
    return bidx, xp.shape


def _max_pool_grad_ref(arrs, attrs, shape, dtype):
    x, g = arrs
    bidx, pshape = _window_argmax(x, attrs, g.shape[1], g.shape[2])
    dxp = np.zeros(pshape, g.dtype)
    np.add.at(dxp.reshape(-1), bidx.reshape(-1), g.reshape(-1))
    pt, pb, pl, pr = attrs["pads"]
    return dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2]]


def _avg_counts(xs, attrs, oh, ow, dtype):
    kh, kw = attrs["ksize"]
    ones = _pad(np.ones((1, xs[1], xs[2], 1), dtype), attrs, oh, ow, kh, kw)
    cnt = np.zeros((1, oh, ow, 1), dtype)
    for i, j, sl in _taps(ones, kh, kw, oh, ow, attrs):
        cnt += ones[sl]
    return cnt


def _avg_pool_ref(arrs, attrs, shape, dtype):
    x = arrs[0]
    kh, kw = attrs["ksize"]
    oh, ow = int(shape[1]), int(shape[2])
    xp = _pad(x, attrs, oh, ow, kh, kw)
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]), x.dtype)
    for i, j, sl in _taps(xp, kh, kw, oh, ow, attrs):
        out += xp[sl]
    return out / _avg_counts(x.shape, attrs, oh, ow, x.dtype)


def _avg_pool_grad_ref(arrs, attrs, shape, dtype):
    g = arrs[0]
    xs = tuple(int(s) for s in shape)
    kh, kw = attrs["ksize"]
    oh, ow = g.shape[1:3]
    pt, pb, pl, pr = attrs["pads"]
    hp, wp = _padded_shape(xs, attrs, oh, ow, kh, kw)
    dxp = np.zeros((xs[0], hp, wp, xs[3]), g.dtype)
    gs = g / _avg_counts(xs, attrs, oh, ow, g.dtype)
    for i, j, sl in _taps(dxp, kh, kw, oh, ow, attrs):
        dxp[sl] += gs
    return dxp[:, pt:pt + xs[1], pl:pl + xs[2]]


register("conv2d", "opaque", _conv_infer, _conv_ref)
register("conv2d_backprop_input", "opaque", _bp_input_infer, _bp_input_ref)
register("conv2d_backprop_filter", "opaque", _bp_filter_infer, _bp_filter_ref)
register("max_pool2d", "opaque", _pool_infer_for("max_pool2d"), _max_pool_ref)
register("max_pool2d_grad", "opaque", _pool_grad_infer_for("max_pool2d_grad"), _max_pool_grad_ref)
register("avg_pool2d", "opaque", _pool_infer_for("avg_pool2d"), _avg_pool_ref)
register("avg_pool2d_grad", "opaque", _pool_grad_infer_for("avg_pool2d_grad"), _avg_pool_grad_ref)


# --------------------------------------------------------------------------------------
# gradient rules (written with the ops above, so jit and eager share them; the conv
# backprops are linear in each input, so their own gradients are convolutions too)
# --------------------------------------------------------------------------------------
def _grads():
    from .grads import defgrad
    from .grads import apply_op

    def conv_attrs(at):
        return {k: at[k] for k in ("strides", "dilations", "padding")}

    def conv_grad(ins, out, g, at):
        x, w = ins
        dx = apply_op("conv2d_backprop_input", [g, w], dict(conv_attrs(at), input_shape=tuple(x.shape)))
        dw = apply_op("conv2d_backprop_filter", [x, g], dict(conv_attrs(at), filter_shape=tuple(w.shape)))
        return [dx, dw]

    def bp_input_grad(ins, out, gg, at):
        g, w = ins       # out = backprop_input(g, w), linear in g and in w
        return [apply_op("conv2d", [gg, w], conv_attrs(at)),
                apply_op("conv2d_backprop_filter", [gg, g],
                         dict(conv_attrs(at), filter_shape=tuple(w.shape)))]

    def bp_filter_grad(ins, out, gg, at):
        x, g = ins       # out = backprop_filter(x, g)
        return [apply_op("conv2d_backprop_input", [g, gg], dict(conv_attrs(at), input_shape=tuple(x.shape))),
                apply_op("conv2d", [x, gg], conv_attrs(at))]

    def pool_attrs(at):
        return {k: at[k] for k in ("ksize", "strides", "padding")}

    def max_pool_grad(ins, out, g, at):
        return [apply_op("max_pool2d_grad", [ins[0], g], pool_attrs(at))]

    def avg_pool_grad(ins, out, g, at):
        return [apply_op("avg_pool2d_grad", [g], dict(pool_attrs(at), input_shape=tuple(ins[0].shape)))]

    def avg_pool_grad_grad(ins, out, gg, at):
        return [apply_op("avg_pool2d", [gg], pool_attrs(at))]

    def max_pool_grad_grad(ins, out, gg, at):
        raise NotImplementedError("second derivatives through max_pool2d are not implemented")

    defgrad("conv2d", conv_grad)
    defgrad("conv2d_backprop_input", bp_input_grad)
    defgrad("conv2d_backprop_filter", bp_filter_grad)
    defgrad("max_pool2d", max_pool_grad)
    defgrad("max_pool2d_grad", max_pool_grad_grad)
    defgrad("avg_pool2d", avg_pool_grad)
    defgrad("avg_pool2d_grad", avg_pool_grad_grad)


_grads()
