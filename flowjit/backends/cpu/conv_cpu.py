"""CPU kernels shared by the generated conv2d drivers (ops/conv.py writes a small driver
per op and dtype that calls these). They live in one module so that Numba compiles
each of them once per process and caches it on disk, instead of once per driver.

Two ways to use the cores, chosen per call:
- serial chunks: the unfolding runs serially a chunk of rows at a time (the chunk stays
  in cache) and each chunk is one GEMM, split into blocks on flowjit's pool (blas.py);
- parallel chunks, for "skinny" layers (few output channels: K*CO small, so a GEMM
  small enough for OpenBLAS to run on the calling thread still has many rows): a Numba
  prange over chunks, each unfolded and multiplied by one thread. The unfold/fold
  then runs on every core too, and the call has one synchronisation instead of one
  per BLAS call. Measured on 2 cores at 64x28x28x16 -> 8, 5x5 stride 2: forward
  8.2 -> 5.6 ms, filter gradient 13.4 -> 9.0, input gradient 6.7 -> 5.2.
Every size, stride, dilation and pad is a run-time value.
"""
import numpy as np
from numba import njit, prange

from .runtime_lib import gemm_nn, gemm_nt, gemm_tn

# im2col chunk size in elements: 4 MiB of float32 stays in L3, and few chunks mean few
# BLAS calls (each multi-threaded call is a synchronisation, costly on a busy machine);
# and the largest K = KH*KW*C_in for which direct loops beat unfolding + BLAS
CHUNK_ELEMS = 1 << 20
DIRECT_MAX_K = 16
# below this many input channels the filter gradient unfolds transposed (whole output
# rows as runs; measured at C = 1: 3.0 vs 5.5 ms; at C = 16 the strided gathers lose)
TRANSPOSED_MAX_C = 4
# OpenBLAS runs a GEMM of at most this many multiply-adds (m*n*k) on the calling
# thread (its threading threshold: 65536 * GEMM_MULTITHREAD_THRESHOLD 4), so such
# chunks never nest its thread pool inside Numba's
SERIAL_GEMM_MNK = 262144
# parallel chunks only when a chunk keeps at least this many rows (thinner GEMMs run
# far below BLAS speed) and the call has at least this many multiply-adds (below, the
# threads' wake-up costs more than it saves)
PAR_MIN_ROWS = 48
PAR_MIN_MACS = 1 << 23


@njit(cache=True, error_model='numpy')
def par_rows(M, K, CO):
    """Rows per parallel chunk for an M x K by K x CO product, or 0: use serial chunks."""
    R = SERIAL_GEMM_MNK // max(K * CO, 1)
    if R < PAR_MIN_ROWS or M * K * CO < PAR_MIN_MACS:
        return 0
    return R


@njit(cache=True, error_model='numpy')
def chunk_rows(M, K):
    return max(64, min(M, CHUNK_ELEMS // max(K, 1)))


@njit(cache=True, error_model='numpy', inline='always')
def row_window(r, OH, OW, W, C, KW, sw, dw, pl):
    """Unfolded row r = (n*OH + oh)*OW + ow: its image n, output row oh, first input
    column iw0, and whether its window rows are whole runs of KW*C values inside the
    input (dilation 1, few channels: measured, the per-tap copy is faster for C >= 8)."""
    ow = r % OW
    t = r // OW
    iw0 = ow * sw - pl
    return t // OH, t % OH, iw0, dw == 1 and C < 8 and iw0 >= 0 and iw0 + KW <= W


@njit(cache=True, error_model='numpy', fastmath=True)
def im2col(x, col, r0, r1, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl):
    """Rows r0..r1 (r = (n*OH + oh)*OW + ow) of the unfolded input:
    col[r - r0, (i*KW + j)*C + c] = x[n, oh*sh - pt + i*dh, ow*sw - pl + j*dw, c], 0 outside.
    A window row wholly inside the input (dilation 1, few channels) is one copy of KW*C."""
    N, H, W, C = x.shape
    xf = x.reshape((N, H, W * C))
    KC = KW * C
    for r in range(r0, r1):
        q = r - r0
        n, oh, iw0, inside = row_window(r, OH, OW, W, C, KW, sw, dw, pl)
        for i in range(KH):
            ih = oh * sh - pt + i * dh
            if ih < 0 or ih >= H:
                for e in range(i * KC, (i + 1) * KC):
                    col[q, e] = 0
            elif inside:
                src = iw0 * C
                dst = i * KC
                for e in range(KC):
                    col[q, dst + e] = xf[n, ih, src + e]
            else:
                for j in range(KW):
                    iw = iw0 + j * dw
                    base = (i * KW + j) * C
                    if 0 <= iw < W:
                        for c in range(C):
                            col[q, base + c] = x[n, ih, iw, c]
                    else:
                        for c in range(C):
                            col[q, base + c] = 0


@njit(cache=True, error_model='numpy', fastmath=True)
def col2im_add(col, dx, r0, r1, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl):
    """The adjoint of im2col: add unfolded rows r0..r1 back onto the input positions they
    were read from."""
    N, H, W, C = dx.shape
    df = dx.reshape((N, H, W * C))
    KC = KW * C
    for r in range(r0, r1):
        q = r - r0
        n, oh, iw0, inside = row_window(r, OH, OW, W, C, KW, sw, dw, pl)
        for i in range(KH):
            ih = oh * sh - pt + i * dh
            if ih < 0 or ih >= H:
                continue
            if inside:
                dst = iw0 * C
                src = i * KC
                for e in range(KC):
                    df[n, ih, dst + e] += col[q, src + e]
                continue
            for j in range(KW):
                iw = iw0 + j * dw
                if iw < 0 or iw >= W:
                    continue
                base = (i * KW + j) * C
                for c in range(C):
                    dx[n, ih, iw, c] += col[q, base + c]


@njit(cache=True, error_model='numpy')
def ow_span(OW, W, sw, off):
    """The output columns ow with 0 <= ow*sw + off < W, as lo..hi."""
    lo = 0
    if off < 0:
        lo = min(OW, (sw - 1 - off) // sw)
    hi = 0
    if W - 1 - off >= 0:
        hi = min(OW, (W - 1 - off) // sw + 1)
    return lo, max(lo, hi)


@njit(cache=True, error_model='numpy')
def chunk_out_rows(T, OW, K):
    """Whole output rows (n, oh) per chunk of the transposed unfolding."""
    return max(1, min(T, CHUNK_ELEMS // max(K * OW, 1)))


@njit(cache=True, error_model='numpy', fastmath=True)
def im2col_t(x, colT, t0, t1, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl):
    """Output rows t0..t1 (t = n*OH + oh, OW pixels each) of the unfolded input,
    transposed: colT[(i*KW + j)*C + c, (t - t0)*OW + ow] =
    x[n, oh*sh - pt + i*dh, ow*sw - pl + j*dw, c], 0 outside. Each write is a run of OW
    consecutive elements (BLAS then reads colT as a plain row-major K x R matrix, which
    it multiplies faster than the transposed row-layout unfolding)."""
    N, H, W, C = x.shape
    for t in range(t0, t1):
        n = t // OH
        oh = t % OH
        q0 = (t - t0) * OW
        for i in range(KH):
            ih = oh * sh - pt + i * dh
            for j in range(KW):
                k0 = (i * KW + j) * C
                off = j * dw - pl
                lo, hi = ow_span(OW, W, sw, off)
                if ih < 0 or ih >= H:
                    lo = hi = 0
                for c in range(C):
                    for ow in range(lo):
                        colT[k0 + c, q0 + ow] = 0
                    for ow in range(lo, hi):
                        colT[k0 + c, q0 + ow] = x[n, ih, ow * sw + off, c]
                    for ow in range(max(lo, hi), OW):
                        colT[k0 + c, q0 + ow] = 0


@njit(cache=True, error_model='numpy', fastmath=True)
def conv_direct(x, w, out, sh, sw, dh, dw, pt, pl):
    # few taps per output: loops vectorised over output channels
    N, H, W, C = x.shape
    KH, KW, CO = w.shape[0], w.shape[1], w.shape[3]
    OH, OW = out.shape[1], out.shape[2]
    for t in range(N * OH):
        n = t // OH
        oh = t % OH
        acc = np.empty(CO, out.dtype)
        for ow in range(OW):
            for co in range(CO):
                acc[co] = 0
            for i in range(KH):
                ih = oh * sh - pt + i * dh
                if ih < 0 or ih >= H:
                    continue
                for j in range(KW):
                    iw = ow * sw - pl + j * dw
                    if iw < 0 or iw >= W:
                        continue
                    for c in range(C):
                        v = x[n, ih, iw, c]
                        for co in range(CO):
                            acc[co] += v * w[i, j, c, co]
            for co in range(CO):
                out[n, oh, ow, co] = acc[co]

@njit(cache=True, error_model='numpy', fastmath=True)
def bp_filter_transposed(x, g2, d2, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl):
    # few input channels: the transposed unfolding copies runs of whole output rows, and
    # BLAS multiplies the row-major K x R colT by G faster than the transposed col
    N, H, W, C = x.shape
    K, CO = d2.shape
    T = N * OH
    RT = chunk_out_rows(T, OW, K)
    buf = np.empty(K * RT * OW, x.dtype)
    part = np.empty((K, CO), x.dtype)
    for t0 in range(0, T, RT):
        t1 = min(T, t0 + RT)
        rr = (t1 - t0) * OW
        colT = buf[:K * rr].reshape((K, rr))
        im2col_t(x, colT, t0, t1, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl)
        if t0 == 0:
            gemm_nn(colT, g2[t0 * OW:t1 * OW], d2)
        else:
            gemm_nn(colT, g2[t0 * OW:t1 * OW], part)
            d2 += part


@njit(cache=True, error_model='numpy', fastmath=True, parallel=True)
def forward_par(x, w2, o2, R, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl):
    """o2 = unfold(x) @ w2, chunks of R rows in parallel (one thread each)."""
    M, K = o2.shape[0], w2.shape[0]
    for b in prange((M + R - 1) // R):
        r0 = b * R
        r1 = min(M, r0 + R)
        col = np.empty((r1 - r0, K), x.dtype)
        im2col(x, col, r0, r1, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl)
        np.dot(col, w2, o2[r0:r1])


@njit(cache=True, error_model='numpy', fastmath=True, parallel=True)
def backprop_filter_par(x, g2, d2, R, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl):
    """d2 = unfold(x).T @ g2: each task sums its share of R-row chunks into its own
    partial gradient, then the partials are added in task order (deterministic)."""
    M = g2.shape[0]
    K, CO = d2.shape
    nch = (M + R - 1) // R
    P = min(nch, 8)
    parts = np.empty((P, K, CO), x.dtype)
    for p in prange(P):
        col = np.empty((R, K), x.dtype)
        tmp = np.empty((K, CO), x.dtype)
        zero_fill(parts[p])
        for b in range(p * nch // P, (p + 1) * nch // P):
            r0 = b * R
            r1 = min(M, r0 + R)
            im2col(x, col, r0, r1, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl)
            np.dot(col[:r1 - r0].T, g2[r0:r1], tmp)
            add_into(parts[p], tmp)
    sum_parts(parts, d2)


@njit(cache=True, error_model='numpy')
def zero_fill(a):
    for k in range(a.shape[0]):
        for c in range(a.shape[1]):
            a[k, c] = 0


@njit(cache=True, error_model='numpy', fastmath=True)
def add_into(acc, tmp):
    for k in range(acc.shape[0]):
        for c in range(acc.shape[1]):
            acc[k, c] += tmp[k, c]


@njit(cache=True, error_model='numpy', fastmath=True)
def sum_parts(parts, d2):
    """d2 = the sum of the per-task partial gradients, added in task order."""
    for k in range(d2.shape[0]):
        for c in range(d2.shape[1]):
            s = parts[0, k, c]
            for p in range(1, parts.shape[0]):
                s += parts[p, k, c]
            d2[k, c] = s


@njit(cache=True, error_model='numpy', fastmath=True, parallel=True)
def backprop_input_par(g2, w2, dx, R, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl):
    """dx = fold(g2 @ w2.T), one image per task (the fold of one image's rows touches
    only that image, so tasks never write the same element), R-row chunks within."""
    N = dx.shape[0]
    K = w2.shape[0]
    per = OH * OW
    for n in prange(N):
        dx[n] = 0
        col = np.empty((min(R, per), K), g2.dtype)
        for r0 in range(n * per, (n + 1) * per, R):
            r1 = min((n + 1) * per, r0 + R)
            np.dot(g2[r0:r1], w2.T, col[:r1 - r0])
            col2im_add(col, dx, r0, r1, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl)


@njit(cache=True, error_model='numpy')
def conv_dims(xs, ws, ys):
    """(N, H, W, C, KH, KW, CO, OH, OW, K, M) from the input, filter and output shapes
    (M output pixels, K = KH*KW*C unfolded columns)."""
    N, H, W, C = xs
    KH, KW, CO = ws[0], ws[1], ws[3]
    OH, OW = ys[1], ys[2]
    return N, H, W, C, KH, KW, CO, OH, OW, KH * KW * C, N * OH * OW


@njit(cache=True, error_model='numpy')
def is_pointwise(KH, KW, sh, sw, pt, pl, OH, OW, H, W):
    """A 1x1 filter at stride 1 without padding: the input is the unfolded matrix."""
    return KH == 1 and KW == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and OH == H and OW == W


@njit(cache=True, error_model='numpy', fastmath=True)
def conv2d_forward(x, w, out, sh, sw, dh, dw, pt, pl):
    """The generic conv2d driver (any sizes; see ops/conv.py for the paths)."""
    N, H, W, C, KH, KW, CO, OH, OW, K, M = conv_dims(x.shape, w.shape, out.shape)
    w2 = w.reshape((K, CO))
    o2 = out.reshape((M, CO))
    if is_pointwise(KH, KW, sh, sw, pt, pl, OH, OW, H, W):
        gemm_nn(x.reshape((M, C)), w2, o2)
        return
    if K <= DIRECT_MAX_K:
        conv_direct(x, w, out, sh, sw, dh, dw, pt, pl)
        return
    R = par_rows(M, K, CO)
    if R > 0:
        forward_par(x, w2, o2, R, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl)
        return
    R = chunk_rows(M, K)
    col = np.empty((R, K), x.dtype)
    for r0 in range(0, M, R):
        r1 = min(M, r0 + R)
        im2col(x, col, r0, r1, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl)
        gemm_nn(col[:r1 - r0], w2, o2[r0:r1])


@njit(cache=True, error_model='numpy', fastmath=True)
def conv2d_backprop_input(g, w, dx, sh, sw, dh, dw, pt, pl):
    """The generic input-gradient driver: BLAS, then the unfold's adjoint."""
    N, H, W, C, KH, KW, CO, OH, OW, K, M = conv_dims(dx.shape, w.shape, g.shape)
    w2 = w.reshape((K, CO))
    g2 = g.reshape((M, CO))
    if is_pointwise(KH, KW, sh, sw, pt, pl, OH, OW, H, W):
        gemm_nt(g2, w2, dx.reshape((M, C)))
        return
    R = par_rows(M, K, CO)
    if R > 0:
        backprop_input_par(g2, w2, dx, R, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl)
        return
    dx[...] = 0
    R = chunk_rows(M, K)
    col = np.empty((R, K), g.dtype)
    for r0 in range(0, M, R):
        r1 = min(M, r0 + R)
        gemm_nt(g2[r0:r1], w2, col[:r1 - r0])
        col2im_add(col, dx, r0, r1, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl)


@njit(cache=True, error_model='numpy', fastmath=True)
def conv2d_backprop_filter(x, g, dw_, sh, sw, dh, dw, pt, pl):
    """The generic filter-gradient driver: unfold, then BLAS accumulating."""
    N, H, W, C, KH, KW, CO, OH, OW, K, M = conv_dims(x.shape, dw_.shape, g.shape)
    d2 = dw_.reshape((K, CO))
    g2 = g.reshape((M, CO))
    if is_pointwise(KH, KW, sh, sw, pt, pl, OH, OW, H, W):
        gemm_tn(x.reshape((M, C)), g2, d2)
        return
    R = par_rows(M, K, CO)
    if R > 0 and C >= TRANSPOSED_MAX_C:
        backprop_filter_par(x, g2, d2, R, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl)
        return
    if C < TRANSPOSED_MAX_C:
        bp_filter_transposed(x, g2, d2, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl)
        return
    R = chunk_rows(M, K)
    col = np.empty((R, K), x.dtype)
    part = np.empty((K, CO), x.dtype)
    for r0 in range(0, M, R):
        r1 = min(M, r0 + R)
        im2col(x, col, r0, r1, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl)
        if r0 == 0:
            gemm_tn(col[:r1 - r0], g2[r0:r1], d2)
        else:
            gemm_tn(col[:r1 - r0], g2[r0:r1], part)
            d2 += part
