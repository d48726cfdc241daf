"""Helpers the generated entry functions call (compiled once, cached on disk)."""
import numpy as np
from numba import njit


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
