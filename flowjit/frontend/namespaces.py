"""TF2's sub-namespaces of the core API, `fj.math` and `fj.linalg` (as `tf.math.log`,
`tf.linalg.matmul`), over the ops flowjit has; a few TF functions composed here from
them. Every name is the same function object as its top-level `fj.*` one."""
import types

import numpy as np

from . import api as F
from . import nn as N


def reciprocal(x, name=None):
    return 1.0 / F.convert_to_tensor(x)


def squared_difference(x, y, name=None):
    d = F.subtract(x, y)
    return d * d


def is_nan(x, name=None):
    x = F.convert_to_tensor(x)
    return F.not_equal(x, x)


def is_inf(x, name=None):
    return F.equal(F.abs(x), np.inf)


def is_finite(x, name=None):
    return F.logical_not(F.logical_or(is_nan(x), is_inf(x)))


def divide_no_nan(x, y, name=None):
    """x / y, and 0 where y is 0 (the gradient there is 0 too)."""
    y = F.convert_to_tensor(y)
    zero = F.equal(y, 0.0)
    return F.where(zero, F.zeros_like(y), F.divide(x, F.where(zero, F.ones_like(y), y)))


def xlogy(x, y, name=None):
    """x * log(y), and 0 where x is 0."""
    x = F.convert_to_tensor(x)
    safe = F.where(F.equal(x, 0.0), F.ones_like(y), y)
    return F.where(F.equal(x, 0.0), F.zeros_like(x), x * F.log(safe))


def multiply_no_nan(x, y, name=None):
    """x * y, and 0 where y is 0 (even where x is inf or nan)."""
    y = F.convert_to_tensor(y)
    prod = F.multiply(x, y)
    return F.where(F.equal(y, 0.0), F.zeros_like(prod), prod)


def log_sigmoid(x, name=None):
    return F.negative(N.softplus(F.negative(x)))


def reduce_logsumexp(input_tensor, axis=None, keepdims=False, name=None):
    """log(sum(exp(x))) computed stably (the maximum taken out first)."""
    m = F.stop_gradient(F.reduce_max(input_tensor, axis=axis, keepdims=True))
    m = F.where(is_finite(m), m, F.zeros_like(m))
    out = F.log(F.reduce_sum(F.exp(input_tensor - m), axis=axis, keepdims=True)) + m
    return out if keepdims else F.squeeze(out, axis=axis) if axis is not None else F.reshape(out, ())


def reduce_variance(input_tensor, axis=None, keepdims=False, name=None):
    mean = F.reduce_mean(input_tensor, axis=axis, keepdims=True)
    return F.reduce_mean(F.square(input_tensor - mean), axis=axis, keepdims=keepdims)


def reduce_std(input_tensor, axis=None, keepdims=False, name=None):
    return F.sqrt(reduce_variance(input_tensor, axis=axis, keepdims=keepdims))


def l2_normalize(x, axis=None, epsilon=1e-12, name=None, dim=None):
    """x / sqrt(max(sum(x**2, axis), epsilon))."""
    axis = dim if axis is None else axis
    sq = F.reduce_sum(F.square(x), axis=axis, keepdims=True)
    return x * F.rsqrt(F.maximum(sq, epsilon))


def matrix_transpose(a, name=None, conjugate=False):
    """Swap the last two axes."""
    rank = len(F.convert_to_tensor(a).shape)
    if rank < 2:
        raise ValueError(f"linalg.matrix_transpose: needs rank >= 2, got rank {rank}")
    return F.transpose(a, list(range(rank - 2)) + [rank - 1, rank - 2])


def matvec(a, b, transpose_a=False, name=None):
    """a @ b for a matrix (or batch of them) and a vector (or batch)."""
    a = matrix_transpose(a) if transpose_a else a
    return F.squeeze(F.matmul(a, F.expand_dims(b, -1)), axis=-1)


def norm(tensor, ord="euclidean", axis=None, keepdims=False, name=None):
    """The euclidean (Frobenius) norm, or ord 1 / inf of a vector."""
    if ord in ("euclidean", "fro", 2, 2.0):
        return F.sqrt(F.reduce_sum(F.square(tensor), axis=axis, keepdims=keepdims))
    if ord in (1, 1.0):
        return F.reduce_sum(F.abs(tensor), axis=axis, keepdims=keepdims)
    if ord == np.inf:
        return F.reduce_max(F.abs(tensor), axis=axis, keepdims=keepdims)
    raise ValueError(f"norm: ord {ord!r} is not supported (use 'euclidean', 1 or np.inf)")


def trace(x, name=None):
    """The sum of the diagonal of each (square) matrix in the last two axes."""
    x = F.convert_to_tensor(x)
    n = x.shape[-1]
    return F.reduce_sum(x * F.eye(n, dtype=x.dtype), axis=[-2, -1])


_MATH = ["abs", "add", "add_n", "argmax", "argmin", "ceil", "cos", "count_nonzero", "divide", "equal", "exp",
         "expm1", "floor", "floordiv", "floormod", "greater", "greater_equal", "less", "less_equal", "log",
         "log1p", "logical_and", "logical_not", "logical_or", "logical_xor", "maximum", "minimum", "mod",
         "multiply", "negative", "not_equal", "pow", "reduce_all", "reduce_any", "reduce_max", "reduce_mean",
         "reduce_min", "reduce_prod", "reduce_sum", "rsqrt", "sigmoid", "sign", "sin", "softplus", "sqrt",
         "square", "subtract", "tanh", "truediv"]
_COMPOSED = [reciprocal, squared_difference, is_nan, is_inf, is_finite, divide_no_nan, multiply_no_nan, xlogy,
             log_sigmoid, reduce_logsumexp, reduce_variance, reduce_std, l2_normalize]


def _module(name, doc, entries):
    m = types.ModuleType(f"flowjit.{name}", doc)
    for k, v in entries.items():
        setattr(m, k, v)
    m.__all__ = sorted(entries)
    return m


def build(names):
    """fj.math and fj.linalg from the names of the `fj` namespace (`names`), made once
    every op module has registered its ops (names a newer flowjit adds, such as
    count_nonzero, join when present)."""
    entries = {n: names[n] for n in _MATH if n in names}
    entries.update({f.__name__: f for f in _COMPOSED})
    entries.update(log_softmax=N.log_softmax, softmax=N.softmax)
    math = _module("math", "TF2's tf.math over flowjit's ops.", entries)
    linalg = _module("linalg", "TF2's tf.linalg over flowjit's ops.",
                     {"matmul": F.matmul, "eye": F.eye, "matrix_transpose": matrix_transpose, "matvec": matvec,
                      "norm": norm, "trace": trace, "l2_normalize": l2_normalize,
                      "adjoint": matrix_transpose})
    return math, linalg
