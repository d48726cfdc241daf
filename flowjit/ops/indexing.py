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


# Every index is checked before any is used; the first bad one is reported via `err`
# (the executor turns it into an exception naming the op) and nothing is read or written.
_CHECK = """    for k in range(idx.shape[0]):
        v = idx[k]
        if v < 0 or v >= n:
            if err[0] == 0:
                err[0] = code
                err[1] = v
                err[2] = n
            return
"""


def _gather_source(fname, dtype):
    # params viewed as (outer, n, inner), indices flat, out as (outer, m, inner)
    return f'''
def {fname}(p, idx, out, err, code):
    n = p.shape[1]
{_CHECK}    for o in range(p.shape[0]):
        for k in range(idx.shape[0]):
            v = idx[k]
            for j in range(p.shape[2]):
                out[o, k, j] = p[o, v, j]
'''


register("gather", "opaque", _gather_infer, _gather_ref,
         lower={"kind": "gather", "kernel": _gather_source})


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


def _nonneg_source(fname, dtype):
    return f'''
def {fname}(x, out, err, code):
    for k in range(x.shape[0]):
        if x[k] < 0:
            if err[0] == 0:
                err[0] = code
                err[1] = x[k]
                err[2] = 0
            return
    for k in range(x.shape[0]):
        out[k] = x[k]
'''


register("pow_exponent_check", "opaque", lambda s, d, a: (s[0], d[0]), _nonneg_ref,
         lower={"kind": "check", "kernel": _nonneg_source}, runtime_error=_nonneg_message)


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


def _scatter_source(fname, dtype):
    return f'''
def {fname}(upd, idx, out, err, code):
    n = out.shape[1]
    for o in range(out.shape[0]):
        for k in range(n):
            for j in range(out.shape[2]):
                out[o, k, j] = 0
{_CHECK}    for o in range(out.shape[0]):
        for k in range(idx.shape[0]):
            v = idx[k]
            for j in range(out.shape[2]):
                out[o, v, j] += upd[o, k, j]
'''


register("scatter_add", "opaque", _scatter_infer, _scatter_ref,
         lower={"kind": "scatter", "kernel": _scatter_source})


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
