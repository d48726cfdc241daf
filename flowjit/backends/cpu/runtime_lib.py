"""Helpers the generated entry functions call (compiled once, cached on disk)."""
import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def bmm(a, b, out, ta, tb):
    """Batched matmul over (batch, rows, cols) arrays; a batch of 1 broadcasts."""
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
