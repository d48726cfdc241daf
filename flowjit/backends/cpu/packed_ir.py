"""Products with a weight packed once: a loop's `h @ W` where W does not change between
steps, written as LLVM IR.

OpenBLAS packs both operands on every call. Inside a loop the weight is the same at
every step, and with few rows per step (an LSTM's batch of 64) packing it costs a fifth
of the product: on the 2-core Zen 4 VM, one thread, 50 steps of 64x256 @ 256x1024 ran
at 77 GFLOP/s through OpenBLAS and at 102-108 with the weight packed before the loop
(64x1024 @ 1024x256: 90 -> 107). So a loop packs such a weight once (`flowjit_pack_b`) and
each step calls `flowjit_pgemm`, which cuts the panels into blocks for the pool.

Packed layout: panels of PANEL columns, each K rows of PANEL contiguous floats (zeros
past the last column): packed[p, k, j] = op(W)[k, p * PANEL + j]. The kernel computes
a tile of MR rows by one panel in 2 * MR vector registers, reading each A value once
per tile (a broadcast) and the panel's row k once per tile. The geometry follows the
CPU's vectors (`Geometry`): with AVX2, vectors of 8 floats, PANEL 16, MR 6; with
AVX-512, vectors of 16, PANEL 32, MR 8. On a 2-core Intel Xeon VM with AVX-512, one
thread: 64x256 @ 256x1024 at 84 GFLOP/s with AVX2's tiles, 150-164 with AVX-512's
(OpenBLAS 123-133, PyTorch's oneDNN 176); 64x1024 @ 1024x256 (W read transposed)
89 -> 144-163. 8 rows (16 accumulators) and 10-14 rows measured the same there.

Every output element is one sum over k in order (then added to C's element when adding
into C), whichever block or thread computes it, so the result does not depend on the
thread count. float32 only (float64 keeps OpenBLAS).
"""
from dataclasses import dataclass

import llvmlite.ir as ir

RECORD = 18                 # fields of one block record
PACKING_RECORD = RECORD + 7 # ... of a block that packs its panels first
PACK_NAME, GEMM_NAME, TASK_NAME = "flowjit_pack_b", "flowjit_pgemm", "flowjit_task_pgemm"
PACKING_NAME, PACKING_TASK_NAME = "flowjit_pack_pgemm", "flowjit_task_pack_pgemm"
PANEL_NAME = "flowjit_packed_panel"
# blocks per pool thread: with one block each, a step whose worker started late ran
# its half after the caller's (64x256 @ 256x1024 on two threads: 168-373 us a call
# against OpenBLAS's 202-294 over five processes); with four the caller takes more of
# them (186-243 us against 228-256)
BLOCKS_PER_THREAD = 4
UNROLL = 4                  # values of k a trip of the tile's k loop

I32, I64, F32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
I8P, FP = ir.IntType(8).as_pointer(), F32.as_pointer()
V8 = ir.VectorType(F32, 8)
V8P = V8.as_pointer()


@dataclass(frozen=True)
class Geometry:
    """The tile shape: `width` floats a vector register (8 with AVX2, 16 with AVX-512),
    panels of two vectors' columns, tiles of `rows` rows (2 * rows accumulators)."""
    width: int
    rows: int

    @property
    def panel(self):
        return 2 * self.width

    @property
    def tail_rows(self):
        """Tiles for the rows left after the full ones: the powers of two below `rows`."""
        return tuple(1 << i for i in reversed(range(self.rows.bit_length())) if 1 << i < self.rows)

    @property
    def vec(self):
        return ir.VectorType(F32, self.width)


# AVX2: 12 accumulators, 2 panel vectors and a broadcast in 16 registers. AVX-512 (32
# registers): 16 accumulators, 8 rows, which an LSTM's batch of 64 fills without a tail
GEOMETRIES = {8: Geometry(8, 6), 16: Geometry(16, 8)}


def _c(v):
    return ir.Constant(I64, v)


def _min(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def _max(b, x, y):
    return b.select(b.icmp_signed(">", x, y), x, y)


def _for(b, lo, hi, body):
    """for i in range(lo, hi): body(i) (nothing when hi <= lo)."""
    pre = b.block
    fn = pre.function
    head, loop, done = (fn.append_basic_block() for _ in range(3))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64)
    i.add_incoming(lo, pre)
    b.cbranch(b.icmp_signed("<", i, hi), loop, done)
    b.position_at_end(loop)
    body(i)
    nxt = b.add(i, _c(1))
    i.add_incoming(nxt, b.block)
    b.branch(head)
    b.position_at_end(done)


def _pack(mod, g):
    """pack_b(w, rows, cols, s0, s1, transposed, dst, panels): dst (panels x K x g.panel)
    from op(w), w's strides in elements; op(w) is K x N. Returns the function packing
    panels lo..hi only (the same arguments, then lo and hi), which the packing task uses."""
    some = _pack_panels(mod, g)
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [FP, I64, I64, I64, I64, I64, FP, I64]),
                     PACK_NAME)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.call(some, list(fn.args) + [_c(0), fn.args[7]])
    b.ret_void()
    return some


def _pack_panels(mod, g):
    """pack_panels(w, rows, cols, s0, s1, transposed, dst, panels, lo, hi): panels lo..hi
    of dst from op(w) (pack_b's work; `panels` unused, kept so both take one list)."""
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [FP, I64, I64, I64, I64, I64, FP, I64, I64, I64]),
                     "pack_panels")
    fn.linkage = "private"
    w, rows, cols, s0, s1, tr, dst, _, lo, hi = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    t = b.icmp_signed("!=", tr, _c(0))
    K, N = b.select(t, cols, rows), b.select(t, rows, cols)
    sk, sn = b.select(t, s1, s0), b.select(t, s0, s1)

    def panel(p):
        # row k of the panel at a time: op(w)'s columns n0.. are contiguous in w (plain,
        # vector copies) or strided (w.T: one value from each of the panel's rows of w,
        # each row read in order as k grows)
        n0 = b.mul(p, _c(g.panel))
        full = b.icmp_signed("<=", b.add(n0, _c(g.panel)), N)
        contiguous = b.icmp_signed("==", sn, _c(1))

        def row(k):
            base = b.mul(b.add(b.mul(p, K), k), _c(g.panel))
            first = b.gep(w, [b.add(b.mul(k, sk), b.mul(n0, sn))])
            with b.if_else(full) as (whole, part):
                with whole:           # a whole panel: no column past N to fill with zeros
                    with b.if_else(contiguous) as (vec, strided):
                        with vec:
                            for h in range(g.panel // 8):
                                v = b.load(b.bitcast(b.gep(first, [_c(8 * h)]), V8P), align=4)
                                b.store(v, b.bitcast(b.gep(dst, [b.add(base, _c(8 * h))]), V8P), align=4)
                        with strided:
                            for h in range(g.panel // 8):
                                v = ir.Constant(V8, ir.Undefined)
                                for j in range(8):
                                    x = b.load(b.gep(first, [b.mul(_c(8 * h + j), sn)]))
                                    v = b.insert_element(v, x, ir.Constant(I32, j))
                                b.store(v, b.bitcast(b.gep(dst, [b.add(base, _c(8 * h))]), V8P), align=4)
                with part:            # the last panel: zeros past N
                    def col(j):
                        inside = b.icmp_signed("<", b.add(n0, j), N)
                        src = b.gep(first, [b.mul(b.select(inside, j, _c(0)), sn)])
                        v = b.select(inside, b.load(src), ir.Constant(F32, 0.0))
                        b.store(v, b.gep(dst, [b.add(base, j)]))
                    _for(b, _c(0), _c(g.panel), col)

        def eight_rows(kb):
            # op(w) = w.T read along w's rows: 8 values of each of the panel's rows of w,
            # 8x8 transposes in registers, vector stores (the row at a time path above
            # gathers one value per load: 256x1024 packed in 161 us, now 60)
            k0 = b.mul(kb, _c(8))
            for half in range(g.panel // 8):
                rows = [b.load(b.bitcast(b.gep(w, [b.add(b.mul(b.add(n0, _c(8 * half + j)), sn), k0)]), V8P),
                               align=4) for j in range(8)]
                for kk, v in enumerate(_transpose8(b, rows)):
                    at = b.add(b.mul(b.add(b.mul(p, K), b.add(k0, _c(kk))), _c(g.panel)), _c(8 * half))
                    b.store(v, b.bitcast(b.gep(dst, [at]), V8P), align=4)
        by_eights = b.and_(full, b.and_(b.icmp_signed("==", sk, _c(1)), b.icmp_signed("!=", sn, _c(1))))
        done = b.select(by_eights, b.mul(b.sdiv(K, _c(8)), _c(8)), _c(0))
        _for(b, _c(0), b.sdiv(done, _c(8)), eight_rows)
        _for(b, done, K, row)
    _for(b, lo, hi, panel)
    b.ret_void()
    return fn


def _transpose8(b, r):
    """The columns of the 8x8 matrix whose rows are the 8-float vectors r (three rounds of
    shuffles: pairs of rows interleaved, pairs of pairs, then the 128-bit halves)."""
    def shuf(x, y, mask):
        return b.shuffle_vector(x, y, ir.Constant(ir.VectorType(I32, 8), mask))
    lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    t = [shuf(r[i], r[i + 1], m) for i in range(0, 8, 2) for m in (lo, hi)]
    lo2, hi2 = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    u = []
    for a, c in ((0, 2), (4, 6)):
        u += [shuf(t[a], t[c], lo2), shuf(t[a], t[c], hi2), shuf(t[a + 1], t[c + 1], lo2),
              shuf(t[a + 1], t[c + 1], hi2)]
    first, second = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return [shuf(u[i], u[i + 4], first) for i in range(4)] + [shuf(u[i], u[i + 4], second) for i in range(4)]


def _splat(b, g, x):
    v = b.insert_element(ir.Constant(g.vec, ir.Undefined), x, ir.Constant(I32, 0))
    return b.shuffle_vector(v, ir.Constant(g.vec, ir.Undefined), ir.Constant(ir.VectorType(I32, g.width), [0] * g.width))


def _edge_copy(b, c_row, cs0, cs1, rows, cols, buf, to_c, g):
    """Copy the valid rows x cols corner of a g.rows x g.panel tile between C and a dense
    scratch tile (a tile whose columns are strided or run past N)."""
    def row(r):
        def col(j):
            at_c = b.gep(c_row, [b.add(b.mul(r, cs0), b.mul(j, cs1))])
            at_buf = b.gep(buf, [b.add(b.mul(r, _c(g.panel)), j)])
            src, dst = (at_buf, at_c) if to_c else (at_c, at_buf)
            b.store(b.load(src), dst)
        _for(b, _c(0), cols, col)
    _for(b, _c(0), rows, row)


def _k_loop(b, g, fma, arow, as1, bp, p, K, mr, lo, hi, unroll, start):
    """for k in range(lo, hi, unroll), the accumulators starting at `start`: each row
    r's pair += A[r, k] * the panel's row k, for `unroll` values of k a trip (hi - lo a
    multiple of it); A[r, k] at arow[r] + k * as1 (+ k where as1 is None). Returns the
    accumulators after the loop."""
    VP = g.vec.as_pointer()

    def trip(k, phis):
        accs = list(phis)
        for u in range(unroll):
            ku = b.add(k, _c(u))
            q = b.gep(bp, [b.mul(b.add(b.mul(p, K), ku), _c(g.panel))])
            b0 = b.load(b.bitcast(q, VP), align=4)
            b1 = b.load(b.bitcast(b.gep(q, [_c(g.width)]), VP), align=4)
            for r in range(mr):
                av = _splat(b, g, b.load(b.gep(arow[r], [ku if as1 is None else b.mul(ku, as1)])))
                accs[2 * r] = b.call(fma, [av, b0, accs[2 * r]])
                accs[2 * r + 1] = b.call(fma, [av, b1, accs[2 * r + 1]])
        return accs
    return _carry(b, lo, hi, start, trip, unroll)


def _carry(b, lo, hi, init, body, step=1):
    """for i in range(lo, hi, step): values = body(i, values), from init (the values
    live in phis, as accumulators should); the values after the loop."""
    pre = b.block
    fn = pre.function
    head, loop, done = (fn.append_basic_block() for _ in range(3))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64)
    i.add_incoming(lo, pre)
    phis = []
    for v in init:
        p = b.phi(v.type)
        p.add_incoming(v, pre)
        phis.append(p)
    b.cbranch(b.icmp_signed("<", i, hi), loop, done)
    b.position_at_end(loop)
    new = body(i, phis)
    for p, v in zip(phis, new):
        p.add_incoming(v, b.block)
    i.add_incoming(b.add(i, _c(step)), b.block)
    b.branch(head)
    b.position_at_end(done)
    return phis


def _tile(b, g, fma, a, as0, as1, M, K, bp, c, cs0, cs1, N, acc, p, i0, mr, buf, d, ds0, ds1, bias,
          has_bias):
    """C[i0:i0+mr, panel p] = (D[i0:i0+mr, panel p] + when acc) (bias[panel p] + when
    has_bias) A[i0:i0+mr, :] @ panel p, mr rows all below M; columns past N are not
    stored. `buf`: a g.rows x g.panel scratch tile. D, the addend, may be C itself."""
    arow = [b.gep(a, [b.mul(b.add(i0, _c(r)), as0)]) for r in range(mr)]
    W, VP = g.width, g.vec.as_pointer()
    col0 = b.mul(p, _c(g.panel))
    cols = _min(b, _c(g.panel), b.sub(N, col0))
    vec_out = b.and_(b.and_(b.icmp_signed("==", cols, _c(g.panel)), b.icmp_signed("==", cs1, _c(1))),
                     b.icmp_signed("==", ds1, _c(1)))
    c0 = b.gep(c, [b.add(b.mul(i0, cs0), b.mul(col0, cs1))])
    cptr = [b.gep(c0, [b.mul(_c(r), cs0)]) for r in range(mr)]
    d0 = b.gep(d, [b.add(b.mul(i0, ds0), b.mul(col0, ds1))])
    dptr = [b.gep(d0, [b.mul(_c(r), ds0)]) for r in range(mr)]
    bufv = b.bitcast(buf, VP)
    # ask for the addend's tile now: it is read after the k loop, and an LSTM's gates
    # add a slice of a 13 MB input projection that is not in the cache (64x256 @
    # 256x1024 added to such slices, one thread: 363 -> 357 us; prefetching the next
    # panel's tile instead gained nothing more)
    prefetch = b.module.get_global("llvm.prefetch.p0")
    for r in range(mr):
        for j in sorted({*range(0, g.panel, 16), g.panel - 1}):   # every 64-byte line it spans
            b.call(prefetch, [b.bitcast(b.gep(dptr[r], [b.mul(_c(j), ds1)]), I8P),
                              ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])

    # the sum over k. A full tile whose A rows are contiguous (the usual case) takes
    # UNROLL values of k a trip while UNROLL are left, indexing A by k alone: 64x256 @
    # 256x1024 on two threads, 171 -> 148-160 us (k * as1 in every address cost 28
    # integer adds a trip). Other tiles take one k a trip, to keep the module small: it
    # is compiled in every process, 0.2 s against 0.43 s with every tile unrolled.
    # (The same multiply-adds in the same order either way.)
    zero = [ir.Constant(g.vec, [0.0] * W)] * (2 * mr)
    if mr < g.rows:
        accs = _k_loop(b, g, fma, arow, as1, bp, p, K, mr, _c(0), K, 1, zero)
    else:
        whole = b.mul(b.sdiv(K, _c(UNROLL)), _c(UNROLL))
        with b.if_else(b.icmp_signed("==", as1, _c(1))) as (unit, strided):
            with unit:
                part = _k_loop(b, g, fma, arow, None, bp, p, K, mr, _c(0), whole, UNROLL, zero)
                by_k = _k_loop(b, g, fma, arow, None, bp, p, K, mr, whole, K, 1, part), b.block
            with strided:
                by_stride = _k_loop(b, g, fma, arow, as1, bp, p, K, mr, _c(0), K, 1, zero), b.block
        accs = []
        for x, y in zip(by_k[0], by_stride[0]):
            phi = b.phi(g.vec)
            phi.add_incoming(x, by_k[1])
            phi.add_incoming(y, by_stride[1])
            accs.append(phi)

    # the product, plus the addend's tile (D + sum, the sum over k taken first) and the
    # bias row (D + bias + sum, in that order: what adding the bias to D first gives);
    # through the scratch tile where C's or D's columns are strided or the panel runs
    # past N. Accumulators that start from the addend's tile (phis merging loaded values
    # and zeros) made the k loop slower whether adding or not: 64x256 @ 256x1024, one
    # thread, 357 -> 329 us adding, 336 -> 319 us not
    # (without a bias its pointer is the scratch tile's: loaded, never used)
    bias0 = b.select(has_bias, b.gep(bias, [col0]), buf)
    with b.if_else(vec_out) as (vec, edge):
        with vec:
            bv = [b.load(b.bitcast(b.gep(bias0, [_c(W * h)]), VP), align=4) for h in range(2)]
            for r in range(mr):
                for h in range(2):
                    at = b.bitcast(b.gep(cptr[r], [_c(W * h)]), VP)
                    with b.if_else(acc) as (add, put):
                        with add:
                            dv = b.load(b.bitcast(b.gep(dptr[r], [_c(W * h)]), VP), align=4)
                            dv = b.select(has_bias, b.fadd(dv, bv[h]), dv)
                            b.store(b.fadd(dv, accs[2 * r + h]), at, align=4)
                        with put:
                            v = b.select(has_bias, b.fadd(bv[h], accs[2 * r + h]), accs[2 * r + h])
                            b.store(v, at, align=4)
        with edge:
            with b.if_then(acc):
                _edge_copy(b, d0, ds0, ds1, _c(mr), cols, buf, False, g)
            with b.if_then(has_bias):
                def row(r):
                    def col(j):
                        at = b.gep(buf, [b.add(b.mul(r, _c(g.panel)), j)])
                        base = b.select(acc, b.load(at), ir.Constant(F32, -0.0))
                        b.store(b.fadd(base, b.load(b.gep(bias0, [j]))), at)
                    _for(b, _c(0), cols, col)
                _for(b, _c(0), _c(mr), row)
            added = b.or_(acc, has_bias)
            for r in range(mr):
                for h in range(2):
                    at = b.gep(bufv, [_c(2 * r + h)])
                    summed = b.fadd(b.load(at), accs[2 * r + h])
                    b.store(b.select(added, summed, accs[2 * r + h]), at)
            _edge_copy(b, c0, cs0, cs1, _c(mr), cols, buf, True, g)


def _task(mod, fma, g):
    """The block task: panels lo..hi for every row. Record: [A, as0, as1, M, K, packed B,
    N, C, cs0, cs1, add?, lo, hi, D, ds0, ds1, bias, bias?] (strides in elements)."""
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I8P]), TASK_NAME)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    rec = b.bitcast(fn.args[0], I64.as_pointer())
    f = [b.load(b.gep(rec, [_c(i)])) for i in range(RECORD)]
    a, bp, c = (b.inttoptr(f[i], FP) for i in (0, 5, 7))
    as0, as1, M, K, N, cs0, cs1, lo, hi = (f[i] for i in (1, 2, 3, 4, 6, 8, 9, 11, 12))
    acc = b.icmp_signed("!=", f[10], _c(0))
    d, ds0, ds1 = b.inttoptr(f[13], FP), f[14], f[15]
    bias, has_bias = b.inttoptr(f[16], FP), b.icmp_signed("!=", f[17], _c(0))
    buf = b.alloca(F32, g.rows * g.panel)
    buf.align = 64                # whole vectors are stored to it and loaded from it
    # rows in chunks that stay in the cache while every panel of the block reads them
    chunk = _c(g.rows * 32)

    def rows_chunk(ci):
        r0 = b.mul(ci, chunk)
        r1 = _min(b, M, b.add(r0, chunk))

        def panel(p):
            full = b.sdiv(b.sub(r1, r0), _c(g.rows))

            def tile(ti):
                _tile(b, g, fma, a, as0, as1, M, K, bp, c, cs0, cs1, N, acc, p, b.add(r0, b.mul(ti, _c(g.rows))),
                      g.rows, buf, d, ds0, ds1, bias, has_bias)
            _for(b, _c(0), full, tile)
            # the last rows (fewer than g.rows): tiles of 4, 2 and 1 rows (say) as needed
            i = b.add(r0, b.mul(full, _c(g.rows)))
            for mr in g.tail_rows:
                left = b.sub(r1, i)
                with b.if_then(b.icmp_signed(">=", left, _c(mr))):
                    _tile(b, g, fma, a, as0, as1, M, K, bp, c, cs0, cs1, N, acc, p, i, mr, buf, d, ds0, ds1,
                          bias, has_bias)
                i = b.select(b.icmp_signed(">=", left, _c(mr)), b.add(i, _c(mr)), i)
        _for(b, lo, hi, panel)
    _for(b, _c(0), b.sdiv(b.add(M, b.sub(chunk, _c(1))), chunk), rows_chunk)
    b.ret_void()
    return fn


def _shapes_bad(b, g, ar, ac, panels, pk, pw, cr, cc, dr, dc, nbias):
    """Whether a (ar x ac), packed W (panels x pk x pw), C (cr x cc), D (dr x dc) and a
    bias of nbias (0: none) do not make C = D + bias + a @ W."""
    want_panels = b.sdiv(b.add(cc, _c(g.panel - 1)), _c(g.panel))
    bad = b.or_(b.icmp_signed("!=", ac, pk), b.icmp_signed("!=", ar, cr))
    bad = b.or_(bad, b.icmp_signed("!=", pw, _c(g.panel)))
    bad = b.or_(bad, b.icmp_signed("!=", panels, want_panels))
    bad = b.or_(bad, b.or_(b.icmp_signed("!=", dr, cr), b.icmp_signed("!=", dc, cc)))
    return b.or_(bad, b.and_(b.icmp_signed("!=", nbias, _c(0)), b.icmp_signed("!=", nbias, cc)))


def _run_blocks(b, task, run, size, macs, units, work, head, tail, record, alone=False):
    """Cut `units` (panels, tiles of rows) into blocks (at most BLOCKS_PER_THREAD per
    pool thread, one per `macs` of the `work` multiply-adds; with `alone`, one block
    where the pool has one thread) and run `task` on each block's record: head, the
    block's first and last unit, tail."""
    threads = b.call(size, [])
    most = b.mul(threads, _c(BLOCKS_PER_THREAD))
    if alone:
        most = b.select(b.icmp_signed("<=", threads, _c(1)), _c(1), most)
    blocks = _min(b, _min(b, most, b.sdiv(work, _c(macs))), units)
    blocks = _max(b, blocks, _c(1))
    step = b.sdiv(b.add(units, b.sub(blocks, _c(1))), blocks)
    blocks = b.sdiv(b.add(units, b.sub(step, _c(1))), step)
    recs = b.alloca(I64, b.mul(blocks, _c(record)))

    def fill(i):
        base = b.mul(i, _c(record))
        lo = b.mul(i, step)
        for j, v in enumerate(head + [lo, _min(b, units, b.add(lo, step))] + tail):
            b.store(v, b.gep(recs, [b.add(base, _c(j))]))
    _for(b, _c(0), blocks, fill)
    recp = b.bitcast(recs, I8P)
    with b.if_else(b.icmp_signed("==", blocks, _c(1))) as (one, many):
        with one:
            b.call(task, [recp])
        with many:
            b.call(run, [b.trunc(blocks, I32), b.bitcast(task, I8P), recp, ir.Constant(I32, record * 8)])


def _gemm(mod, task, run, size, macs, g):
    """pgemm(a, ar, ac, as0, as1, packed, panels, pk, pw, c, cr, cc, cs0, cs1, d, dr, dc,
    ds0, ds1, bias, nbias, acc) -> 0, or 1 when the shapes do not make a product (strides
    in elements; pw: the packed array's panel width): c = a @ W, plus d with acc (d may
    be c), plus the row bias (contiguous) when nbias is not 0."""
    args = [FP, I64, I64, I64, I64, FP, I64, I64, I64, FP, I64, I64, I64, I64, FP, I64, I64, I64, I64, FP, I64,
            I64]
    fn = ir.Function(mod, ir.FunctionType(I32, args), GEMM_NAME)
    a, ar, ac, as0, as1, bp, panels, pk, pw, c, cr, cc, cs0, cs1, d, dr, dc, ds0, ds1, bias, nbias, acc = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    with b.if_then(_shapes_bad(b, g, ar, ac, panels, pk, pw, cr, cc, dr, dc, nbias), likely=False):
        b.ret(ir.Constant(I32, 1))
    with b.if_then(b.or_(b.icmp_signed("==", cr, _c(0)), b.icmp_signed("==", cc, _c(0)))):
        b.ret(ir.Constant(I32, 0))
    head = [b.ptrtoint(a, I64), as0, as1, cr, pk, b.ptrtoint(bp, I64), cc, b.ptrtoint(c, I64), cs0, cs1, acc]
    tail = [b.ptrtoint(d, I64), ds0, ds1, b.ptrtoint(bias, I64), nbias]
    _run_blocks(b, task, run, size, macs, panels, b.mul(b.mul(cr, cc), _max(b, pk, _c(1))), head, tail, RECORD)
    b.ret(ir.Constant(I32, 0))


def _packing_task(mod, task, pack_some):
    """The block task of a product that packs its weight as it goes: the block's panels
    of op(W) packed into the scratch array, then the pgemm task on them. Record: the
    pgemm task's, then [W, rows, cols, s0, s1, transposed?, panels]."""
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I8P]), PACKING_TASK_NAME)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    rec = b.bitcast(fn.args[0], I64.as_pointer())
    f = [b.load(b.gep(rec, [_c(i)])) for i in range(RECORD, PACKING_RECORD)]
    lo, hi = (b.load(b.gep(rec, [_c(i)])) for i in (11, 12))
    dst = b.inttoptr(b.load(b.gep(rec, [_c(5)])), FP)
    b.call(pack_some, [b.inttoptr(f[0], FP)] + f[1:6] + [dst, f[6], lo, hi])
    b.call(task, [fn.args[0]])
    b.ret_void()
    return fn


def _packing_gemm(mod, task, run, size, macs, g):
    """pack_pgemm(a, ar, ac, as0, as1, w, wr, wc, ws0, ws1, transposed, scratch, panels, pk,
    pw, c, cr, cc, cs0, cs1, d, dr, dc, ds0, ds1, bias, nbias, acc) -> 0, or 1 when the
    shapes do not make a product: pgemm's product with W = op(w) (w.T where transposed)
    packed into `scratch` (panels x pk x pw, C-contiguous) by the blocks themselves, each
    its own panels, before each multiplies by them. The same bits as pack_b then pgemm;
    a weight used once no longer packs on one thread while the others wait."""
    args = [FP, I64, I64, I64, I64, FP, I64, I64, I64, I64, I64, FP, I64, I64, I64, FP, I64, I64, I64, I64,
            FP, I64, I64, I64, I64, FP, I64, I64]
    fn = ir.Function(mod, ir.FunctionType(I32, args), PACKING_NAME)
    (a, ar, ac, as0, as1, w, wr, wc, ws0, ws1, tr, bp, panels, pk, pw, c, cr, cc, cs0, cs1, d, dr, dc, ds0, ds1,
     bias, nbias, acc) = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    t = b.icmp_signed("!=", tr, _c(0))
    bad = _shapes_bad(b, g, ar, ac, panels, pk, pw, cr, cc, dr, dc, nbias)
    bad = b.or_(bad, b.icmp_signed("!=", b.select(t, wc, wr), pk))
    bad = b.or_(bad, b.icmp_signed("!=", b.select(t, wr, wc), cc))
    with b.if_then(bad, likely=False):
        b.ret(ir.Constant(I32, 1))
    with b.if_then(b.or_(b.icmp_signed("==", cr, _c(0)), b.icmp_signed("==", cc, _c(0)))):
        b.ret(ir.Constant(I32, 0))
    head = [b.ptrtoint(a, I64), as0, as1, cr, pk, b.ptrtoint(bp, I64), cc, b.ptrtoint(c, I64), cs0, cs1, acc]
    tail = [b.ptrtoint(d, I64), ds0, ds1, b.ptrtoint(bias, I64), nbias,
            b.ptrtoint(w, I64), wr, wc, ws0, ws1, tr, panels]
    _run_blocks(b, task, run, size, macs, panels, b.mul(b.mul(cr, cc), _max(b, pk, _c(1))), head, tail,
                PACKING_RECORD)
    b.ret(ir.Constant(I32, 0))


def _panel(mod, g):
    """panel() -> the panel width: compiled code asks at run time, so a cached function
    never keeps the width of another geometry."""
    fn = ir.Function(mod, ir.FunctionType(I64, []), PANEL_NAME)
    ir.IRBuilder(fn.append_basic_block("entry")).ret(_c(g.panel))


def module(run, size, macs, g):
    """The IR module defining flowjit_pack_b, flowjit_packed_panel, flowjit_task_pgemm,
    flowjit_pgemm, flowjit_pack_pgemm (with its task) and flowjit_narrow (narrow_ir.py) for
    tiles of geometry g; the last runs blocks through the pool's run/size functions
    named here."""
    mod = ir.Module(name="flowjit_packed")
    fma = ir.Function(mod, ir.FunctionType(g.vec, [g.vec] * 3), f"llvm.fmuladd.v{g.width}f32")
    ir.Function(mod, ir.FunctionType(ir.VoidType(), [I8P, I32, I32, I32]), "llvm.prefetch.p0")
    run_fn = ir.Function(mod, ir.FunctionType(I32, [I32, I8P, I8P, I32]), run)
    size_fn = ir.Function(mod, ir.FunctionType(I64, []), size)
    pack_some = _pack(mod, g)
    _panel(mod, g)
    task = _task(mod, fma, g)
    _gemm(mod, task, run_fn, size_fn, macs, g)
    _packing_gemm(mod, _packing_task(mod, task, pack_some), run_fn, size_fn, macs, g)
    from . import narrow_ir      # (which takes its helpers from here)
    narrow_ir.add_to(mod, fma, g, run_fn, size_fn, macs)
    return str(mod)
