"""Shared shape/dtype rules used by the op definitions."""
import operator

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir.shapes import Sym, hint, is_one, render, unify_dims, same


def fmt(shape):
    return "(" + ", ".join(repr(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def broadcast_shapes(*shapes):
    """NumPy broadcasting over static and symbolic dims (symbolic sizes unify with guards)."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(rank):
        res = 1
        for s in shapes:
            i = k - (rank - len(s))
            if i < 0:
                continue
            d = s[i]
            if isinstance(d, Sym) and d.hint == 1:
                # a size that is 1 in this call (x[1:] of 2 elements) broadcasts, so the
                # trace holds for that size only
                d = d.env.specialise(d, "a size-1 dim broadcast")
            if is_one(d):
                continue
            if is_one(res):
                res = d
            elif same(res, d):
                continue
            elif hint(res) != hint(d):
                raise ShapeError("shapes " + " and ".join(fmt(s) for s in shapes) +
                                 " are not broadcastable")
            else:
                res = unify_dims(res, d)
        out.append(res)
    return tuple(out)


def same_dtype(dtypes, opname=None):
    first = dtypes[0]
    for d in dtypes[1:]:
        if d is not first:
            raise DTypeError(f"mixed dtypes {', '.join(x.name for x in dtypes)}: "
                             f"cast one side with fj.cast")
    return first


def require(dtype, kinds, what):
    ok = ((("float" in kinds) and dtype.is_floating) or (("int" in kinds) and dtype.is_integer)
          or (("bool" in kinds) and dtype.is_bool))
    if not ok:
        raise DTypeError(f"{what} is not defined for dtype {dtype.name} (needs {'/'.join(kinds)})")


def as_int(v, what="axis"):
    """v as a Python int. Strict like TF: int() would also take 1.0, "1" and True;
    operator.index takes only integer types (int, NumPy integers, TF1 Dimensions)."""
    if not isinstance(v, (bool, np.bool_)):
        try:
            return operator.index(v)
        except TypeError:
            pass
    raise DTypeError(f"{what} must be an integer, got {v!r} ({type(v).__name__})")


def nonzero(d):
    """Whether dim d is not 0; for a symbolic d the answer becomes a guard (no
    specialisation), so a later call with size 0 traces again and raises there."""
    if not isinstance(d, Sym):
        return int(d) != 0
    ok = d.hint != 0
    expr = f"{render(d, d.env.src_expr)} != 0"
    d.env.add_guard(expr if ok else f"not ({expr})")
    return ok


def norm_axis(axis, rank, allow_end=False):
    n = rank + 1 if allow_end else rank
    axis = as_int(axis)
    if not -n <= axis < n:
        raise ShapeError(f"axis {axis} is out of range for rank {rank}")
    return axis % n if n else 0


def norm_axes(axis, rank):
    if axis is None:
        return tuple(range(rank))
    if not isinstance(axis, (list, tuple)):
        axis = (axis,)
    out = sorted({norm_axis(a, rank) for a in axis})
    return tuple(out)
