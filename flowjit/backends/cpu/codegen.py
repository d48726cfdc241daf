"""Numba CPU code generation: Python source for loop kernels and for the entry function.

Every loop group becomes a kernel whose source depends only on its *structure* (op
sequence, dtypes, ranks, broadcast pattern): sizes, offsets and constants are
arguments, so equal kernels are compiled once and shared by every graph, layer and
process (the disk cache is keyed by the source text). The entry function holds one
line per step (allocate, call kernel / BLAS, view) and is compiled with `numba.njit`
as a whole, so a call costs one dispatch.
"""
import hashlib
import os
from dataclasses import dataclass

from ...ir.registry import REGISTRY
from ...passes.inplace import inplace_effects
from ... import dtypes as D
from ...ir import scalar as S
from ...ir.shapes import hint, is_one
from ..entry import entry_params, size_lines
from ..loops import (analyse_loop, dim_src, index_term, int_arg, load_lines, node_expr, prod_src,
                     shape_src)
from ..pyexpr import const_src, npt, render as render_expr, sfx
from . import conv_lowering, lowerings  # noqa: F401  (attach the opaque ops' lowerings)
from . import pool
from .scalar import ORDERED

PAR_MIN = int(os.environ.get("FLOWJIT_PAR_MIN", 1 << 18))   # elements: below, a loop runs serially
# Loops that can run on the BLAS thread pool (pool.py) pay off much earlier: handing
# work to a worker still awake after a GEMM costs microseconds. Such a kernel compiles a
# task function too (~0.3-0.8 s more on a cold cache), so smaller loops stay serial.
POOL_MIN = int(os.environ.get("FLOWJIT_POOL_MIN", 1 << 16))
SUM_BLOCK = 1024     # float32 terms summed in float32 before a float64 add (see the loop kernels)


NP_MATH = ("sqrt", "sin", "cos", "floor", "ceil")     # Numba's own versions vectorise


def math_name(ordered):
    """The CPU name of a scalar math call (backends/cpu/scalar.py). ordered: the loop is
    not reassociated, so float32 range reductions take their exact-order versions."""
    def name(e):
        if e.name in NP_MATH:
            return "np." + e.name
        if e.name == "abs":
            return "abs"
        fn = f"{e.name}_{sfx(e.dtype)}"
        return fn + "_ordered" if ordered and fn in ORDERED else fn
    return name


def expr_src(e, ordered=False):
    return render_expr(e, math_name(ordered))


class KernelSpec:
    """A generated kernel: its source, name, and how the entry calls it. threads: it
    may run Numba's parallel loops (so Numba's thread pool must be started first)."""

    def __init__(self, name, source, call_args, threads=False):
        self.name, self.source, self.call_args, self.threads = name, source, call_args, threads


def _hash(text):
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------
# loop kernels
# ----------------------------------------------------------------------------------
def gen_loop(g, grp, bufname, alias=None):
    """Kernel source + call for one loop group. bufname(node id) -> entry variable;
    alias: store node id -> the variable (arg node) whose buffer it is written over."""
    nodes = g.nodes
    gshape = grp.shape
    an = analyse_loop(g, grp)
    loop_dims, leaves, epilogue = an.loop_dims, an.leaves, an.epilogue
    epi_inputs, body_inputs, cdims, cof, C = an.epi_inputs, an.body_inputs, an.cdims, an.cof, an.C
    red_axes = an.red_axes
    randoms = [i for i in grp.nodes if nodes[i].op == "random"]
    ivar = [f"i{c}" for c in range(C)]

    # reduction layout
    red_c = {r: sorted({cof[a] for a in ax if a in cof}) for r, ax in red_axes.items()}
    kind_a = False
    k_split = C
    if grp.reduces:
        sets = {tuple(v) for v in red_c.values()}
        if len(sets) == 1:
            rs = list(sets.pop())
            if rs == list(range(C - len(rs), C)):
                kind_a, k_split = True, C - len(rs)

    if epilogue and not kind_a:
        raise AssertionError("fusion gave a reduction epilogue to a non-trailing reduction")
    params, call = [], []
    # the rank and dtype of every array parameter, while every one is a C-contiguous
    # buffer of a known kind (what a task on the BLAS pool can rebuild from an address)
    arrays = {}
    poolable = True

    def array_param(p, node_id, ndim):
        nonlocal poolable
        dt = nodes[node_id].dtype.name
        arrays[p] = (dt, max(ndim, 1))
        if dt not in pool.POINTER_TYPES:
            poolable = False

    for c in range(C):
        params.append(f"n{c}")
        call.append(int_arg(prod_src([gshape[d] for d in cdims[c]])))

    hoisted, loads_src, epi_loads, names = [], [], [], {}
    starts = 0
    for j, lf in enumerate(leaves):
        mark = len(loads_src)
        p = f"L{j}"
        params.append(p)
        base = bufname(lf["load"].base)
        if lf["identity"]:
            cs = sorted({cof[d] for d in lf["present"]})
            ext = [prod_src([gshape[d] for d in cdims[c]]) for c in cs]
            call.append(f"{base}.reshape(({''.join(e + ', ' for e in ext) or '1, '}))")
            array_param(p, lf["load"].base, len(ext))
            if lf["scalar"]:
                hoisted.append(f"    v{j} = {p}[0]")
            else:
                loads_src.append(f"v{j} = {p}[{', '.join(ivar[c] for c in cs)}]")
        else:
            call.append(base)
            poolable = False            # gathers, slices: buffers of any rank, extra index params
            exprs = []
            for d, s0, s1 in lf["idx"]:
                e, starts = index_term(d, s0, s1, cof, params, call, starts)
                exprs.append(e)
            bounds = [f"{p}.shape[{k}]" for k in range(len(exprs))]
            load_lines(j, p, lf, exprs, bounds, lambda ex: ", ".join(ex) or "0", nodes, loads_src)
        names[lf["vid"]] = f"v{j}"
        mine = loads_src[mark:]
        if lf["vid"] in epi_inputs:
            epi_loads.extend(mine)
        if lf["vid"] not in body_inputs:
            del loads_src[mark:]

    # body
    body = []
    lin = None
    if randoms:
        lin = ivar[0] if C else "0"
        for c in range(1, C):
            lin = f"({lin}) * n{c} + {ivar[c]}"
        body.append(("lin", S.var(lin)))
    epi_body = []
    for local, i in enumerate(grp.nodes):
        n = nodes[i]
        op = REGISTRY[n.op]
        if op.kind == "reduce":
            continue
        if i in epilogue:
            continue
        if n.op == "iota":
            d = n.attrs["axis"] + len(gshape) - len(n.shape)
            args = [ivar[cof[d]] if d in cof else "0"]
        elif n.op == "random":
            args = [names[n.inputs[0]], "lin"]
        else:
            missing = [p for p in n.inputs if p not in names]
            if missing:       # e.g. a reduction of this group read inside its own loop
                raise AssertionError(f"fused loop computes %{i}={n.op} from %{missing[0]}="
                                     f"{nodes[missing[0]].op}, which the loop body does not have "
                                     f"(a fusion bug): {' '.join(nodes[k].op for k in grp.nodes)}")
            args = [names[p] for p in n.inputs]
        expr = op.emit([S.var(a) for a in args], n.attrs, [nodes[p].dtype for p in n.inputs], n.dtype)
        body.append((f"x{local}", expr))
        names[i] = f"x{local}"

    red_kept = [c for c in range(C) if c not in (next(iter(red_c.values())) if red_c else [])]
    for j, r in enumerate(grp.reduces):
        names[r] = f"r{j}"
    for local, i in enumerate(grp.nodes):
        if i not in epilogue:
            continue
        epi_body.append((f"x{local}", node_expr(nodes[i], names, nodes)))
        names[i] = f"x{local}"

    stores, epi_stores = [], []
    # An in-place variable update is stored through the parameter its old value was
    # loaded from: the same array passed twice makes LLVM's runtime alias check fail,
    # and the loop falls back to scalar code (5x slower on an optimizer update).
    same_param = {}
    for j, lf in enumerate(leaves):
        if lf["identity"] and set(lf["present"]) >= set(loop_dims):
            same_param.setdefault(lf["load"].base, f"L{j}")
    for j, s in enumerate(grp.stores):
        if alias and s in alias and s not in epilogue and alias[s] in same_param:
            stores.append(f"{same_param[alias[s]]}[{', '.join(ivar) or '0'}] = {names[s]}")
            continue
        p = f"O{j}"
        params.append(p)
        if s in epilogue:
            ext = [prod_src([gshape[d] for d in cdims[c]]) for c in red_kept]
            call.append(f"{bufname(s)}.reshape(({''.join(e + ', ' for e in ext) or '1, '}))")
            array_param(p, s, len(ext))
            epi_stores.append(f"{p}[{', '.join(ivar[c] for c in red_kept) or '0'}] = {names[s]}")
            continue
        ext = [prod_src([gshape[d] for d in cdims[c]]) for c in range(C)]
        call.append(f"{bufname(s)}.reshape(({''.join(e + ', ' for e in ext) or '1, '}))")
        array_param(p, s, len(ext))
        stores.append(f"{p}[{', '.join(ivar) or '0'}] = {names[s]}")

    red_info = []
    for j, r in enumerate(grp.reduces):
        p = f"R{j}"
        params.append(p)
        n = nodes[r]
        kept = [c for c in range(C) if c not in red_c[r]]
        ext = [prod_src([gshape[d] for d in cdims[c]]) for c in kept]
        call.append(f"{bufname(r)}.reshape(({''.join(e + ', ' for e in ext) or '1, '}))")
        array_param(p, r, len(ext))
        em = REGISTRY[n.op].emit
        acc_dt = n.dtype
        wide = em["kind"] == "sum" and n.dtype.name == "float32" and kind_a
        ident = em["identity"](n.dtype)
        ident_src = const_src(ident, D.float64 if wide else n.dtype)
        src_val = names.get(nodes[r].inputs[0]) or f"x{grp.nodes.index(nodes[r].inputs[0])}"
        red_info.append(dict(p=p, kept=kept, em=em, dtype=acc_dt, wide=wide, ident=ident_src,
                             val=f"np.float64({src_val})" if wide else src_val, kind=em["kind"],
                             val32=src_val, ident32=const_src(ident, n.dtype)))

    # -- assemble ----------------------------------------------------------------------
    fname = "KERNEL"
    total_hint = 1
    for d in gshape:
        total_hint *= max(hint(d), 1)
    # On the BLAS pool a kernel's rows are split into blocks. A reduction that keeps the
    # first loop leaves each block its own outputs; one that sums over it (a loss, a
    # bias gradient) gives each block its own partial result, combined after the run
    # (so no epilogue may read the result inside the loop nest).
    reduces_rows = bool(grp.reduces) and all(0 in red_c[r] for r in grp.reduces)
    rows_ok = not grp.reduces or (kind_a and k_split > 0) or (reduces_rows and not epilogue)
    # (iota and random read the loop index as a value: it stays signed, off the pool)
    pooled = poolable and not randoms and not any(nodes[i].op == "iota" for i in grp.nodes) \
        and C > 0 and rows_ok and total_hint >= POOL_MIN and pool.available()
    parallel = not pooled and total_hint >= PAR_MIN and C > 0 and (
        not grp.reduces or (kind_a and (k_split > 0 or all(ri["kind"] in ("sum", "prod") for ri in red_info))))
    has_f64_trans = any(S.uses_transcendental(e, "float64") for _, e in body + epi_body)
    # reassociation lets LLVM vectorise reductions over the innermost loops (kind A:
    # one accumulator across iterations); nothing else needs it: reductions over outer
    # loops (column sums) vectorise across the kept inner dims as they are, and then the
    # float32 exp/tanh/sigmoid can stay in float32 (8 lanes). Float64 Cody-Waite range
    # reduction must not be reassociated.
    fm = {"nsz", "contract"} | ({"reassoc"} if grp.reduces and kind_a and not has_f64_trans else set())
    # (without reassociation the operation order is kept: float32 range reduction is exact)
    body = [f"{x} = {expr_src(e, 'reassoc' not in fm)}" for x, e in body]
    epi_body = [f"{x} = {expr_src(e, 'reassoc' not in fm)}" for x, e in epi_body]

    def nest(par, rows=False):
        """The loops; par: the first one is a prange; rows: it runs over row_lo..row_hi only."""
        out = []
        ind = "    "
        out.extend(hoisted)
        if grp.reduces and not kind_a:
            for ri in red_info:
                lv = [f"q{c}" for c in ri["kept"]]
                ii = ind
                for c, v in zip(ri["kept"], lv):
                    out.append(f"{ii}for {v} in range(n{c}):")
                    ii += "    "
                out.append(f"{ii}{ri['p']}[{', '.join(lv) or '0'}] = {ri['ident']}")
        depth = ind
        # a float32 sum whose innermost loop is reduced adds blocks of at most SUM_BLOCK
        # terms in float32 (vectorised 8 wide) and the block sums in float64: as
        # accurate as pairwise summation, about twice as fast as widening every term
        blocked = kind_a and k_split < C and any(ri["wide"] for ri in red_info)
        for c in range(C):
            if kind_a and c == k_split:
                for j, ri in enumerate(red_info):
                    out.append(f"{depth}acc{j} = {ri['ident']}")
            rng = "prange" if (par and c == 0) else "range"
            if rows and c == 0 and not (blocked and C == 1):
                # unsigned: an index that might be negative gets Numba's wraparound
                # test, and the loop is no longer vectorised (8x slower)
                out.append(f"{depth}for {ivar[c]} in range(np.uint64(row_lo), np.uint64(row_hi)):")
            elif rows and c == 0:       # one loop, a blocked float32 sum: blocks of this row range
                out.append(f"{depth}for b0 in range((row_hi - row_lo + {SUM_BLOCK - 1}) // {SUM_BLOCK}):")
                depth += "    "
                for j, ri in enumerate(red_info):
                    if ri["wide"]:
                        out.append(f"{depth}pacc{j} = {ri['ident32']}")
                out.append(f"{depth}for i0 in range(np.uint64(row_lo + b0 * {SUM_BLOCK}), "
                           f"np.uint64(min(row_hi, row_lo + (b0 + 1) * {SUM_BLOCK}))):")
            elif blocked and c == C - 1:
                # (prange takes unit steps only: count blocks, not their starts)
                out.append(f"{depth}for b{c} in {rng}((n{c} + {SUM_BLOCK - 1}) // {SUM_BLOCK}):")
                depth += "    "
                for j, ri in enumerate(red_info):
                    if ri["wide"]:
                        out.append(f"{depth}pacc{j} = {ri['ident32']}")
                out.append(f"{depth}for {ivar[c]} in range(b{c} * {SUM_BLOCK}, min(n{c}, (b{c} + 1) * {SUM_BLOCK})):")
            else:
                out.append(f"{depth}for {ivar[c]} in {rng}(n{c}):")
            depth += "    "
        if kind_a and k_split == C:
            for j, ri in enumerate(red_info):
                out.append(f"{depth}acc{j} = {ri['ident']}")
        for line in loads_src + body + stores:
            out.append(depth + line)
        for j, ri in enumerate(red_info):
            if kind_a and blocked and ri["wide"]:
                out.append(f"{depth}pacc{j} += {ri['val32']}")
            elif kind_a:
                if ri["kind"] == "sum":
                    out.append(f"{depth}acc{j} += {ri['val']}")
                elif ri["kind"] == "prod":
                    out.append(f"{depth}acc{j} *= {ri['val']}")
                else:
                    out.append(f"{depth}acc{j} = {red_update(ri, f'acc{j}', ri['val'])}")
            else:
                tgt = f"{ri['p']}[{', '.join(ivar[c] for c in ri['kept']) or '0'}]"
                out.append(f"{depth}{tgt} = {red_update(ri, tgt, ri['val'])}")
        if blocked:
            d1 = depth[:-4]
            for j, ri in enumerate(red_info):
                if ri["wide"]:
                    out.append(f"{d1}acc{j} += np.float64(pacc{j})")
        if kind_a:
            d2 = "    " * (k_split + 1)
            for j, ri in enumerate(red_info):
                tgt = f"{ri['p']}[{', '.join(ivar[c] for c in ri['kept']) or '0'}]"
                conv = f"{npt(ri['dtype'])}(acc{j})" if ri["wide"] else f"acc{j}"
                out.append(f"{d2}r{j} = {conv}")
                out.append(f"{d2}{tgt} = r{j}")
            for line in epi_loads + epi_body + epi_stores:
                out.append(d2 + line)
        return out

    lines = [f"def {fname}({', '.join(params)}):"]
    if pooled:
        lines += pool_dispatch(params, arrays, C, red_info if reduces_rows else [])
        # below the threshold, or with one thread: the same rows function over all rows
        # (one compiled copy of the loop nest, not two)
        lines.append(f"    __ROWS__(np.int64(0), n0, {', '.join(params)})")
    elif parallel:
        lines.append(f"    if {' * '.join(f'n{c}' for c in range(C))} >= {PAR_MIN}:")
        lines.extend("    " + l for l in nest(True))
        lines.append("        return")
        lines.extend(nest(False))
    else:
        lines.extend(nest(False))
    if len(lines) == 1:
        lines.append("    return")
    body_src = "\n".join(lines) + "\n"
    if pooled:
        body_src = "\n".join([f"def __ROWS__(row_lo, row_hi, {', '.join(params)}):"] + nest(False, rows=True)) \
            + "\n\n\n" + pool.task_source("__KEY__", "__ROWS__", params, arrays) + "\n\n" + body_src
    opts = "fastmath={" + ", ".join(repr(x) for x in sorted(fm)) + f"}}, parallel={parallel}"
    key = _hash(opts + body_src)
    name = f"k_{key}"
    deco = f"@njit(cache=CACHE, error_model='numpy', {opts})\n"
    if pooled:
        # rows function, task, then the kernel: the two Numba functions share the options
        body_src = deco + body_src.replace(f"def {fname}(", deco + f"def {fname}(", 1)
        body_src = body_src.replace("__ROWS__", name + "_rows").replace("__KEY__", key)
    else:
        body_src = deco + body_src
    source = f"# fused loop: {' '.join(nodes[i].op for i in grp.nodes) or 'copy'}\n" \
        + body_src.replace(f"def {fname}(", f"def {name}(", 1)
    return KernelSpec(name, source, call, threads=parallel)


def red_update(ri, acc, v):
    """The accumulation step of reduction ri. A float max/min propagates NaN (as
    np.max and tf.reduce_max do) through LLVM's maximum/minimum intrinsics (scalar.py),
    which vectorise as reductions, where the op's select form does not."""
    if ri["kind"] in ("max", "min") and ri["dtype"].is_floating:
        return f"{'fmaximum' if ri['kind'] == 'max' else 'fminimum'}({acc}, {v})"
    return expr_src(ri["em"]["update"](ri["dtype"], S.var(acc), S.var(v)))


def pool_dispatch(params, arrays, C, partials):
    """Kernel lines that split a big loop into row blocks, one record per block (see
    pool.record_lines), run on the BLAS pool. partials: the reductions over the first
    loop (red_info entries): each block writes its own slice of a (blocks, ...) array,
    combined into the output afterwards."""
    out = [f"    if {' * '.join(f'n{c}' for c in range(C))} >= {POOL_MIN}:",
           "        nt = min(pool_threads(), n0)",
           "        if nt > 1:",
           f"            rec = np.empty((nt, {pool.record_width(params, arrays)}), np.int64)",
           "            step = (n0 + nt - 1) // nt"]
    part = {ri["p"]: f"part_{ri['p']}" for ri in partials}
    for ri in partials:
        out.append(f"            {part[ri['p']]} = np.empty((nt,) + {ri['p']}.shape, {ri['p']}.dtype)")
    out += ["            for t in range(nt):",
            "                rec[t, 0] = t * step",
            "                rec[t, 1] = min(n0, (t + 1) * step)"]
    out += pool.record_lines(params, arrays, " " * 16, lambda p: f"{part[p]}[t]" if p in part else p)
    out.append("            pool_run(nt, '__KEY__', rec)")
    for ri in partials:
        # blocks combined in order; a float32 sum's block partials are float32 (what the
        # rows function stores), added in float64
        pa = part[ri["p"]]
        first = f"np.float64({pa}2[0, e])" if ri["wide"] else f"{pa}2[0, e]"
        out += [f"            {pa}2 = {pa}.reshape((nt, -1))",
                f"            out_{ri['p']} = {ri['p']}.reshape(-1)",
                f"            for e in range(out_{ri['p']}.shape[0]):",
                f"                acc = {first}",
                "                for t in range(1, nt):",
                f"                    acc = {red_update(ri, 'acc', pa + '2[t, e]')}",
                f"                out_{ri['p']}[e] = acc"]
    out.append("            return")
    return out



# ----------------------------------------------------------------------------------
# opaque kernels and the entry
# ----------------------------------------------------------------------------------
def gen_opaque_kernel(n, g):
    """KernelSpec (without call) of opaque node n's kernel. An op whose lowering has
    "fixed" may specialise its kernel to the node (attrs, traced input shapes) when that
    returns literals; otherwise one kernel per op and dtype serves every node. The name
    is a hash of the source written with a placeholder name."""
    op, dtype = n.op, g.nodes[n.inputs[0]].dtype
    lower = REGISTRY[op].lower
    fixed = lower["fixed"](n.attrs, [g.nodes[p].shape for p in n.inputs]) if "fixed" in lower else None

    def body(fname):
        return lower["kernel"](fname, dtype) if fixed is None else lower["kernel"](fname, dtype, fixed)
    opts = lower.get("njit", "")          # e.g. "fastmath=True, parallel=True"
    name = f"k_{_hash(op + dtype.name + opts + body('KERNEL'))}"
    source = f"# {op} ({dtype.name})\n@njit(cache=CACHE, error_model='numpy'{', ' + opts if opts else ''})" \
        + body(name)
    return KernelSpec(name, source, None, threads=lower.get("threads", False))


class AllocSites:
    """The entry's allocations, numbered: `alloc(site, shape, dtype)` is `np.empty` when
    the entry is compiled (runtime_lib.alloc) and the buffer cache's `alloc` in the
    Python tier (backend.BufferCache), from the same source text."""

    def __init__(self):
        self.count = 0

    def __call__(self, shape, dtype):
        self.count += 1
        return f"alloc({self.count - 1}, {shape}, {dtype})"


@dataclass
class EntryCode:
    params: list         # the entry's parameters
    lines: list          # its body, one statement a line
    kernels: dict        # name -> source
    threaded: set        # kernels that may run Numba's parallel loops
    err_codes: dict      # error code -> node id
    inplace: list        # effects written straight into the variables' buffers
    n_sites: int         # allocation sites (AllocSites)

    def source(self, name):
        return f"def {name}({', '.join(self.params)}):\n" + "".join("    " + l + "\n" for l in self.lines)


def gen_entry(prog):
    """The entry's source and the kernels it calls (an EntryCode)."""
    g = prog.graph
    kernels, threaded = {}, set()
    alloc = AllocSites()
    err_codes = {}
    names, params = entry_params(g)

    def buf(i):
        return names.get(i, f"v{i}")

    inplace = inplace_effects(prog)
    alias = {g.effects[k][1]: g.effects[k][0] for k in inplace}
    lines = []
    lines.extend(size_lines(g, names))

    for n in g.nodes:
        if n.op == "sym_scalar":
            lines.append(f"v{n.id} = {alloc('(1,)', npt(n.dtype))}")
            lines.append(f"v{n.id}[0] = {dim_src(n.attrs['expr'])}")

    for step in prog.steps:
        if step.kind == "loop":
            grp = step.group
            inline = _scalar_inline(g, grp, buf, alias, alloc)
            if inline is not None:      # a scalar computation: no kernel to compile
                lines.extend(inline)
                continue
            spec = gen_loop(g, grp, buf, alias)
            kernels[spec.name] = spec.source
            if spec.threads:
                threaded.add(spec.name)
            for o in grp.stores + grp.reduces:
                n = g.nodes[o]
                if o in alias:      # a variable's new value, written over its buffer
                    lines.append(f"{buf(o)} = {buf(alias[o])}")
                else:
                    lines.append(f"{buf(o)} = {alloc(shape_src(n.shape), npt(n.dtype))}")
            lines.append(f"{spec.name}({', '.join(spec.call_args)})")
            continue
        n = g.nodes[step.node]
        out = buf(n.id)
        if step.kind == "view":
            lines.append(f"{out} = {buf(n.inputs[0])}.reshape({shape_src(n.shape)})")
        elif step.kind == "matmul":
            lines.extend(_matmul_lines(g, n, buf, alloc))
        else:
            kind = REGISTRY[n.op].lower["kind"]
            spec = gen_opaque_kernel(n, g)
            kname = spec.name
            kernels[kname] = spec.source
            if spec.threads:
                threaded.add(kname)
            lines.append(f"{out} = {alloc(shape_src(n.shape), npt(n.dtype))}")
            x = g.nodes[n.inputs[0]]
            if kind == "axis3":
                ax = n.attrs["axis"]
                o3 = f"({prod_src(x.shape[:ax])}, {dim_src(x.shape[ax])}, {prod_src(x.shape[ax + 1:])})"
                o2 = f"({prod_src(x.shape[:ax])}, {prod_src(x.shape[ax + 1:])})"
                lines.append(f"{kname}({buf(x.id)}.reshape({o3}), {out}.reshape({o2}))")
            elif kind == "concat":
                ax = n.attrs["axis"]
                outer, inner = prod_src(n.shape[:ax]), prod_src(n.shape[ax + 1:])
                off = "0"
                for p in n.inputs:
                    ps = g.nodes[p].shape
                    lines.append(f"{kname}({buf(p)}.reshape(({outer}, {dim_src(ps[ax])}, {inner})), "
                                 f"{out}.reshape(({outer}, {dim_src(n.shape[ax])}, {inner})), {int_arg(off)})")
                    off = f"{off} + {dim_src(ps[ax])}"
            elif kind in ("gather", "scatter"):
                # (outer, n, inner) views on both sides of the indexed axis; the kernel
                # checks every index and reports the first bad one through `err`
                ax = n.attrs["axis"]
                idx = g.nodes[n.inputs[1]]
                big = x if kind == "gather" else n          # the side indexed by idx
                outer, inner = prod_src(big.shape[:ax]), prod_src(big.shape[ax + 1:])
                m = prod_src(idx.shape)
                src_mid, out_mid = (dim_src(x.shape[ax]), m) if kind == "gather" else (m, dim_src(n.shape[ax]))
                code = len(err_codes) + 1
                err_codes[code] = n.id
                lines.append(f"{kname}({buf(x.id)}.reshape(({outer}, {src_mid}, {inner})), "
                             f"{buf(idx.id)}.reshape(({m},)), "
                             f"{out}.reshape(({outer}, {out_mid}, {inner})), err, {int_arg(code)})")
            elif kind == "check":
                # a check over the flat values: the first bad one goes to `err`
                code = len(err_codes) + 1
                err_codes[code] = n.id
                m = prod_src(x.shape)
                lines.append(f"{kname}({buf(x.id)}.reshape(({m},)), {out}.reshape(({m},)), err, "
                             f"{int_arg(code)})")
            elif kind == "call":
                # generic: kernel(input buffers..., output buffer, *int attrs of the op)
                lower_args = REGISTRY[n.op].lower.get("args")
                extra = lower_args(n.attrs) if lower_args else []
                lines.append(f"{kname}({''.join(buf(p) + ', ' for p in n.inputs)}{out}"
                             f"{''.join(', ' + int_arg(dim_src(a)) for a in extra)})")
            else:
                raise AssertionError(kind)
    outs = [buf(o) for o in g.outputs] + [buf(v) for _, v in g.effects]
    lines.append(f"return ({''.join(o + ', ' for o in outs)})")
    return EntryCode(params, lines, kernels, threaded, err_codes, inplace, alloc.count)


def _scalar_inline(g, grp, buf, alias, alloc):
    """Entry lines computing a loop group whose iteration space is one element, or None."""
    if any(not is_one(d) for d in grp.shape) or grp.reduces:
        return None
    names, lines = {}, []
    for vid, load in grp.loads.items():
        if load.chain:
            return None
        names[vid] = f"s{vid}"
        lines.append(f"s{vid} = {buf(load.base)}.reshape((1,))[0]")
    for local, i in enumerate(grp.nodes):
        n = g.nodes[i]
        if n.op in ("iota", "random"):
            return None
        expr = expr_src(node_expr(n, names, g.nodes))
        names[i] = f"s{i}"
        lines.append(f"s{i} = {npt(n.dtype)}({expr})")
    for o in grp.stores:
        n = g.nodes[o]
        if o in alias:
            lines.append(f"{buf(o)} = {buf(alias[o])}")
        else:
            lines.append(f"{buf(o)} = {alloc(shape_src(n.shape), npt(n.dtype))}")
        lines.append(f"{buf(o)}.reshape((1,))[0] = {names[o]}")
    return lines


def _matmul_lines(g, n, buf, alloc):
    a, b = (g.nodes[i] for i in n.inputs)
    out = buf(n.id)
    ta, tb = n.attrs["transpose_a"], n.attrs["transpose_b"]
    lines = [f"{out} = {alloc(shape_src(n.shape), npt(n.dtype))}"]
    if len(n.shape) == 2 and n.dtype.is_floating:
        fn = "gemm_" + ("t" if ta else "n") + ("t" if tb else "n")
        lines.append(f"{fn}({buf(a.id)}, {buf(b.id)}, {out})")
        return lines
    batch = n.shape[:-2]
    nb = prod_src(batch)

    def three(x):
        xb = x.shape[:-2]
        lead = prod_src(xb) if xb and not all(is_one(d) for d in xb) else "1"
        return f"{buf(x.id)}.reshape(({lead}, {dim_src(x.shape[-2])}, {dim_src(x.shape[-1])}))"
    fn = "bmm" if n.dtype.is_floating else "bmm_loop"
    lines.append(f"{fn}({three(a)}, {three(b)}, {out}.reshape(({nb}, {dim_src(n.shape[-2])}, "
                 f"{dim_src(n.shape[-1])})), {ta}, {tb})")
    return lines
