"""The CPU lowerings of conv2d, its backprops and pooling (the ops themselves, shape
rules, references and gradients, are in ops/conv.py): kernel source templates for the
generic `"call"` lowering, attached to the registry entries when the CPU backend loads.

The generic kernels (conv_cpu.py) take every size, stride, dilation and pad as run-time
values and are compiled once per process (cached on disk); a layer can get kernels
specialised to it (`fixed`): an unfold with literal sizes for one-channel inputs, and
direct kernels (conv_direct.py) for layers with few output channels.
"""
import hashlib
import os

from ...ir.registry import REGISTRY
from ...ir.shapes import hint
from . import conv_direct
from .conv_cpu import DIRECT_MAX_K

# a one-channel input whose unfolded matrix has at least this many elements (in the
# traced call) gets an unfold specialised to its layer: filter size, strides,
# dilations and pads as literals, so each window row is a copy of a known length
# (measured at 64x28x28x1, 5x5: 0.8 vs 4.0 ms; the cost is one compile per layer)
FIXED_MIN_ELEMS = 1 << 18
# a layer with at most this many output channels, window rows of at least
# DIRECT_MIN_ROW = KW*C_in values (vectors of a useful length), no dilation and at
# least DIRECT_MIN_MACS multiply-adds in the traced call gets direct kernels
# specialised to it (backends/cpu/conv_direct.py): its GEMMs are too thin for BLAS to amortise
# the unfolding (measured at CO = 64, 3x3, C = 32: direct and im2col + BLAS tie),
# unless too few of its windows lie wholly inside the input (measured at 14x14x8 ->
# 12, 4x4 stride 2, 4 of 7 columns: every direct kernel slower than the generic one)
DIRECT_MAX_CO = 32
DIRECT_MIN_ROW = 16
DIRECT_MIN_MACS = 1 << 22
DIRECT_MIN_BLOCKED = 0.75


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
            "from flowjit.backends.cpu.conv_cpu import (add_into, chunk_rows, conv2d_backprop_filter, conv2d_backprop_input,\n"
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
{_fixed_chunks(fixed, "gemm_nn(col[:rr], w2, o2[t0 * OW:t1 * OW])")}    conv2d_forward(x, w, out, sh, sw, dh, dw, pt, pl)
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
{_fixed_chunks(fixed, "gemm_tn(col[:rr], g2[t0 * OW:t1 * OW], d2 if t0 == 0 else part)", True)}    conv2d_backprop_filter(x, g, dw_, sh, sw, dh, dw, pt, pl)
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

def _attach(name, **lower):
    REGISTRY[name].lower = lower


# threads: the conv drivers call conv_cpu's prange kernels (the direct ones fall back to them)
_attach("conv2d", kind="call", kernel=_conv_source, args=_conv_args, njit=_DRIVER, fixed=_fixed_conv,
        threads=True)
_attach("conv2d_backprop_input", kind="call", kernel=_bp_input_source, args=_conv_args, njit=_DRIVER,
        fixed=_fixed_bp_input, threads=True)
_attach("conv2d_backprop_filter", kind="call", kernel=_bp_filter_source, args=_conv_args,
        njit=_DRIVER, fixed=_fixed_conv, threads=True)
_attach("max_pool2d", kind="call", kernel=_max_pool_source, args=_pool_args, njit=_MAX_LOOPS)
_attach("max_pool2d_grad", kind="call", kernel=_max_pool_grad_source, args=_pool_args,
        njit=_MAX_LOOPS)
_attach("avg_pool2d", kind="call", kernel=_avg_pool_source, args=_pool_args, njit=_LOOPS)
_attach("avg_pool2d_grad", kind="call", kernel=_avg_pool_grad_source, args=_pool_args, njit=_LOOPS)
