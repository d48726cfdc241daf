"""Shared shape/dtype rules used by the op definitions."""
from ..errors import DTypeError, ShapeError
from ..ir.shapes import Sym, hint, is_one, unify_dims, same


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


def norm_axis(axis, rank, allow_end=False):
    n = rank + 1 if allow_end else rank
    if not isinstance(axis, int):
        raise TypeError(f"axis must be a Python int, got {axis!r}")
    if not -n <= axis < n:
        raise ShapeError(f"axis {axis} is out of range for rank {rank}")
    return axis % n if n else 0


def norm_axes(axis, rank):
    if axis is None:
        return tuple(range(rank))
    if isinstance(axis, int):
        axis = (axis,)
    out = sorted({norm_axis(int(a), rank) for a in axis})
    return tuple(out)
