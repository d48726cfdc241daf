"""Helpers the generated entry functions call (compiled once, cached on disk)."""
import numpy as np
from numba import njit


from .blas import pooled_gemm, start as _start_blas

_start_blas()      # the symbols the GEMMs below link against, before they compile or load


# 2-D float matmuls, one per transpose combination: big ones in blocks on the pool
# (blas.py), small ones one single-threaded BLAS call. Compiled once per machine (disk
# cache) and called by every entry, so no entry pays for typing np.dot itself.
@njit(cache=True, error_model="numpy")
def gemm_nn(a, b, out):
    if not pooled_gemm(a, b, out, False, False):
        np.dot(a, b, out)


@njit(cache=True, error_model="numpy")
def gemm_tn(a, b, out):
    if not pooled_gemm(a, b, out, True, False):
        np.dot(a.T, b, out)


@njit(cache=True, error_model="numpy")
def gemm_nt(a, b, out):
    if not pooled_gemm(a, b, out, False, True):
        np.dot(a, b.T, out)


@njit(cache=True, error_model="numpy")
def gemm_tt(a, b, out):
    if not pooled_gemm(a, b, out, True, True):
        np.dot(a.T, b.T, out)


@njit(cache=True, error_model="numpy")
def bmm(a, b, out, ta, tb):
    """Batched float matmul over (batch, rows, cols) arrays, one GEMM per batch entry; a
    batch of 1 broadcasts."""
    nb = out.shape[0]
    for i in range(nb):
        x = a[i if a.shape[0] > 1 else 0]
        y = b[i if b.shape[0] > 1 else 0]
        o = out[i]
        if ta and tb:
            gemm_tt(x, y, o)
        elif ta:
            gemm_tn(x, y, o)
        elif tb:
            gemm_nt(x, y, o)
        else:
            gemm_nn(x, y, o)


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


@njit(cache=True, error_model="numpy")
def alloc(site, shape, dtype):
    """An allocation of the compiled entry (its Python tier reuses buffers per site)."""
    return np.empty(shape, dtype)
