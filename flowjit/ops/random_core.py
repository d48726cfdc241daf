"""The counter-based random generator shared by eager mode (NumPy, vectorised) and
compiled code (Numba scalar): element i of a random op with key k is a pure function
of (k, i), so fused kernels can draw numbers in any order and eager/jit agree.

The bit mixer is SplitMix64's finaliser; uniform floats take the top bits; normals
use Box-Muller in float64; truncated normals redraw (with a new key) outside 2 sigma,
as TF does. Every function here works on NumPy uint64 arrays and on Numba scalars.
"""
import numpy as np
from numba.extending import register_jitable   # the same function runs in NumPy and in njit

U30, U27, U31 = np.uint64(30), np.uint64(27), np.uint64(31)
U40, U11, ONE = np.uint64(40), np.uint64(11), np.uint64(1)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
TWO = np.uint64(2)
INV24 = np.float32(1.0 / (1 << 24))
INV53 = 1.0 / (1 << 53)
TWO_PI = 6.283185307179586


@register_jitable
def mix(z):
    z = (z ^ (z >> U30)) * M1
    z = (z ^ (z >> U27)) * M2
    return z ^ (z >> U31)


@register_jitable
def bits(key, i):
    return mix(key + (i + ONE) * GOLDEN)


@register_jitable
def uniform_f32(key, i):
    return np.float32(bits(key, i) >> U40) * INV24


@register_jitable
def uniform_f64(key, i):
    return np.float64(bits(key, i) >> U11) * INV53


@register_jitable
def normal_f64(key, i):
    u1 = (np.float64(bits(key, TWO * i) >> U11) + 1.0) * INV53
    u2 = np.float64(bits(key, TWO * i + ONE) >> U11) * INV53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(TWO_PI * u2)


@register_jitable
def retry_key(key, t):
    return mix(key ^ (np.uint64(t) * M2 + GOLDEN))
