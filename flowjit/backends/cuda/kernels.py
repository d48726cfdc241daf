"""CUDA kernels for the non-loop steps: the tiled matmul and the opaque ops.

Opaque ops are lowered through `LOWERINGS`, a table from op name to a function that
returns the kernel sources and entry lines for one node. Adding a GPU kernel for a
new op is one `@lowering("op")` function (conv2d, its backprops and the pools are in
conv_kernels.py, imported at the end of this file); a custom op with
a `cuda_kernel` is lowered by custom.py; any other op runs its NumPy reference on the
host (copy in, compute, copy out) and says so when `fj.config.log_device_placement`
is on.

A kernel's source is rendered from its name (`named`), and the name is a hash of the
text rendered with a placeholder: text and name depend only on the structure.

Index checks (gather, scatter_add) report the first bad index they see through the
device error word: (code, index, bound); the executor turns it into an exception
naming the op, and nothing outside the arrays is read or written.
"""
import hashlib
import importlib
import textwrap

from ..pyexpr import npt
from ...ir.shapes import Sym, is_one
from ..loops import dim_src, int_arg, prod_src
from .runtime import BIG_MIN, MM, MM_BIG

KERNEL_HEADER = "@cuda.jit(cache=CACHE)\n"
LOWERINGS = {}
# op name -> its lowering taking an `epilogue` argument: the op's kernel can also run an
# elementwise loop group on each output element instead of storing it (conv2d)
EPILOGUES = {}


def lowering(op):
    def deco(fn):
        LOWERINGS[op] = fn
        return fn
    return deco


def named(render, comment):
    """(name, module text) of the kernel `render(name)` defines. Its name is a hash of
    the text rendered with a placeholder name, so it depends only on the structure and
    equal kernels share one compiled module."""
    name = "k_" + hashlib.sha1(render("KERNEL").encode()).hexdigest()[:16]
    return name, f"# {comment}\n" + KERNEL_HEADER + render(name)


def kernel_def(params, body):
    """The render function of a kernel `def <name>(params):` with `body`."""
    return lambda name: f"\ndef {name}({params}):\n{body}"


class Ctx:
    """What a lowering needs from the entry generator: `buf(node_id)` names a buffer,
    `alloc(node_id, size, dtype, zero=False)` is the line allocating its flat buffer."""

    def __init__(self, g, buf, alloc, new_err_code):
        self.g, self.buf, self.alloc, self.new_err_code = g, buf, alloc, new_err_code


# ----------------------------------------------------------------------------------
# matmul: a block computes a BM x BN tile of C; per k-step of BK it stages the A and B
# tiles in shared memory (each thread loads a few consecutive elements, so the index
# arithmetic is done once, outside the k loop) and each thread accumulates TM x TN
# outputs in registers. Operands are 3-D views (batch, rows, cols); a batch extent of 1
# broadcasts; a block loops over tiles (batch entries included) by the grid's size.
# ----------------------------------------------------------------------------------
def matmul_source(ta, tb, dtype, epilogue=None, colsum=False, mm=MM):
    """(name, source) of the tiled matmul C = A @ B. With `epilogue` (params, lines):
    the product is not stored; for each element, at flat index `lin` of its (M, N)
    output, `acc_` holds it and the lines (an elementwise loop group's loads, body and
    stores: codegen.epilogue_code) run; M and N are then parameters. colsum (2-D): the
    blocks of the first row of tiles also add up the columns of B's tiles into S (float64
    accumulators), so S[n] = sum over k of B[k, n] (a bias gradient: backends/cuda/merge.py).
    mm: the tiling (runtime.MM, or MM_BIG for a product launched on its own)."""
    BM, BN, BK, TM, TN = (mm[k] for k in ("BM", "BN", "BK", "TM", "TN"))
    NTX = BN // TN
    NT = NTX * (BM // TM)
    LA, LB = BM * BK // NT, BN * BK // NT
    assert LA * NT == BM * BK and LB * NT == BN * BK
    assert (BM if ta else BK) % LA == 0 and (BK if tb else BN) % LB == 0
    dt = npt(dtype)
    if ta:   # tile element (k, m) is A[za, k, m]: a thread loads LA consecutive m
        a_setup = f"ak = (tid * {LA}) // {BM}\n    am = (tid * {LA}) % {BM}"
        a_load = f"""        gk = k0 + ak
        for q in range({LA}):
            gm = row0 + am + q
            As[ak, am + q] = A[za, gk, gm] if (gk < K and gm < M) else {dt}(0)"""
    else:    # tile element (k, m) is A[za, m, k]: a thread loads LA consecutive k
        a_setup = f"am = (tid * {LA}) // {BK}\n    ak = (tid * {LA}) % {BK}"
        a_load = f"""        gm = row0 + am
        for q in range({LA}):
            gk = k0 + ak + q
            As[ak + q, am] = A[za, gm, gk] if (gm < M and gk < K) else {dt}(0)"""
    if tb:   # tile element (k, n) is B[zb, n, k]: a thread loads LB consecutive k
        b_setup = f"bn = (tid * {LB}) // {BK}\n    bk = (tid * {LB}) % {BK}"
        b_load = f"""        gn = col0 + bn
        for q in range({LB}):
            gk = k0 + bk + q
            Bs[bk + q, bn] = B[zb, gn, gk] if (gn < N and gk < K) else {dt}(0)"""
    else:    # tile element (k, n) is B[zb, k, n]: a thread loads LB consecutive n
        b_setup = f"bk = (tid * {LB}) // {BN}\n    bn = (tid * {LB}) % {BN}"
        b_load = f"""        gk = k0 + bk
        for q in range({LB}):
            gn = col0 + bn + q
            Bs[bk, bn + q] = B[zb, gk, gn] if (gk < K and gn < N) else {dt}(0)"""
    tiles = f'''    for k0 in range(0, K, {BK}):
{a_load}
{b_load}
        cuda.syncthreads()
        for kk in range({BK}):
            for i in range({TM}):
                ra[i] = As[kk, ty * {TM} + i]
            for j in range({TN}):
                rb[j] = Bs[kk, tx + j * {NTX}]
            for i in range({TM}):
                for j in range({TN}):
                    acc[i, j] += ra[i] * rb[j]
{{colsum_add}}        cuda.syncthreads()
{{colsum_store}}    for i in range({TM}):
        gm = row0 + ty * {TM} + i
        for j in range({TN}):
            gn = col0 + tx + j * {NTX}
            if gm < M and gn < N:
{{store}}
'''
    # block b computes tiles b, b + gridDim.x, ...: any grid size gives the same result,
    # so the kernel can also run as one phase of a single-launch step (fused_launch.py)
    if epilogue is None:
        store, params, nz = "                C[bz, gm, gn] = acc[i, j]", "A, B, C", "C.shape[0]"
    else:
        eparams, elines = epilogue
        store = "\n".join(["                acc_ = acc[i, j]", "                lin = gm * N + gn"] +
                          ["                " + x for x in elines])
        params, nz = "A, B, M, N, " + ", ".join(eparams), "1"
    tiles = tiles.replace("{store}", store)
    add = put = cs_decl = cs_zero = ""
    if colsum:       # (float64 column accumulators only in the kernel that needs them)
        cs_decl = f"    cs = cuda.local.array({TN}, np.float64)\n"
        cs_zero = f"        for j in range({TN}):\n            cs[j] = 0\n"
        params += ", S"
        add = f"""            if row0 == 0 and ty == 0:
                for j in range({TN}):
                    cs[j] += np.float64(rb[j])
"""
        put = f"""    if row0 == 0 and ty == 0:
        for j in range({TN}):
            gn = col0 + tx + j * {NTX}
            if gn < N:
                S[gn] = {dt}(cs[j])
"""
    tiles = tiles.replace("{colsum_add}", add).replace("{colsum_store}", put)
    body = f'''    M = {"C.shape[1]" if epilogue is None else "M"}
    N = {"C.shape[2]" if epilogue is None else "N"}
    K = A.shape[{1 if ta else 2}]
    tid = cuda.threadIdx.x
    tx = tid % {NTX}
    ty = tid // {NTX}
    gx = (N + {BN - 1}) // {BN}
    gy = (M + {BM - 1}) // {BM}
    As = cuda.shared.array(({BK}, {BM}), {dt})
    Bs = cuda.shared.array(({BK}, {BN}), {dt})
    acc = cuda.local.array(({TM}, {TN}), {dt})
    ra = cuda.local.array({TM}, {dt})
    rb = cuda.local.array({TN}, {dt})
{cs_decl}    {a_setup}
    {b_setup}
    tile = cuda.blockIdx.x
    while tile < gx * gy * {nz}:
        col0 = (tile % gx) * {BN}
        row0 = ((tile // gx) % gy) * {BM}
        bz = tile // (gx * gy)
        za = bz if A.shape[0] > 1 else 0
        zb = bz if B.shape[0] > 1 else 0
        for i in range({TM}):
            for j in range({TN}):
                acc[i, j] = 0
{cs_zero}{textwrap.indent(tiles, "    ")}        tile += cuda.gridDim.x
'''
    what = f"matmul ta={ta} tb={tb} ({dtype.name})" + (" with an elementwise epilogue" if epilogue else "") + \
        (" and column sums of B" if colsum else "") + (f" {BM}x{BN} tiles" if mm is not MM else "")
    return named(kernel_def(params, body), what)


def matmul_lines(ctx, n, epilogue=None, colsum=None):
    """(kernels, entry lines) of matmul node n. epilogue: (params, call arguments, lines)
    of the elementwise loop group that alone reads the product (codegen.py): then the
    product is never stored and the group's stores are written instead. colsum: the
    node whose buffer (allocated already) gets the column sums of B."""
    g, buf = ctx.g, ctx.buf
    a, b = (g.nodes[i] for i in n.inputs)
    ta, tb = n.attrs["transpose_a"], n.attrs["transpose_b"]
    name, src = matmul_source(ta, tb, n.dtype, epilogue and epilogue[::2], colsum is not None)
    extra = [] if colsum is None else [buf(colsum)]
    M, N = dim_src(n.shape[-2]), dim_src(n.shape[-1])
    nb = prod_src(n.shape[:-2])

    def three(x):
        xb = x.shape[:-2]
        lead = prod_src(xb) if xb and not all(is_one(d) for d in xb) else "1"
        return f"{buf(x.id)}.reshape(({lead}, {dim_src(x.shape[-2])}, {dim_src(x.shape[-1])}))"
    BM, BN, TM, TN = MM["BM"], MM["BN"], MM["TM"], MM["TN"]
    nt = (BN // TN) * (BM // TM)
    launch = f"{name}[RT.blocks(RT.cdiv({N}, {BN}) * RT.cdiv({M}, {BM}) * max(1, {nb})), {nt}]"
    if epilogue is not None:
        args = [three(a), three(b), f"np.int64({M})", f"np.int64({N})"] + list(epilogue[1]) + extra
        return {name: src}, [f"{launch}({', '.join(args)})"]
    args = [three(a), three(b), f"{buf(n.id)}.reshape((max(1, {nb}), {M}, {N}))"] + extra
    alloc = ctx.alloc(n.id, prod_src(n.shape), npt(n.dtype))
    K = a.shape[-2] if ta else a.shape[-1]
    if colsum is None and _may_be_big(n.shape[-2], n.shape[-1], K):
        big, bsrc = matmul_source(ta, tb, n.dtype, mm=MM_BIG)
        return {name: src, big: bsrc}, [
            alloc, f"RT.matmul({big}, {name}, {M}, {N}, {dim_src(K)}, {nb}, {', '.join(args)})"]
    return {name: src}, [alloc, f"{launch}({', '.join(args)})"]


def _may_be_big(*dims):
    """Whether the product's sizes (M, N, K) may reach runtime.BIG_MIN: a size known at
    compile time must; a symbolic one may. The choice is then made per call."""
    return all(isinstance(d, Sym) or int(d) >= least for d, least in zip(dims, BIG_MIN))


# ----------------------------------------------------------------------------------
# opaque ops
# ----------------------------------------------------------------------------------
_SET_ERR = """                if cuda.atomic.compare_and_swap(err, 0, code) == 0:
                    err[1] = v
                    err[2] = n
"""


def _three(shape, ax):
    return prod_src(shape[:ax]), dim_src(shape[ax]), prod_src(shape[ax + 1:])


def _indexed(ctx, n, kind, first, idx, shape):
    """gather / scatter_add: a grid-stride loop over (outer, m, inner) whose index is
    checked before it touches memory (a bad one is reported through `err`)."""
    buf = ctx.buf
    outer, nn, inner = _three(shape, n.attrs["axis"])
    m = prod_src(idx.shape)
    if kind == "gather":
        on_bad, on_good = "            out[t] = 0\n", "out[t] = p[(o * n + v) * inner + j]"
    else:
        on_bad, on_good = "", "cuda.atomic.add(out, (o * n + v) * inner + j, p[t])"
    body = f'''    total = outer * m * inner
    t = cuda.grid(1)
    stride = cuda.gridsize(1)
    while t < total:
        j = t % inner
        q = t // inner
        k = q % m
        o = q // m
        v = idx[k]
        if v < 0 or v >= n:
            if err[0] == 0:
{_SET_ERR}{on_bad}        else:
            {on_good}
        t += stride
'''
    name, ksrc = named(kernel_def("p, idx, out, outer, n, m, inner, err, code", body),
                       f"{kind} ({n.dtype.name})")
    code = ctx.new_err_code(n.id)
    out = buf(n.id)
    return {name: ksrc}, [
        ctx.alloc(n.id, prod_src(n.shape), npt(n.dtype), zero=(kind == "scatter_add")),
        f"{name}[RT.grid(({outer}) * ({m}) * ({inner})), RT.TPB]({buf(first.id)}, {buf(idx.id)}, {out}, "
        f"np.int64({outer}), np.int64({nn}), np.int64({m}), np.int64({inner}), err, np.int64({code}))"]


_POW_CHECK = kernel_def("x, out, total, err, code", '''    t = cuda.grid(1)
    stride = cuda.gridsize(1)
    while t < total:
        v = x[t]
        if v < 0:
            if err[0] == 0 and cuda.atomic.compare_and_swap(err, 0, code) == 0:
                err[1] = v
                err[2] = 0
            v = 0           # (the step fails; the power reading it must not)
        out[t] = v
        t += stride
''')


@lowering("pow_exponent_check")
def _pow_exponent_check(ctx, n):
    """An integer power's run-time exponents copied through, a negative one reported
    (the error names pow and the exponent: the op's runtime_error) and passed on as 0,
    since the kernels after it in the step still run before the error is read."""
    x = ctx.g.nodes[n.inputs[0]]
    name, src = named(_POW_CHECK, "pow exponent check")
    total = prod_src(n.shape)
    return {name: src}, [
        ctx.alloc(n.id, total, npt(n.dtype)),
        f"{name}[RT.grid({total}), RT.TPB]({ctx.buf(x.id)}, {ctx.buf(n.id)}, {int_arg(total)}, err, "
        f"np.int64({ctx.new_err_code(n.id)}))"]


@lowering("gather")
def _gather(ctx, n):
    x, idx = (ctx.g.nodes[i] for i in n.inputs)
    return _indexed(ctx, n, "gather", x, idx, x.shape)


@lowering("scatter_add")
def _scatter(ctx, n):
    upd, idx = (ctx.g.nodes[i] for i in n.inputs)
    return _indexed(ctx, n, "scatter_add", upd, idx, n.shape)


def _arg_reduce(kind):
    cmp = ">" if kind == "max" else "<"

    def lower(ctx, n):
        g, buf = ctx.g, ctx.buf
        x = g.nodes[n.inputs[0]]
        ax = n.attrs["axis"]
        outer, nn, inner = _three(x.shape, ax)
        # NaN wins like np.argmax: once a NaN is seen it stays the answer
        body = f'''    t = cuda.grid(1)
    stride = cuda.gridsize(1)
    while t < outer * inner:
        j = t % inner
        o = t // inner
        best = x[o * n * inner + j]
        bi = 0
        for k in range(1, n):
            v = x[(o * n + k) * inner + j]
            if best == best and (v {cmp} best or v != v):
                best = v
                bi = k
        out[t] = bi
        t += stride
'''
        name, ksrc = named(kernel_def("x, out, outer, n, inner", body), f"arg{kind}")
        out = buf(n.id)
        return {name: ksrc}, [
            ctx.alloc(n.id, prod_src(n.shape), npt(n.dtype)),
            f"{name}[RT.grid(({outer}) * ({inner})), RT.TPB]({buf(x.id)}, {out}, np.int64({outer}), "
            f"np.int64({nn}), np.int64({inner}))"]
    return lower


LOWERINGS["argmax"] = _arg_reduce("max")
LOWERINGS["argmin"] = _arg_reduce("min")

_COPY3 = kernel_def("x, out, outer, pn, inner, total_n, off", '''    t = cuda.grid(1)
    stride = cuda.gridsize(1)
    while t < outer * pn * inner:
        j = t % inner
        q = t // inner
        k = q % pn
        o = q // pn
        out[(o * total_n + off + k) * inner + j] = x[t]
        t += stride
''')


@lowering("concat")
def _concat(ctx, n):
    g, buf = ctx.g, ctx.buf
    ax = n.attrs["axis"]
    name, ksrc = named(_COPY3, "concat copy")
    out = buf(n.id)
    outer, inner = prod_src(n.shape[:ax]), prod_src(n.shape[ax + 1:])
    lines = [ctx.alloc(n.id, prod_src(n.shape), npt(n.dtype))]
    off = "0"
    for p in n.inputs:
        pn = dim_src(g.nodes[p].shape[ax])
        lines.append(f"{name}[RT.grid(({outer}) * ({pn}) * ({inner})), RT.TPB]({buf(p)}, {out}, "
                     f"np.int64({outer}), np.int64({pn}), np.int64({inner}), "
                     f"np.int64({dim_src(n.shape[ax])}), np.int64({off}))")
        off = f"{off} + {pn}"
    return {name: ksrc}, lines


def host_fallback(ctx, n):
    """An op without a CUDA kernel: its NumPy reference on host copies of the inputs."""
    g, buf = ctx.g, ctx.buf
    from .codegen import shape_tuple
    ins = ", ".join(f"({buf(p)}, {shape_tuple(g.nodes[p].shape)})" for p in n.inputs)
    key = ctx.host_key(n) if getattr(ctx, "host_key", None) else n.id     # (a loop body's node: by key)
    return {}, [f"{buf(n.id)} = RT_host_op({key}, {shape_tuple(n.shape)}, [{ins}])"]


# conv2d, its backprops and the pools, argsort and the candidate samplers register their
# lowerings in LOWERINGS (those modules import this one's helpers, so they load last)
importlib.import_module(".conv_kernels", __package__)
importlib.import_module(".sampling_kernels", __package__)
