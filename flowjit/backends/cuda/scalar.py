"""Device versions of the scalar functions that rendered op expressions call (exp_f32,
log_f64, sigmoid_f32, rand_normal_f32, sqrt_, ...; see codegen.math_name).

On a GPU these are `cuda.jit(device=True)` functions over CUDA's libdevice math
(`math.exp` on a float32 is `expf`). Under the simulator they are plain Python over
NumPy scalars, so float32 stays float32 and log(-1) is NaN instead of a ValueError.

The random draws are the same counter-based generator as eager mode and the CPU
backend (ops/random_core.py): element i of a random op with key k is a function of
(k, i) only, so GPU, CPU and eager results are equal.
"""
import math

import numpy as np

from ...ops import random_core as R
from .runtime import SIM

if SIM:
    def device(fn):
        def quiet(*args):          # uint64 wrap-around and inf/nan are intended
            with np.errstate(all="ignore"):
                return fn(*args)
        return quiet

    def _f32(fn):
        def g(x):
            with np.errstate(all="ignore"):
                return np.float32(fn(np.float32(x)))
        return g

    def _f64(fn):
        def g(x):
            with np.errstate(all="ignore"):
                return np.float64(fn(np.float64(x)))
        return g

    exp_f32, exp_f64 = _f32(np.exp), _f64(np.exp)
    log_f32, log_f64 = _f32(np.log), _f64(np.log)
    expm1_f32, expm1_f64 = _f32(np.expm1), _f64(np.expm1)
    log1p_f32, log1p_f64 = _f32(np.log1p), _f64(np.log1p)
    tanh_f32, tanh_f64 = _f32(np.tanh), _f64(np.tanh)
    _sqrt, _log, _cos = np.sqrt, np.log, np.cos

    def _ufunc(fn):
        def g(x):
            with np.errstate(all="ignore"):
                return fn(x)
        return g
    ANY_FLOAT = dict(sqrt=_ufunc(np.sqrt), floor=_ufunc(np.floor), ceil=_ufunc(np.ceil),
                     sin=_ufunc(np.sin), cos=_ufunc(np.cos))
else:
    from numba import cuda

    def device(fn):
        return cuda.jit(device=True, inline=True)(fn)

    @device
    def exp_f32(x):
        return math.exp(x)

    @device
    def exp_f64(x):
        return math.exp(x)

    @device
    def log_f32(x):
        return math.log(x)

    @device
    def log_f64(x):
        return math.log(x)

    @device
    def expm1_f32(x):
        return math.expm1(x)

    @device
    def expm1_f64(x):
        return math.expm1(x)

    @device
    def log1p_f32(x):
        return math.log1p(x)

    @device
    def log1p_f64(x):
        return math.log1p(x)

    @device
    def tanh_f32(x):
        return math.tanh(x)

    @device
    def tanh_f64(x):
        return math.tanh(x)

    # math.floor on the device returns an int (Python semantics): NaN/inf would not survive
    @device
    def _floor(x):
        return x if (x != x or abs(x) >= 4503599627370496.0) else x - (x % 1.0)

    @device
    def _ceil(x):
        return x if (x != x or abs(x) >= 4503599627370496.0) else -((-x) - ((-x) % 1.0))

    _sqrt, _log, _cos = math.sqrt, math.log, math.cos
    ANY_FLOAT = dict(sqrt=math.sqrt, floor=_floor, ceil=_ceil, sin=math.sin, cos=math.cos)


@device
def sigmoid_f32(x):
    e = exp_f32(-abs(x))
    s = np.float32(1.0) / (np.float32(1.0) + e)
    return s if x >= np.float32(0.0) else e * s


@device
def sigmoid_f64(x):
    e = exp_f64(-abs(x))
    s = 1.0 / (1.0 + e)
    r = s if x >= 0.0 else e * s
    return x if x != x else r


# --- random draws: the integer mixer from random_core, the float math on the device --
@device
def _mix(z):
    z = (z ^ (z >> R.U30)) * R.M1
    z = (z ^ (z >> R.U27)) * R.M2
    return z ^ (z >> R.U31)


@device
def _bits(key, i):
    return _mix(key + (i + R.ONE) * R.GOLDEN)


@device
def _normal(key, i):
    u1 = (np.float64(_bits(key, R.TWO * i) >> R.U11) + 1.0) * R.INV53
    u2 = np.float64(_bits(key, R.TWO * i + R.ONE) >> R.U11) * R.INV53
    return _sqrt(-2.0 * _log(u1)) * _cos(R.TWO_PI * u2)


@device
def rand_uniform_f32(key, i):
    return np.float32(_bits(np.uint64(key), np.uint64(i)) >> R.U40) * R.INV24


@device
def rand_uniform_f64(key, i):
    return np.float64(_bits(np.uint64(key), np.uint64(i)) >> R.U11) * R.INV53


@device
def rand_normal_f64(key, i):
    return _normal(np.uint64(key), np.uint64(i))


@device
def rand_normal_f32(key, i):
    return np.float32(_normal(np.uint64(key), np.uint64(i)))


@device
def _retry(key, t):
    return _mix(key ^ (np.uint64(t) * R.M2 + R.GOLDEN))


@device
def rand_truncated_normal_f64(key, i):
    k = np.uint64(key)
    ii = np.uint64(i)
    z = _normal(k, ii)
    t = 1
    while abs(z) > 2.0:
        z = _normal(_retry(k, t), ii)
        t += 1
    return z


@device
def rand_truncated_normal_f32(key, i):
    return np.float32(rand_truncated_normal_f64(key, i))


# the math functions of any float type, by the names generated code calls them
sqrt_, floor_, ceil_, sin_, cos_ = (ANY_FLOAT[k] for k in ("sqrt", "floor", "ceil", "sin", "cos"))

NAMES = [n for n in dir() if n.endswith(("_f32", "_f64")) and not n.startswith("_")] + \
    ["sqrt_", "floor_", "ceil_", "sin_", "cos_"]
