"""The scalar function library of the CPU backend: vectorisable float32/float64
exp, expm1, log, log1p, tanh, sigmoid, and the counter-based random draws.

Numba from PyPI has no SVML, so `math.exp` in a loop is a scalar libm call that stops
LLVM from vectorising the loop. These are branch-free (selects only) range reduction
+ polynomial implementations, inlined into the fused loops, accurate to a few ulp over
the whole range (tests/test_scalar_math.py checks them against NumPy, with inf, nan,
overflow, underflow and subnormals).

Design notes: float32 exp reduces its argument with two fused multiply-adds where the
CPU has FMA (so the reduction stays exact even in kernels compiled with reassociation
allowed, and everything stays in float32 lanes), else in float64, and evaluates a
degree-7 polynomial in float32; float64 exp uses Cody-Waite reduction and a degree-13
polynomial; 2**n is built from exponent bits in two steps so results in the
subnormal range round once and no intermediate overflows early. float32 tanh is a
rational function (no exp), float64 tanh goes through expm1. `wide_vectors` (at the end)
lets a loop use AVX-512's 16-float vectors.
"""
import platform

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from ...ops import random_core as R

# Inlined into each fused loop by Numba itself, so every copy is compiled with its
# kernel's flags. (Compiling them once as ordinary functions for LLVM to inline made the
# LSTM step's cold compile 12% faster, but a clean-clone CI run then got log1p's
# rounding-error correction folded away, 1 + x computed without it: reverted.)
inline = njit(inline="always", cache=True)


# --- bit casts ------------------------------------------------------------------
@intrinsic
def f64_from_bits(typingctx, i):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@intrinsic
def bits_from_f64(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def f32_from_bits(typingctx, i):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def bits_from_f32(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
LN2_HI = 6.93147180369123816490e-01   # Cody-Waite split: n*LN2_HI is exact
LN2_LO = 1.90821492927058770002e-10


@inline
def _scale_f64(p, n):
    """p * 2**n for p in [0.7, 1.5) and integer-valued n in [-1075, 1025], through exponent
    bits, so the result is exact (or correctly rounded once, for subnormal results) and no
    floating-point reassociation by the compiler can change it."""
    ni = np.int64(n)
    pb = bits_from_f64(p)
    normal = f64_from_bits(pb + (ni << 52))
    hi = f64_from_bits(pb + ((ni - 1) << 52)) * 2.0
    lo = f64_from_bits(pb + ((ni + 512) << 52)) * 7.458340731200207e-155   # 2**-512
    return normal if (ni >= -1021 and ni <= 1022) else (hi if ni > 1022 else lo)


@inline
def _scale_f32(p, n):
    """p * 2**n for p in [0.7, 1.5) and integer-valued n in [-150, 128]: n is split in two
    halves; the first goes into p's exponent bits (exact: p * 2**n1 stays normal), the
    second is one multiply by 2**n2, which rounds once (subnormal results) or overflows
    (inf) exactly as it should. Integer steps, so no reassociation can change it."""
    ni = np.int32(n)
    n1 = ni >> np.int32(1)
    a = f32_from_bits(bits_from_f32(p) + (n1 << np.int32(23)))
    return a * f32_from_bits((ni - n1 + np.int32(127)) << np.int32(23))


# --- exp ------------------------------------------------------------------------
@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma). The call carries no fast-math flags, so a
    kernel compiled with reassociation cannot merge or reorder it."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        ty = args[0].type
        f = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(f, args)
    return a(a, b, c), codegen


def _host_has_fma():
    """Whether llvm.fma is one instruction here (elsewhere it is a libm call per element)."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        return ll.get_host_cpu_features()["fma"]
    except Exception:
        return False


HAS_FMA = _host_has_fma()
LN2_F32_HI = 0.693147182464599609375                 # float32(ln 2)
LN2_F32_LO = -1.904654323148236e-09                  # ln 2 - LN2_F32_HI


@inline
def _exp_f32_poly(r):
    return np.float32(1.0) + r * (np.float32(1.0) + r * (np.float32(0.5) + r * (
        np.float32(1.0 / 6) + r * (np.float32(1.0 / 24) + r * (np.float32(1.0 / 120) + r * (
            np.float32(1.0 / 720) + r * np.float32(1.0 / 5040)))))))


@inline
def _exp_f32_fma(x):
    # Cody-Waite reduction with two fused multiply-adds: exact to float32 precision in
    # float32 (8 lanes on AVX2), in any kernel, reassociated or not
    xc = min(max(x, np.float32(-104.0)), np.float32(89.0))
    n = np.floor(xc * np.float32(LOG2E) + np.float32(0.5))
    r = fma(n, np.float32(-LN2_F32_HI), xc)
    r = fma(n, np.float32(-LN2_F32_LO), r)
    res = _scale_f32(_exp_f32_poly(r), n)
    return x if x != x else res


@inline
def _exp_f32_wide(x):
    # without FMA: the reduction in float64, which reassociation cannot break (4 lanes)
    xd = np.float64(x)
    xc = min(max(xd, -104.0), 89.0)
    n = np.floor(xc * LOG2E + 0.5)
    res = _scale_f32(_exp_f32_poly(np.float32(xc - n * LN2)), n)
    return x if x != x else res


@inline
def _expm1_poly_f64(r):
    # exp(r) - 1 for |r| <= ln2/2, Taylor to degree 13 (error < 1 ulp)
    return r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
        1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (
            1.0 / 3628800 + r * (1.0 / 39916800 + r * (1.0 / 479001600 + r * (
                1.0 / 6227020800)))))))))))))


@inline
def _reduce_f64(x):
    xc = min(max(x, -746.0), 710.0)
    n = np.floor(xc * LOG2E + 0.5)
    r = (xc - n * LN2_HI) - n * LN2_LO
    return n, r


@inline
def exp_f64(x):
    n, r = _reduce_f64(x)
    p = 1.0 + _expm1_poly_f64(r)
    res = _scale_f64(p, n)
    return x if x != x else res


@inline
def expm1_f64(x):
    n, r = _reduce_f64(x)
    em = _expm1_poly_f64(r)
    # 2**n * (em + 1) - 1, arranged so that small n loses nothing to cancellation
    nc = min(max(n, -60.0), 60.0)
    t = _scale_f64(1.0, nc)
    small = em * t + (t - 1.0)
    big = _scale_f64(em + 1.0, n) - 1.0
    res = small if (n < 60.0 and n > -60.0) else big
    return x if x != x else res


@inline
def expm1_f32(x):
    return np.float32(expm1_f64(np.float64(x)))


# --- log ------------------------------------------------------------------------
SQRT2 = 1.4142135623730951


@inline
def log_f64(x):
    sub = x < 2.2250738585072014e-308
    xs = x * 4503599627370496.0 if sub else x          # scale subnormals by 2**52
    b = bits_from_f64(xs)
    e = np.float64(((b >> 52) & 0x7FF) - 1023) - (52.0 if sub else 0.0)
    m = f64_from_bits((b & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)
    hi = m > SQRT2
    m = m * 0.5 if hi else m
    e = e + 1.0 if hi else e
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    t = z * (1.0 / 3 + z * (1.0 / 5 + z * (1.0 / 7 + z * (1.0 / 9 + z * (1.0 / 11 + z * (
        1.0 / 13 + z * (1.0 / 15 + z * (1.0 / 17 + z * (1.0 / 19 + z * (1.0 / 21))))))))))
    # log(m) = 2s + 2s*t = f - s*(f - 2s*t)... kept in the simple accurate form:
    logm = 2.0 * s + 2.0 * s * t
    res = e * LN2_HI + (e * LN2_LO + logm)
    res = -np.inf if x == 0.0 else res
    res = np.nan if x < 0.0 else res
    res = x if (x == np.inf or x != x) else res
    return res


@inline
def log_f32(x):
    sub = x < np.float32(1.1754943508222875e-38)
    xs = x * np.float32(8388608.0) if sub else x       # scale subnormals by 2**23
    b = bits_from_f32(xs)
    e = np.float32(((b >> 23) & 0xFF) - 127) - (np.float32(23.0) if sub else np.float32(0.0))
    m = f32_from_bits((b & np.int32(0x007FFFFF)) | np.int32(0x3F800000))
    hi = m > np.float32(SQRT2)
    m = m * np.float32(0.5) if hi else m
    e = e + np.float32(1.0) if hi else e
    f = m - np.float32(1.0)
    s = f / (np.float32(2.0) + f)
    z = s * s
    t = z * (np.float32(1.0 / 3) + z * (np.float32(1.0 / 5) + z * (np.float32(1.0 / 7) + z * (
        np.float32(1.0 / 9) + z * np.float32(1.0 / 11)))))
    logm = np.float32(2.0) * s + np.float32(2.0) * s * t
    res = e * np.float32(LN2_HI) + (e * np.float32(LN2 - np.float32(LN2_HI)) + logm)
    res = -np.float32(np.inf) if x == np.float32(0.0) else res
    res = np.float32(np.nan) if x < np.float32(0.0) else res
    res = x if (x == np.float32(np.inf) or x != x) else res
    return res


@inline
def log1p_f64(x):
    u = 1.0 + x
    # log(u) corrected by the rounding error of 1 + x
    lu = log_f64(u)
    res = lu if (u == 0.0 or u == np.inf or u != u) else lu - ((u - 1.0) - x) / u
    res = x if u == 1.0 else res
    return x if (x == np.inf) else res


@inline
def log1p_f32(x):
    return np.float32(log1p_f64(np.float64(x)))


# --- tanh and sigmoid -------------------------------------------------------------
@inline
def tanh_f64(x):
    a = abs(x)
    t = expm1_f64(-2.0 * a)             # in (-1, 0]
    r = -t / (t + 2.0)
    r = -r if x < 0.0 else r
    return x if x != x else r


# tanh(x) = x * P(x^2) / Q(x^2) for |x| <= 9 (beyond, float32 tanh rounds to +-1 within
# an ulp): a rational fit of tanh(x)/x in x^2 on [0, 9] whose relative error is 0.34
# float32 ulp (tools/fit_tanh.py made it). No exp and no branch; P and Q are summed in
# float64 because float32 Horner sums alone cost up to 5 ulp near |x| = 4..8.
TANH_P = (0.9999999794493011, 0.13381026041964353, 0.003495588641251772,
          2.0609091893278877e-05, 1.3354676433772662e-08)
TANH_Q = (1.0, 0.4671434163288943, 0.025876984065800877, 0.00032856357105193646,
          7.776564083140926e-07)
_P0, _P1, _P2, _P3, _P4 = TANH_P
_Q0, _Q1, _Q2, _Q3, _Q4 = TANH_Q


@inline
def tanh_f32(x):
    a = np.float64(min(abs(x), np.float32(9.0)))
    z = a * a
    p = _P0 + z * (_P1 + z * (_P2 + z * (_P3 + z * _P4)))
    q = _Q0 + z * (_Q1 + z * (_Q2 + z * (_Q3 + z * _Q4)))
    r = np.float32(a * p / q)
    r = -r if x < np.float32(0.0) else r
    return x if x != x else r


def _sigmoid_f32_on(exp32):
    @inline
    def sigmoid32(x):
        e = exp32(-abs(x))
        s = np.float32(1.0) / (np.float32(1.0) + e)
        return s if x >= np.float32(0.0) else e * s
    return sigmoid32


@inline
def sigmoid_f64(x):
    e = exp_f64(-abs(x))
    s = 1.0 / (1.0 + e)
    r = s if x >= 0.0 else e * s
    return x if x != x else r



# --- float32 exp and sigmoid: with FMA one version serves every kernel; without it,
# kernels compiled with reassociation (reductions) use the float64 reduction and the
# others (the code generator renames exp_f32 -> exp_f32_ordered there) an in-float32
# Cody-Waite split, which is exact only if nothing reassociates it.
C1_F32 = 0.693359375              # ln2 high part: 9 significant bits, so n * C1 is exact
C2_F32 = -2.12194440e-4           # ln2 - C1


@inline
def _exp_f32_split(x):
    xc = min(max(x, np.float32(-104.0)), np.float32(89.0))
    n = np.floor(xc * np.float32(LOG2E) + np.float32(0.5))
    r = (xc - n * np.float32(C1_F32)) - n * np.float32(C2_F32)
    res = _scale_f32(_exp_f32_poly(r), n)
    return x if x != x else res


if HAS_FMA:
    exp_f32 = _exp_f32_fma
    ORDERED = ()
else:
    exp_f32, exp_f32_ordered = _exp_f32_wide, _exp_f32_split
    sigmoid_f32_ordered = _sigmoid_f32_on(exp_f32_ordered)
    ORDERED = ("exp_f32", "sigmoid_f32")
sigmoid_f32 = _sigmoid_f32_on(exp_f32)


# --- NaN-propagating max / min (IEEE 754-2019 maximum, minimum) -------------------
def _llvm_minmax(name):
    """a, b -> llvm.<name>(a, b) for two floats of one type: NaN if either is NaN. A
    select on compares propagates NaN as well, but LLVM does not vectorise it as a
    reduction (a max over a row ran one element per cycle); this intrinsic it does."""
    @intrinsic
    def fn(typingctx, a, b):
        if not isinstance(a, types.Float) or a != b:
            return None

        def codegen(context, builder, sig, args):
            ty = args[0].type
            f = builder.module.declare_intrinsic(name, [ty], ir.FunctionType(ty, [ty, ty]))
            return builder.call(f, args, fastmath=("nsz",))
        return a(a, b), codegen
    return fn


@inline
def _fmaximum_select(a, b):
    return a if (a > b or a != a) else b


@inline
def _fminimum_select(a, b):
    return a if (a < b or a != a) else b


# Older LLVMs (llvmlite < 0.43 bundles LLVM 14-15) cannot select these intrinsics on
# x86 (llvm-project #53353: an abort, not an exception): the select form there.
if llvm_version_info >= (17,):
    fmaximum = _llvm_minmax("llvm.maximum")
    fminimum = _llvm_minmax("llvm.minimum")
else:
    fmaximum, fminimum = _fmaximum_select, _fminimum_select


# --- random draws (the same algorithm as eager mode: ops/random_core.py) -----------
_bits = R.bits
_normal = R.normal_f64
_retry = R.retry_key


@njit(cache=True)
def rand_uniform_f32(key, i):
    return np.float32(_bits(np.uint64(key), np.uint64(i)) >> R.U40) * R.INV24


@njit(cache=True)
def rand_uniform_f64(key, i):
    return np.float64(_bits(np.uint64(key), np.uint64(i)) >> R.U11) * R.INV53


@njit(cache=True)
def rand_normal_f64(key, i):
    return _normal(np.uint64(key), np.uint64(i))


@njit(cache=True)
def rand_normal_f32(key, i):
    return np.float32(rand_normal_f64(key, i))


@njit(cache=True)
def rand_truncated_normal_f64(key, i):
    k = np.uint64(key)
    z = _normal(k, np.uint64(i))
    t = 1
    while abs(z) > 2.0:
        z = _normal(_retry(k, t), np.uint64(i))
        t += 1
    return z


@njit(cache=True)
def rand_truncated_normal_f32(key, i):
    return np.float32(rand_truncated_normal_f64(key, i))


NAMES = [n for n in dir() if n.endswith(("_f32", "_f64"))]


# --- vector width ---------------------------------------------------------------
def _host_has_avx512():
    try:
        return bool(ll.get_host_cpu_features().get("avx512f", False))
    except Exception:
        return False


# Where the CPU has AVX-512, big fused loops ask for its 16-float vectors (codegen puts a
# wide_vectors() call at the top of their loop nests: codegen.WIDE_MIN). LLVM's X86
# tuning for Intel's AVX-512 server parts prefers 256-bit vectors (Skylake-SP lowered
# its clock for wide ones), so without the request the loop vectorizer stopped at 8
# floats. Timed in turns in one process on the 2-core Emerald Rapids VM: the fused
# loss+grad benchmark (4M elements of tanh, sigmoid and exp) 1.54x faster. The packed
# GEMM kernel uses these vectors already.
WIDE_VECTORS = _host_has_avx512()


@intrinsic
def wide_vectors(typingctx):
    """Marks the function being compiled with "prefer-vector-width"="512", which lets
    LLVM vectorize its loops with 512-bit vectors. Compiles to nothing else. (llvmlite's
    attribute set takes only its list of known names, so the string attribute goes in
    through set.add; it prints verbatim in the function's definition.)"""
    def codegen(context, builder, sig, args):
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()
    return types.none(), codegen
