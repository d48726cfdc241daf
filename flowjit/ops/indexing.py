"""gather with index validation (an out-of-range index raises, never reads memory)."""
import numpy as np

from ..errors import DTypeError, InvalidArgumentError, OutOfRangeError
from ..ir.registry import register
from .rules import norm_axis


def _gather_infer(shapes, dts, attrs):
    p, i = shapes
    if not dts[1].is_integer:
        raise DTypeError(f"gather indices must be int32 or int64, got {dts[1].name}")
    ax = norm_axis(attrs["axis"], len(p))
    attrs["axis"] = ax
    return tuple(p[:ax]) + tuple(i) + tuple(p[ax + 1:]), dts[0]


def _gather_ref(arrs, attrs, shape, dtype):
    p, idx = arrs
    ax = attrs["axis"]
    n = p.shape[ax]
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        v = int(idx[bad].flat[0])
        raise OutOfRangeError(f"gather: index {v} is out of range [0, {n}) along axis {ax} "
                              f"of params with shape {p.shape}")
    return np.take(p, idx, axis=ax)



register("gather", "opaque", _gather_infer, _gather_ref, can_fail=True)


# --- a run-time check: values that must not be negative ------------------------------
# (an integer pow's exponent: TF raises "Integers to negative integer powers are not
# allowed"). The output is the input, so the consumer runs after the check.
def _nonneg_message(value, bound):
    return f"Integers to negative integer powers are not allowed (exponent {value})"


def _nonneg_ref(arrs, attrs, shape, dtype):
    x = arrs[0]
    if x.size and x.min() < 0:
        raise InvalidArgumentError(f"pow: {_nonneg_message(int(x.min()), 0)}")
    return x.copy()



register("pow_exponent_check", "opaque", lambda s, d, a: (s[0], d[0]), _nonneg_ref,
         runtime_error=_nonneg_message, can_fail=True)


# --- scatter-add: the gradient of gather --------------------------------------------
def _scatter_infer(shapes, dts, attrs):
    upd, idx = shapes
    return tuple(attrs["shape"]), dts[0]


def _scatter_ref(arrs, attrs, shape, dtype):
    upd, idx = arrs
    ax = attrs["axis"]
    out = np.zeros(tuple(int(s) for s in shape), dtype.np)
    n = out.shape[ax]
    if ((idx < 0) | (idx >= n)).any():
        raise OutOfRangeError(f"scatter_add: an index is out of range [0, {n})")
    outer = int(np.prod(out.shape[:ax], dtype=np.int64))
    inner = int(np.prod(out.shape[ax + 1:], dtype=np.int64))
    o3 = out.reshape(outer, n, inner)
    np.add.at(o3, (slice(None), idx.reshape(-1), slice(None)), upd.reshape(outer, idx.size, inner))
    return out



register("scatter_add", "opaque", _scatter_infer, _scatter_ref, can_fail=True)


def _grads():
    from .grads import defgrad
    from .grads import apply_op

    def gather_grad(ins, out, g, at):
        p, idx = ins
        return [apply_op("scatter_add", [g, idx], {"axis": at["axis"], "shape": tuple(p.shape)}), None]
    defgrad("gather", gather_grad)
    defgrad("pow_exponent_check", lambda ins, out, g, at: [g])
    defgrad("scatter_add", lambda ins, out, g, at: [
        apply_op("gather", [g, ins[1]], {"axis": at["axis"]}), None])


_grads()
