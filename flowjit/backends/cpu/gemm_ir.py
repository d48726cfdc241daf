"""`flowjit_gemm`: a compiled entry's whole matmul call, written as LLVM IR.

Compiled code calls it by name with each 2-D operand's data address, shape and byte
strides (runtime_lib.gemm passes them through `blas.gemm_call`). It checks the shapes,
finds how BLAS can read each operand in place, cuts a big product into blocks of
output rows or columns for the pool (the rules are blas.py's), and copies an operand
BLAS cannot read in place (neither stride one element) into a contiguous buffer first.

Why IR rather than a Numba function: Numba compiled the same logic once per array
type signature (float32 or float64, C-contiguous or a view), 1.1-1.8 s each, on every
cold cache, and an LSTM step's entry uses three signatures. llvmlite turns this module
into machine code in a few milliseconds per process.

Returns 0 when done, 1 when the shapes do not make a product (or a size is 2**31 or
more, which BLAS's int32 sizes cannot hold), 2 when a buffer could not be allocated.
"""
import llvmlite.ir as ir
from numba.core import cgutils

I1, I32, I64, DBL = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.DoubleType()
I8P = ir.IntType(8).as_pointer()
RECORD = 13                     # fields of one block record (blas._TASK_IR)
NAME = "flowjit_gemm"
ARGS = ("a", "ar", "ac", "as0", "as1", "b", "br", "bc", "bs0", "bs1",
        "c", "cr", "cc", "cs0", "cs1", "isz", "ta", "tb", "acc")


def _c(v):
    return ir.Constant(I64, v)


def _declare(mod, name, ret, args):
    return ir.Function(mod, ir.FunctionType(ret, args), name)


def _for(b, count, body):
    """for i in range(count): body(i)"""
    with cgutils.for_range(b, count) as loop:
        body(loop.index)


def _max(b, x, y):
    return b.select(b.icmp_signed(">", x, y), x, y)


def _min(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def _storage(b, rows, cols, s0, s1, isz, transposed):
    """(readable, stored transposed?, leading dimension) of a 2-D operand for BLAS:
    rows contiguous (s1 one element) or columns contiguous (s0 one element), with a
    whole number of elements between them (blas.py's rule)."""
    def fits(inner, outer, n):
        return b.and_(b.and_(b.icmp_signed("==", inner, isz),
                             b.icmp_signed(">=", outer, b.mul(_max(b, n, _c(1)), isz))),
                      b.icmp_signed("==", b.srem(outer, isz), _c(0)))
    by_rows = fits(s1, s0, cols)
    by_cols = fits(s0, s1, rows)
    readable = b.or_(by_rows, by_cols)
    flipped = b.xor(transposed, ir.Constant(I1, 1))
    stored_t = b.select(by_rows, transposed, flipped)
    ld = b.sdiv(b.select(by_rows, s0, s1), isz)
    return readable, stored_t, ld


def _move(b, isz, dst, src=None):
    """One element (a 4- or 8-byte word) from address src to address dst, or a zero."""
    with b.if_else(b.icmp_signed("==", isz, _c(8))) as (eight, four):
        for branch, word in ((eight, I64), (four, I32)):
            with branch:
                value = ir.Constant(word, 0) if src is None else b.load(b.bitcast(src, word.as_pointer()))
                b.store(value, b.bitcast(dst, word.as_pointer()))


def _copy(b, dst, src, rows, cols, s0, s1, isz, packing):
    """Copy a strided 2-D array to (packing) or from a contiguous row-major buffer,
    element by element (the copy of an operand BLAS cannot read)."""
    def row(i):
        def col(j):
            strided = b.add(b.mul(i, s0), b.mul(j, s1))
            dense = b.mul(b.add(b.mul(i, cols), j), isz)
            frm, to = (strided, dense) if packing else (dense, strided)
            _move(b, isz, b.gep(dst, [to]), b.gep(src, [frm]))
        _for(b, cols, col)
    _for(b, rows, row)


def _run_blocks(b, fns, M, N, K, pa, at, lda, pb, bt, ldb, pc, ldc, isz, acc, macs, align):
    """blas.py's block rule on BLAS-readable operands: at most one block per pool thread
    and per `macs` multiply-adds, cut along the output's longer side in multiples of
    `align` rows; one block is called here, more go to the pool."""
    want = b.fptosi(b.fdiv(b.fmul(b.fmul(b.sitofp(M, DBL), b.sitofp(N, DBL)), b.sitofp(K, DBL)),
                           ir.Constant(DBL, float(macs))), I64)
    rows = b.icmp_signed("<", N, M)
    dim = b.select(rows, M, N)
    blocks = _min(b, _min(b, b.call(fns["size"], []), want), b.sdiv(dim, _c(align)))
    one = b.icmp_signed("<", blocks, _c(2))
    # step = ceil(ceil(dim / blocks) / align) * align; blocks = ceil(dim / step)
    safe = _max(b, blocks, _c(1))
    per = b.sdiv(b.add(dim, b.sub(safe, _c(1))), safe)
    step_many = b.mul(b.sdiv(b.add(per, _c(align - 1)), _c(align)), _c(align))
    step = b.select(one, _max(b, dim, _c(1)), step_many)
    nblocks = b.select(one, _c(1), b.sdiv(b.add(dim, b.sub(step, _c(1))), step))
    rec = b.alloca(I64, b.mul(nblocks, _c(RECORD)))
    char = {True: _c(84), False: _c(78)}           # 'T', 'N'
    ai, bi, ci = (b.ptrtoint(p, I64) for p in (pa, pb, pc))

    def fill(i):
        lo = b.mul(i, step)
        hi = _min(b, dim, b.add(lo, step))
        base = b.mul(i, _c(RECORD))

        def put(k, v):
            b.store(v, b.gep(rec, [b.add(base, _c(k))]))
        put(0, b.zext(b.icmp_signed("==", isz, _c(8)), I64))
        put(1, b.select(bt, char[True], char[False]))
        put(2, b.select(at, char[True], char[False]))
        put(5, K)
        put(7, ldb)
        put(9, lda)
        put(11, ldc)
        put(12, b.zext(acc, I64))
        # rows lo..hi of C: columns of C^T, rows of op(A); else columns of C: rows of
        # C^T, columns of op(B)
        put(3, b.select(rows, N, b.sub(hi, lo)))
        put(4, b.select(rows, b.sub(hi, lo), M))
        b_off = b.select(bt, b.mul(lo, ldb), lo)
        a_off = b.select(at, lo, b.mul(lo, lda))
        put(6, b.select(rows, bi, b.add(bi, b.mul(b_off, isz))))
        put(8, b.select(rows, b.add(ai, b.mul(a_off, isz)), ai))
        put(10, b.add(ci, b.mul(b.select(rows, b.mul(lo, ldc), lo), isz)))
    _for(b, nblocks, fill)
    recp = b.bitcast(rec, I8P)
    with b.if_else(b.icmp_signed("==", nblocks, _c(1))) as (then, other):
        with then:
            b.call(fns["task"], [recp])
        with other:
            b.call(fns["run"], [b.trunc(nblocks, I32), b.bitcast(fns["task"], I8P), recp,
                                ir.Constant(I32, RECORD * 8)])


def module(task, run, size, macs, align):
    """The IR module defining `flowjit_gemm`; it calls the block task and the pool's
    run/size functions by the names given, and malloc/free as flowjit_sys_malloc/free."""
    mod = ir.Module(name="flowjit_gemm")
    fns = {"task": _declare(mod, task, ir.VoidType(), [I8P]),
           "run": _declare(mod, run, I32, [I32, I8P, I8P, I32]),
           "size": _declare(mod, size, I64, []),
           "malloc": _declare(mod, "flowjit_sys_malloc", I8P, [I64]),
           "free": _declare(mod, "flowjit_sys_free", ir.VoidType(), [I8P])}
    types = [I8P if n in ("a", "b", "c") else I64 for n in ARGS]
    fn = ir.Function(mod, ir.FunctionType(I32, types), NAME)
    v = dict(zip(ARGS, fn.args))
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    isz = v["isz"]
    ta, tb, acc = (b.icmp_signed("!=", v[n], _c(0)) for n in ("ta", "tb", "acc"))
    M, N = v["cr"], v["cc"]
    K = b.select(ta, v["ar"], v["ac"])
    bad = b.or_(b.icmp_signed("!=", b.select(ta, v["ac"], v["ar"]), M),
                b.icmp_signed("!=", b.select(tb, v["bc"], v["br"]), K))
    bad = b.or_(bad, b.icmp_signed("!=", b.select(tb, v["br"], v["bc"]), N))
    bad = b.or_(bad, b.icmp_signed(">=", _max(b, _max(b, M, N), K), _c(1 << 31)))
    with b.if_then(bad, likely=False):
        b.ret(ir.Constant(I32, 1))
    with b.if_then(b.or_(b.icmp_signed("==", M, _c(0)), b.icmp_signed("==", N, _c(0)))):
        b.ret(ir.Constant(I32, 0))                 # an empty output: nothing to write

    with b.if_then(b.icmp_signed("==", K, _c(0))):  # no terms: zeros (or C unchanged)
        with b.if_then(b.not_(acc)):
            def zero_row(i):
                def zero(j):
                    _move(b, isz, b.gep(v["c"], [b.add(b.mul(i, v["cs0"]), b.mul(j, v["cs1"]))]))
                _for(b, N, zero)
            _for(b, M, zero_row)
        b.ret(ir.Constant(I32, 0))

    out_ok = b.and_(b.icmp_signed("==", v["cs1"], isz),
                    b.and_(b.icmp_signed(">=", v["cs0"], b.mul(N, isz)),
                           b.icmp_signed("==", b.srem(v["cs0"], isz), _c(0))))
    a_ok, at, lda = _storage(b, v["ar"], v["ac"], v["as0"], v["as1"], isz, ta)
    b_ok, bt, ldb = _storage(b, v["br"], v["bc"], v["bs0"], v["bs1"], isz, tb)
    with b.if_then(b.and_(out_ok, b.and_(a_ok, b_ok))):
        _run_blocks(b, fns, M, N, K, v["a"], at, lda, v["b"], bt, ldb, v["c"],
                    b.sdiv(v["cs0"], isz), isz, acc, macs, align)
        b.ret(ir.Constant(I32, 0))

    # an operand BLAS cannot read in place, or an output whose rows are not
    # contiguous: the same product on contiguous copies, the result copied back
    sizes = [b.mul(b.mul(v[r], v[c]), isz) for r, c in (("ar", "ac"), ("br", "bc"), ("cr", "cc"))]
    bufs = [b.call(fns["malloc"], [s]) for s in sizes]
    null = ir.Constant(I8P, None)
    failed = b.or_(b.or_(b.icmp_unsigned("==", bufs[0], null), b.icmp_unsigned("==", bufs[1], null)),
                   b.icmp_unsigned("==", bufs[2], null))
    with b.if_then(failed, likely=False):
        for p in bufs:
            b.call(fns["free"], [p])               # free(NULL) is allowed
        b.ret(ir.Constant(I32, 2))
    x, y, res = bufs
    _copy(b, x, v["a"], v["ar"], v["ac"], v["as0"], v["as1"], isz, True)
    _copy(b, y, v["b"], v["br"], v["bc"], v["bs0"], v["bs1"], isz, True)
    with b.if_then(acc):
        _copy(b, res, v["c"], M, N, v["cs0"], v["cs1"], isz, True)
    _run_blocks(b, fns, M, N, K, x, ta, v["ac"], y, tb, v["bc"], res, N, isz, acc, macs, align)
    _copy(b, v["c"], res, M, N, v["cs0"], v["cs1"], isz, False)
    for p in bufs:
        b.call(fns["free"], [p])
    b.ret(ir.Constant(I32, 0))
    return str(mod)
