"""The core namespace: creation, math, reductions, shape ops and the Python operators.

Each function converts its arguments with TF's rules (a Python scalar takes the
tensor's dtype; two tensors of different dtypes are an error that says to cast) and
calls `apply_op`, or composes other functions here when the composition still fuses.
"""
import builtins
import math

import numpy as np

from .. import dtypes as D
from ..errors import DTypeError, InvalidArgumentError, OutOfRangeError, ShapeError, TracerError
from ..ir.shapes import Sym, hint, is_one, prod as _prod
from ..ops.rules import as_int
from ..ir.registry import REGISTRY
from .tensor import Tensor, apply_op, convert, current_trace, to_numpy, user_src

_pyrange = builtins.range


def _is_tensor(x):
    return isinstance(x, Tensor) or hasattr(x, "_flowjit_tensor")


def _t(x):
    return x._flowjit_tensor() if hasattr(x, "_flowjit_tensor") else x


def _static_value(t):
    """The value of an eager tensor or of a traced constant; None when it is only known
    when the compiled function runs."""
    if not t.is_traced:
        return t.numpy()
    node = t._node
    return t._graph.consts[node.attrs["index"]] if node.op == "const" else None


def _known(v, op, what):
    """A tensor or array argument that must be known now, as a NumPy value."""
    if isinstance(v, np.ndarray):
        return v
    arr = _static_value(_t(v))
    if arr is None:
        raise TracerError(f"{op} (at {user_src()}): {what} must be known while tracing, got a "
                          f"traced tensor; pass Python ints")
    return arr


def _int(v, op, what="axis"):
    """One integer argument (an axis, a count), strictly: a Python or NumPy integer or a
    0-d integer tensor. int() would take 1.0, "1" and True, which TF rejects."""
    if _is_tensor(v) or isinstance(v, np.ndarray):
        arr = _known(v, op, what)
        v = arr[()] if arr.ndim == 0 else arr
    try:
        return as_int(v, what)
    except DTypeError as e:
        raise DTypeError(f"{op} (at {user_src()}): {e}") from None


def _ints(v, op, what):
    """A list of integer arguments (axes, a permutation, paddings) as a tuple of ints."""
    if _is_tensor(v) or isinstance(v, np.ndarray):
        v = _known(v, op, what).tolist()
    if not isinstance(v, (list, tuple)):
        raise DTypeError(f"{op} (at {user_src()}): {what} must be a list of integers, got {v!r}")
    return tuple(_int(a, op, f"entry of {what} {list(v)}") for a in v)


def _axis(axis, rank, op, shape, allow_end=False):
    """An axis in [-n, n) with n = rank (+1 where a new axis may go at the end), as >= 0."""
    a = _int(axis, op)
    n = rank + 1 if allow_end else rank
    if not -n <= a < n:
        raise ShapeError(f"{op} (at {user_src()}): axis {a} is out of range for rank {rank} "
                         f"(shape {tuple(shape)}); it must be in [{-n}, {n})")
    return a % n


def _check_size(op, shape, dtype, detail):
    """Refuse a result too large to exist before NumPy or a kernel tries to allocate it:
    more elements than an int64 counts, or more than 2**62 bytes."""
    n = math.prod(hint(d) for d in shape)
    nbytes = n * D.as_dtype(dtype).np.itemsize
    if n > 2**63 - 1 or nbytes > 2**62:
        raise InvalidArgumentError(f"{op} (at {user_src()}): {detail}: the result of shape "
                                   f"{tuple(hint(d) for d in shape)} would have {n} elements "
                                   f"({nbytes} bytes), too many to allocate")


def _allocating(op, shape, dtype, detail, fn):
    """fn() (which builds a result of `shape`), with a MemoryError that names the op."""
    _check_size(op, shape, dtype, detail)
    try:
        return fn()
    except MemoryError:
        gib = math.prod(hint(d) for d in shape) * D.as_dtype(dtype).np.itemsize / 2**30
        raise MemoryError(f"{op} (at {user_src()}): cannot allocate {gib:.1f} GiB for the "
                          f"result of shape {tuple(hint(d) for d in shape)} ({detail})") from None


def _pair(x, y, name):
    """Convert two operands of a binary op with TF's dtype rules."""
    xt, yt = _is_tensor(x), _is_tensor(y)
    try:
        if xt and yt:
            x, y = _t(x), _t(y)
            if x.dtype is not y.dtype:
                if x._weak is not False and y._weak is False and y.dtype.is_floating:
                    x = cast(_exact(x), y.dtype)
                elif y._weak is not False and x._weak is False and x.dtype.is_floating:
                    y = cast(_exact(y), x.dtype)
                else:
                    raise DTypeError(f"{name}: cannot mix dtypes {x.dtype.name} and {y.dtype.name} "
                                     f"(shapes {tuple(x.shape)} and {tuple(y.shape)}); "
                                     f"use fj.cast to convert one of them")
            return x, y
        if xt:
            x = _t(x)
            return x, convert(y, x.dtype)
        if yt:
            y = _t(y)
            return convert(x, y.dtype), y
        x = convert(x)
        return x, convert(y, x.dtype)
    except DTypeError as e:
        if str(e).startswith(name):
            raise DTypeError(f"{e} (at {user_src()})") from None
        raise DTypeError(f"{name} (at {user_src()}): {e}") from None


def _exact(t):
    """The most exact tensor behind a weakly typed one (a float64 Python float)."""
    return t._weak if isinstance(t._weak, Tensor) else t


def _weak_or_literal(v):
    return (isinstance(v, Tensor) and v._weak is not False) or \
        (isinstance(v, (int, float)) and not isinstance(v, bool))


def _binary(name, check=None):
    def f(x, y, name=None):
        a, b = _pair(x, y, opname)
        if check is not None:
            a, b = check(a, b) or (a, b)
        out = apply_op(opname, [a, b])
        # a Python float argument combined with Python scalars is still "weak"
        if _weak_or_literal(x) and _weak_or_literal(y) and out.dtype.is_floating:
            out._weak = True
        return out
    opname = name
    f.__name__ = name
    return f


def _unary(name):
    def f(x, name=None):
        x = convert(x)
        out = apply_op(opname, [x])
        if x._weak is not False and out.dtype.is_floating:
            out._weak = True
        return out
    opname = name
    f.__name__ = name
    return f


add = _binary("add")
subtract = _binary("subtract")
multiply = _binary("multiply")
divide = _binary("divide")
truediv = divide
floordiv = _binary("floordiv")
floormod = _binary("floormod")
mod = floormod


def _int_pow_check(x, y):
    """TF raises for an integer base with a negative exponent; check it wherever the
    exponent is known now (eagerly, or a constant while tracing)."""
    if not x.dtype.is_integer:
        return
    v = _static_value(y)
    if v is None:                     # known only when the step runs: checked then
        return x, apply_op("pow_exponent_check", [y])
    if v.size and v.min() < 0:
        raise InvalidArgumentError(f"pow (at {user_src()}): Integers to negative integer powers "
                                   f"are not allowed (exponent {v.min()}; base "
                                   f"{x.dtype.name}{tuple(x.shape)}, exponent "
                                   f"{y.dtype.name}{tuple(y.shape)})")


pow = _binary("pow", _int_pow_check)
maximum = _binary("maximum")
minimum = _binary("minimum")
equal = _binary("equal")
not_equal = _binary("not_equal")
less = _binary("less")
less_equal = _binary("less_equal")
greater = _binary("greater")
greater_equal = _binary("greater_equal")
logical_and = _binary("logical_and")
logical_or = _binary("logical_or")
logical_xor = _binary("logical_xor")

negative = _unary("negative")
abs = _unary("abs")
sign = _unary("sign")
square = _unary("square")
sqrt = _unary("sqrt")
rsqrt = _unary("rsqrt")
exp = _unary("exp")
expm1 = _unary("expm1")
log = _unary("log")
log1p = _unary("log1p")
tanh = _unary("tanh")
sigmoid = _unary("sigmoid")
sin = _unary("sin")
cos = _unary("cos")
floor = _unary("floor")
ceil = _unary("ceil")
logical_not = _unary("logical_not")
stop_gradient = _unary("stop_gradient")


def identity(x, name=None):
    return apply_op("identity", [convert(x)])


def cast(x, dtype, name=None):
    x = convert(x) if not _is_tensor(x) else _t(x)
    dtype = D.as_dtype(dtype)
    if x.dtype is dtype:
        return x
    return apply_op("cast", [x], {"dtype": dtype})


def where(condition, x=None, y=None, name=None):
    if x is None or y is None:
        raise ValueError("where(condition) without x and y returns data-dependent shapes, "
                         "which flowjit does not support; pass x and y")
    c = convert(condition, D.bool_) if not _is_tensor(condition) else _t(condition)
    a, b = _pair(x, y, "where")
    return apply_op("where", [c, a, b])


def clip_by_value(t, clip_value_min, clip_value_max, name=None):
    return minimum(maximum(t, clip_value_min), clip_value_max)


def global_norm(t_list, name=None):
    """sqrt of the sum of squares of every element of every tensor (None entries skipped)."""
    parts = [reduce_sum(square(convert(t) if not _is_tensor(t) else _t(t))) for t in t_list if t is not None]
    if not parts:
        return constant(0.0)
    return sqrt(add_n(parts))


def clip_by_global_norm(t_list, clip_norm, use_norm=None, name=None):
    """(tensors scaled by clip_norm / max(global norm, clip_norm), the global norm), as TF:
    the gradients keep their direction and their joint norm is at most clip_norm."""
    norm = global_norm(t_list) if use_norm is None else use_norm
    scale = clip_norm / maximum(norm, clip_norm)
    return [None if t is None else t * cast(scale, _t(t).dtype if _is_tensor(t) else D.float32)
            for t in t_list], norm


def add_n(inputs, name=None):
    if not inputs:
        raise ValueError("add_n needs at least one input")
    out = inputs[0]
    for x in inputs[1:]:
        out = add(out, x)
    return _t(out) if _is_tensor(out) else convert(out)


# --- creation ----------------------------------------------------------------------
def _dims(shape, what, arg="shape", allow_unknown=False):
    """A shape argument as a tuple of ints and symbolic sizes (`Sym`, e.g. x.shape[0]).
    Entries must be integers >= 0 (reshape also takes one -1); 2.0 is refused as TF does."""
    if _is_tensor(shape) or isinstance(shape, np.ndarray):
        t = _t(shape) if _is_tensor(shape) else None
        if t is not None and _static_value(t) is None:
            sizes = _size_values(t)
            if sizes is None:
                raise TracerError(f"{what} (at {user_src()}): the {arg} given as a traced tensor "
                                  f"depends on data; a shape may be computed from sizes only "
                                  f"(fj.shape(x), x.shape[0], Python ints and +, -, *, // of them)")
            shape = sizes.tolist()
        else:
            shape = _known(shape, what, arg).tolist()
    if not isinstance(shape, (list, tuple)):     # one dim (an int, x.shape[0], ...)
        shape = (shape,)
    entry = f"entry of {arg} {list(shape)}"
    out = tuple(_dim_entry(d, what, arg, entry) for d in shape)
    low = -1 if allow_unknown else 0
    if any(not isinstance(d, Sym) and d < low for d in out):
        raise ShapeError(f"{what} (at {user_src()}): {arg} {list(out)} has a negative entry; "
                         f"entries must be >= 0" + (" (or one -1)" if allow_unknown else ""))
    return out


def _dim_entry(d, what, arg, entry):
    """One entry of a shape argument: an int, a symbolic size, or a 0-d tensor (under
    jit one computed from sizes: `fj.shape(x)[0]`)."""
    if _is_tensor(d) and _static_value(_t(d)) is None:
        v = _size_values(_t(d))
        if v is None or v.ndim != 0:
            raise TracerError(f"{what} (at {user_src()}): an {entry} depends on data (or is not a "
                              f"scalar); a shape may be computed from sizes only (fj.shape(x), "
                              f"x.shape[0], Python ints and +, -, *, // of them)")
        d = v[()]
    if isinstance(d, Sym):
        return d.norm()
    return _int(d, what, entry)


def _size_values(t):
    """The value of a traced integer tensor made from sizes alone (`fj.shape(x)`,
    `fj.shape(x)[0]`, stacks of those and Python ints, +, -, *, // of them), as a NumPy
    object array of ints and symbolic sizes; None when it depends on data. What a shape
    given as a tensor means under jit: the sizes of the call (symbols, so a new batch
    size reuses the compiled code)."""
    if not t.dtype.is_integer:
        return None
    g = t._graph
    memo = {}

    def static(shape):
        return all(not isinstance(d, Sym) for d in shape)

    def ev(nid):
        if nid in memo:
            return memo[nid]
        n = g.nodes[nid]
        v = None
        if not n.dtype.is_integer:
            pass
        elif n.op == "const":
            v = g.consts[n.attrs["index"]].astype(object)
        elif n.op == "sym_scalar":
            v = _objects(n.attrs["expr"])
        elif n.op in ("identity", "stop_gradient", "cast"):
            v = ev(n.inputs[0])
        elif n.op in ("reshape", "broadcast_to") and static(n.shape):
            a = ev(n.inputs[0])
            if a is not None:
                shp = tuple(int(d) for d in n.shape)
                v = a.reshape(shp) if n.op == "reshape" else np.broadcast_to(a, shp)
        elif n.op == "concat":
            parts = [ev(i) for i in n.inputs]
            if all(p is not None for p in parts):
                v = np.concatenate(parts, axis=n.attrs["axis"] % len(n.shape))
        elif n.op == "slice":
            a = ev(n.inputs[0])
            if a is not None:
                idx = []
                for e in n.attrs["spec"]:
                    if e[0] == "index":
                        idx.append(int(e[1]))
                    else:
                        start, step, size = (int(x) for x in e[1:4])
                        stop = start + step * size
                        idx.append(slice(start, stop if stop >= 0 else None, step))
                v = _objects(a[tuple(idx)])
        elif n.op == "gather":
            a, i = ev(n.inputs[0]), ev(n.inputs[1])
            if a is not None and i is not None and all(not isinstance(x, Sym) for x in i.flat):
                v = np.take(a, i.astype(np.int64), axis=n.attrs["axis"])
        elif n.op in ("add", "subtract", "multiply", "floordiv", "negative"):
            args = [ev(i) for i in n.inputs]
            if all(a is not None for a in args):
                fn = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply,
                      "floordiv": np.floor_divide, "negative": np.negative}[n.op]
                try:
                    v = _objects(fn(*args))
                except TypeError:           # (an int // a size: not a polynomial)
                    v = None
        memo[nid] = v
        return v
    return ev(t._node.id)


def _objects(x):
    """x (an array, a size or an int) as a NumPy object array."""
    if isinstance(x, np.ndarray):
        return x.astype(object)
    out = np.empty((), object)
    out[()] = x
    return out


def constant(value, dtype=None, shape=None, name=None):
    arr = to_numpy(value, dtype)
    if arr is value or (isinstance(value, np.ndarray) and np.may_share_memory(arr, value)):
        arr = arr.copy()          # a tensor is immutable: the caller may change its array
    if shape is not None:
        shape = _dims(shape, "constant")
        if arr.size == 1:
            arr = np.full(shape, arr.reshape(()), arr.dtype)
        elif arr.size == int(np.prod(shape)):
            arr = arr.reshape(shape)
        else:
            raise ShapeError(f"constant (at {user_src()}): {arr.size} values do not fill shape {shape}")
    t = Tensor(value=arr)
    if current_trace() is not None:
        return _as_traced(t)
    return t


def _as_traced(t):
    from .tensor import node_of
    ctx = current_trace()
    node = node_of(t, ctx)
    return Tensor(node=node, graph=ctx.graph)


def convert_to_tensor(value, dtype=None, name=None):
    if _is_tensor(value):
        t = _t(value)
        if dtype is not None and D.as_dtype(dtype) is not t.dtype:
            raise DTypeError(f"convert_to_tensor (at {user_src()}): tensor has dtype {t.dtype.name}, "
                             f"requested {D.as_dtype(dtype).name}")
        return t
    return constant(value, dtype)


def fill(dims, value, name=None):
    return _broadcast(convert(value), dims, "fill")


def zeros(shape, dtype=D.float32, name=None):
    return _broadcast(constant(0, dtype), shape, "zeros")


def ones(shape, dtype=D.float32, name=None):
    return _broadcast(constant(1, dtype), shape, "ones")


def zeros_like(x, dtype=None, name=None):
    x = convert(x) if not _is_tensor(x) else _t(x)
    return zeros(x.shape, dtype or x.dtype)


def ones_like(x, dtype=None, name=None):
    x = convert(x) if not _is_tensor(x) else _t(x)
    return ones(x.shape, dtype or x.dtype)


def broadcast_to(x, shape, name=None):
    return _broadcast(x, shape, "broadcast_to")


def _broadcast(x, shape, op):
    x = convert(x) if not _is_tensor(x) else _t(x)
    shape = _dims(shape, op)
    return _allocating(op, shape, x.dtype, f"shape {list(shape)}",
                       lambda: apply_op("broadcast_to", [x], {"shape": shape}))


def _iota(shape, axis, dtype):
    return apply_op("iota", [], {"shape": tuple(shape), "axis": axis, "dtype": D.as_dtype(dtype)})


def range(start, limit=None, delta=1, dtype=None, name=None):
    if limit is None:
        start, limit = 0, start
    vals = [start, limit, delta]
    if any(_is_tensor(v) for v in vals):
        vals = [int(_t(v)) if _is_tensor(v) else v for v in vals]
        start, limit, delta = vals
    if dtype is None:
        dtype = D.float32 if any(isinstance(v, float) for v in (start, limit, delta)) else D.int32
    dtype = D.as_dtype(dtype)
    if delta == 0:
        raise ValueError(f"range (at {user_src()}): delta must not be 0")
    n = builtins.max(0, int(np.ceil((limit - start) / delta)))
    r = _iota((n,), 0, dtype)
    if delta != 1:
        r = multiply(r, delta)
    if start != 0:
        r = add(r, start)
    return r


def eye(num_rows, num_columns=None, batch_shape=None, dtype=D.float32, name=None):
    num_columns = num_rows if num_columns is None else num_columns
    shape = _dims((num_rows, num_columns), "eye", "(num_rows, num_columns)")
    _check_size("eye", shape, dtype, f"num_rows {num_rows}, num_columns {num_columns}")
    return cast(equal(_iota(shape, 0, D.int32), _iota(shape, 1, D.int32)), dtype)


# --- reductions ----------------------------------------------------------------------
def _axes(axis, op):
    """A reduction's axis: None, one integer, or a list / 1-D tensor of integers."""
    if axis is None:
        return None
    if _is_tensor(axis) or isinstance(axis, np.ndarray):
        axis = _known(axis, op, "axis").tolist()
    if isinstance(axis, (list, tuple)):
        return _ints(axis, op, "axis")
    return _int(axis, op)


def _reduce(kind):
    def f(input_tensor, axis=None, keepdims=False, name=None):
        x = convert(input_tensor) if not _is_tensor(input_tensor) else _t(input_tensor)
        if x.dtype.is_bool and kind in ("sum", "prod"):
            raise DTypeError(f"reduce_{kind} (at {user_src()}): not defined for bool; cast first")
        return apply_op("reduce_" + kind, [x], {"axes": _axes(axis, "reduce_" + kind),
                                                "keepdims": bool(keepdims)})
    f.__name__ = "reduce_" + kind
    return f


reduce_sum = _reduce("sum")
reduce_prod = _reduce("prod")
reduce_max = _reduce("max")
reduce_min = _reduce("min")


def reduce_any(input_tensor, axis=None, keepdims=False, name=None):
    return reduce_max(input_tensor, axis, keepdims)


def reduce_all(input_tensor, axis=None, keepdims=False, name=None):
    return reduce_min(input_tensor, axis, keepdims)


def _count(x, axis, op="reduce_mean"):
    """How many elements a reduction over `axis` combines (errors name `op`)."""
    rank = len(x.shape)
    if axis is None:
        axes = _pyrange(rank)
    else:
        a = _axes(axis, op)
        axes = [_axis(ax, rank, op, x.shape) for ax in ([a] if isinstance(a, int) else a)]
    return _prod([x.shape[a] for a in set(axes)])


def size_as_tensor(n, dtype):
    if isinstance(n, Sym):
        n = n.norm()
    if isinstance(n, Sym):
        return apply_op("sym_scalar", [], {"expr": n, "dtype": D.as_dtype(dtype)})
    return constant(int(n), dtype)


def count_nonzero(input=None, axis=None, keepdims=False, dtype=D.int64, name=None, input_tensor=None):
    """The number of non-zero (for bool: True) elements over `axis` (all by default), as
    TF's tf.math.count_nonzero: counted in int64, returned as `dtype`."""
    if input is None:
        input = input_tensor
    x = convert(input) if not _is_tensor(input) else _t(input)
    nz = x if x.dtype.is_bool else not_equal(x, 0)
    n = reduce_sum(cast(nz, D.int64), axis, bool(keepdims))
    return cast(n, dtype)


def reduce_mean(input_tensor, axis=None, keepdims=False, name=None):
    x = convert(input_tensor) if not _is_tensor(input_tensor) else _t(input_tensor)
    n = _count(x, axis)     # first: it checks the axis and names reduce_mean
    s = reduce_sum(x, axis, keepdims)
    if x.dtype.is_integer:     # TF: integer mean is the truncated quotient
        return floordiv(s, size_as_tensor(n, x.dtype))
    return divide(s, size_as_tensor(n, x.dtype))


def _arg(kind):
    def f(input, axis=None, output_type=D.int64, name=None):
        x = convert(input) if not _is_tensor(input) else _t(input)
        ax = 0 if axis is None else _int(axis, "arg" + kind)
        return apply_op("arg" + kind, [x], {"axis": ax, "output_type": D.as_dtype(output_type)})
    f.__name__ = "arg" + kind
    return f


argmax = _arg("max")
argmin = _arg("min")


# --- shapes ----------------------------------------------------------------------------
def shape(input, out_type=D.int32, name=None):
    x = convert(input) if not _is_tensor(input) else _t(input)
    if not x.shape:
        return constant(np.zeros(0, np.int32), out_type)
    return stack([size_as_tensor(d, out_type) for d in x.shape])


def size(input, out_type=D.int32, name=None):
    x = convert(input) if not _is_tensor(input) else _t(input)
    return size_as_tensor(_prod(x.shape), out_type)


def rank(input, name=None):
    x = convert(input) if not _is_tensor(input) else _t(input)
    return constant(len(x.shape), D.int32)


def reshape(tensor, shape, name=None):
    x = convert(tensor) if not _is_tensor(tensor) else _t(tensor)
    return apply_op("reshape", [x], {"shape": _dims(shape, "reshape", allow_unknown=True)})


def expand_dims(input, axis, name=None):
    x = convert(input) if not _is_tensor(input) else _t(input)
    axis = _axis(axis, len(x.shape), "expand_dims", x.shape, allow_end=True)
    s = list(x.shape)
    s.insert(axis, 1)
    return reshape(x, s)


def squeeze(input, axis=None, name=None):
    x = convert(input) if not _is_tensor(input) else _t(input)
    r = len(x.shape)
    if axis is None:
        keep = [d for d in x.shape if not is_one(d)]
    else:
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        axes = {_axis(a, r, "squeeze", x.shape) for a in axes}
        for a in axes:
            if not is_one(x.shape[a]):
                raise ShapeError(f"squeeze (at {user_src()}): dimension {a} of shape "
                                 f"{tuple(x.shape)} is not 1")
        keep = [d for i, d in enumerate(x.shape) if i not in axes]
    return reshape(x, keep)


def transpose(a, perm=None, conjugate=False, name=None):
    x = convert(a) if not _is_tensor(a) else _t(a)
    return apply_op("transpose", [x], {"perm": None if perm is None else _ints(perm, "transpose", "perm")})


def matmul(a, b, transpose_a=False, transpose_b=False, name=None):
    x, y = _pair(a, b, "matmul")
    if len(x.shape) > 2 or len(y.shape) > 2:
        # batch dims: broadcast both to the common batch shape unless one side is 2-D
        from ..ops.rules import broadcast_shapes
        if len(x.shape) >= 2 and len(y.shape) >= 2:
            try:
                bs = broadcast_shapes(x.shape[:-2], y.shape[:-2])
            except ShapeError:
                bs = None
            if bs is not None:
                for side in (0, 1):
                    t = (x, y)[side]
                    tb = t.shape[:-2]
                    full = len(tb) == len(bs) and all(not is_one(d) or is_one(e) for d, e in zip(tb, bs))
                    if len(t.shape) > 2 and not full:
                        t = broadcast_to(t, tuple(bs) + tuple(t.shape[-2:]))
                    elif len(t.shape) == 2:
                        pass
                    if side == 0:
                        x = t
                    else:
                        y = t
    return apply_op("matmul", [x, y], {"transpose_a": bool(transpose_a), "transpose_b": bool(transpose_b)})


def concat(values, axis, name=None):
    ts = list(values)
    if not ts:
        raise ValueError("concat needs at least one tensor")
    first = next((_t(v) for v in ts if _is_tensor(v)), None)
    dt = first.dtype if first is not None else None
    ts = [_t(v) if _is_tensor(v) else convert(v, dt) for v in ts]
    if len(ts) == 1:
        return ts[0]
    return apply_op("concat", ts, {"axis": _int(axis, "concat")})


def stack(values, axis=0, name=None):
    ts = [_t(v) if _is_tensor(v) else convert(v) for v in values]
    if not ts:
        raise ValueError("stack needs at least one tensor")
    axis = _axis(axis, len(ts[0].shape), "stack", ts[0].shape, allow_end=True)
    return concat([expand_dims(t, axis) for t in ts], axis)


def unstack(value, num=None, axis=0, name=None):
    x = convert(value) if not _is_tensor(value) else _t(value)
    axis = _axis(axis, len(x.shape), "unstack", x.shape)
    n = int(x.shape[axis])
    return [squeeze(slice_axis(x, axis, i, 1), axis) for i in _pyrange(n)]


def slice_axis(x, axis, start, size):
    spec = []
    for k, d in enumerate(x.shape):
        spec.append(("range", start, 1, size) if k == axis else ("range", 0, 1, d))
    return apply_op("slice", [x], {"spec": tuple(spec)})


def split(value, num_or_size_splits, axis=0, num=None, name=None):
    x = convert(value) if not _is_tensor(value) else _t(value)
    axis = _axis(axis, len(x.shape), "split", x.shape)
    n = x.shape[axis]
    spec = num_or_size_splits
    if _is_tensor(spec) or isinstance(spec, np.ndarray):
        spec = _known(spec, "split", "num_or_size_splits").tolist()
    if not isinstance(spec, (list, tuple)):
        k = _int(spec, "split", "num_or_size_splits")
        if k < 1:
            raise InvalidArgumentError(f"split (at {user_src()}): num_or_size_splits must be >= 1, "
                                       f"got {k} (splitting dimension {axis} of shape "
                                       f"{tuple(x.shape)})")
        size_ = n // k if hint(n) % k == 0 else None      # symbolic: exact or specialised
        # size comparisons with a symbolic dim become guards: the trace is only reused
        # for inputs where these sizes still fit
        if size_ is None or size_ * k != n:
            raise ShapeError(f"split (at {user_src()}): dimension {axis} of size {hint(n)} does not "
                             f"divide into {k} equal parts")
        sizes = [size_] * k
    else:
        # a symbolic size is fixed to its value here, as before (int() specialises it)
        sizes = [int(s) if isinstance(s, Sym) else _int(s, "split", "size") for s in spec]
        if sizes.count(-1) > 1 or builtins.min(sizes, default=0) < -1:
            raise InvalidArgumentError(f"split (at {user_src()}): sizes {sizes} must be >= 0, "
                                       f"with at most one -1 (splitting dimension {axis} of "
                                       f"shape {tuple(x.shape)})")
        if -1 in sizes:
            rest = n - builtins.sum(s for s in sizes if s != -1)
            if rest < 0:
                raise ShapeError(f"split (at {user_src()}): sizes {sizes} add up to more than "
                                 f"dimension {axis} of size {hint(n)}")
            sizes[sizes.index(-1)] = rest
        if builtins.sum(sizes) != n:
            raise ShapeError(f"split (at {user_src()}): sizes {sizes} do not add up to {hint(n)}")
    out, off = [], 0
    for s in sizes:
        out.append(slice_axis(x, axis, off, s))
        off = off + s
    return out


def tile(input, multiples, name=None):
    x = convert(input) if not _is_tensor(input) else _t(input)
    m = list(_dims(multiples, "tile", "multiples"))
    if len(m) != len(x.shape):
        raise ShapeError(f"tile (at {user_src()}): multiples {m} must have one entry per dim of "
                         f"{tuple(x.shape)}")
    inter, big, final = [], [], []
    for k, d in zip(m, x.shape):
        inter += [1, d]
        big += [k, d]
        final.append(d * k)
    return _allocating("tile", final, x.dtype, f"multiples {m} of input shape {tuple(x.shape)}",
                       lambda: reshape(broadcast_to(reshape(x, inter), big), final))


def pad(tensor, paddings, mode="CONSTANT", constant_values=0, name=None):
    x = convert(tensor) if not _is_tensor(tensor) else _t(tensor)
    mode = str(mode).upper()
    p = paddings
    if _is_tensor(p) or isinstance(p, np.ndarray):
        p = _known(p, "pad", "paddings").tolist()
    if not isinstance(p, (list, tuple)):
        raise DTypeError(f"pad (at {user_src()}): paddings must be a list of [before, after] "
                         f"pairs, got {paddings!r}")
    p = tuple(_ints(pair, "pad", "paddings") for pair in p)
    if any(len(pair) != 2 for pair in p) or len(p) != len(x.shape):
        raise ShapeError(f"pad (at {user_src()}): paddings {[list(q) for q in p]} must have one "
                         f"[before, after] pair per dim of {tuple(x.shape)}")
    if builtins.all(lo >= 0 and hi >= 0 for lo, hi in p):
        _check_size("pad", [d + lo + hi for d, (lo, hi) in zip(x.shape, p)], x.dtype,
                    f"paddings {[list(q) for q in p]} of input shape {tuple(x.shape)}")
    if mode in ("REFLECT", "SYMMETRIC"):
        return _mirror_pad(x, p, mode)
    if mode != "CONSTANT":
        raise ValueError(f"pad (at {user_src()}): mode must be CONSTANT, REFLECT or SYMMETRIC, got {mode!r}")
    cv = constant_values
    if _is_tensor(cv):
        cv = _t(cv).numpy().item()
    return apply_op("pad", [x], {"paddings": p, "constant": x.dtype.np.type(cv).item()})


def _mirror_pad(x, paddings, mode):
    """REFLECT / SYMMETRIC padding, one dim at a time, from reversed slices and concat."""
    if len(paddings) != len(x.shape):
        raise ShapeError(f"pad (at {user_src()}): paddings {paddings} must have one pair per dim "
                         f"of {tuple(x.shape)}")
    edge = 1 if mode == "REFLECT" else 0       # REFLECT leaves out the border element
    for k, (lo, hi) in enumerate(paddings):
        n = hint(x.shape[k])
        if lo < 0 or hi < 0 or lo > n - edge or hi > n - edge:
            raise ShapeError(f"pad (at {user_src()}): {mode} padding ({lo}, {hi}) is too large for "
                             f"dimension {k} of size {n}")
        parts = []
        if lo:
            left = slice(lo, 0, -1) if edge else slice(lo - 1, None, -1)   # mirrored border
            parts.append(getitem(x, (slice(None),) * k + (left,)))
        parts.append(x)
        if hi:
            parts.append(getitem(x, (slice(None),) * k + (slice(-1 - edge, -1 - edge - hi, -1),)))
        if len(parts) > 1:
            x = concat(parts, k)
    return x


def gather(params, indices, axis=None, batch_dims=0, name=None):
    p = convert(params) if not _is_tensor(params) else _t(params)
    i = _t(indices) if _is_tensor(indices) else convert(indices, D.int32 if not isinstance(indices, np.ndarray) else None)
    b = _int(batch_dims, "gather", "batch_dims")
    if b:
        return _batched_gather(p, i, b, axis)
    return apply_op("gather", [p, i], {"axis": 0 if axis is None else _int(axis, "gather")})


def _batched_gather(p, i, b, axis):
    """TF's gather with batch_dims=b (axis == b): per batch entry, gather along axis b.
    Done as one flat gather with batch offsets. The indices first pass through a gather
    from range(n), which is the identity for valid ones and reports a bad one as the
    user wrote it ("index 3 is out of range [0, 3)"), not as its flat position."""
    axis = b if axis is None else _axis(axis, len(p.shape), "gather", p.shape)
    if b < 0 or b >= len(p.shape) or axis != b or len(i.shape) < b:
        raise ValueError(f"gather (at {user_src()}): batch_dims={b} is supported with axis == "
                         f"batch_dims and indices of rank >= batch_dims")
    batch = p.shape[:b]
    n = p.shape[b]
    nb = _prod(batch)
    flat_p = reshape(p, [nb * n] + list(p.shape[b + 1:]))
    ib = reshape(i, [nb] + list(i.shape[b:]))
    rows = _iota(ib.shape, 0, ib.dtype)
    checked = apply_op("gather", [_iota((n,), 0, ib.dtype), ib], {"axis": 0})
    flat_i = checked + rows * cast(size_as_tensor(n, ib.dtype), ib.dtype)
    out = apply_op("gather", [flat_p, flat_i], {"axis": 0})
    return reshape(out, list(batch) + list(i.shape[b:]) + list(p.shape[b + 1:]))


def one_hot(indices, depth, on_value=None, off_value=None, axis=None, dtype=None, name=None):
    i = _t(indices) if _is_tensor(indices) else convert(indices, D.int32 if not isinstance(indices, np.ndarray) else None)
    if not i.dtype.is_integer:
        raise DTypeError(f"one_hot (at {user_src()}): indices must be integers, got {i.dtype.name}")
    dtype = D.as_dtype(dtype or D.float32)
    on = constant(1 if on_value is None else on_value, dtype)
    off = constant(0 if off_value is None else off_value, dtype)
    r = len(i.shape)
    axis = -1 if axis is None else _int(axis, "one_hot")
    if not -1 <= axis <= r:    # TF: -1 (the default: a new last axis) or 0..rank
        raise ShapeError(f"one_hot (at {user_src()}): axis {axis} is out of range for indices "
                         f"of shape {tuple(i.shape)}; it must be -1 or in [0, {r}]")
    axis = r if axis == -1 else axis
    out_shape = list(i.shape)
    out_shape.insert(axis, _dims([depth], "one_hot", "depth")[0])
    _check_size("one_hot", out_shape, dtype, f"depth {depth} for indices of shape {tuple(i.shape)}")
    ie = expand_dims(i, axis)
    hit = equal(ie, _iota(out_shape, axis, i.dtype))
    return where(hit, on, off)


# --- indexing ----------------------------------------------------------------------------
def _norm_index(i, n, axis):
    i = int(i)
    j = i + n if i < 0 else i
    if j < 0:
        raise OutOfRangeError(f"index {i} is out of range for dimension {axis} of size {n!r}")
    if j >= n:
        raise OutOfRangeError(f"index {i} is out of range for dimension {axis} of size {n!r}")
    return j


def _norm_slice(s, n):
    step = 1 if s.step is None else _int(s.step, "getitem", "slice step")
    if step == 0:
        raise ValueError("slice step cannot be zero")
    if step > 0:
        lo, hi = 0, n
        start, stop = (0 if s.start is None else s.start), (n if s.stop is None else s.stop)
    else:
        lo, hi = -1, n - 1
        start, stop = (n - 1 if s.start is None else s.start), (-1 if s.stop is None else None)
        if s.stop is not None:
            stop = s.stop
    def fix(v, explicit):
        if not explicit:
            return v
        # int() fixes a symbolic bound to its value (as before); 2.0 is refused, as NumPy does
        v = int(v) if isinstance(v, Sym) else _int(v, "getitem", "slice bound")
        if v < 0:
            v = n + v
            if v < lo:
                v = lo
        elif v > hi:
            v = hi
        return v
    start = fix(start, s.start is not None)
    stop = fix(stop, s.stop is not None)
    if step > 0:
        if stop <= start:
            return start if not isinstance(start, Sym) else 0, step, 0
        size = stop - start if step == 1 else (stop - start + step - 1) // step
    else:
        if stop >= start:
            return 0, step, 0
        size = start - stop if step == -1 else (start - stop - step - 1) // (-step)
    return start, step, size


def getitem(x, key):
    x = _t(x)
    if not isinstance(key, tuple):
        key = (key,)
    tensors = [k for k in key if _is_tensor(k) or isinstance(k, (list, np.ndarray))]
    if tensors:
        pos = [j for j, k in enumerate(key) if _is_tensor(k) or isinstance(k, (list, np.ndarray))]
        others_full = all(isinstance(k, slice) and (k.start, k.stop, k.step) == (None, None, None)
                          for j, k in enumerate(key) if j not in pos)
        if len(pos) == 1 and others_full and not any(k is Ellipsis for k in key):
            return gather(x, key[pos[0]], axis=pos[0])     # x[:, t] == gather(x, t, axis=1)
        raise TypeError(f"getitem (at {user_src()}): a tensor index can only be combined with "
                        f"full slices ':' (advanced indexing is not supported); use fj.gather")
    n_ell = builtins.sum(1 for k in key if k is Ellipsis)
    if n_ell > 1:
        raise IndexError("an index can only have a single ellipsis")
    n_real = builtins.sum(1 for k in key if k is not None and k is not Ellipsis)
    if n_real > len(x.shape):
        raise OutOfRangeError(f"getitem (at {user_src()}): too many indices ({n_real}) for a tensor "
                              f"of shape {tuple(x.shape)}")
    if n_ell == 0:
        key = key + (Ellipsis,)
    expanded = []
    for k in key:
        if k is Ellipsis:
            expanded.extend([slice(None)] * (len(x.shape) - n_real))
        else:
            expanded.append(k)
    spec, final_shape = [], []
    axis = 0
    try:
        for k in expanded:
            if k is None:
                final_shape.append(1)
                continue
            d = x.shape[axis]
            if isinstance(k, slice):
                st, step, sz = _norm_slice(k, d)
                spec.append(("range", st, step, sz))
                final_shape.append(sz)
            elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
                spec.append(("index", _norm_index(k, d, axis)))
            else:
                raise TypeError(f"unsupported index {k!r}")
            axis += 1
    except OutOfRangeError as e:
        raise OutOfRangeError(f"getitem (at {user_src()}): {e} (tensor shape {tuple(x.shape)})") from None
    identity = all(e[0] == "range" and not isinstance(e[1], Sym) and e[1] == 0 and e[2] == 1
                   and _same(e[3], d) for e, d in zip(spec, x.shape))
    y = x if identity else apply_op("slice", [x], {"spec": tuple(spec)})
    if len(final_shape) != len(y.shape):
        y = reshape(y, final_shape)
    return y


def _same(a, b):
    from ..ir.shapes import same
    return same(a, b)


# --- Python operators on Tensor --------------------------------------------------------
def _install_operators():
    def binop(fn, reverse=False):
        if reverse:
            return lambda self, other: fn(other, self)
        return lambda self, other: fn(self, other)

    T = Tensor
    T.__add__, T.__radd__ = binop(add), binop(add, True)
    T.__sub__, T.__rsub__ = binop(subtract), binop(subtract, True)
    T.__mul__, T.__rmul__ = binop(multiply), binop(multiply, True)
    T.__truediv__, T.__rtruediv__ = binop(divide), binop(divide, True)
    T.__floordiv__, T.__rfloordiv__ = binop(floordiv), binop(floordiv, True)
    T.__mod__, T.__rmod__ = binop(floormod), binop(floormod, True)
    T.__pow__, T.__rpow__ = binop(pow), binop(pow, True)
    T.__matmul__, T.__rmatmul__ = binop(matmul), binop(matmul, True)
    T.__lt__, T.__le__ = binop(less), binop(less_equal)
    T.__gt__, T.__ge__ = binop(greater), binop(greater_equal)
    T.__eq__, T.__ne__ = binop(equal), binop(not_equal)
    T.__and__, T.__rand__ = binop(logical_and), binop(logical_and, True)
    T.__or__, T.__ror__ = binop(logical_or), binop(logical_or, True)
    T.__xor__, T.__rxor__ = binop(logical_xor), binop(logical_xor, True)
    T.__neg__ = lambda self: negative(self)
    T.__abs__ = lambda self: abs(self)
    T.__invert__ = lambda self: logical_not(self)
    T.__pos__ = lambda self: self
    T.__getitem__ = getitem
    T.__hash__ = lambda self: id(self)


_install_operators()


def public_ops(namespace):
    """{name: function} for the registry ops that give themselves a public name in
    `namespace` ("" for fj, "nn" for fj.nn): one input converts like `fj.exp`, two pair
    their dtypes like `fj.add`."""
    out = {}
    for op in REGISTRY.values():
        for path in op.api:
            ns, _, fname = path.rpartition(".")
            if ns == namespace:
                out[fname] = _public(op.name, fname)
    return out


def _public(opname, fname):
    one, two = _unary(opname), _binary(opname)

    def f(*xs, name=None):
        return one(*xs) if len(xs) == 1 else two(*xs)
    f.__name__ = f.__qualname__ = fname
    f.__doc__ = f"The op {opname!r} (flowjit/ops/)."
    return f


def _install_for_gradient_rules():
    # gradient rules in ops/ are written with these functions; ops/ does not import the
    # frontend (it is the lower layer), so the frontend hands itself over
    import sys
    from ..ops import grads
    grads.install_api(sys.modules[__name__])


_install_for_gradient_rules()

globals().update({k: v for k, v in public_ops("").items() if k not in globals()})
