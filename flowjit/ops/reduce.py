"""Reductions (sum, prod, max, min over axes, keepdims) and arg-reductions."""
import numpy as np

from ..errors import ShapeError
from ..ir import scalar as S
from ..ir.registry import register
from .rules import fmt, nonzero, norm_axes, norm_axis, require


def reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _identity(kind, dtype):
    """The reduction's starting value (a Python number or bool)."""
    if kind == "sum":
        return 0
    if kind == "prod":
        return 1
    if dtype.is_floating:
        return float("-inf") if kind == "max" else float("inf")
    if dtype.is_bool:
        return kind == "min"
    info = np.iinfo(dtype.np)
    return int(info.min if kind == "max" else info.max)


def _update(kind, dtype, acc, v):
    """The accumulator after adding element v (scalar expressions, ir/scalar.py)."""
    if kind == "sum":
        return acc + v
    if kind == "prod":
        return acc * v
    better = S.gt(v, acc) if kind == "max" else S.lt(v, acc)
    if dtype.is_floating:   # NaN propagates, as in np.max / tf.reduce_max
        better = S.either(better, S.is_nan(v))
    return S.select(better, v, acc)


def _make(kind, np_fn, kinds):
    name = "reduce_" + kind

    def infer(shapes, dts, attrs):
        require(dts[0], kinds, name)
        axes = norm_axes(attrs["axes"], len(shapes[0]))
        attrs["axes"] = axes
        return reduced_shape(shapes[0], axes, attrs["keepdims"]), dts[0]

    def ref(a, attrs, shape, dtype):
        x = a[0]
        kw = {}
        if kind in ("max", "min") and x.dtype.kind == "f":
            kw["initial"] = -np.inf if kind == "max" else np.inf
        elif kind in ("max", "min"):
            info = np.iinfo(x.dtype) if x.dtype.kind in "iu" else None
            kw["initial"] = (info.min if kind == "max" else info.max) if info else (kind == "min")
        return np_fn(x, axis=attrs["axes"], keepdims=attrs["keepdims"], **kw)

    register(name, "reduce", infer, ref, emit={
        "kind": kind,
        "identity": lambda dtype: _identity(kind, dtype),
        "update": lambda dtype, acc, v: _update(kind, dtype, acc, v)})


_make("sum", np.sum, ("float", "int"))
_make("prod", np.prod, ("float", "int"))
_make("max", np.max, ("float", "int", "bool"))
_make("min", np.min, ("float", "int", "bool"))


# --- argmax / argmin: opaque ops (each backend lowers them over (outer, n, inner)) ---
def _arg_make(kind):
    name = "arg" + kind

    def infer(shapes, dts, attrs):
        require(dts[0], ("float", "int"), name)
        ax = norm_axis(attrs["axis"], len(shapes[0]))
        # an empty axis has no index to return (TF raises; the kernel would read x[o, 0, j])
        if not nonzero(shapes[0][ax]):
            raise ShapeError(f"cannot take {name} over axis {ax} of size 0 (input shape "
                             f"{fmt(shapes[0])})")
        attrs["axis"] = ax
        return tuple(d for i, d in enumerate(shapes[0]) if i != ax), attrs["output_type"]

    def ref(a, attrs, shape, dtype):
        fn = np.argmax if kind == "max" else np.argmin
        return fn(a[0], axis=attrs["axis"])

    register(name, "opaque", infer, ref)


_arg_make("max")
_arg_make("min")


def _grads():
    from .grads import api, defgrad

    def expand(F, g, x, axes, keepdims):
        if not keepdims:
            shape = [1 if i in axes else d for i, d in enumerate(x.shape)]
            g = F.reshape(g, shape)
        return g

    def sum_grad(ins, out, g, at):
        F = api()
        x = ins[0]
        return [F.broadcast_to(expand(F, g, x, at["axes"], at["keepdims"]), x.shape)]

    def minmax_grad(ins, out, g, at):
        # TF: the gradient is shared equally among the elements equal to the extremum
        F = api()
        x = ins[0]
        z = expand(F, out, x, at["axes"], at["keepdims"])
        mask = F.cast(F.equal(x, z), x.dtype)
        count = F.reduce_sum(mask, axis=at["axes"], keepdims=True)
        return [mask * expand(F, g, x, at["axes"], at["keepdims"]) / count]

    def prod_grad(ins, out, g, at):
        # d prod / d x_i = product of the other elements, exact with zeros: with no zero
        # it is prod / x_i; with one zero only that element gets the others' product
        F = api()
        x = ins[0]
        axes = at["axes"]
        is_zero = F.equal(x, 0.0)
        zeros = F.reduce_sum(F.cast(is_zero, x.dtype), axis=axes, keepdims=True)
        nonzero_prod = F.reduce_prod(F.where(is_zero, F.ones_like(x), x), axis=axes, keepdims=True)
        safe_x = F.where(is_zero, F.ones_like(x), x)
        others = F.where(zeros > 0.0,
                         F.where(F.logical_and(is_zero, F.equal(zeros, 1.0)), nonzero_prod + x * 0.0,
                                 F.zeros_like(x)),
                         nonzero_prod / safe_x)
        return [expand(F, g, x, axes, at["keepdims"]) * others]

    defgrad("reduce_sum", sum_grad)
    defgrad("reduce_max", minmax_grad)
    defgrad("reduce_min", minmax_grad)
    defgrad("reduce_prod", prod_grad)
    defgrad("argmax", lambda ins, out, g, at: [None])
    defgrad("argmin", lambda ins, out, g, at: [None])


_grads()
