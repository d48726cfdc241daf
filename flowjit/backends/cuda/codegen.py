"""CUDA code generation: numba.cuda kernel sources for loop groups, and the entry.

The input is the same backend-neutral `Program` the CPU backend compiles (see
passes/fusion.py). Every buffer is a flat 1-d device array; kernels compute flat
offsets from the coalesced loop indices, so no device-array views are built per call.

Loop groups become one of three kernel shapes:
- elementwise: a grid-stride loop over all elements;
- row-wise reduction (reduced dims trailing after coalescing: sums over the last axis,
  softmax, cross-entropy): one block per output row, threads stride over the row, a
  tree reduction in shared memory, then thread 0 writes the result and runs the
  group's *epilogue* (log(sum), a mean's division...). A few long rows are split over
  several blocks that write partial results; a final pass combines them.
- column reduction (a kept dim is innermost, e.g. a bias gradient summing over the
  batch): one thread per output element looping over the reduced elements, so
  neighbouring threads read neighbouring memory.
Reductions over different axes in one group get one kernel per axis set (the cheap
elementwise body is recomputed; only the last kernel writes the group's stores).
Kernel text depends only on structure; sizes are arguments, so kernels are shared.
"""
import hashlib

from ...ir.registry import REGISTRY
from ... import dtypes as D
from ...ir import scalar as S
from ..loops import analyse_loop, dim_src, index_term, load_lines, node_expr, prod_src
from ..pyexpr import const_src, npt, render, sfx
from .runtime import TPB

KERNEL_HEADER = "@cuda.jit(cache=CACHE)\n"


def _hash(text):
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def math_name(e):
    """The device name of a scalar math call (backends/cuda/scalar.py)."""
    if e.name == "abs":
        return "abs"
    if e.name in ("sqrt", "sin", "cos", "floor", "ceil"):
        return e.name + "_"
    return f"{e.name}_{sfx(e.dtype)}"


def expr_src(e):
    return render(e, math_name)


def int_arg(src):
    return f"np.int64({src})"


def horner(terms):
    """Flat offset from (index, extent) pairs in C order: ((i0 * n1 + i1) * n2 + i2)."""
    if not terms:
        return "0"
    off = terms[0][0]
    for i, n in terms[1:]:
        off = f"({off}) * {n} + {i}"
    return off


def unravel(flat, cs, ind):
    """Lines that split flat index `flat` into i{c} for coalesced dims cs (C order)."""
    if not cs:
        return []
    out = [f"{ind}q_ = {flat}"]
    for c in reversed(cs[1:]):
        out.append(f"{ind}i{c} = q_ % n{c}")
        out.append(f"{ind}q_ = q_ // n{c}")
    out.append(f"{ind}i{cs[0]} = q_")
    return out


class LoopCode:
    """A loop group analysed once; `kernels()` then emits its kernels."""

    def __init__(self, g, grp, buf, scalar_src):
        nodes = g.nodes
        self.g, self.grp = g, grp
        gshape = grp.shape
        an = analyse_loop(g, grp)
        leaves, self.epilogue, cdims, cof = an.leaves, an.epilogue, an.cdims, an.cof
        epi_inputs, body_inputs, red_axes = an.epi_inputs, an.body_inputs, an.red_axes
        for lf in leaves:
            lf["hostscalar"] = lf["identity"] and scalar_src(lf["load"].base) is not None
        C = self.C = len(cdims)
        self.red_c = {r: tuple(sorted({cof[a] for a in ax if a in cof})) for r, ax in red_axes.items()}

        params, call = [], []
        self.extents = [prod_src([gshape[d] for d in cdims[c]]) for c in range(C)]
        for c in range(C):
            params.append(f"n{c}")
            call.append(int_arg(self.extents[c]))
        loads, epi_loads, names = [], [], {}
        starts = 0
        for j, lf in enumerate(leaves):
            p = f"L{j}"
            params.append(p)
            base = lf["load"].base
            code = []
            if lf["hostscalar"]:
                call.append(scalar_src(base))
                code.append(f"v{j} = {p}")
            elif lf["identity"]:
                call.append(buf(base))
                cs = sorted({cof[d] for d in lf["present"]})
                code.append(f"v{j} = {p}[{horner([(f'i{c}', f'n{c}') for c in cs])}]")
            else:
                call.append(buf(base))
                bshape = nodes[base].shape
                exprs, dims = [], []
                for k, (d, s0, s1) in enumerate(lf["idx"]):
                    params.append(f"B{j}_{k}")
                    call.append(int_arg(dim_src(bshape[k])))
                    dims.append(f"B{j}_{k}")
                    e, starts = index_term(d, s0, s1, cof, params, call, starts)
                    exprs.append(e)
                load_lines(j, p, lf, exprs, dims, lambda ex: horner(list(zip(ex, dims))), nodes, code)
            names[lf["vid"]] = f"v{j}"
            if lf["vid"] in epi_inputs:
                epi_loads.extend(code)
            if lf["vid"] in body_inputs:
                loads.extend(code)
        body = []
        for local, i in enumerate(grp.nodes):
            n = nodes[i]
            op = REGISTRY[n.op]
            if op.kind == "reduce" or i in self.epilogue:
                continue
            if n.op == "iota":
                d = n.attrs["axis"] + len(gshape) - len(n.shape)
                args = [f"i{cof[d]}" if d in cof else "0"]
            elif n.op == "random":
                args = [names[n.inputs[0]], "lin"]
            else:
                args = [names[p] for p in n.inputs]
            expr = op.emit([S.var(a) for a in args], n.attrs, [nodes[p].dtype for p in n.inputs], n.dtype)
            body.append(f"x{local} = {expr_src(expr)}")
            names[i] = f"x{local}"
        for j, r in enumerate(grp.reduces):
            names[r] = f"r{j}"
        epi_body = []
        for local, i in enumerate(grp.nodes):
            if i in self.epilogue:
                epi_body.append(f"x{local} = {expr_src(node_expr(nodes[i], names, nodes))}")
                names[i] = f"x{local}"
        stores, epi_stores = [], []
        for j, s in enumerate(grp.stores):
            params.append(f"O{j}")
            call.append(buf(s))
            if s in self.epilogue:
                epi_stores.append(f"O{j}[row] = {names[s]}")
            else:
                stores.append(f"O{j}[lin] = {names[s]}")
        self.red = []
        for j, r in enumerate(grp.reduces):
            params.append(f"R{j}")
            call.append(buf(r))
            n = nodes[r]
            em = REGISTRY[n.op].emit
            wide = em["kind"] == "sum" and n.dtype.name == "float32"
            acc_dt = D.float64 if wide else n.dtype
            acc_t = npt(acc_dt)
            self.red.append(dict(j=j, node=r, em=em, dtype=n.dtype, acc_t=acc_t, wide=wide,
                                 ident=const_src(em["identity"](n.dtype), acc_dt),
                                 val=f"np.float64({names[n.inputs[0]]})" if wide else names[n.inputs[0]]))
        self.params, self.call = params, call
        self.loads, self.epi_loads, self.body, self.stores = loads, epi_loads, body, stores
        self.epi_body, self.epi_stores = epi_body, epi_stores
        self.lin_all = horner([(f"i{c}", f"n{c}") for c in range(C)])
        self.uses_lin = bool(stores) or any(nodes[i].op == "random" for i in grp.nodes)

    # -- kernels ---------------------------------------------------------------------
    def kernels(self):
        """[(name, source, launch-lines-template)] and entry lines."""
        grp = self.grp
        if not grp.reduces:
            return self._elementwise()
        parts = {}
        for ri in self.red:
            parts.setdefault(self.red_c[ri["node"]], []).append(ri)
        kernels, lines = {}, []
        for k, (rc, reds) in enumerate(parts.items()):
            trailing = list(rc) == list(range(self.C - len(rc), self.C))
            if self.epilogue and (len(parts) > 1 or not trailing):
                raise AssertionError("fusion gave an epilogue to a non-trailing reduction")
            fn = self._rows if trailing else self._columns
            # the last kernel writes the group's stores: a store may overwrite a buffer
            # (a variable updated in place) that the earlier kernels still read
            ks, ls = fn(list(rc), reds, with_stores=(k == len(parts) - 1))
            kernels.update(ks)
            lines.extend(ls)
        return kernels, lines

    def _sig(self, extra=()):
        return ", ".join(list(extra) + self.params)

    def _finish(self, fname, src, comment):
        name = f"k_{_hash(src)}"
        return name, f"# {comment}\n" + KERNEL_HEADER + src.replace(fname, name, 1)

    def _comment(self):
        return "fused loop: " + (" ".join(self.g.nodes[i].op for i in self.grp.nodes) or "copy")

    def _elementwise(self):
        C = self.C
        ind = " " * 8
        L = [f"def KERNEL({self._sig()}):",
             f"    total = {' * '.join(f'n{c}' for c in range(C)) or '1'}",
             "    t = cuda.grid(1)",
             "    stride = cuda.gridsize(1)",
             "    while t < total:"]
        L += unravel("t", list(range(C)), ind)
        L.append(f"{ind}lin = t")
        L += [ind + x for x in self.loads + self.body + self.stores]
        L.append(f"{ind}t += stride")
        name, src = self._finish("KERNEL", "\n".join(L) + "\n", self._comment())
        total = prod_src(self.grp.shape) if self.grp.shape else "1"
        lines = [f"{name}[RT.grid({total}), RT.TPB]({', '.join(self.call)})"]
        return {name: src}, lines

    def _acc_update(self, ri, acc, v):
        return expr_src(ri["em"]["update"](ri["dtype"], S.var(acc), S.var(v)))

    def _result(self, ri, ind, src_acc):
        conv = f"{npt(ri['dtype'])}({src_acc})" if ri["wide"] else src_acc
        return [f"{ind}r{ri['j']} = {conv}", f"{ind}R{ri['j']}[row] = r{ri['j']}"]

    def _rows(self, rc, reds, with_stores):
        """One block per row (several blocks per row when rows are few and long)."""
        C = self.C
        kept = [c for c in range(C) if c not in rc]
        rows = " * ".join(f"n{c}" for c in kept) or "1"
        rlen = " * ".join(f"n{c}" for c in rc) or "1"
        extra = ["ns"] + [f"PP{ri['j']}" for ri in reds]
        head = [f"def KERNEL({self._sig(extra)}):",
                f"    rows = {rows}",
                f"    rlen = {rlen}",
                "    tid = cuda.threadIdx.x",
                "    nt = cuda.blockDim.x"]
        head += [f"    sh{ri['j']} = cuda.shared.array({TPB}, {ri['acc_t']})" for ri in reds]

        def tree(ind):
            out = [f"{ind}cuda.syncthreads()", f"{ind}s_ = nt // 2", f"{ind}while s_ > 0:",
                   f"{ind}    if tid < s_:"]
            for ri in reds:
                sh = f"sh{ri['j']}"
                out.append(f"{ind}        {sh}[tid] = {self._acc_update(ri, f'{sh}[tid]', f'{sh}[tid + s_]')}")
            out += [f"{ind}    cuda.syncthreads()", f"{ind}    s_ //= 2"]
            return out

        def finish(ind):
            out = []
            for ri in reds:
                out += self._result(ri, ind, f"sh{ri['j']}[0]")
            out += [ind + x for x in self.epi_loads + self.epi_body + self.epi_stores]
            return out

        # partial kernel (also the whole job when ns == 1)
        L = list(head)
        L += ["    b = cuda.blockIdx.x", "    while b < rows * ns:",
              "        row = b // ns", "        part = b - row * ns"]
        L += unravel("row", kept, " " * 8)
        L += [f"        acc{ri['j']} = {ri['ident']}" for ri in reds]
        L += ["        rr = part * nt + tid", "        while rr < rlen:"]
        ind = " " * 12
        L += unravel("rr", rc, ind)
        if self.uses_lin:
            L.append(f"{ind}lin = row * rlen + rr")
        L += [ind + x for x in self.loads + self.body + (self.stores if with_stores else [])]
        for ri in reds:
            L.append(f"{ind}acc{ri['j']} = {self._acc_update(ri, 'acc%d' % ri['j'], ri['val'])}")
        L.append(f"{ind}rr += nt * ns")
        L += [f"        sh{ri['j']}[tid] = acc{ri['j']}" for ri in reds]
        L += tree(" " * 8)
        L += ["        if tid == 0:", "            if ns == 1:"]
        L += finish(" " * 16)
        L.append("            else:")
        L += [f"                PP{ri['j']}[b] = sh{ri['j']}[0]" for ri in reds]
        L += ["        cuda.syncthreads()", "        b += cuda.gridDim.x"]
        pname, psrc = self._finish("KERNEL", "\n".join(L) + "\n", self._comment() + " (row reduction)")

        # final pass over the partial results of each row
        F = list(head)
        F += ["    row = cuda.blockIdx.x", "    while row < rows:"]
        F += unravel("row", kept, " " * 8)
        F += [f"        acc{ri['j']} = {ri['ident']}" for ri in reds]
        F += ["        q = tid", "        while q < ns:"]
        for ri in reds:
            F.append(f"            acc{ri['j']} = {self._acc_update(ri, 'acc%d' % ri['j'], 'PP%d[row * ns + q]' % ri['j'])}")
        F.append("            q += nt")
        F += [f"        sh{ri['j']}[tid] = acc{ri['j']}" for ri in reds]
        F += tree(" " * 8)
        F.append("        if tid == 0:")
        F += finish(" " * 12)
        F += ["        cuda.syncthreads()", "        row += cuda.gridDim.x"]
        fname, fsrc = self._finish("KERNEL", "\n".join(F) + "\n", self._comment() + " (final pass)")

        kept_src = " * ".join(f"({self.extents[c]})" for c in kept) or "1"
        rlen_src = " * ".join(f"({self.extents[c]})" for c in rc) or "1"
        lines = [f"_rows = {kept_src}", f"_rlen = {rlen_src}",
                 "_ns = RT.row_splits(_rows, _rlen)",
                 "_nt = RT.row_threads(_rlen, _ns)"]
        pp = []
        for ri in reds:
            acc_np = ri["acc_t"]
            lines.append(f"_pp{ri['j']} = RT.empty(_rows * _ns if _ns > 1 else 1, {acc_np})")
            pp.append(f"_pp{ri['j']}")
        args = ", ".join(["np.int64(_ns)"] + pp + self.call)
        lines.append(f"{pname}[RT.blocks(_rows * _ns), _nt]({args})")
        lines.append("if _ns > 1:")
        lines.append(f"    {fname}[RT.blocks(_rows), RT.row_threads(_ns, 1)]({args})")
        return {pname: psrc, fname: fsrc}, lines

    def _columns(self, rc, reds, with_stores):
        """One thread per output element looping over the reduced elements (neighbouring
        threads read neighbouring memory). When outputs are few and the reduction long
        (a bias gradient over a big batch), the reduced range is split into `ns` chunks
        whose partial results a final pass combines."""
        C = self.C
        kept = [c for c in range(C) if c not in rc]
        extra = ["ns"] + [f"PP{ri['j']}" for ri in reds]
        head = [f"def KERNEL({self._sig(extra)}):",
                f"    rows = {' * '.join(f'n{c}' for c in kept) or '1'}",
                f"    rlen = {' * '.join(f'n{c}' for c in rc) or '1'}",
                "    stride = cuda.gridsize(1)"]
        L = head + ["    chunk = (rlen + ns - 1) // ns",
                    "    w = cuda.grid(1)",
                    "    while w < rows * ns:",
                    "        part = w // rows",
                    "        row = w - part * rows"]
        L += unravel("row", kept, " " * 8)
        L += [f"        acc{ri['j']} = {ri['ident']}" for ri in reds]
        L += ["        rr = part * chunk", "        rend = rr + chunk if rr + chunk < rlen else rlen", "        while rr < rend:"]
        ind = " " * 12
        L += unravel("rr", rc, ind)
        if self.uses_lin:
            L.append(f"{ind}lin = {self.lin_all}")
        L += [ind + x for x in self.loads + self.body + (self.stores if with_stores else [])]
        for ri in reds:
            L.append(f"{ind}acc{ri['j']} = {self._acc_update(ri, 'acc%d' % ri['j'], ri['val'])}")
        L.append(f"{ind}rr += 1")
        L.append("        if ns == 1:")
        for ri in reds:
            L += self._result(ri, " " * 12, f"acc{ri['j']}")
        L.append("        else:")
        L += [f"            PP{ri['j']}[w] = acc{ri['j']}" for ri in reds]
        L.append("        w += stride")
        pname, psrc = self._finish("KERNEL", "\n".join(L) + "\n", self._comment() + " (column reduction)")

        F = head + ["    row = cuda.grid(1)", "    while row < rows:"]
        F += [f"        acc{ri['j']} = {ri['ident']}" for ri in reds]
        F += ["        for q in range(ns):"]
        for ri in reds:
            F.append(f"            acc{ri['j']} = {self._acc_update(ri, 'acc%d' % ri['j'], 'PP%d[q * rows + row]' % ri['j'])}")
        for ri in reds:
            F += self._result(ri, " " * 8, f"acc{ri['j']}")
        F.append("        row += stride")
        fname, fsrc = self._finish("KERNEL", "\n".join(F) + "\n", self._comment() + " (column final pass)")

        kept_src = " * ".join(f"({self.extents[c]})" for c in kept) or "1"
        rlen_src = " * ".join(f"({self.extents[c]})" for c in rc) or "1"
        lines = [f"_rows = {kept_src}", f"_rlen = {rlen_src}", "_ns = RT.col_splits(_rows, _rlen)"]
        pp = []
        for ri in reds:
            lines.append(f"_pp{ri['j']} = RT.empty(_rows * _ns if _ns > 1 else 1, {ri['acc_t']})")
            pp.append(f"_pp{ri['j']}")
        args = ", ".join(["np.int64(_ns)"] + pp + self.call)
        lines.append(f"{pname}[RT.grid(_rows * _ns), RT.TPB]({args})")
        lines.append("if _ns > 1:")
        lines.append(f"    {fname}[RT.grid(_rows), RT.TPB]({args})")
        return {pname: psrc, fname: fsrc}, lines


def gen_loop(g, grp, buf, scalar_src):
    return LoopCode(g, grp, buf, scalar_src).kernels()


def shape_tuple(shape):
    if len(shape) == 0:
        return "()"
    return "(" + "".join(dim_src(d) + ", " for d in shape) + ")"
