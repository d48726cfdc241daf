"""Helpers the generated entry functions call (compiled once, cached on disk)."""
import numpy as np
from numba import njit, types
from numba.extending import overload


from .blas import gemm_call, start as _start_blas

_start_blas()      # the symbols the GEMMs below link against, before they compile or load


# 2-D float matmuls: big ones in blocks on the pool, small ones one single-threaded
# BLAS call, operands BLAS cannot read in place copied first. All of that is LLVM IR
# built once per process (gemm_ir.py), so an entry's GEMM costs Numba one small
# function per array types, not the 1.1-1.8 s the same logic cost as Numba code.
@njit(cache=True, error_model="numpy")
def gemm(a, b, out, ta, tb, acc):
    """out = op(a) @ op(b), or out += ... with `acc` (a loop accumulating a weight's
    gradient over its steps), op transposing where ta / tb. One compiled function per
    array types serves all eight flag combinations: compiled code passes the flags as
    np.bool_ values, since a literal True would compile it once more."""
    status = gemm_call(a, b, out, ta, tb, acc)
    if status == 1:
        # (Numba passes run-time values as the exception's further arguments)
        raise ValueError("matmul: operand shapes do not match the output, or a size is 2**31 "
                         "or more: a, b, out shapes (transposes aside)", a.shape, b.shape, out.shape)
    if status != 0:
        raise MemoryError("matmul: no memory for contiguous copies of strided operands")


# fixed transposes, for the convolution kernels that call them from compiled code
@njit(cache=True, error_model="numpy")
def gemm_nn(a, b, out):
    gemm(a, b, out, np.bool_(False), np.bool_(False), np.bool_(False))


@njit(cache=True, error_model="numpy")
def gemm_tn(a, b, out):
    gemm(a, b, out, np.bool_(True), np.bool_(False), np.bool_(False))


@njit(cache=True, error_model="numpy")
def gemm_nt(a, b, out):
    gemm(a, b, out, np.bool_(False), np.bool_(True), np.bool_(False))


@njit(cache=True, error_model="numpy")
def bmm(a, b, out, ta, tb):
    """Batched float matmul over (batch, rows, cols) arrays, one GEMM per batch entry; a
    batch of 1 broadcasts."""
    nb = out.shape[0]
    for i in range(nb):
        x = a[i if a.shape[0] > 1 else 0]
        y = b[i if b.shape[0] > 1 else 0]
        gemm(x, y, out[i], np.bool_(ta), np.bool_(tb), np.bool_(False))


@njit(cache=True, error_model="numpy")
def bmm_loop(a, b, out, ta, tb):
    """Batched integer matmul (BLAS has no integer gemm)."""
    nb = out.shape[0]
    for i in range(nb):
        x = a[i if a.shape[0] > 1 else 0]
        y = b[i if b.shape[0] > 1 else 0]
        if ta:
            x = x.T
        if tb:
            y = y.T
        o = out[i]
        m, n = o.shape
        k = x.shape[1]
        for r in range(m):
            for c in range(n):
                o[r, c] = 0
            for q in range(k):
                v = x[r, q]
                for c in range(n):
                    o[r, c] += v * y[q, c]


@njit(inline="always", error_model="numpy")
def alloc(site, shape, dtype):
    """An allocation of the compiled entry (its Python tier reuses buffers per site).
    Inlined: called as a function, Numba compiled it once per call site (the site and
    the shape's constant sizes are literals), 0.06-0.27 s each, a second or more of
    an entry's compile."""
    return np.empty(shape, dtype)


def assign(dst, src, perm=None):
    """dst[...] = src, or src.transpose(perm): an entry's move (codegen._move_lines). src
    is a scalar or an array shaped like dst's last dims (broadcast along the leading
    ones). The Python tier runs this, NumPy's copy; a compiled entry runs the loop nest
    below instead, since Numba's array assignment cost about 2 s to compile in every
    process, and its transpose with a permutation 3 s (the LSTM step's forward entry
    took 9.5 s with both)."""
    dst[...] = src if perm is None else src.transpose(perm)


@overload(assign, prefer_literal=True, jit_options={"error_model": "numpy"})
def _assign_loops(dst, src, perm=None):
    n = dst.ndim
    m = src.ndim if isinstance(src, types.Array) else 0
    order = list(range(m))            # the index of src's dim k is that of dst's n - m + order[k]
    if not (perm is None or isinstance(perm, (types.NoneType, types.Omitted))):
        if not (isinstance(perm, types.BaseTuple) and len(perm) == m
                and all(isinstance(t, types.IntegerLiteral) for t in perm.types)):
            return None
        p = [t.literal_value for t in perm.types]
        if sorted(p) != order:
            return None
        for j, k in enumerate(p):
            order[k] = j
    if m > n:
        return None
    lines = ["def impl(dst, src, perm=None):"]
    for k in range(m):          # Numba checks no bounds: the shapes are checked first
        lines.append(f"    if src.shape[{k}] != dst.shape[{n - m + order[k]}]:")
        lines.append("        raise ValueError('assign: source and target shapes differ')")
    for k in range(n):
        lines.append(f"{'    ' * (k + 1)}for i{k} in range(dst.shape[{k}]):")
    value = f"src[{', '.join(f'i{n - m + order[k]}' for k in range(m))}]" if m else "src"
    lines.append(f"{'    ' * (n + 1)}dst[{', '.join(f'i{k}' for k in range(n)) or '()'}] = {value}")
    ns = {}
    exec("\n".join(lines), ns)
    return ns["impl"]
