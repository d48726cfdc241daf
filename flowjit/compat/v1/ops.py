"""TF1 op constructors: each builds an Operation whose compute function calls the
flowjit op of the same meaning (`import flowjit as fj`), with TF1's op type names
(`tf.add` -> 'Add', `a + b` -> 'add') and TF1's argument names (`reduction_indices`,
`keep_dims`, `dimension`)."""
import numpy as np

from ... import dtypes as D
from ...frontend import api as F
from .graph import Operation, Tensor, TensorShape, get_default_graph, make_op, string


class _Slot:
    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i


def _collect(x, tensors):
    if isinstance(x, Tensor):
        tensors.append(x)
        return _Slot(len(tensors) - 1)
    if isinstance(x, Operation):
        raise TypeError(f"an Operation ({x.name}) was passed where a tensor is expected; "
                        f"use its output, e.g. op.outputs[0]")
    if type(x) is list:
        return [_collect(v, tensors) for v in x]
    if type(x) is tuple:
        return tuple(_collect(v, tensors) for v in x)
    if type(x) is dict:
        return {k: _collect(v, tensors) for k, v in x.items()}
    return x


def _fill(x, vals):
    if isinstance(x, _Slot):
        return vals[x.i]
    if type(x) is list:
        return [_fill(v, vals) for v in x]
    if type(x) is tuple:
        return tuple(_fill(v, vals) for v in x)
    if type(x) is dict:
        return {k: _fill(v, vals) for k, v in x.items()}
    return x


def apply(type, fn, args=(), kwargs=None, name=None, default_name=None, multi=False, out_specs=None):
    """An op of TF1 type `type` computing `fn(*args, **kwargs)` with flowjit, where every
    TF1 tensor inside args/kwargs (also inside lists) becomes an input of the op."""
    tensors = []
    sargs = _collect(tuple(args), tensors)
    skw = _collect(dict(kwargs or {}), tensors)

    def compute(*vals):
        return fn(*_fill(sargs, vals), **_fill(skw, vals))

    op = make_op(type, compute, tensors, name=name, default_name=default_name, out_specs=out_specs)
    if multi:
        return list(op.outputs)
    return op.outputs[0]


# --- constants and conversion ---------------------------------------------------------
def constant(value, dtype=None, shape=None, name="Const", verify_shape=False):
    if isinstance(value, Tensor):
        raise TypeError("tf.constant needs a Python or NumPy value, not a tf.Tensor")
    if dtype is string or _is_text(value):
        arr = np.array(_as_bytes(value), dtype=object)
        g = get_default_graph()
        op = Operation(g, "Const", g.unique_name(name or "Const"), [], None, (),
                       {"value": arr, "host": True})
        op.outputs.append(Tensor(op, 0, string, arr.shape))
        g._add_op(op)
        return op.outputs[0]
    arr = F.constant(value, dtype, shape).numpy()

    def compute():
        return F.constant(arr)
    return make_op("Const", compute, (), name=name, attrs={"value": arr}).outputs[0]


def _is_text(v):
    if isinstance(v, (str, bytes)):
        return True
    if isinstance(v, (list, tuple)) and v:
        return _is_text(v[0])
    return isinstance(v, np.ndarray) and v.dtype.kind in "SUO"


def _as_bytes(v):
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_as_bytes(x) for x in v]
    return v


def _const_out(value, dtype=None, shape=None, name="Const"):
    return constant(value, dtype, shape, name)


def convert_to_tensor(value, dtype=None, name=None, preferred_dtype=None):
    if isinstance(value, Tensor):
        if dtype is not None and D.as_dtype(dtype) is not value.dtype:
            raise ValueError(f"Tensor conversion requested dtype {D.as_dtype(dtype).name} for "
                             f"Tensor with dtype {value.dtype.name}: {value}")
        return value
    if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
        return stack(list(value), name=name or "packed")
    return _const_out(value, dtype, name=name or "Const")


def static_value(x, what):
    """A Python value for an argument that must be known when the graph is built
    (a shape, an axis): plain values, or tensors produced by tf.constant."""
    if isinstance(x, Tensor):
        if x.op.type == "Const":
            return x.op.attrs["value"].tolist()
        if x.op.type == "Shape" and x.op.inputs[0].shape.is_fully_defined():
            return x.op.inputs[0].shape.as_list()
        raise TypeError(f"{what} must be known when the graph is built (Python ints or "
                        f"tf.constant), got the computed tensor {x.name}")
    if isinstance(x, (list, tuple)):
        return [static_value(v, what) for v in x]
    if isinstance(x, TensorShape):
        return x.as_list()
    if hasattr(x, "value") and type(x).__name__ == "Dimension":
        return x.value
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def static_or_tensor(x, what):
    """(value, None) for an argument known when the graph is built, else (None, tensor):
    a shape or size computed in the graph (`tf.shape(x)`, `[tf.shape(x)[0], 10]`) becomes
    an input of the op, and flowjit reads it as sizes when the session runs (under jit a
    size of a fed value is a symbol, so each batch size reuses the compiled step)."""
    try:
        return static_value(x, what), None
    except TypeError:
        return None, convert_to_tensor(x)


def _shape_arg(shape, what):
    s = static_value(shape, what)
    if isinstance(s, (int, np.integer)):
        s = [int(s)]
    if any(d is None for d in s):
        raise ValueError(f"{what}: shape {s} has unknown dims; give a fully defined shape")
    return [int(d) for d in s]


# --- element-wise math ------------------------------------------------------------------
def _binary(type_, fn):
    def f(x, y, name=None):
        return apply(type_, fn, (x, y), name=name)
    f.__name__ = fn.__name__
    return f


def _unary(type_, fn):
    def f(x, name=None):
        return apply(type_, fn, (x,), name=name)
    f.__name__ = fn.__name__
    return f


add = _binary("Add", F.add)
subtract = _binary("Sub", F.subtract)
multiply = _binary("Mul", F.multiply)
divide = _binary("truediv", F.divide)
truediv = divide
div = _binary("RealDiv", F.divide)
realdiv = div
floordiv = _binary("FloorDiv", F.floordiv)
floor_div = floordiv
mod = _binary("FloorMod", F.floormod)
floormod = mod
pow = _binary("Pow", F.pow)
maximum = _binary("Maximum", F.maximum)
minimum = _binary("Minimum", F.minimum)
squared_difference = _binary("SquaredDifference", lambda a, b: F.square(F.subtract(a, b)))
equal = _binary("Equal", F.equal)
not_equal = _binary("NotEqual", F.not_equal)
less = _binary("Less", F.less)
less_equal = _binary("LessEqual", F.less_equal)
greater = _binary("Greater", F.greater)
greater_equal = _binary("GreaterEqual", F.greater_equal)
logical_and = _binary("LogicalAnd", F.logical_and)
logical_or = _binary("LogicalOr", F.logical_or)
logical_xor = _binary("LogicalXor", F.logical_xor)

negative = _unary("Neg", F.negative)
neg = negative
abs = _unary("Abs", F.abs)
sign = _unary("Sign", F.sign)
square = _unary("Square", F.square)
sqrt = _unary("Sqrt", F.sqrt)
rsqrt = _unary("Rsqrt", F.rsqrt)
exp = _unary("Exp", F.exp)
expm1 = _unary("Expm1", F.expm1)
log = _unary("Log", F.log)
log1p = _unary("Log1p", F.log1p)
tanh = _unary("Tanh", F.tanh)
sigmoid = _unary("Sigmoid", F.sigmoid)
sin = _unary("Sin", F.sin)
cos = _unary("Cos", F.cos)
floor = _unary("Floor", F.floor)
ceil = _unary("Ceil", F.ceil)
reciprocal = _unary("Reciprocal", lambda x: F.divide(1.0, x))
logical_not = _unary("LogicalNot", F.logical_not)
stop_gradient = _unary("StopGradient", F.stop_gradient)
identity = _unary("Identity", F.identity)


def add_n(inputs, name=None):
    return apply("AddN", F.add_n, (list(inputs),), name=name)


def where(condition, x=None, y=None, name=None):
    return apply("Select", F.where, (condition, x, y), name=name)


def clip_by_value(t, clip_value_min, clip_value_max, name=None):
    return apply("clip_by_value", F.clip_by_value, (t, clip_value_min, clip_value_max), name=name)


def cast(x, dtype, name=None):
    dtype = D.as_dtype(dtype)
    return apply("Cast", lambda v: F.cast(v, dtype), (convert_to_tensor(x),), name=name)


def to_float(x, name="ToFloat"):
    return cast(x, D.float32, name)


def to_double(x, name="ToDouble"):
    return cast(x, D.float64, name)


def to_int32(x, name="ToInt32"):
    return cast(x, D.int32, name)


def to_int64(x, name="ToInt64"):
    return cast(x, D.int64, name)


def matmul(a, b, transpose_a=False, transpose_b=False, adjoint_a=False, adjoint_b=False,
           a_is_sparse=False, b_is_sparse=False, name=None):
    ta, tb = bool(transpose_a or adjoint_a), bool(transpose_b or adjoint_b)
    return apply("MatMul", lambda x, y: F.matmul(x, y, ta, tb), (a, b), name=name)


# --- reductions ---------------------------------------------------------------------------
def _axis_arg(axis, reduction_indices, what):
    if axis is not None and reduction_indices is not None:
        raise ValueError(f"{what}: give axis or reduction_indices, not both")
    axis = axis if axis is not None else reduction_indices
    return None if axis is None else static_value(axis, f"{what} axis")


def _keep(keepdims, keep_dims):
    return bool(keepdims if keepdims is not None else (keep_dims or False))


def _reduction(type_, fn, tfname):
    def f(input_tensor, axis=None, keepdims=None, name=None, reduction_indices=None, keep_dims=None):
        ax = _axis_arg(axis, reduction_indices, tfname)
        kd = _keep(keepdims, keep_dims)
        return apply(type_, lambda x: fn(x, ax, kd), (input_tensor,), name=name)
    f.__name__ = tfname
    return f


reduce_sum = _reduction("Sum", F.reduce_sum, "reduce_sum")
reduce_mean = _reduction("Mean", F.reduce_mean, "reduce_mean")
reduce_max = _reduction("Max", F.reduce_max, "reduce_max")
reduce_min = _reduction("Min", F.reduce_min, "reduce_min")
reduce_prod = _reduction("Prod", F.reduce_prod, "reduce_prod")
reduce_any = _reduction("Any", F.reduce_any, "reduce_any")
reduce_all = _reduction("All", F.reduce_all, "reduce_all")


def _argfn(type_, fn, tfname):
    def f(input, axis=None, name=None, dimension=None, output_type=D.int64):
        ax = axis if axis is not None else dimension
        ax = 0 if ax is None else static_value(ax, f"{tfname} axis")
        ot = D.as_dtype(output_type)
        return apply(type_, lambda x: fn(x, ax, ot), (input,), name=name)
    f.__name__ = tfname
    return f


argmax = _argfn("ArgMax", F.argmax, "argmax")
argmin = _argfn("ArgMin", F.argmin, "argmin")
arg_max, arg_min = argmax, argmin


def count_nonzero(input_tensor=None, axis=None, keepdims=None, dtype=D.int64, name=None,
                  reduction_indices=None, keep_dims=None, input=None):
    x = input_tensor if input_tensor is not None else input
    ax = _axis_arg(axis, reduction_indices, "count_nonzero")
    kd = _keep(keepdims, keep_dims)
    dt = D.as_dtype(dtype)
    return apply("count_nonzero", lambda v: F.count_nonzero(v, ax, kd, dt), (x,), name=name)


# --- shapes ----------------------------------------------------------------------------------
def reshape(tensor, shape, name=None):
    s, st = static_or_tensor(shape, "reshape shape")
    if st is not None:
        return apply("Reshape", F.reshape, (tensor, st), name=name)
    return apply("Reshape", lambda x: F.reshape(x, s), (tensor,), name=name)


def transpose(a, perm=None, name="transpose", conjugate=False):
    p = None if perm is None else static_value(perm, "transpose perm")
    return apply("Transpose", lambda x: F.transpose(x, p), (a,), name=name)


def expand_dims(input, axis=None, name=None, dim=None):
    ax = static_value(axis if axis is not None else dim, "expand_dims axis")
    return apply("ExpandDims", lambda x: F.expand_dims(x, ax), (input,), name=name)


def squeeze(input, axis=None, name=None, squeeze_dims=None):
    ax = axis if axis is not None else squeeze_dims
    ax = None if ax is None else static_value(ax, "squeeze axis")
    return apply("Squeeze", lambda x: F.squeeze(x, ax), (input,), name=name)


def concat(values, axis, name="concat"):
    ax = static_value(axis, "concat axis")
    return apply("ConcatV2", lambda *vs: F.concat(list(vs), ax), tuple(values), name=name)


def stack(values, axis=0, name="stack"):
    ax = static_value(axis, "stack axis")
    return apply("Pack", lambda *vs: F.stack(list(vs), ax), tuple(values), name=name)


pack = stack


def unstack(value, num=None, axis=0, name="unstack"):
    ax = static_value(axis, "unstack axis")
    return apply("Unpack", lambda x: F.unstack(x, num, ax), (value,), name=name, multi=True)


def split(value, num_or_size_splits, axis=0, num=None, name="split"):
    n = static_value(num_or_size_splits, "split sizes")
    ax = static_value(axis, "split axis")
    return apply("Split", lambda x: F.split(x, n, ax), (value,), name=name, multi=True,
                 out_specs=_split_specs(value, n, ax))


def _split_specs(value, n, axis):
    """Output (dtype, shape) of a split whose input has a None dim: the count and the
    sizes come from the split itself (TF1 knows them while building the graph; the
    sizes are checked against the fed value when the session runs)."""
    value = convert_to_tensor(value)
    dims = value.shape.as_list() if value.shape.ndims is not None else None
    if dims is None:                      # unknown rank: the count is still known
        count = int(n) if isinstance(n, (int, np.integer)) else len(np.asarray(n).reshape(-1))
        return [(value.dtype, None)] * count
    if None not in dims or not isinstance(axis, (int, np.integer)) \
            or not -len(dims) <= axis < len(dims):
        return None                       # fully known shapes: inferred as usual
    axis = int(axis) % len(dims)
    if isinstance(n, (int, np.integer)):
        total = dims[axis]
        sizes = [total // int(n) if total is not None else None] * int(n)
    else:
        sizes = [None if int(s) == -1 else int(s) for s in np.asarray(n).reshape(-1)]
    return [(value.dtype, dims[:axis] + [s] + dims[axis + 1:]) for s in sizes]


def tile(input, multiples, name=None):
    m, mt = static_or_tensor(multiples, "tile multiples")
    if mt is not None:
        return apply("Tile", F.tile, (input, mt), name=name)
    return apply("Tile", lambda x: F.tile(x, m), (input,), name=name)


def pad(tensor, paddings, mode="CONSTANT", name=None, constant_values=0):
    p = static_value(paddings, "pad paddings")
    return apply("Pad", lambda x: F.pad(x, p, mode, constant_values), (tensor,), name=name)


def gather(params, indices, validate_indices=None, name=None, axis=None, batch_dims=0):
    ax = None if axis is None else static_value(axis, "gather axis")    # None: batch_dims
    return apply("GatherV2", lambda p, i: F.gather(p, i, ax, batch_dims), (params, indices), name=name)


def one_hot(indices, depth, on_value=None, off_value=None, axis=None, dtype=None, name=None):
    d = static_value(depth, "one_hot depth")
    return apply("OneHot", lambda i: F.one_hot(i, d, on_value, off_value, axis, dtype), (indices,),
                 name=name)


def shape(input, name=None, out_type=D.int32):
    return apply("Shape", lambda x: F.shape(x, out_type), (input,), name=name)


def size(input, name=None, out_type=D.int32):
    return apply("Size", lambda x: F.size(x, out_type), (input,), name=name)


def rank(input, name=None):
    return apply("Rank", F.rank, (input,), name=name)


# --- creation --------------------------------------------------------------------------------
def _tensor_shape_arg(shape, what):
    """A shape computed in the graph (see static_or_tensor), or None when it is known now."""
    if isinstance(shape, Tensor) or (isinstance(shape, (list, tuple)) and
                                     any(isinstance(d, Tensor) for d in shape)):
        s, st = static_or_tensor(shape, what)
        return st
    return None


def zeros(shape, dtype=D.float32, name=None):
    dt = D.as_dtype(dtype)
    st = _tensor_shape_arg(shape, "zeros")
    if st is not None:
        return apply("Fill", lambda v: F.zeros(v, dt), (st,), name=name, default_name="zeros")
    s = _shape_arg(shape, "zeros")
    return apply("Fill", lambda: F.zeros(s, dt), (), name=name, default_name="zeros")


def ones(shape, dtype=D.float32, name=None):
    dt = D.as_dtype(dtype)
    st = _tensor_shape_arg(shape, "ones")
    if st is not None:
        return apply("Fill", lambda v: F.ones(v, dt), (st,), name=name, default_name="ones")
    s = _shape_arg(shape, "ones")
    return apply("Fill", lambda: F.ones(s, dt), (), name=name, default_name="ones")


def fill(dims, value, name=None):
    st = _tensor_shape_arg(dims, "fill")
    if st is not None:
        return apply("Fill", F.fill, (st, value), name=name)
    s = _shape_arg(dims, "fill")
    return apply("Fill", lambda v: F.fill(s, v), (value,), name=name)


def zeros_like(tensor, dtype=None, name=None, optimize=True):
    return apply("ZerosLike", lambda x: F.zeros_like(x, dtype), (tensor,), name=name,
                 default_name="zeros_like")


def ones_like(tensor, dtype=None, name=None, optimize=True):
    return apply("OnesLike", lambda x: F.ones_like(x, dtype), (tensor,), name=name,
                 default_name="ones_like")


def range(start, limit=None, delta=1, dtype=None, name="range"):
    a = static_value(start, "range")
    b = None if limit is None else static_value(limit, "range")
    c = static_value(delta, "range")
    return apply("Range", lambda: F.range(a, b, c, dtype), (), name=name)


def eye(num_rows, num_columns=None, batch_shape=None, dtype=D.float32, name=None):
    return apply("eye", lambda: F.eye(num_rows, num_columns, dtype=dtype), (), name=name)


def linspace(start, stop, num, name=None):
    return _const_out(np.linspace(start, stop, num, dtype=np.float32), name=name or "LinSpace")


# --- grouping and control ----------------------------------------------------------------------
def _ops_of(inputs):
    out = []
    for x in inputs:
        if isinstance(x, (list, tuple)):
            out.extend(_ops_of(x))
        elif x is not None:
            out.append(x if isinstance(x, Operation) else x.op)
    return out


def group(*inputs, name=None):
    """A NoOp whose control inputs are the given ops/tensors: running it runs them."""
    deps = _ops_of(inputs)
    g = deps[0].graph if deps else get_default_graph()
    with g.control_dependencies(None):
        with g.control_dependencies(deps):
            op = make_op("NoOp", lambda ev: [], (), name=name, default_name="group_deps",
                         stateful=True, out_specs=[], graph=g)
    op.attrs["initializer"] = bool(deps) and all(d.attrs.get("initializer") for d in deps)
    return op


def no_op(name=None):
    return make_op("NoOp", lambda ev: [], (), name=name, default_name="NoOp", stateful=True,
                   out_specs=[])


def tuple_(tensors, name=None, control_inputs=None):
    deps = _ops_of([t for t in tensors if t is not None]) + _ops_of(control_inputs or [])
    gate = group(*deps)
    g = gate.graph
    out = []
    with g.control_dependencies([gate]):
        for t in tensors:
            out.append(None if t is None else identity(t))
    return out


def control_dependencies(control_inputs):
    return get_default_graph().control_dependencies(control_inputs)


# --- Python operators on TF1 tensors (TF1 names them in lower case) ---------------------------
def _getitem(x, key):
    out = apply("StridedSlice", lambda v, *k: F.getitem(v, key), (x,), default_name="strided_slice")
    out.op.attrs["key"] = key        # (cell.zero_state reads tf.shape(x)[0] as x's first size)
    return out


def _install_operators():
    def op(type_, fn, reverse=False):
        if reverse:
            return lambda self, other: apply(type_, fn, (other, self))
        return lambda self, other: apply(type_, fn, (self, other))

    T = Tensor
    T.__add__, T.__radd__ = op("add", F.add), op("add", F.add, True)
    T.__sub__, T.__rsub__ = op("sub", F.subtract), op("sub", F.subtract, True)
    T.__mul__, T.__rmul__ = op("mul", F.multiply), op("mul", F.multiply, True)
    T.__truediv__, T.__rtruediv__ = op("truediv", F.divide), op("truediv", F.divide, True)
    T.__floordiv__, T.__rfloordiv__ = op("floordiv", F.floordiv), op("floordiv", F.floordiv, True)
    T.__mod__, T.__rmod__ = op("mod", F.floormod), op("mod", F.floormod, True)
    T.__pow__, T.__rpow__ = op("pow", F.pow), op("pow", F.pow, True)
    T.__matmul__, T.__rmatmul__ = op("matmul", F.matmul), op("matmul", F.matmul, True)
    T.__lt__, T.__le__ = op("Less", F.less), op("LessEqual", F.less_equal)
    T.__gt__, T.__ge__ = op("Greater", F.greater), op("GreaterEqual", F.greater_equal)
    T.__and__, T.__rand__ = op("LogicalAnd", F.logical_and), op("LogicalAnd", F.logical_and, True)
    T.__or__, T.__ror__ = op("LogicalOr", F.logical_or), op("LogicalOr", F.logical_or, True)
    T.__xor__, T.__rxor__ = op("LogicalXor", F.logical_xor), op("LogicalXor", F.logical_xor, True)
    T.__neg__ = lambda self: apply("Neg", F.negative, (self,))
    T.__abs__ = lambda self: apply("Abs", F.abs, (self,))
    T.__invert__ = lambda self: apply("LogicalNot", F.logical_not, (self,))
    T.__pos__ = lambda self: self
    T.__getitem__ = _getitem


_install_operators()


# --- printing ----------------------------------------------------------------------------------
def Print(input_, data, message=None, first_n=None, summarize=None, name=None):  # noqa: N802
    """TF1's tf.Print: an identity of `input_` that, each time it runs, writes `message`
    and then each tensor of `data` as `[its first summarize values]` (3 by default) to
    stderr; with first_n >= 0 only the first first_n times (counted per op). Inside a
    session's compiled step it prints while the step runs (fj.print's host op)."""
    from ...frontend import printing
    counter = [0]
    data = [convert_to_tensor(d) for d in (data or [])]

    def compute(x, *vals):
        printing.print_v1(message, vals, first_n, summarize, counter)
        return F.identity(x)
    return apply("Print", compute, (input_,) + tuple(data), name=name)


def print_(*inputs, **kwargs):
    """TF's tf.print in a TF1 graph: the op (run it, or make it a control dependency)
    that prints `inputs` as fj.print does (output_stream, summarize, sep, end)."""
    from ...frontend import printing
    name = kwargs.pop("name", None)
    opts = {k: kwargs.pop(k) for k in ("output_stream", "summarize", "sep", "end") if k in kwargs}
    if kwargs:
        raise TypeError(f"tf.print: unexpected keyword arguments {sorted(kwargs)}")
    tensors = []
    structure = _collect(tuple(inputs), tensors)

    def compute(ev, *vals):
        printing.print(*_fill(structure, vals), **opts)
        return []
    return make_op("PrintV2", compute, tensors, name=name, default_name="PrintV2", stateful=True,
                   out_specs=[])
