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

CPU kernels. The generic ones (ops/conv_cpu.py) take every size, stride, dilation and
pad as a run-time value, so one compiled kernel per op and dtype serves every layer.
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
import hashlib
import os

import numpy as np

from ..errors import ShapeError
from ..ir.registry import register
from ..ir.shapes import Sym, hint, same, unify_dims
from . import conv_direct
from .conv_cpu import DIRECT_MAX_K
from .rules import fmt, require, same_dtype

# a one-channel input whose unfolded matrix has at least this many elements (in the
# traced call) gets an unfold specialised to its layer: filter size, strides,
# dilations and pads as literals, so each window row is a copy of a known length
# (measured at 64x28x28x1, 5x5: 0.8 vs 4.0 ms; the cost is one compile per layer)
FIXED_MIN_ELEMS = 1 << 18
# a layer with at most this many output channels, window rows of at least
# DIRECT_MIN_ROW = KW*C_in values (vectors of a useful length), no dilation and at
# least DIRECT_MIN_MACS multiply-adds in the traced call gets direct kernels
# specialised to it (ops/conv_direct.py): its GEMMs are too thin for BLAS to amortise
# the unfolding (measured at CO = 64, 3x3, C = 32: direct and im2col + BLAS tie),
# unless too few of its windows lie wholly inside the input (measured at 14x14x8 ->
# 12, 4x4 stride 2, 4 of 7 columns: every direct kernel slower than the generic one)
DIRECT_MAX_CO = 32
DIRECT_MIN_ROW = 16
DIRECT_MIN_MACS = 1 << 22
DIRECT_MIN_BLOCKED = 0.75


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


def _conv_ref(arrs, attrs, shape, dtype):
    x, w = arrs
    kh, kw = w.shape[:2]
    n, oh, ow, co = (int(s) for s in shape)
    xp = _pad(x, attrs, oh, ow, kh, kw)
    out = np.zeros((n, oh, ow, co), x.dtype)
    for i, j, sl in _taps(xp, kh, kw, oh, ow, attrs):
        out += np.matmul(xp[sl], w[i, j])
    return out


def _bp_input_ref(arrs, attrs, shape, dtype):
    g, w = arrs
    xs = tuple(int(s) for s in shape)
    kh, kw = w.shape[:2]
    oh, ow = g.shape[1:3]
    pt, pb, pl, pr = attrs["pads"]
    hp, wp = _padded_shape(xs, attrs, oh, ow, kh, kw)
    dxp = np.zeros((xs[0], hp, wp, xs[3]), g.dtype)
    for i, j, sl in _taps(dxp, kh, kw, oh, ow, attrs):
        dxp[sl] += np.matmul(g, w[i, j].T)
    return dxp[:, pt:pt + xs[1], pl:pl + xs[2]]


def _bp_filter_ref(arrs, attrs, shape, dtype):
    x, g = arrs
    kh, kw = int(shape[0]), int(shape[1])
    oh, ow = g.shape[1:3]
    xp = _pad(x, attrs, oh, ow, kh, kw)
    dw = np.zeros(tuple(int(s) for s in shape), x.dtype)
    for i, j, sl in _taps(xp, kh, kw, oh, ow, attrs):
        dw[i, j] = np.tensordot(xp[sl], g, axes=([0, 1, 2], [0, 1, 2]))
    return dw


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


# --------------------------------------------------------------------------------------
# CPU kernels (source templates; sizes, strides, dilations and pads are run-time values)
# --------------------------------------------------------------------------------------


def _source_hash(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()[:12]


# Numba's disk cache of a driver does not notice a change in a function it calls from
# another module, so each driver's text names the helpers' source hash: a changed
# conv_cpu.py is a new driver module, compiled afresh
_IMPORTS = ("\n\n# the shared kernels (compiled once per process, cached on disk); "
            f"conv_cpu {_source_hash(os.path.join(os.path.dirname(__file__), 'conv_cpu.py'))}\n"
            "from flowjit.ops.conv_cpu import (add_into, chunk_rows, conv2d_backprop_filter, conv2d_backprop_input,\n"
            "                                  conv2d_forward, conv_dims, par_rows, sum_parts, zero_fill)\n")



def _layer(xs, ws, attrs):
    """(kh, kw, oh, ow) of a conv with input shape xs and filter shape ws (traced
    sizes), or None when the filter's spatial size is not static."""
    try:
        kh, kw = int(ws[0]), int(ws[1])
    except TypeError:
        return None
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    pt, pb, pl, pr = attrs["pads"]
    oh = (hint(xs[1]) + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (hint(xs[2]) + pl + pr - (kw - 1) * dw - 1) // sw + 1
    return kh, kw, oh, ow


def _direct(xs, ws, attrs):
    """conv_direct's literals for a layer (input shape xs, filter shape ws), or None."""
    layer = _layer(xs, ws, attrs)
    if layer is None:
        return None
    kh, kw, oh, ow = layer
    sw, (dh, dw) = attrs["strides"][1], attrs["dilations"]
    pl = attrs["pads"][2]
    c, co = hint(xs[3]), hint(ws[3])
    if ((dh, dw) != (1, 1) or c < 2 or kw * c < DIRECT_MIN_ROW or co > DIRECT_MAX_CO
            or hint(xs[0]) * oh * ow * kh * kw * c * co < DIRECT_MIN_MACS
            or conv_direct.block_share(ow, hint(xs[2]), kw, sw, pl) < DIRECT_MIN_BLOCKED):
        return None
    return dict(conv_direct.direct_literals((0, 0, 0, c), (kh, kw, c, co), attrs), direct=True)


def _fixed_conv(attrs, shapes):
    """The literals of a kernel specialised to this conv2d or conv2d_backprop_filter
    node (inputs x first), or None for the generic kernel: direct kernels for a layer
    with few output channels (_direct), or a specialised one-channel unfold. Either
    checks its channel sizes at run time: a later call with other sizes (the channel
    size is symbolic) takes the generic path."""
    xs = shapes[0]
    ws = attrs["filter_shape"] if "filter_shape" in attrs else shapes[1]
    direct = _direct(xs, ws, attrs)
    if direct is not None:
        return direct
    layer = _layer(xs, ws, attrs)
    if layer is None:
        return None
    kh, kw, oh, ow = layer
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    pt, pb, pl, pr = attrs["pads"]
    if hint(xs[3]) != 1 or hint(xs[0]) * oh * ow * kh * kw < FIXED_MIN_ELEMS or kh * kw <= DIRECT_MAX_K:
        return None
    if (sh, sw) == (1, 1):
        return conv_direct.c1_literals([hint(d) for d in xs], [hint(d) for d in ws], attrs, (oh, ow))
    return dict(KH=kh, KW=kw, SH=sh, SW=sw, DH=dh, DW=dw, PT=pt, PL=pl)


def _fixed_bp_input(attrs, shapes):
    """Direct kernels for conv2d_backprop_input (inputs g, w) under _direct's rule."""
    return _direct(attrs["input_shape"], shapes[1], attrs)


def _fixed_chunks(fixed, gemm, accumulate=False):
    """Driver lines: for a one-channel input, unfold whole output rows with the
    specialised im2col_fixed a chunk at a time and run `gemm` on each chunk (x, the
    filter/out or filter-gradient as 2-D w2/o2/d2, and the upstream g2 in scope); with
    enough work, chunks run in parallel instead (fixed_forward_par /
    fixed_filter_par, as conv_cpu's parallel chunks)."""
    if fixed is None:
        return ""
    acc = ("            if t0 > 0:\n"
           "                d2 += part\n") if accumulate else ""
    part = "        part = np.empty((K, CO), x.dtype)\n" if accumulate else ""
    par = ("fixed_filter_par(x, g2, d2, RP // OW, OH, OW)" if accumulate
           else "fixed_forward_par(x, w2, o2, RP // OW, OH, OW)")
    return ("    if C == 1:\n"
            "        RP = par_rows(M, K, CO)\n"
            "        if RP >= OW:\n"
            f"            {par}\n"
            "            return\n"
            "        T = N * OH\n"
            "        RT = max(1, chunk_rows(M, K) // OW)\n"
            f"        col = np.empty((RT * OW, K), x.dtype)\n{part}"
            "        for t0 in range(0, T, RT):\n"
            "            t1 = min(T, t0 + RT)\n"
            "            rr = (t1 - t0) * OW\n"
            "            im2col_fixed(x, col, t0, t1, OH, OW)\n"
            f"            {gemm}\n"
            + acc +
            "        return\n")


def _im2col_fixed(fixed):
    """im2col for one input channel over output rows t0..t1 (t = n*OH + oh), with this
    layer's sizes as literals: a window row inside the input is KW loads at literal
    offsets (unrolled), rows in the padding are zeros."""
    if fixed is None:
        return ""
    f = fixed
    return f"""

@njit(cache=CACHE, error_model='numpy', fastmath=True)
def im2col_fixed(x, col, t0, t1, OH, OW):
    N, H, W, C = x.shape
    xf = x.reshape((N * H, W))
    for t in range(t0, t1):
        n = t // OH
        oh = t % OH
        q0 = (t - t0) * OW
        for i in range({f['KH']}):
            ih = oh * {f['SH']} - {f['PT']} + i * {f['DH']}
            k0 = i * {f['KW']}
            if ih < 0 or ih >= H:
                for ow in range(OW):
                    for j in range({f['KW']}):
                        col[q0 + ow, k0 + j] = 0
                continue
            row = n * H + ih
            for ow in range(OW):
                iw0 = ow * {f['SW']} - {f['PL']}
                if iw0 >= 0 and iw0 + {(f['KW'] - 1) * f['DW'] + 1} <= W:
                    for j in range({f['KW']}):
                        col[q0 + ow, k0 + j] = xf[row, iw0 + j * {f['DW']}]
                else:
                    for j in range({f['KW']}):
                        iw = iw0 + j * {f['DW']}
                        col[q0 + ow, k0 + j] = xf[row, iw] if iw >= 0 and iw < W else 0


@njit(cache=CACHE, error_model='numpy', fastmath=True, parallel=True)
def fixed_forward_par(x, w2, o2, RT, OH, OW):
    T = x.shape[0] * OH
    K = w2.shape[0]
    for b in prange((T + RT - 1) // RT):
        t0 = b * RT
        t1 = min(T, t0 + RT)
        col = np.empty(((t1 - t0) * OW, K), x.dtype)
        im2col_fixed(x, col, t0, t1, OH, OW)
        np.dot(col, w2, o2[t0 * OW:t1 * OW])


@njit(cache=CACHE, error_model='numpy', fastmath=True, parallel=True)
def fixed_filter_par(x, g2, d2, RT, OH, OW):
    T = x.shape[0] * OH
    K, CO = d2.shape
    nch = (T + RT - 1) // RT
    P = min(nch, 8)
    parts = np.empty((P, K, CO), x.dtype)
    for p in prange(P):
        col = np.empty((RT * OW, K), x.dtype)
        tmp = np.empty((K, CO), x.dtype)
        zero_fill(parts[p])
        for b in range(p * nch // P, (p + 1) * nch // P):
            t0 = b * RT
            t1 = min(T, t0 + RT)
            im2col_fixed(x, col, t0, t1, OH, OW)
            np.dot(col[:(t1 - t0) * OW].T, g2[t0 * OW:t1 * OW], tmp)
            add_into(parts[p], tmp)
    sum_parts(parts, d2)
"""


def _generic_driver(fname, args, generic):
    """A driver that calls conv_cpu's generic kernel `generic`."""
    return f"""
def {fname}({args}, sh, sw, dh, dw, pt, pl):
    {generic}({args}, sh, sw, dh, dw, pt, pl)
{_IMPORTS}"""


def _direct_driver(fname, args, call, generic, kernel_src):
    return f"""
def {fname}({args}, sh, sw, dh, dw, pt, pl):
    if not {call}:
        {generic}({args}, sh, sw, dh, dw, pt, pl)
{kernel_src}{_IMPORTS}"""


def _conv_source(fname, dtype, fixed=None):
    if fixed is not None and fixed.get("direct"):
        return _direct_driver(fname, "x, w, out", "direct_forward(x, w, out)", "conv2d_forward",
                              conv_direct.forward_source(fixed, dtype.name))
    if fixed is None:
        return _generic_driver(fname, "x, w, out", "conv2d_forward")
    return f"""
def {fname}(x, w, out, sh, sw, dh, dw, pt, pl):
    N, H, W, C, KH, KW, CO, OH, OW, K, M = conv_dims(x.shape, w.shape, out.shape)
    w2 = w.reshape((K, CO))
    o2 = out.reshape((M, CO))
{_fixed_chunks(fixed, "np.dot(col[:rr], w2, o2[t0 * OW:t1 * OW])")}    conv2d_forward(x, w, out, sh, sw, dh, dw, pt, pl)
{_im2col_fixed(fixed)}{_IMPORTS}"""


def _bp_input_source(fname, dtype, fixed=None):
    if fixed is not None:
        return _direct_driver(fname, "g, w, dx", "direct_input(g, w, dx)", "conv2d_backprop_input",
                              conv_direct.input_source(fixed, dtype.name))
    return _generic_driver(fname, "g, w, dx", "conv2d_backprop_input")


def _bp_filter_source(fname, dtype, fixed=None):
    if fixed is not None and fixed.get("direct"):
        return _direct_driver(fname, "x, g, dw_", "direct_filter(x, g, dw_)", "conv2d_backprop_filter",
                              conv_direct.filter_source(fixed, dtype.name))
    if fixed is not None and fixed.get("c1"):
        return _direct_driver(fname, "x, g, dw_", "c1_filter(x, g, dw_)", "conv2d_backprop_filter",
                              conv_direct.c1_filter_source(fixed, dtype.name))
    if fixed is None:
        return _generic_driver(fname, "x, g, dw_", "conv2d_backprop_filter")
    return f"""
def {fname}(x, g, dw_, sh, sw, dh, dw, pt, pl):
    N, H, W, C, KH, KW, CO, OH, OW, K, M = conv_dims(x.shape, dw_.shape, g.shape)
    d2 = dw_.reshape((K, CO))
    g2 = g.reshape((M, CO))
{_fixed_chunks(fixed, "np.dot(col[:rr].T, g2[t0 * OW:t1 * OW], d2 if t0 == 0 else part)", True)}    conv2d_backprop_filter(x, g, dw_, sh, sw, dh, dw, pt, pl)
{_im2col_fixed(fixed)}{_IMPORTS}"""


def _window(indent):
    """Kernel lines clipping the pooling window of output (oh, ow) to the input: rows
    ih0 + i for i in [i_lo, i_hi), columns iw0 + j for j in [j_lo, j_hi)."""
    lines = ("ih0 = oh * sh - pt", "iw0 = ow * sw - pl", "i_lo = max(0, -ih0)",
             "i_hi = min(KH, H - ih0)", "j_lo = max(0, -iw0)", "j_hi = min(KW, W - iw0)")
    return "".join(" " * indent + line + "\n" for line in lines)


def _max_pool_source(fname, dtype):
    # the first element of the window inside the input starts the maximum (padding is
    # never a candidate); a NaN anywhere in the window is the result (np.maximum,
    # tf.nn.max_pool2d): fmaximum is LLVM's NaN-propagating maximum (the CPU scalar
    # library), a vector max and a NaN blend, as fast as the old `if v > o` store (a
    # select on two compares cost 7% more at 32 channels)
    return f'''
def {fname}(x, out, KH, KW, sh, sw, pt, pl):
    N, H, W, C = x.shape
    OH, OW = out.shape[1], out.shape[2]
    for t in range(N * OH):
        n = t // OH
        oh = t % OH
        for ow in range(OW):
{_window(12)}            for c in range(C):
                out[n, oh, ow, c] = x[n, ih0 + i_lo, iw0 + j_lo, c]
            for i in range(i_lo, i_hi):
                for j in range(j_lo, j_hi):
                    for c in range(C):
                        out[n, oh, ow, c] = fmaximum(out[n, oh, ow, c], x[n, ih0 + i, iw0 + j, c])
'''


def _max_pool_grad_source(fname, dtype):
    return f'''
def {fname}(x, g, dx, KH, KW, sh, sw, pt, pl):
    N, H, W, C = x.shape
    OH, OW = g.shape[1], g.shape[2]
    for n in range(N):
        best = np.empty(C, x.dtype)
        at = np.empty(C, np.int64)
        for ih in range(H):
            for iw in range(W):
                for c in range(C):
                    dx[n, ih, iw, c] = 0
        for oh in range(OH):
            for ow in range(OW):
{_window(16)}                for c in range(C):
                    best[c] = x[n, ih0 + i_lo, iw0 + j_lo, c]
                    at[c] = (ih0 + i_lo) * W + iw0 + j_lo
                for i in range(i_lo, i_hi):
                    for j in range(j_lo, j_hi):
                        p = (ih0 + i) * W + iw0 + j
                        for c in range(C):
                            v = x[n, ih0 + i, iw0 + j, c]
                            b = best[c]
                            # the first maximum; a NaN (the forward's result) wins over numbers
                            if v > b or (v != v and b == b):
                                best[c] = v
                                at[c] = p
                for c in range(C):
                    p = at[c]
                    dx[n, p // W, p % W, c] += g[n, oh, ow, c]
'''


def _avg_pool_source(fname, dtype):
    return f'''
def {fname}(x, out, KH, KW, sh, sw, pt, pl):
    N, H, W, C = x.shape
    OH, OW = out.shape[1], out.shape[2]
    for t in range(N * OH):
        n = t // OH
        oh = t % OH
        for ow in range(OW):
{_window(12)}            for c in range(C):
                out[n, oh, ow, c] = 0
            for i in range(i_lo, i_hi):
                for j in range(j_lo, j_hi):
                    for c in range(C):
                        out[n, oh, ow, c] += x[n, ih0 + i, iw0 + j, c]
            inv = 1.0 / ((i_hi - i_lo) * (j_hi - j_lo))
            for c in range(C):
                out[n, oh, ow, c] *= inv
'''


def _avg_pool_grad_source(fname, dtype):
    return f'''
def {fname}(g, dx, KH, KW, sh, sw, pt, pl):
    N, H, W, C = dx.shape
    OH, OW = g.shape[1], g.shape[2]
    for n in range(N):
        for ih in range(H):
            for iw in range(W):
                for c in range(C):
                    dx[n, ih, iw, c] = 0
        for oh in range(OH):
            for ow in range(OW):
{_window(16)}                inv = 1.0 / ((i_hi - i_lo) * (j_hi - j_lo))
                for i in range(i_lo, i_hi):
                    for j in range(j_lo, j_hi):
                        for c in range(C):
                            dx[n, ih0 + i, iw0 + j, c] += g[n, oh, ow, c] * inv
'''


def _conv_args(attrs):
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    pt, pb, pl, pr = attrs["pads"]
    return [sh, sw, dh, dw, pt, pl]


def _pool_args(attrs):
    (kh, kw), (sh, sw) = attrs["ksize"], attrs["strides"]
    pt, pb, pl, pr = attrs["pads"]
    return [kh, kw, sh, sw, pt, pl]


# Serial Numba code: the threads are BLAS's. On a small machine, Numba's thread pool
# between BLAS calls waits on the cores that BLAS's idle workers still spin on (and
# parallel=True costs seconds of compile time per kernel).
_DRIVER = "fastmath=True"
_LOOPS = "fastmath=True"
_MAX_LOOPS = ""        # comparisons keep their IEEE meaning (no fast-math NaN assumptions)

register("conv2d", "opaque", _conv_infer, _conv_ref,
         lower={"kind": "call", "kernel": _conv_source, "args": _conv_args, "njit": _DRIVER,
                "fixed": _fixed_conv})
register("conv2d_backprop_input", "opaque", _bp_input_infer, _bp_input_ref,
         lower={"kind": "call", "kernel": _bp_input_source, "args": _conv_args, "njit": _DRIVER,
                "fixed": _fixed_bp_input})
register("conv2d_backprop_filter", "opaque", _bp_filter_infer, _bp_filter_ref,
         lower={"kind": "call", "kernel": _bp_filter_source, "args": _conv_args, "njit": _DRIVER,
                "fixed": _fixed_conv})
register("max_pool2d", "opaque", _pool_infer_for("max_pool2d"), _max_pool_ref,
         lower={"kind": "call", "kernel": _max_pool_source, "args": _pool_args, "njit": _MAX_LOOPS})
register("max_pool2d_grad", "opaque", _pool_grad_infer_for("max_pool2d_grad"), _max_pool_grad_ref,
         lower={"kind": "call", "kernel": _max_pool_grad_source, "args": _pool_args,
                "njit": _MAX_LOOPS})
register("avg_pool2d", "opaque", _pool_infer_for("avg_pool2d"), _avg_pool_ref,
         lower={"kind": "call", "kernel": _avg_pool_source, "args": _pool_args, "njit": _LOOPS})
register("avg_pool2d_grad", "opaque", _pool_grad_infer_for("avg_pool2d_grad"), _avg_pool_grad_ref,
         lower={"kind": "call", "kernel": _avg_pool_grad_source, "args": _pool_args,
                "njit": _LOOPS})


# --------------------------------------------------------------------------------------
# gradient rules (written with the ops above, so jit and eager share them; the conv
# backprops are linear in each input, so their own gradients are convolutions too)
# --------------------------------------------------------------------------------------
def _grads():
    from .grads import defgrad
    from ..frontend.tensor import apply_op

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
