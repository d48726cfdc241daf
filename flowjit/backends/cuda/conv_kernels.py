"""CUDA kernels of conv2d, its two backprops and the 2-D pools (the ops, their shape
rules and the NumPy references these kernels match are in ops/conv.py).

The ops are NHWC with HWIO filters (the frontend transposes NCHW around them) and
their shape rules have already put the pads in `attrs["pads"]`, so one geometry serves
SAME, VALID and explicit padding: output (oh, ow) reads input rows oh * SH - PT + i * DH
and columns ow * SW - PL + j * DW, and a tap outside the input reads zero (a pool skips
it). Every computed input row and column is checked against the input before it is
used, so no kernel reads or writes outside its arrays.

Direct kernels, correctness first: one thread per output element (a grid-stride loop)
for the forward ops and the input gradients, which are written as gathers (each input
element sums the windows that read it) so they need no atomics and no zeroed output;
the filter gradient has few elements and long sums (batch x output positions), so one
block per filter element shares its sum and reduces it in shared memory. Sizes are
kernel arguments: one compiled kernel per op and dtype serves every layer.
"""
from ..loops import dim_src, int_arg, prod_src
from ..pyexpr import npt
from .kernels import EPILOGUES, kernel_def, lowering, named
from .runtime import TPB

SIZES = "N, H, W, C, OH, OW, CO, KH, KW, SH, SW, DH, DW, PT, PL"


def _geometry(xs, o_hw, co, k_hw, attrs):
    """Entry sources of SIZES: input shape xs (NHWC), output spatial sizes o_hw, output
    channels co, window k_hw, and the strides, dilations and leading pads of attrs."""
    dims = list(xs) + list(o_hw) + [co] + list(k_hw)
    pt, _, pl, _ = attrs["pads"]
    ints = list(attrs["strides"]) + list(attrs.get("dilations", (1, 1))) + [pt, pl]
    return [int_arg(dim_src(d)) for d in dims] + [int_arg(int(v)) for v in ints]


def _each(idx, ext, body):
    """A grid-stride loop over the flat elements t < prod(ext) of an output whose four
    indices (C order) are `idx`; `body` (indented 8) computes element t."""
    a, b, c, d = idx
    _, B, C, D = ext
    return f'''    t = cuda.grid(1)
    stride = cuda.gridsize(1)
    while t < {" * ".join(ext)}:
        {d} = t % {D}
        q = t // {D}
        {c} = q % {C}
        q = q // {C}
        {b} = q % {B}
        {a} = q // {B}
{body}        t += stride
'''


def _lines(ctx, n, kind, arrays, body, sizes, launch=None, epilogue=None):
    """(kernels, entry lines) of node n: allocate its output, launch kernel `body` on
    the buffers of its inputs and output (named `arrays` in the kernel) and `sizes`.
    epilogue: (params, call arguments, lines) of the elementwise loop group that alone
    reads the output (codegen.epilogue_code): the body's `out[t] = acc` becomes those
    lines, with the element in `acc_` at flat index `lin`, and the output is not stored."""
    total = prod_src(n.shape)
    launch = launch or f"RT.grid({total}), RT.TPB"
    if epilogue is not None:
        eparams, ecall, elines = epilogue
        store = f"        {arrays[-1]}[t] = acc\n"
        assert store in body
        body = body.replace(store, "".join("        " + x + "\n" for x in ["acc_ = acc", "lin = t"] + elines))
        name, src = named(kernel_def(", ".join(arrays[:-1] + [SIZES] + eparams), body),
                          f"{kind} ({n.dtype.name}) with an elementwise epilogue")
        args = [ctx.buf(p) for p in n.inputs] + sizes + list(ecall)
        return {name: src}, [f"{name}[{launch}]({', '.join(args)})"]
    name, src = named(kernel_def(", ".join(arrays) + ", " + SIZES, body), f"{kind} ({n.dtype.name})")
    args = [ctx.buf(p) for p in n.inputs] + [ctx.buf(n.id)] + sizes
    return {name: src}, [ctx.alloc(n.id, total, npt(n.dtype)),
                         f"{name}[{launch}]({', '.join(args)})"]


# An input row `ih` (column `iw`) is read by tap i of output row oh when
# ih + PT - i * DH = oh * SH for an oh inside the output: the gathers below test it.
_PAD = {"H": "PT", "W": "PL"}


def _tap_rows(r, i, v, axis, ind):
    """Lines: `v` = r + pad - i * dilation, and an `if` (indented `ind`) that it is a
    stride multiple naming an output row (column) of the `axis` dim ("H" or "W")."""
    pad, d, s, o = _PAD[axis], "D" + axis, "S" + axis, "O" + axis
    sp = " " * ind
    return (f"{sp}{v} = {r} + {pad} - {i} * {d}\n"
            f"{sp}if {v} >= 0 and {v} % {s} == 0 and {v} // {s} < {o}:\n")


@lowering("conv2d")
def _conv2d(ctx, n, epilogue=None):
    x, w = (ctx.g.nodes[p] for p in n.inputs)
    dt = npt(n.dtype)
    # neighbouring threads compute neighbouring output channels: they read one input
    # value and consecutive filter values
    body = f'''        acc = {dt}(0)
        for i in range(KH):
            ih = oh * SH - PT + i * DH
            if ih >= 0 and ih < H:
                for j in range(KW):
                    iw = ow * SW - PL + j * DW
                    if iw >= 0 and iw < W:
                        xo = ((n * H + ih) * W + iw) * C
                        wo = (i * KW + j) * C * CO + co
                        for c in range(C):
                            acc += x[xo + c] * w[wo + c * CO]
        out[t] = acc
'''
    sizes = _geometry(x.shape, n.shape[1:3], n.shape[3], w.shape[:2], n.attrs)
    return _lines(ctx, n, "conv2d", ["x", "w", "out"],
                  _each(("n", "oh", "ow", "co"), ("N", "OH", "OW", "CO"), body), sizes, epilogue=epilogue)


EPILOGUES["conv2d"] = _conv2d


@lowering("conv2d_backprop_input")
def _conv2d_backprop_input(ctx, n):
    g, w = (ctx.g.nodes[p] for p in n.inputs)
    dt = npt(n.dtype)
    # dx[n, ih, iw, c] = sum of g[n, oh, ow, :] . w[i, j, c, :] over the taps (i, j)
    # whose output (oh, ow) reads (ih, iw)
    body = f'''        acc = {dt}(0)
        for i in range(KH):
{_tap_rows("ih", "i", "th", "H", 12)}                oh = th // SH
                for j in range(KW):
{_tap_rows("iw", "j", "tw", "W", 20)}                        go = ((n * OH + oh) * OW + tw // SW) * CO
                        wo = ((i * KW + j) * C + c) * CO
                        for co in range(CO):
                            acc += g[go + co] * w[wo + co]
        dx[t] = acc
'''
    sizes = _geometry(n.shape, g.shape[1:3], g.shape[3], w.shape[:2], n.attrs)
    return _lines(ctx, n, "conv2d_backprop_input", ["g", "w", "dx"],
                  _each(("n", "ih", "iw", "c"), ("N", "H", "W", "C"), body), sizes)


@lowering("conv2d_backprop_filter")
def _conv2d_backprop_filter(ctx, n):
    x, g = (ctx.g.nodes[p] for p in n.inputs)
    dt = npt(n.dtype)
    # block e computes dw[i, j, c, co]: its threads stride over the N*OH*OW output
    # positions r (g's rows, in order), then a tree reduction in shared memory (the
    # launch gives a power-of-two block of at most TPB threads)
    body = f'''    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    part = cuda.shared.array({TPB}, {dt})
    e = cuda.blockIdx.x
    while e < KH * KW * C * CO:
        co = e % CO
        q = e // CO
        c = q % C
        q = q // C
        j = q % KW
        i = q // KW
        acc = {dt}(0)
        r = tid
        while r < N * OH * OW:
            ow = r % OW
            q = r // OW
            ih = (q % OH) * SH - PT + i * DH
            iw = ow * SW - PL + j * DW
            if ih >= 0 and ih < H and iw >= 0 and iw < W:
                acc += x[(((q // OH) * H + ih) * W + iw) * C + c] * g[r * CO + co]
            r += nt
        part[tid] = acc
        cuda.syncthreads()
        s = nt // 2
        while s > 0:
            if tid < s:
                part[tid] += part[tid + s]
            cuda.syncthreads()
            s = s // 2
        if tid == 0:
            dw[e] = part[0]
        cuda.syncthreads()
        e += cuda.gridDim.x
'''
    sizes = _geometry(x.shape, g.shape[1:3], n.shape[3], n.shape[:2], n.attrs)
    positions = prod_src(g.shape[:3])
    return _lines(ctx, n, "conv2d_backprop_filter", ["x", "g", "dw"], body, sizes,
                  launch=f"RT.blocks({prod_src(n.shape)}), RT.row_threads({positions}, 1)")


def _window(dt, first_max):
    """Lines (indent 8) scanning the window of output (oh, ow), in row-major order,
    over the elements inside the input (padding is never part of a window): the sum
    and count, or with `first_max` the first maximum `best` and its flat position `at`
    within the image (a NaN beats numbers and the first NaN stays: np.maximum's result
    and np.argmax's choice, as the references)."""
    if first_max:
        init = f"best = {dt}(-np.inf)\n        at = -1\n"
        step = ("if at < 0 or v > best or (v != v and best == best):\n"
                "                            best = v\n"
                "                            at = r * W + s\n")
    else:
        init = f"acc = {dt}(0)\n        cnt = 0\n"
        step = "acc += v\n                        cnt += 1\n"
    return f'''        {init}        ih0 = oh * SH - PT
        iw0 = ow * SW - PL
        for a in range(KH):
            r = ih0 + a
            if r >= 0 and r < H:
                for b in range(KW):
                    s = iw0 + b
                    if s >= 0 and s < W:
                        v = x[((n * H + r) * W + s) * C + c]
                        {step}'''


def _pool_sizes(n, xs, os_):
    return _geometry(xs, os_[1:3], xs[3], n.attrs["ksize"], n.attrs)


@lowering("max_pool2d")
def _max_pool2d(ctx, n):
    x = ctx.g.nodes[n.inputs[0]]
    body = _window(npt(n.dtype), True) + "        out[t] = best\n"
    return _lines(ctx, n, "max_pool2d", ["x", "out"],
                  _each(("n", "oh", "ow", "c"), ("N", "OH", "OW", "C"), body),
                  _pool_sizes(n, x.shape, n.shape))


@lowering("avg_pool2d")
def _avg_pool2d(ctx, n):
    x = ctx.g.nodes[n.inputs[0]]
    dt = npt(n.dtype)
    # a SAME or VALID window always holds an input element (a SAME pad is shorter than
    # the window): cnt > 0
    body = _window(dt, False) + f"        out[t] = acc / {dt}(cnt)\n"
    return _lines(ctx, n, "avg_pool2d", ["x", "out"],
                  _each(("n", "oh", "ow", "c"), ("N", "OH", "OW", "C"), body),
                  _pool_sizes(n, x.shape, n.shape))


def _pool_grad_body(dt, per_window):
    """dx[n, ih, iw, c] as the sum over the windows (oh, ow) holding (ih, iw) of
    `per_window` (lines at indent 24 adding to acc, with gi the flat index of
    g[n, oh, ow, c])."""
    return f'''        acc = {dt}(0)
        for i in range(KH):
{_tap_rows("ih", "i", "th", "H", 12)}                oh = th // SH
                for j in range(KW):
{_tap_rows("iw", "j", "tw", "W", 20)}                        ow = tw // SW
                        gi = ((n * OH + oh) * OW + ow) * C + c
{per_window}        dx[t] = acc
'''


@lowering("max_pool2d_grad")
def _max_pool2d_grad(ctx, n):
    x, g = (ctx.g.nodes[p] for p in n.inputs)
    dt = npt(n.dtype)
    # each window's gradient goes to its first maximum: the element takes g of the
    # windows whose maximum it is (the window is scanned again: no argmax is saved)
    scan = "".join(" " * 16 + line + "\n" for line in _window(dt, True).splitlines())
    per_window = scan + " " * 24 + "if at == ih * W + iw:\n" + " " * 28 + "acc += g[gi]\n"
    return _lines(ctx, n, "max_pool2d_grad", ["x", "g", "dx"],
                  _each(("n", "ih", "iw", "c"), ("N", "H", "W", "C"), _pool_grad_body(dt, per_window)),
                  _pool_sizes(n, n.shape, g.shape))


@lowering("avg_pool2d_grad")
def _avg_pool2d_grad(ctx, n):
    g = ctx.g.nodes[n.inputs[0]]
    dt = npt(n.dtype)
    # each window spreads g evenly over its elements inside the input: rows
    # [ih0, ih0 + KH) and columns [iw0, iw0 + KW) clipped to it (conditional
    # expressions: Numba's CUDA target fails to type builtin min/max of two ints)
    per_window = f'''                        ih0 = oh * SH - PT
                        iw0 = ow * SW - PL
                        rows = (ih0 + KH if ih0 + KH < H else H) - (ih0 if ih0 > 0 else 0)
                        cols = (iw0 + KW if iw0 + KW < W else W) - (iw0 if iw0 > 0 else 0)
                        acc += g[gi] / {dt}(rows * cols)
'''
    return _lines(ctx, n, "avg_pool2d_grad", ["g", "dx"],
                  _each(("n", "ih", "iw", "c"), ("N", "H", "W", "C"), _pool_grad_body(dt, per_window)),
                  _pool_sizes(n, n.shape, g.shape))
