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
from ...ir.registry import REGISTRY
from ... import dtypes as D
from ...ir import scalar as S
from ...ir.shapes import same
from ..loops import analyse_loop, dim_src, index_term, int_arg, load_lines, node_expr, prod_src
from ..pyexpr import const_src, npt, render, sfx
from .kernels import EPILOGUES, named
from .runtime import TPB


def math_name(e):
    """The device name of a scalar math call (backends/cuda/scalar.py)."""
    if e.name == "abs":
        return "abs"
    if e.name in ("sqrt", "sin", "cos", "floor", "ceil"):
        return e.name + "_"
    return f"{e.name}_{sfx(e.dtype)}"


def expr_src(e):
    return render(e, math_name)


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


def loop_kernel(sig, lines):
    """The render function (see kernels.named) of a kernel `def <name>(sig):` whose body
    is `lines` (indented already)."""
    body = "".join(line + "\n" for line in lines)
    return lambda name: f"def {name}({sig}):\n{body}"


def _product(names):
    return " * ".join(names) or "1"


class LoopCode:
    """A loop group analysed once; `kernels()` then emits its kernels.

    Kernel parameters (`params`) and the entry's arguments for them (`call`) are, in
    order: the coalesced extents n<c>, the leaves L<j> (with their base dims B<j>_<k>
    and starts P<k>), the stores O<j>, the reductions R<j>. `alloc` (backend.Allocs)
    writes the entry lines allocating a split reduction's partial results."""

    def __init__(self, g, grp, buf, scalar_src, alloc):
        self.g, self.grp, self.buf, self.alloc = g, grp, buf, alloc
        an = analyse_loop(g, grp)
        self.epilogue, self.cof, self.leaves = an.epilogue, an.cof, an.leaves
        for lf in an.leaves:
            lf["hostscalar"] = lf["identity"] and scalar_src(lf["load"].base) is not None
        C = self.C = len(an.cdims)
        self.red_c = {r: tuple(sorted({an.cof[a] for a in ax if a in an.cof}))
                      for r, ax in an.red_axes.items()}
        self.extents = [prod_src([grp.shape[d] for d in an.cdims[c]]) for c in range(C)]
        self.params = [f"n{c}" for c in range(C)]
        self.call = [int_arg(e) for e in self.extents]
        names = {}      # value id -> its local variable in the kernel
        self.loads, self.epi_loads = self._leaf_loads(an, scalar_src, names)
        self.body = self._body(names)
        for j, r in enumerate(grp.reduces):
            names[r] = f"r{j}"
        self.epi_body = self._epilogue_body(names)
        self.stores, self.epi_stores = self._stores(names)
        self.red = [self._reduction(j, r, names) for j, r in enumerate(grp.reduces)]
        self.lin_all = horner([(f"i{c}", f"n{c}") for c in range(C)])
        self.uses_lin = bool(self.stores) or any(g.nodes[i].op == "random" for i in grp.nodes)

    # -- analysis: parameters and the lines of the loop body ---------------------------
    def _leaf_loads(self, an, scalar_src, names):
        """Lines loading the leaves into v<j>: (the body's, the epilogue's)."""
        loads, epi_loads, starts = [], [], 0
        for j, lf in enumerate(an.leaves):
            code, starts = self._leaf(j, lf, scalar_src, starts)
            names[lf["vid"]] = f"v{j}"
            if lf["vid"] in an.epi_inputs:
                epi_loads.extend(code)
            if lf["vid"] in an.body_inputs:
                loads.extend(code)
        return loads, epi_loads

    def _leaf(self, j, lf, scalar_src, starts):
        """Lines loading leaf j into v<j> (adding its parameters), and the number of
        start parameters P<k> so far."""
        p, base = f"L{j}", lf["load"].base
        self.params.append(p)
        if lf["hostscalar"]:
            self.call.append(scalar_src(base))
            return [f"v{j} = {p}"], starts
        self.call.append(self.buf(base))
        if lf["identity"]:
            cs = sorted({self.cof[d] for d in lf["present"]})
            return [f"v{j} = {p}[{horner([(f'i{c}', f'n{c}') for c in cs])}]"], starts
        bshape = self.g.nodes[base].shape
        exprs, dims = [], []
        for k, (d, s0, s1) in enumerate(lf["idx"]):
            self.params.append(f"B{j}_{k}")
            self.call.append(int_arg(dim_src(bshape[k])))
            dims.append(f"B{j}_{k}")
            e, starts = index_term(d, s0, s1, self.cof, self.params, self.call, starts)
            exprs.append(e)
        code = []
        load_lines(j, p, lf, exprs, dims, lambda ex: horner(list(zip(ex, dims))), self.g.nodes, code)
        return code, starts

    def _body(self, names):
        """`x<local> = ...` lines of the group's elementwise nodes (not the epilogue)."""
        nodes, cof, body = self.g.nodes, self.cof, []
        for local, i in enumerate(self.grp.nodes):
            n = nodes[i]
            op = REGISTRY[n.op]
            if op.kind == "reduce" or i in self.epilogue:
                continue
            if n.op == "iota":
                d = n.attrs["axis"] + len(self.grp.shape) - len(n.shape)
                args = [f"i{cof[d]}" if d in cof else "0"]
            elif n.op == "random":
                args = [names[n.inputs[0]], "lin"]
            else:
                args = [names[p] for p in n.inputs]
            expr = op.emit([S.var(a) for a in args], n.attrs, [nodes[p].dtype for p in n.inputs], n.dtype)
            body.append(f"x{local} = {expr_src(expr)}")
            names[i] = f"x{local}"
        return body

    def _epilogue_body(self, names):
        """Lines of the epilogue nodes, run once per row on the reductions' results."""
        nodes, out = self.g.nodes, []
        for local, i in enumerate(self.grp.nodes):
            if i in self.epilogue:
                out.append(f"x{local} = {expr_src(node_expr(nodes[i], names, nodes))}")
                names[i] = f"x{local}"
        return out

    def _stores(self, names):
        """Store lines (parameters O<j>): (per element, per row from the epilogue)."""
        stores, epi_stores = [], []
        for j, s in enumerate(self.grp.stores):
            self.params.append(f"O{j}")
            self.call.append(self.buf(s))
            if s in self.epilogue:
                epi_stores.append(f"O{j}[row] = {names[s]}")
            else:
                stores.append(f"O{j}[lin] = {names[s]}")
        return stores, epi_stores

    def _reduction(self, j, r, names):
        """Reduction j (parameter R<j>): its emitter, accumulator type (float64 for a
        float32 sum), identity and the value it accumulates."""
        self.params.append(f"R{j}")
        self.call.append(self.buf(r))
        n = self.g.nodes[r]
        em = REGISTRY[n.op].emit
        wide = em["kind"] == "sum" and n.dtype.name == "float32"
        acc_dt = D.float64 if wide else n.dtype
        return dict(j=j, node=r, em=em, dtype=n.dtype, acc_t=npt(acc_dt), wide=wide,
                    ident=const_src(em["identity"](n.dtype), acc_dt),
                    val=f"np.float64({names[n.inputs[0]]})" if wide else names[n.inputs[0]])

    # -- kernels ---------------------------------------------------------------------
    def kernels(self):
        """The group's kernels {name: source} and the entry lines launching them."""
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

    def _comment(self):
        return "fused loop: " + (" ".join(self.g.nodes[i].op for i in self.grp.nodes) or "copy")

    def _elementwise(self):
        C = self.C
        ind = " " * 8
        L = [f"    total = {_product(f'n{c}' for c in range(C))}",
             "    t = cuda.grid(1)",
             "    stride = cuda.gridsize(1)",
             "    while t < total:"]
        L += unravel("t", list(range(C)), ind)
        L.append(f"{ind}lin = t")
        L += [ind + x for x in self.loads + self.body + self.stores]
        L.append(f"{ind}t += stride")
        name, src = named(loop_kernel(self._sig(), L), self._comment())
        total = prod_src(self.grp.shape) if self.grp.shape else "1"
        lines = [f"{name}[RT.grid({total}), RT.TPB]({', '.join(self.call)})"]
        return {name: src}, lines

    # -- pieces shared by the reduction kernels ----------------------------------------
    def _acc_update(self, ri, acc, v):
        return expr_src(ri["em"]["update"](ri["dtype"], S.var(acc), S.var(v)))

    def _result(self, ri, ind, src_acc):
        conv = f"{npt(ri['dtype'])}({src_acc})" if ri["wide"] else src_acc
        return [f"{ind}r{ri['j']} = {conv}", f"{ind}R{ri['j']}[row] = r{ri['j']}"]

    def _acc_init(self, reds, ind):
        return [f"{ind}acc{ri['j']} = {ri['ident']}" for ri in reds]

    def _accumulate(self, reds, ind, src):
        """acc<j> updated with `src(ri)`, the value reduction ri accumulates."""
        return [f"{ind}acc{ri['j']} = {self._acc_update(ri, 'acc%d' % ri['j'], src(ri))}" for ri in reds]

    def _inner(self, rc, reds, lin, with_stores, ind):
        """The reduced loop's body: indices i<c> of the reduced dims from `rr`, `lin` (when
        used), loads, the elementwise body (and stores), the accumulation."""
        out = unravel("rr", rc, ind)
        if self.uses_lin:
            out.append(f"{ind}lin = {lin}")
        out += [ind + x for x in self.loads + self.body + (self.stores if with_stores else [])]
        return out + self._accumulate(reds, ind, lambda ri: ri["val"])

    def _split_lines(self, kept, rc, reds, plan, partial, final):
        """Entry lines of a reduction that may be split in `_ns` parts: the sizes, `plan`
        (lines choosing `_ns`...), the partial results' buffers (scratch: they never
        leave the call), the `partial` kernel's launch and, when split, the `final`
        pass's (`partial` and `final` are kernels with their launch configuration)."""
        lines = [f"_rows = {_product(f'({self.extents[c]})' for c in kept)}",
                 f"_rlen = {_product(f'({self.extents[c]})' for c in rc)}"] + plan
        pp = [f"_pp{ri['j']}" for ri in reds]
        lines += [self.alloc.scratch(p, "_rows * _ns if _ns > 1 else 1", ri["acc_t"]) for p, ri in zip(pp, reds)]
        args = ", ".join(["np.int64(_ns)"] + pp + self.call)
        return lines + [f"{partial}({args})", "if _ns > 1:", f"    {final}({args})"]

    # -- row reductions ------------------------------------------------------------------
    def _rows(self, rc, reds, with_stores):
        """One block per row (several blocks per row when rows are few and long)."""
        kept = [c for c in range(self.C) if c not in rc]
        sig = self._sig(["ns"] + [f"PP{ri['j']}" for ri in reds])
        head = self._row_head(kept, rc, reds)
        pname, psrc = named(loop_kernel(sig, head + self._row_partial(kept, rc, reds, with_stores)),
                            self._comment() + " (row reduction)")
        fname, fsrc = named(loop_kernel(sig, head + self._row_final(kept, reds)),
                            self._comment() + " (final pass)")
        plan = ["_ns = RT.row_splits(_rows, _rlen)", "_nt = RT.row_threads(_rlen, _ns)"]
        lines = self._split_lines(kept, rc, reds, plan, f"{pname}[RT.blocks(_rows * _ns), _nt]",
                                  f"{fname}[RT.blocks(_rows), RT.row_threads(_ns, 1)]")
        return {pname: psrc, fname: fsrc}, lines

    def _row_head(self, kept, rc, reds):
        return [f"    rows = {_product(f'n{c}' for c in kept)}",
                f"    rlen = {_product(f'n{c}' for c in rc)}",
                "    tid = cuda.threadIdx.x",
                "    nt = cuda.blockDim.x"] + \
            [f"    sh{ri['j']} = cuda.shared.array({TPB}, {ri['acc_t']})" for ri in reds]

    def _row_partial(self, kept, rc, reds, with_stores):
        """The partial kernel (the whole job when ns == 1): block b reduces part b % ns
        of row b // ns."""
        L = ["    b = cuda.blockIdx.x", "    while b < rows * ns:",
             "        row = b // ns", "        part = b - row * ns"]
        L += unravel("row", kept, " " * 8)
        L += self._acc_init(reds, " " * 8)
        L += ["        rr = part * nt + tid", "        while rr < rlen:"]
        L += self._inner(rc, reds, "row * rlen + rr", with_stores, " " * 12)
        L.append(" " * 12 + "rr += nt * ns")
        L += self._block_reduce(reds)
        L += ["        if tid == 0:", "            if ns == 1:"]
        L += self._row_result(reds, " " * 16)
        L.append("            else:")
        L += [f"                PP{ri['j']}[b] = sh{ri['j']}[0]" for ri in reds]
        return L + ["        cuda.syncthreads()", "        b += cuda.gridDim.x"]

    def _row_final(self, kept, reds):
        """The final pass: block `row` combines the row's ns partial results."""
        F = ["    row = cuda.blockIdx.x", "    while row < rows:"]
        F += unravel("row", kept, " " * 8)
        F += self._acc_init(reds, " " * 8)
        F += ["        q = tid", "        while q < ns:"]
        F += self._accumulate(reds, " " * 12, lambda ri: "PP%d[row * ns + q]" % ri["j"])
        F.append("            q += nt")
        F += self._block_reduce(reds)
        F.append("        if tid == 0:")
        F += self._row_result(reds, " " * 12)
        return F + ["        cuda.syncthreads()", "        row += cuda.gridDim.x"]

    def _block_reduce(self, reds):
        """Each thread's accumulators into shared memory, then a tree reduction: the
        block's results end in sh<j>[0]."""
        ind = " " * 8
        out = [f"{ind}sh{ri['j']}[tid] = acc{ri['j']}" for ri in reds]
        out += [f"{ind}cuda.syncthreads()", f"{ind}s_ = nt // 2", f"{ind}while s_ > 0:",
                f"{ind}    if tid < s_:"]
        for ri in reds:
            sh = f"sh{ri['j']}"
            out.append(f"{ind}        {sh}[tid] = {self._acc_update(ri, f'{sh}[tid]', f'{sh}[tid + s_]')}")
        return out + [f"{ind}    cuda.syncthreads()", f"{ind}    s_ //= 2"]

    def _row_result(self, reds, ind):
        """A row's results from sh<j>[0], then the epilogue."""
        out = []
        for ri in reds:
            out += self._result(ri, ind, f"sh{ri['j']}[0]")
        return out + [ind + x for x in self.epi_loads + self.epi_body + self.epi_stores]

    # -- column reductions ---------------------------------------------------------------
    def _columns(self, rc, reds, with_stores):
        """One thread per output element looping over the reduced elements (neighbouring
        threads read neighbouring memory). When outputs are few and the reduction long
        (a bias gradient over a big batch), the reduced range is split into `ns` chunks
        whose partial results a final pass combines."""
        kept = [c for c in range(self.C) if c not in rc]
        sig = self._sig(["ns"] + [f"PP{ri['j']}" for ri in reds])
        head = [f"    rows = {_product(f'n{c}' for c in kept)}",
                f"    rlen = {_product(f'n{c}' for c in rc)}",
                "    stride = cuda.gridsize(1)"]
        pname, psrc = named(loop_kernel(sig, head + self._column_partial(kept, rc, reds, with_stores)),
                            self._comment() + " (column reduction)")
        fname, fsrc = named(loop_kernel(sig, head + self._column_final(reds)),
                            self._comment() + " (column final pass)")
        lines = self._split_lines(kept, rc, reds, ["_ns = RT.col_splits(_rows, _rlen)"],
                                  f"{pname}[RT.grid(_rows * _ns), RT.TPB]",
                                  f"{fname}[RT.grid(_rows), RT.TPB]")
        return {pname: psrc, fname: fsrc}, lines

    def _column_partial(self, kept, rc, reds, with_stores):
        """Thread w reduces chunk w // rows of output w % rows (all of it when ns == 1)."""
        L = ["    chunk = (rlen + ns - 1) // ns",
             "    w = cuda.grid(1)",
             "    while w < rows * ns:",
             "        part = w // rows",
             "        row = w - part * rows"]
        L += unravel("row", kept, " " * 8)
        L += self._acc_init(reds, " " * 8)
        L += ["        rr = part * chunk", "        rend = rr + chunk if rr + chunk < rlen else rlen",
              "        while rr < rend:"]
        L += self._inner(rc, reds, self.lin_all, with_stores, " " * 12)
        L.append(" " * 12 + "rr += 1")
        L.append("        if ns == 1:")
        for ri in reds:
            L += self._result(ri, " " * 12, f"acc{ri['j']}")
        L.append("        else:")
        L += [f"            PP{ri['j']}[w] = acc{ri['j']}" for ri in reds]
        return L + ["        w += stride"]

    def _column_final(self, reds):
        """Thread `row` combines output row's ns partial results."""
        F = ["    row = cuda.grid(1)", "    while row < rows:"]
        F += self._acc_init(reds, " " * 8)
        F += ["        for q in range(ns):"]
        F += self._accumulate(reds, " " * 12, lambda ri: "PP%d[q * rows + row]" % ri["j"])
        for ri in reds:
            F += self._result(ri, " " * 8, f"acc{ri['j']}")
        return F + ["        row += stride"]


def epilogue_code(g, grp, product, buf, scalar_src, alloc):
    """(params, call arguments, lines) running elementwise loop group `grp` as the
    epilogue of the matmul or conv2d whose result `product` it reads elementwise (and
    nothing else does): at flat index `lin` of the output, the product's element is
    `acc_` (kernels.matmul_source, conv_kernels._lines); the group's other loads, body
    and stores are as in its own kernel."""
    lc = LoopCode(g, grp, buf, scalar_src, alloc)
    (j,) = [k for k, lf in enumerate(lc.leaves) if lf["load"].base == product]
    k = lc.params.index(f"L{j}")          # an identity load: no other parameters
    del lc.params[k], lc.call[k]
    loads = [f"v{j} = acc_" if x.startswith(f"v{j} = ") else x for x in lc.loads]
    return lc.params, lc.call, unravel("lin", list(range(lc.C)), "") + loads + lc.body + lc.stores


def epilogue_fits(g, grp, product, kept):
    """Whether loop group `grp` can run as the epilogue of node `product` (a 2-D matmul,
    or an op in kernels.EPILOGUES): it has no reductions, the product's shape, and is
    the only reader of the product, which it reads elementwise; the product does not
    leave the call."""
    m = g.nodes[product]
    leaves_call = product in kept or product in g.outputs or any(v == product for _, v in g.effects)
    if m.op == "matmul":
        shaped = len(m.shape) == 2 and all(len(g.nodes[i].shape) == 2 for i in m.inputs)
    else:
        shaped = m.op in EPILOGUES
    if grp.reduces or leaves_call or not shaped or len(grp.shape) != len(m.shape) or \
            any(not same(a, b) for a, b in zip(grp.shape, m.shape)):
        return False
    if not set(g.users()[product]) <= set(grp.nodes):
        return False
    leaves = [lf for lf in analyse_loop(g, grp).leaves if lf["load"].base == product]
    return len(leaves) == 1 and leaves[0]["identity"] and len(leaves[0]["present"]) == len(m.shape)


def gen_loop(g, grp, buf, scalar_src, alloc):
    """(kernels {name: source}, entry lines) of loop group `grp`; `alloc` is the entry's
    backend.Allocs, `scalar_src(node_id)` the source of a value passed as a scalar."""
    return LoopCode(g, grp, buf, scalar_src, alloc).kernels()


def shape_tuple(shape):
    if len(shape) == 0:
        return "()"
    return "(" + "".join(dim_src(d) + ", " for d in shape) + ")"
