"""matmul (batched, with transposes folded in): BLAS on the CPU."""
import numpy as np

from ..errors import ShapeError
from ..ir.registry import register
from ..ir.shapes import hint, same, unify_dims
from .rules import broadcast_shapes, fmt, require, same_dtype


def _matmul_infer(shapes, dts, attrs):
    a, b = shapes
    dt = same_dtype(dts)
    require(dt, ("float", "int"), "matmul")
    if len(a) < 2 or len(b) < 2:
        raise ShapeError(f"matmul needs inputs of rank >= 2, got {fmt(a)} and {fmt(b)}")
    m, ka = (a[-1], a[-2]) if attrs["transpose_a"] else (a[-2], a[-1])
    kb, n = (b[-1], b[-2]) if attrs["transpose_b"] else (b[-2], b[-1])
    if not same(ka, kb):
        if hint(ka) != hint(kb):
            raise ShapeError(f"inner dimensions differ: {fmt(a)} @ {fmt(b)}"
                             + (" (transposed)" if attrs["transpose_a"] or attrs["transpose_b"] else ""))
        unify_dims(ka, kb)
    batch = broadcast_shapes(a[:-2], b[:-2])
    return tuple(batch) + (m, n), dt


def _matmul_ref(arrs, attrs, shape, dtype):
    a, b = arrs
    if attrs["transpose_a"]:
        a = np.swapaxes(a, -1, -2)
    if attrs["transpose_b"]:
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


register("matmul", "matmul", _matmul_infer, _matmul_ref)


def _grads():
    from .grads import api, defgrad, unbroadcast

    def matmul_grad(ins, out, g, at):
        F = api()
        a, b = ins
        ta, tb = at["transpose_a"], at["transpose_b"]
        # C = op(A) op(B): dA = g op(B)^T (transposed back if A was), dB likewise
        if not ta:
            da = F.matmul(g, b, transpose_b=not tb)
        else:
            da = F.matmul(b, g, transpose_a=tb, transpose_b=True)
        if not tb:
            db = F.matmul(a, g, transpose_a=not ta)
        else:
            db = F.matmul(g, a, transpose_a=True, transpose_b=ta)
        return [unbroadcast(da, a.shape) if len(a.shape) != len(da.shape) or len(a.shape) > 2 else da,
                unbroadcast(db, b.shape) if len(b.shape) != len(db.shape) or len(b.shape) > 2 else db]
    defgrad("matmul", matmul_grad)


_grads()
