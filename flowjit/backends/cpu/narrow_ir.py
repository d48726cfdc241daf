"""Weight gradients with few columns, written as LLVM IR: C = x^T @ dz where C has
N <= 16 columns (a softmax regression's or a classifier's last layer, 784 x 10).

OpenBLAS packs both operands on every call, so for x^T @ dz it copies all of x (K x M,
a whole batch of inputs) to multiply each value by N numbers. Here x is read in place,
once: vectors along C's rows (x's rows are contiguous), each multiplied by broadcast
values of dz's row k, in tiles of `c_vecs` vectors x C_COLS columns; the accumulators
go out to C through a small stack tile. dz is copied once, with its rows padded with
zeros to whole tiles (used as it is where it needs no padding). On the 2-core AVX-512 VM, one thread, 784x100 @ 100x10: 18.2 us
against OpenBLAS's 21.5.

`flowjit_narrow(a, ar, ac, as0, as1, b, br, bc, bs0, bs1, c, cr, cc, cs0, cs1, ta, tb,
acc)` (float32, strides in elements): c = op(a) @ op(b), or c += ... with acc. Returns 0
when done, 1 when the shapes do not make the product, NOT_HERE when the product is not
one this module does (more than MOST_COLUMNS columns, no k or more than MOST_K, op(a)'s
columns not contiguous): the caller then uses flowjit_gemm. Each element of C is one
sum over k in order, whichever block of rows computes it.
"""
from dataclasses import dataclass

import llvmlite.ir as ir

from .packed_ir import F32, FP, I32, I64, I8P, _c, _carry, _for, _min, _run_blocks, _splat

NAME, TASK_NAME = "flowjit_narrow", "flowjit_task_narrow"
MOST_COLUMNS = 16
MOST_K = 1024         # dz's padded copy lives on the stack: at most 1024 x 20 floats
NOT_HERE = 3
C_COLS = 10           # columns a tile (a classifier's 10 classes in one)
RECORD = 13           # fields of a block record


@dataclass(frozen=True)
class Tiles:
    """Tiles of c_vecs vectors of `width` floats x C_COLS columns: 20 accumulators with
    AVX-512's 32 registers, 10 with AVX2's 16."""
    width: int

    @property
    def c_vecs(self):
        return 2 if self.width == 16 else 1

    @property
    def vec(self):
        return ir.VectorType(F32, self.width)


def _tile(b, t, fma, f, i0, vecs, rows, out, abuf):
    """C's rows i0.. (vecs whole vectors, or with `rows` set one vector of that many rows)
    for every group of C_COLS columns."""
    a, sa_k, K, bs, bw, N, c, cs0, cs1, acc = f
    w = t.width
    zero = ir.Constant(t.vec, [0.0] * w)

    def cols(g):
        j0 = b.mul(g, _c(C_COLS))

        def step(k, accs):
            base = b.gep(a, [b.add(b.mul(k, sa_k), i0)])
            if rows is None:
                av = [b.load(b.bitcast(b.gep(base, [_c(v * w)]), t.vec.as_pointer()), align=4) for v in range(vecs)]
            else:                 # the last rows: copied into a vector padded with zeros
                def copy(lane):
                    inside = b.icmp_signed("<", lane, rows)
                    x = b.load(b.gep(base, [b.select(inside, lane, _c(0))]))
                    b.store(b.select(inside, x, ir.Constant(F32, 0.0)), b.gep(abuf, [lane]))
                _for(b, _c(0), _c(w), copy)
                av = [b.load(b.bitcast(abuf, t.vec.as_pointer()), align=4)]
            brow = b.gep(bs, [b.add(b.mul(k, bw), j0)])
            new = list(accs)
            for q in range(C_COLS):
                bv = _splat(b, t, b.load(b.gep(brow, [_c(q)])))
                for v in range(vecs):
                    new[v * C_COLS + q] = b.call(fma, [av[v], bv, accs[v * C_COLS + q]])
            return new
        accs = _carry(b, _c(0), K, [zero] * (vecs * C_COLS), step)
        for v in range(vecs):
            for q in range(C_COLS):
                at = b.gep(out, [_c((q * t.c_vecs + v) * w)])
                b.store(accs[v * C_COLS + q], b.bitcast(at, t.vec.as_pointer()), align=4)
        _write_tile(b, t, out, c, b.add(b.mul(i0, cs0), b.mul(j0, cs1)), cs0, cs1,
                    _c(vecs * w) if rows is None else rows, _min(b, _c(C_COLS), b.sub(N, j0)), acc)
    _for(b, _c(0), b.sdiv(b.add(N, _c(C_COLS - 1)), _c(C_COLS)), cols)


def _write_tile(b, t, out, c, at, cs0, cs1, rows, cols, acc):
    """C's rows x cols corner at offset `at` from the stack tile (column q at q * stride):
    a whole group of columns unrolled (element by element with a select, 784x100 @ 100x10
    took 27 us, unrolled 13), a partial one element by element; added to C's values with
    acc."""
    stride = t.c_vecs * t.width

    def unrolled(add):
        def row(lane):
            crow = b.gep(c, [b.add(at, b.mul(lane, cs0))])
            for q in range(C_COLS):
                value = b.load(b.gep(out, [b.add(_c(q * stride), lane)]))
                p = b.gep(crow, [b.mul(_c(q), cs1)])
                b.store(b.fadd(b.load(p), value) if add else value, p)
        _for(b, _c(0), rows, row)

    def each(lane):
        def col(q):
            p = b.gep(c, [b.add(at, b.add(b.mul(lane, cs0), b.mul(q, cs1)))])
            value = b.load(b.gep(out, [b.add(b.mul(q, _c(stride)), lane)]))
            b.store(b.select(acc, b.fadd(b.load(p), value), value), p)
        _for(b, _c(0), cols, col)
    with b.if_else(b.icmp_signed("==", cols, _c(C_COLS))) as (whole, part):
        with whole:
            with b.if_else(acc) as (add, store):
                with add:
                    unrolled(True)
                with store:
                    unrolled(False)
        with part:
            _for(b, _c(0), rows, each)


def _task(mod, t, fma):
    """The block task: C's rows in tiles lo..hi. Record: [A, A's stride along k, K,
    padded dz, its row length, N, C, cs0, cs1, acc, M, lo, hi]."""
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I8P]), TASK_NAME)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    rec = b.bitcast(fn.args[0], I64.as_pointer())
    r = [b.load(b.gep(rec, [_c(i)])) for i in range(RECORD)]
    out = b.alloca(F32, _c(t.c_vecs * C_COLS * t.width))
    out.align = 64
    abuf = b.alloca(F32, _c(t.width))
    abuf.align = 64
    f = [b.inttoptr(r[0], FP), r[1], r[2], b.inttoptr(r[3], FP), r[4], r[5], b.inttoptr(r[6], FP), r[7], r[8],
         b.icmp_signed("!=", r[9], _c(0))]
    w, step = t.width, t.c_vecs * t.width
    lo, hi = b.mul(r[11], _c(step)), _min(b, r[10], b.mul(r[12], _c(step)))     # tiles -> rows
    n_full = b.sdiv(b.sub(hi, lo), _c(step))
    _for(b, _c(0), n_full, lambda i: _tile(b, t, fma, f, b.add(lo, b.mul(i, _c(step))), t.c_vecs, None, out, abuf))
    rest = b.add(lo, b.mul(n_full, _c(step)))

    def partial(p):
        i0 = b.add(rest, b.mul(p, _c(w)))
        left = b.sub(hi, i0)
        with b.if_else(b.icmp_signed(">=", left, _c(w))) as (whole, part):
            with whole:
                _tile(b, t, fma, f, i0, 1, None, out, abuf)
            with part:
                _tile(b, t, fma, f, i0, 1, left, out, abuf)
    _for(b, _c(0), b.sdiv(b.add(b.sub(hi, rest), _c(w - 1)), _c(w)), partial)
    b.ret_void()
    return fn


def _narrow(mod, t, task, run, size, macs):
    fn = ir.Function(mod, ir.FunctionType(I32, [FP, I64, I64, I64, I64] * 3 + [I64, I64, I64]), NAME)
    a, ar, ac, as0, as1, bp, br, bc, bs0, bs1, c, cr, cc, cs0, cs1, ta, tb, acc = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ta, tb = (b.icmp_signed("!=", x, _c(0)) for x in (ta, tb))
    M, K, sa_i, sa_k = b.select(ta, ac, ar), b.select(ta, ar, ac), b.select(ta, as1, as0), b.select(ta, as0, as1)
    kb, N, sb_k, sb_j = b.select(tb, bc, br), b.select(tb, br, bc), b.select(tb, bs1, bs0), b.select(tb, bs0, bs1)
    bad = b.or_(b.icmp_signed("!=", K, kb), b.or_(b.icmp_signed("!=", cr, M), b.icmp_signed("!=", cc, N)))
    with b.if_then(bad, likely=False):
        b.ret(ir.Constant(I32, 1))
    with b.if_then(b.or_(b.icmp_signed("==", M, _c(0)), b.icmp_signed("==", N, _c(0)))):
        b.ret(ir.Constant(I32, 0))
    here = b.and_(b.icmp_signed("<=", N, _c(MOST_COLUMNS)), b.icmp_signed("==", sa_i, _c(1)))
    here = b.and_(here, b.and_(b.icmp_signed(">", K, _c(0)), b.icmp_signed("<=", K, _c(MOST_K))))
    with b.if_then(b.not_(here)):
        b.ret(ir.Constant(I32, NOT_HERE))
    # dz as it is where its rows are contiguous whole groups of C_COLS columns, else a
    # copy padded with zeros to whole groups
    bw = b.mul(b.sdiv(b.add(N, _c(C_COLS - 1)), _c(C_COLS)), _c(C_COLS))
    as_is = b.and_(b.icmp_signed("==", bw, N), b.icmp_signed("==", sb_j, _c(1)))
    copy = b.alloca(F32, b.select(as_is, _c(1), b.mul(K, bw)))

    def fill(k):
        def one(j):
            inside = b.icmp_signed("<", j, N)
            v = b.load(b.gep(bp, [b.select(inside, b.add(b.mul(k, sb_k), b.mul(j, sb_j)), _c(0))]))
            b.store(b.select(inside, v, ir.Constant(F32, 0.0)), b.gep(copy, [b.add(b.mul(k, bw), j)]))
        _for(b, _c(0), bw, one)
    with b.if_then(b.not_(as_is)):
        _for(b, _c(0), K, fill)
    bs = b.select(as_is, bp, copy)
    bw = b.select(as_is, sb_k, bw)
    # blocks of whole tiles for the pool, one where the pool has one thread
    unit = _c(t.c_vecs * t.width)
    head = [b.ptrtoint(a, I64), sa_k, K, b.ptrtoint(bs, I64), bw, N, b.ptrtoint(c, I64), cs0, cs1, acc, M]
    _run_blocks(b, task, run, size, macs, b.sdiv(b.add(M, b.sub(unit, _c(1))), unit), b.mul(b.mul(M, N), K),
                head, [], RECORD, alone=True)
    b.ret(ir.Constant(I32, 0))


def add_to(mod, fma, g, run, size, macs):
    """Define flowjit_narrow and its block task in module `mod`, for the vectors of
    geometry g (fma: its vector multiply-add), blocks through the pool's run and size."""
    t = Tiles(g.width)
    _narrow(mod, t, _task(mod, t, fma), run, size, macs)
