"""Direct conv2d kernels specialised to one layer (source generators for ops/conv.py).

For layers with few output channels, im2col + BLAS spends most of its time copying:
each unfolded row of K = KH*KW*C values is read once for only CO (8, 12, ...)
multiply-adds, and BLAS packs it again. These kernels read the NHWC input in place: a
window row of the input (KW*C values) is contiguous, and so is the matching row of the
filter once it is laid out (CO, KH, KW*C). Every inner loop is a contiguous dot product
or axpy of that length, a literal, which LLVM vectorises; the outer loops are unrolled
over a block of output pixels and output channels, so each loaded vector feeds several
multiply-adds and the block's sums stay in registers. Windows cut by the padding take
the same loops over a shorter slice (slices, not signed offsets: an index that might be
negative makes Numba wrap it, which stops the vectoriser).

Measured on 2 cores (64x28x28x16 -> 8, 5x5 stride 2): forward 3.2-4.7 -> 1.7 ms; see
perf/RESULTS.md for the backprops and the CNN step.

Each kernel checks the input's channel and filter sizes against its literals and
returns False when they differ (the driver then takes the generic path).

Each kernel's parallel loop (over output rows, filter-gradient parts, images) runs on
the BLAS thread pool (backends/cpu/pool.py) as a pool task, one block of iterations
per thread: the step's GEMMs and loop kernels already use that pool, and a
second pool (Numba's) would pay a wake-up per loop and fight it for the cores. Without
a usable pool the loop is a Numba prange."""

# output pixels x output channels per register block: forward sums (dot products),
# filter-gradient updates (axpys into the gradient rows), input-gradient updates and
# windows cut by the padding. An inner loop that stores to more than two arrays is not
# vectorised (LLVM gives up on the run-time overlap checks between them): measured at
# 4 x 4 for the filter gradient, 2.5 ms against 1.4 ms at 4 x 2.
FWD_PIX, FWD_CO = 4, 2
FLT_PIX, FLT_CO = 4, 2
INP_CO = 8
# filter-gradient partial sums: a fixed count, so the result does not depend on the
# number of threads
FLT_PARTS = 8

import hashlib  # noqa: E402

from . import pool  # noqa: E402

_KERNEL = "@njit(cache=CACHE, error_model='numpy', fastmath=True, boundscheck=False)"


def _parallel_loop(name, var, count, params, arrays, body, args=None):
    """The kernel's parallel loop `for var in range(count)` whose body lines (at indent
    8) read only `params`: (source placed before the kernel, the kernel's lines). On
    the BLAS thread pool (backends/cpu/pool.py) the loop goes into a pool task, run in
    one block of iterations per thread by a small `<name>_run` function called with
    `args` (default: the params; the arrays must be C-contiguous); without a pool it
    stays a prange."""
    if not pool.available():
        return "", [f"    for {var} in prange({count}):"] + body.lines
    loop = [f"    for {var} in range(row_lo, row_hi):"] + body.lines
    # the key names the task for every process: it must cover the dtypes the task
    # rebuilds its arrays with, not only the loop text (equal for float32 and float64)
    text = "\n".join(loop) + repr(sorted(arrays.items()))
    key = f"{name}_{hashlib.sha1(text.encode()).hexdigest()[:16]}"
    return (pool.task_source(key, f"{name}_task", params, arrays, loop, "True") + "\n\n"
            + pool.run_source(key, f"{name}_run", params, arrays) + "\n\n",
            [f"    {name}_run({count}, {', '.join(args or params)})"])


def _kernel(head, main, loop, tail):
    """A kernel's text: the parallel loop's own functions (loop[0]), then the kernel
    (its `def` line head, main lines, the loop's lines, tail lines)."""
    before, lines = loop
    parallel = any("prange(" in line for line in lines)
    deco = _KERNEL.replace("fastmath=True", f"fastmath=True, parallel={parallel}")
    return before + "\n".join([deco, head] + main.lines + lines + tail.lines) + "\n"


def direct_literals(x_shape, w_shape, attrs):
    """The literals of a direct kernel for this layer: every size but the batch, height
    and width, which stay run-time values."""
    (sh, sw) = attrs["strides"]
    pt, pb, pl, pr = attrs["pads"]
    return dict(C=int(x_shape[3]), CO=int(w_shape[3]), KH=int(w_shape[0]), KW=int(w_shape[1]),
                SH=sh, SW=sw, PT=pt, PL=pl)


def block_share(OW, W, KW, SW, PL, P=FWD_PIX):
    """The share of a row's output pixels that the register blocks cover (the rest
    are windows cut by the padding, which run a slower loop)."""
    ow = covered = 0
    while ow < OW:
        iw0 = ow * SW - PL
        if ow + P <= OW and iw0 >= 0 and iw0 + (P - 1) * SW + KW <= W:
            covered += P
            ow += P
        else:
            ow += 1
    return covered / max(OW, 1)


def _blocks(n, q):
    """(first, count) of the channel blocks: a run-time loop over full blocks of q, and
    a literal tail block."""
    main = n - n % q
    return main, (n % q)


class _Src:
    def __init__(self):
        self.lines = []

    def __call__(self, ind, text):
        self.lines.append(" " * ind + text)

    def text(self):
        return "\n".join(self.lines) + "\n"


def _row_walk(s, f, ind, P):
    """Lines opening the walk over output row t (image n, row oh, the filter rows
    ilo..ihi inside the input) and its pixels ow: an `if` whose body (at ind + 8) is
    a block of P pixels whose windows lie wholly inside the input; the caller adds the
    block, its `ow += P`, and the `else:` for a single cut window."""
    s(ind, "n = t // OH")
    s(ind, "oh = t - n * OH")
    s(ind, f"ih0 = oh * {f['SH']} - {f['PT']}")
    s(ind, "ilo = max(0, -ih0)")
    s(ind, f"ihi = min({f['KH']}, H - ih0)")
    s(ind, "ow = 0")
    s(ind, "while ow < OW:")
    s(ind + 4, f"iw0 = ow * {f['SW']} - {f['PL']}")
    s(ind + 4, f"if ow + {P} <= OW and iw0 >= 0 and iw0 + {(P - 1) * f['SW'] + f['KW']} <= W:")


def _channel_blocks(s, ind, n, q, emit):
    """A run-time loop over the full blocks of q channels and a literal tail block:
    emit(indent, first channel, count) writes one block's lines."""
    main, tail = _blocks(n, q)
    if main:
        s(ind, f"for co in range(0, {main}, {q}):")
        emit(ind + 4, "co", q)
    if tail:
        emit(ind, str(main), tail)


def _pixel_cases(s, f, ind, P, q, block, edge):
    """The body of _row_walk's `if` (at ind): channel blocks of q for the P-pixel
    block, then the `else:` case of one window cut by the padding (its filter columns
    jlo..jhi inside the input), in channel blocks of INP_CO."""
    _channel_blocks(s, ind, f["CO"], q, block)
    s(ind, f"ow += {P}")
    s(ind - 4, "else:")
    s(ind, "jlo = max(0, -iw0)")
    s(ind, f"jhi = min({f['KW']}, W - iw0)")
    _channel_blocks(s, ind, f["CO"], INP_CO, edge)
    s(ind, "ow += 1")


def _cut_window(s, f, ind, co, q, name, arr):
    """Lines opening the loops over a window cut by the padding: filter rows i, the
    window row's inside part xs, the matching parts name0.. of arr's rows co.. (filter
    or gradient rows), and the loop over its values v (body at ind + 8)."""
    C = f["C"]
    s(ind, "for i in range(ilo, ihi):")
    s(ind + 4, f"xs = xf[n, ih0 + i, (iw0 + jlo) * {C}:(iw0 + jhi) * {C}]")
    for k in range(q):
        s(ind + 4, f"{name}{k} = {arr}[{co} + {k}, i, jlo * {C}:jhi * {C}]")
    s(ind + 4, "for m in range(xs.shape[0]):")
    s(ind + 8, "v = xs[m]")


def _window_rows(s, f, ind, P):
    """Lines slicing the window rows (filter row i) of the block's P pixels: xs0.."""
    s(ind, "xr = xf[n, ih0 + i]")
    C, SW, KC = f["C"], f["SW"], f["KW"] * f["C"]
    for p in range(P):
        s(ind, f"xs{p} = xr[(iw0 + {p * SW}) * {C}:(iw0 + {p * SW}) * {C} + {KC}]")


def _ret():
    r = _Src()
    r(4, "return True")
    return r


def _check(s, f, xname, wname):
    s(4, f"if {xname}.shape[3] != {f['C']} or {wname}.shape[0] != {f['KH']} or "
         f"{wname}.shape[1] != {f['KW']} or {wname}.shape[3] != {f['CO']}:")
    s(8, "return False")


def filter_rows(f, dtype):
    """wt[co, i, j*C + c] = w[i, j, c, co]: the filter laid out by output channel."""
    return f"""
@njit(cache=CACHE, error_model='numpy')
def filter_rows(w):
    wt = np.empty(({f['CO']}, {f['KH']}, {f['KW'] * f['C']}), w.dtype)
    for i in range({f['KH']}):
        for j in range({f['KW']}):
            for c in range({f['C']}):
                for co in range({f['CO']}):
                    wt[co, i, j * {f['C']} + c] = w[i, j, c, co]
    return wt
"""


def forward_source(f, dtype):
    """out[n, oh, ow, co] = sum over filter rows i of dot(window row i, wt[co, i]):
    one output row per task; blocks of FWD_PIX pixels x FWD_CO channels."""
    C, CO, KW = f["C"], f["CO"], f["KW"]
    KC, P, zero = KW * C, FWD_PIX, f"np.{dtype}(0)"
    m = _Src()
    _check(m, f, "x", "w")
    m(4, "wt = filter_rows(w)")
    m(4, "N, H, W, _ = x.shape")
    m(4, "OH, OW = out.shape[1], out.shape[2]")
    m(4, f"xf = x.reshape((N, H, W * {C}))")
    m(4, f"of = out.reshape((N * OH, OW, {CO}))")
    s = _Src()                          # the body of the loop over output rows t
    _row_walk(s, f, 8, P)

    def block(ind, co, q):
        for p in range(P):
            for k in range(q):
                s(ind, f"a{p}{k} = {zero}")
        s(ind, "for i in range(ilo, ihi):")
        _window_rows(s, f, ind + 4, P)
        for k in range(q):
            s(ind + 4, f"w{k} = wt[{co} + {k}, i]")
            for p in range(P):
                s(ind + 4, f"b{p}{k} = {zero}")
        s(ind + 4, f"for m in range({KC}):")
        for p in range(P):
            s(ind + 8, f"x{p} = xs{p}[m]")
        for k in range(q):
            s(ind + 8, f"v{k} = w{k}[m]")
            for p in range(P):
                s(ind + 8, f"b{p}{k} += x{p} * v{k}")
        for p in range(P):
            for k in range(q):
                s(ind + 4, f"a{p}{k} += b{p}{k}")
        for p in range(P):
            for k in range(q):
                s(ind, f"of[t, ow + {p}, {co} + {k}] = a{p}{k}")

    def edge(ind, co, q):
        for k in range(q):
            s(ind, f"a{k} = {zero}")
        _cut_window(s, f, ind, co, q, "w", "wt")
        for k in range(q):
            s(ind + 8, f"a{k} += v * w{k}[m]")
        for k in range(q):
            s(ind, f"of[t, ow, {co} + {k}] = a{k}")

    _pixel_cases(s, f, 16, P, FWD_CO, block, edge)
    loop = _parallel_loop("direct_forward", "t", "N * OH", ["xf", "wt", "of", "OH", "OW", "H", "W"],
                          {"xf": (dtype, 3), "wt": (dtype, 3), "of": (dtype, 3)}, s)
    return _kernel("def direct_forward(x, w, out):", m, loop, _ret()) + filter_rows(f, dtype)


def filter_source(f, dtype):
    """dw[i, j, c, co] = sum over output pixels of g[pixel, co] * x[window(pixel)]:
    FLT_PARTS tasks each sum a share of the output rows into a partial gradient laid
    out (CO, KH, KW*C); the partials are added in task order."""
    C, CO, KH, KW = f["C"], f["CO"], f["KH"], f["KW"]
    KC, P = KW * C, FLT_PIX
    m = _Src()
    _check(m, f, "x", "dw_")
    m(4, "N, H, W, _ = x.shape")
    m(4, "OH, OW = g.shape[1], g.shape[2]")
    m(4, f"xf = x.reshape((N, H, W * {C}))")
    m(4, f"gf = g.reshape((N * OH, OW, {CO}))")
    m(4, "T = N * OH")
    m(4, f"parts = np.zeros(({FLT_PARTS}, {CO}, {KH}, {KC}), x.dtype)")
    s = _Src()                          # the body of the loop over the parts
    s(8, "d = parts[part]")
    s(8, f"for t in range(part * T // {FLT_PARTS}, (part + 1) * T // {FLT_PARTS}):")
    _row_walk(s, f, 12, P)

    def block(ind, co, q):
        for p in range(P):
            for k in range(q):
                s(ind, f"g{p}{k} = gf[t, ow + {p}, {co} + {k}]")
        s(ind, "for i in range(ilo, ihi):")
        _window_rows(s, f, ind + 4, P)
        for k in range(q):
            s(ind + 4, f"d{k} = d[{co} + {k}, i]")
        s(ind + 4, f"for m in range({KC}):")
        for p in range(P):
            s(ind + 8, f"x{p} = xs{p}[m]")
        for k in range(q):
            s(ind + 8, f"d{k}[m] += " + " + ".join(f"g{p}{k} * x{p}" for p in range(P)))

    def edge(ind, co, q):
        for k in range(q):
            s(ind, f"g{k} = gf[t, ow, {co} + {k}]")
        _cut_window(s, f, ind, co, q, "d", "d")
        for k in range(q):
            s(ind + 8, f"d{k}[m] += g{k} * v")

    _pixel_cases(s, f, 20, P, FLT_CO, block, edge)
    # dw_[i, j, c, co] = sum over the parts, in order
    e = _Src()
    e(4, f"for i in range({KH}):")
    e(8, f"for j in range({KW}):")
    e(12, f"for c in range({C}):")
    e(16, f"for co in range({CO}):")
    e(20, f"v = parts[0, co, i, j * {C} + c]")
    e(20, f"for part in range(1, {FLT_PARTS}):")
    e(24, f"v += parts[part, co, i, j * {C} + c]")
    e(20, "dw_[i, j, c, co] = v")
    e(4, "return True")
    loop = _parallel_loop("direct_filter", "part", str(FLT_PARTS), ["parts", "xf", "gf", "T", "OH", "OW", "H", "W"],
                          {"parts": (dtype, 4), "xf": (dtype, 3), "gf": (dtype, 3)}, s)
    return _kernel("def direct_filter(x, g, dw_):", m, loop, e)


def input_source(f, dtype):
    """dx = the sum over output pixels of g[pixel, :] @ w scattered onto the pixel's
    window; one image per task, so tasks never write the same element."""
    C, CO, KH, KW, SH, SW, PT, PL = (f[k] for k in ("C", "CO", "KH", "KW", "SH", "SW", "PT", "PL"))
    KC = KW * C
    m = _Src()
    _check(m, f, "dx", "w")
    m(4, "wt = filter_rows(w)")
    m(4, "N, H, W, _ = dx.shape")
    m(4, "OH, OW = g.shape[1], g.shape[2]")
    s = _Src()                          # the body of the loop over images n
    s(8, f"dxf = dx[n].reshape((H, W * {C}))")
    s(8, "dxf[:] = 0")
    s(8, "for oh in range(OH):")
    s(12, f"ih0 = oh * {SH} - {PT}")
    s(12, "ilo = max(0, -ih0)")
    s(12, f"ihi = min({KH}, H - ih0)")
    s(12, "for ow in range(OW):")
    s(16, f"iw0 = ow * {SW} - {PL}")

    def block(ind, co, q, full):
        for k in range(q):
            s(ind, f"g{k} = g[n, oh, ow, {co} + {k}]")
        s(ind, "for i in range(ilo, ihi):")
        if full:
            s(ind + 4, f"ds = dxf[ih0 + i, iw0 * {C}:iw0 * {C} + {KC}]")
            for k in range(q):
                s(ind + 4, f"w{k} = wt[{co} + {k}, i]")
            s(ind + 4, f"for m in range({KC}):")
        else:
            s(ind + 4, f"ds = dxf[ih0 + i, (iw0 + jlo) * {C}:(iw0 + jhi) * {C}]")
            for k in range(q):
                s(ind + 4, f"w{k} = wt[{co} + {k}, i, jlo * {C}:jhi * {C}]")
            s(ind + 4, "for m in range(ds.shape[0]):")
        s(ind + 8, "ds[m] += " + " + ".join(f"g{k} * w{k}[m]" for k in range(q)))

    s(16, f"if iw0 >= 0 and iw0 + {KW} <= W:")
    _channel_blocks(s, 20, CO, INP_CO, lambda ind, co, q: block(ind, co, q, True))
    s(16, "else:")
    s(20, "jlo = max(0, -iw0)")
    s(20, f"jhi = min({KW}, W - iw0)")
    _channel_blocks(s, 20, CO, INP_CO, lambda ind, co, q: block(ind, co, q, False))
    loop = _parallel_loop("direct_input", "n", "N", ["g", "wt", "dx", "H", "W", "OH", "OW"],
                          {"g": (dtype, 4), "wt": (dtype, 3), "dx": (dtype, 4)}, s,
                          ["np.ascontiguousarray(g)", "wt", "dx", "H", "W", "OH", "OW"])
    return _kernel("def direct_input(g, w, dx):", m, loop, _ret()) + filter_rows(f, dtype)


# --------------------------------------------------------------------------------------
# one input channel, stride 1 (the first layer of an image model): the filter gradient
# as dot products over a whole image plane (the im2col + BLAS path's unfold of 25 taps
# per pixel costs more than the products). The forward keeps its specialised unfold:
# a direct forward over rows measured no faster inside the CNN step.
# --------------------------------------------------------------------------------------
def c1_literals(x_shape, w_shape, attrs, out_hw):
    """Literals of the one-channel kernels: all but the batch size (the spatial sizes
    are static under jit: they fix the padding)."""
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    pt, pb, pl, pr = attrs["pads"]
    oh, ow = out_hw
    return dict(C=1, CO=int(w_shape[3]), KH=int(w_shape[0]), KW=int(w_shape[1]), SH=sh, SW=sw,
                DH=dh, DW=dw, PT=pt, PL=pl, PB=pb, PR=pr, H=int(x_shape[1]), W=int(x_shape[2]),
                OH=oh, OW=ow, c1=True)


def _c1_common(s, f, gname, wname, tasks):
    KH, KW = f["KH"], f["KW"]
    s(4, f"if x.shape[1] != {f['H']} or x.shape[2] != {f['W']} or x.shape[3] != 1 or "
         f"{gname}.shape[1] != {f['OH']} or {gname}.shape[2] != {f['OW']} or "
         f"{wname}.shape[0] != {KH} or {wname}.shape[1] != {KW} or {wname}.shape[3] != {f['CO']}:")
    s(8, "return False")
    s(4, "N = x.shape[0]")
    s(4, f"xf = x.reshape((N, {f['H']}, {f['W']}))")
    s(4, f"T = N * {f['OH']}")
    s(4, f"NB = min(T, {tasks})")


def c1_filter_source(f, dtype):
    """dw[i, j, 0, co] = sum over output pixels of g[pixel, co] * x[pixel + tap(i, j)].
    Per image, the input goes into a zero-padded plane of row width WB and the
    gradient is transposed to (CO, OH*WB), zero beyond each row's OW columns; then
    every (co, tap) sum is one dot product of length OH*WB between a gradient row and
    the plane shifted by the tap, vectorised with the sums in registers (two channels
    by one filter row of taps per loop). One image per task; the images' sums are
    added in order."""
    KH, KW, CO, DH, DW = f["KH"], f["KW"], f["CO"], f["DH"], f["DW"]
    WB, OH, OW = f["PL"] + f["W"] + f["PR"], f["OH"], f["OW"]
    L = OH * WB
    m = _Src()
    _c1_common(m, f, "g", "dw_", FLT_PARTS)
    m(4, f"parts = np.zeros((NB, {CO}, {KH * KW}), x.dtype)")
    # each block's padded plane and transposed gradient, allocated here: a loop body
    # run on the BLAS pool must not allocate (see backends/cpu/pool.py)
    m(4, f"xps = np.zeros((NB, {(OH + (KH - 1) * DH + 1) * WB}), x.dtype)")
    m(4, f"gts = np.zeros((NB, {CO}, {L}), x.dtype)")
    s = _Src()                          # the body of the loop over image blocks b
    s(8, "xp = xps[b]")
    s(8, "gt = gts[b]")
    s(8, "pn = parts[b]")
    s(8, "for n in range(b * N // NB, (b + 1) * N // NB):")
    s(12, f"for h in range({f['H']}):")
    s(16, f"xp[({f['PT']} + h) * {WB} + {f['PL']}:({f['PT']} + h) * {WB} + {f['PL'] + f['W']}] = xf[n, h]")
    s(12, f"for oh in range({OH}):")
    s(16, f"for ow in range({OW}):")
    s(20, f"for co in range({CO}):")
    s(24, f"gt[co, oh * {WB} + ow] = g[n, oh, ow, co]")

    def block(ind, co, q):
        s(ind, f"for i in range({KH}):")
        s(ind + 4, f"o = i * {DH * WB}")
        for j in range(KW):
            s(ind + 4, f"xs{j} = xp[o + {j * DW}:o + {j * DW + L}]")
        for k in range(q):
            s(ind + 4, f"g{k} = gt[{co} + {k}]")
            for j in range(KW):
                s(ind + 4, f"a{j}_{k} = np.{dtype}(0)")
        s(ind + 4, f"for e in range({L}):")
        for k in range(q):
            s(ind + 8, f"v{k} = g{k}[e]")
        for j in range(KW):
            s(ind + 8, f"u{j} = xs{j}[e]")
            for k in range(q):
                s(ind + 8, f"a{j}_{k} += v{k} * u{j}")
        for k in range(q):
            for j in range(KW):
                s(ind + 4, f"pn[{co} + {k}, i * {KW} + {j}] += a{j}_{k}")

    main, tail = _blocks(CO, 2)
    if main:
        s(12, f"for co in range(0, {main}, 2):")
        block(16, "co", 2)
    if tail:
        block(12, str(main), tail)
    e = _Src()
    e(4, f"for i in range({KH}):")
    e(8, f"for j in range({KW}):")
    e(12, f"for co in range({CO}):")
    e(16, f"v = parts[0, co, i * {KW} + j]")
    e(16, "for b in range(1, NB):")
    e(20, f"v += parts[b, co, i * {KW} + j]")
    e(16, "dw_[i, j, 0, co] = v")
    e(4, "return True")
    loop = _parallel_loop("c1_filter", "b", "NB", ["parts", "xps", "gts", "xf", "g", "N", "NB"],
                          {"parts": (dtype, 3), "xps": (dtype, 2), "gts": (dtype, 3), "xf": (dtype, 3),
                           "g": (dtype, 4)}, s,
                          ["parts", "xps", "gts", "xf", "np.ascontiguousarray(g)", "N", "NB"])
    return _kernel("def c1_filter(x, g, dw_):", m, loop, e)
