"""Tensors, the trace context and `apply_op`, the one door every op goes through.

A `Tensor` is either eager (holds a NumPy array) or traced (holds a node of the graph
being traced). `apply_op` checks shapes and dtypes with the op's rule from the
registry, then either runs the op's NumPy reference (eager) or adds a node (traced),
so eager and jitted code share one definition of every op.
"""
import linecache
import os
import sys
import threading

import numpy as np

from .. import dtypes as D
from ..errors import DTypeError, ShapeError, TracerError, FlowjitError
from ..ir.registry import REGISTRY
from ..ir.shapes import Sym, concrete_sizes, hint, symbolic

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_state = threading.local()


# --- trace context -------------------------------------------------------------
class TraceContext:
    """The graph being traced and the bookkeeping that goes with it."""

    parent = None             # the enclosing trace, for a loop body (control_flow.BodyTrace)

    def __init__(self, graph):
        self.graph = graph
        self.captured = {}        # id(eager tensor or array) -> (node id, keepalive)
        self.phase = "fwd"        # "bwd" while a tape computes gradients
        self.variables = []       # Variables read or written, in order of first use
        self.var_initial = {}     # id(var) -> arg node id holding its value at call time
        self.var_current = {}     # id(var) -> node id of its current value in the trace

    def read_variable(self, var):
        key = id(var)
        cur = self.var_current.get(key)
        g = self.graph
        if cur is None:
            node = g.add("arg", (), {"index": len(g.args), "variable": var.name},
                         var._shape, var.dtype)
            g.args.append(node.id)
            self.variables.append(var)
            cur = self.var_initial[key] = self.var_current[key] = node.id
        return Tensor(node=g.nodes[cur], graph=g)

    def assign_variable(self, var, value):
        self.read_variable(var)
        self.var_current[id(var)] = node_of(value, self).id

    def finish_effects(self):
        for var in self.variables:
            a, b = self.var_initial[id(var)], self.var_current[id(var)]
            if a != b:
                self.graph.effects.append((a, b))

    def __enter__(self):
        stack = getattr(_state, "stack", None)
        if stack is None:
            stack = _state.stack = []
        stack.append(self)
        return self

    def __exit__(self, *exc):
        _state.stack.pop()


def current_trace():
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else None


def user_src():
    """'file.py:12: code' of the innermost frame outside the flowjit package."""
    override = getattr(_state, "src_override", None)
    if override is not None:      # set while flowjit.compat.v1 replays a TF1 op
        return override
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
        f = f.f_back
    if f is None:
        return None
    return SrcLoc(f.f_code.co_filename, f.f_lineno)


class src_override:
    """Within this block, ops are attributed to `src` (the line that built a TF1 op
    which a session is now replaying) instead of the caller's line."""

    def __init__(self, src):
        self.src = src

    def __enter__(self):
        self.saved = getattr(_state, "src_override", None)
        _state.src_override = self.src

    def __exit__(self, *exc):
        _state.src_override = self.saved


class SrcLoc:
    __slots__ = ("file", "line")

    def __init__(self, file, line):
        self.file, self.line = file, line

    def __str__(self):
        code = linecache.getline(self.file, self.line).strip()
        return f"{os.path.basename(self.file)}:{self.line}" + (f": `{code}`" if code else "")

    __repr__ = __str__


# --- shapes seen by users ------------------------------------------------------
class TensorShape(tuple):
    """A tuple of dims (ints, or symbolic sizes while tracing) with TF's helpers."""

    def as_list(self):
        return [d if not isinstance(d, Sym) else None for d in self]

    @property
    def rank(self):
        return len(self)

    ndims = rank

    def num_elements(self):
        n = 1
        for d in self:
            n = n * d
        return n

    def __repr__(self):
        return "(" + ", ".join(repr(d) if isinstance(d, Sym) else str(d) for d in self) + \
               ("," if len(self) == 1 else "") + ")"


# --- the tensor ----------------------------------------------------------------
class Tensor:
    __slots__ = ("_value", "_node", "_graph", "_weak", "__weakref__")
    __array_priority__ = 100   # so ndarray + Tensor defers to Tensor.__radd__

    def __init__(self, value=None, node=None, graph=None, weak=False):
        self._value = value
        self._node = node
        self._graph = graph
        # False, or (a Python float argument) True / the exact float64 tensor behind it:
        # a weak tensor takes the dtype of the tensor it meets
        self._weak = weak

    # properties
    @property
    def is_traced(self):
        return self._node is not None

    @property
    def shape(self):
        if self._node is not None:
            return TensorShape(self._node.shape)
        return TensorShape(self._value.shape)

    def get_shape(self):
        return self.shape

    @property
    def dtype(self):
        if self._node is not None:
            return self._node.dtype
        return D.as_dtype(self._value.dtype)

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def device(self):
        return "/job:localhost/replica:0/task:0/device:CPU:0"

    def numpy(self):
        if self._node is not None:
            raise TracerError(
                "`.numpy()` was called on a traced tensor inside @fj.jit; its value exists only "
                "when the compiled function runs. Return it from the function instead.")
        if self._value.dtype == object and self._value.ndim == 0:
            return self._value.item()          # a scalar string: bytes, as TF
        return self._value

    def __array__(self, dtype=None, copy=None):
        v = self.numpy()
        return v if dtype is None else v.astype(dtype, copy=False)

    def _concrete(self, what):
        if self._node is not None:
            raise TracerError(
                f"{what} of a traced tensor inside @fj.jit: its value is not known while tracing "
                f"(tensor created at {self._node.src}). Use fj.where / fj.cond-style ops, or mark "
                f"the argument static with static_argnames.")
        return self._value

    def __bool__(self):
        return bool(self._concrete("Python truth value"))

    def __int__(self):
        return int(self._concrete("int()"))

    def __float__(self):
        return float(self._concrete("float()"))

    def __format__(self, spec):
        """'{:.4f}'.format(t) formats the value, as NumPy formats it (a scalar takes any
        number format; an array only the empty one)."""
        if not spec or self._node is not None:
            return format(str(self), spec)
        v = self._concrete("format()")
        return format(v.item() if v.ndim == 0 else v, spec)

    def __index__(self):
        v = self._concrete("use as an index")
        if not D.as_dtype(v.dtype).is_integer:
            raise TypeError("only integer tensors can be used as Python indices")
        return int(v)

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return int(self.shape[0])

    def __iter__(self):
        n = len(self)
        return (self[i] for i in range(n))

    def __hash__(self):
        return id(self)

    def ref(self):
        return self

    def __repr__(self):
        if self._node is not None:
            return f"<traced Tensor %{self._node.id} shape={self.shape!r} dtype={self.dtype.name}>"
        body = np.array2string(self._value, separator=", ")
        return f"<fj.Tensor: shape={self.shape!r}, dtype={self.dtype.name}, numpy={body}>"

    def __str__(self):
        """What print() shows, in TF2's form: fj.Tensor(b'hello', shape=(), dtype=string)."""
        if self._node is not None:
            return repr(self)
        return f"fj.Tensor({np.array2string(self._value)}, shape={self.shape!r}, dtype={self.dtype.name})"

    # the Python operators are installed by frontend/api.py (one place, next to the ops)


class DeviceTensor(Tensor):
    """An eager tensor whose value lives in a device's memory (what a jitted function
    placed on the GPU returns): a runtime/devices.DeviceArray. Its host value is fetched
    once, on first use: `.numpy()`, `np.asarray(t)`, printing, or an eager op (eager ops
    run NumPy on the host). Passed to a jitted function on that device, the memory is
    used where it is."""
    __slots__ = ("_array", "_host")

    def __init__(self, array):
        self._node = self._graph = None
        self._weak = False
        self._array, self._host = array, None

    @property
    def _value(self):
        if self._host is None:
            self._host = self._array.host()
        return self._host

    @property
    def shape(self):
        return TensorShape(self._array.shape)

    @property
    def dtype(self):
        return D.as_dtype(self._array.dtype)

    @property
    def device(self):
        return f"/job:localhost/replica:0/task:0/device:{self._array.kind}:0"

    @property
    def __cuda_array_interface__(self):
        a = self._array
        buf = a.buf if tuple(a.buf.shape) == a.shape else a.buf.reshape(a.shape)
        return buf.__cuda_array_interface__


# --- conversion ----------------------------------------------------------------
def _compatible(value_kind, target):
    if target is D.string:
        return value_kind == "O"
    if target.is_bool:
        return value_kind == "b"
    if target.is_integer:
        return value_kind in "biu"
    return value_kind in "biuf"


def to_numpy(value, dtype=None):
    """A Python/NumPy value as an ndarray of a flowjit dtype (TF's conversion rules)."""
    if isinstance(value, Tensor):
        value = value.numpy()
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        arr = value
        if dtype is None:
            dtype = D.from_numpy_value(arr)
    else:
        arr = np.asarray(value)
        if arr.dtype.kind in "US" or (arr.dtype == object and arr.size and
                                      all(isinstance(v, (str, bytes)) for v in arr.ravel())):
            arr = _bytes_array(arr)
            if dtype is not None and D.as_dtype(dtype) is not D.string:
                raise DTypeError(f"cannot convert the string {value!r} to a tensor of dtype "
                                 f"{D.as_dtype(dtype).name}")
            return arr
        if arr.dtype == object:
            raise TypeError(f"cannot convert {value!r} to a tensor")
        if dtype is None:
            if arr.dtype.kind == "f":
                dtype = D.float32
            elif arr.dtype.kind in "iu":
                dtype = D.int32 if arr.size == 0 or (np.abs(arr).max() < 2**31) else D.int64
            else:
                dtype = D.from_numpy_value(arr)
    dtype = D.as_dtype(dtype)
    if not _compatible(arr.dtype.kind, dtype) and arr.size:
        raise DTypeError(f"cannot convert a value of dtype {arr.dtype} to a tensor of dtype "
                         f"{dtype.name}; use fj.cast on a tensor to change dtypes")
    if arr.dtype != dtype.np:
        if arr.dtype.kind in "iu" and dtype.is_integer and arr.size:
            _check_int_range(arr, dtype)
        arr = arr.astype(dtype.np)
    return arr


def _bytes_array(arr):
    """Strings as TF holds them: bytes (str encoded as UTF-8), in an object array."""
    out = np.empty(arr.shape, dtype=object)
    for i, v in np.ndenumerate(arr):
        out[i] = v.encode("utf-8") if isinstance(v, str) else bytes(v)
    return out


def _check_int_range(arr, dtype):
    """An integer array converted to a narrower integer dtype (uint64 above 2^63 to
    int64, int64 to int32) must fit: NumPy's cast would wrap silently."""
    info = np.iinfo(dtype.np)
    lo, hi = arr.min(), arr.max()
    if lo < info.min or hi > info.max:
        raise DTypeError(f"cannot convert a {arr.dtype} value in [{lo}, {hi}] to {dtype.name}: "
                         f"it does not fit in [{info.min}, {info.max}]")


def convert(value, dtype=None):
    """Any tensor-like value as a Tensor (a traced constant inside a trace)."""
    if isinstance(value, Tensor):
        if dtype is not None and D.as_dtype(dtype) is not value.dtype:
            raise DTypeError(f"expected a tensor of dtype {D.as_dtype(dtype).name}, got "
                             f"{value.dtype.name}; use fj.cast")
        return value
    if hasattr(value, "_flowjit_tensor"):            # Variables
        return value._flowjit_tensor()
    if isinstance(value, (list, tuple)) and _holds_tensor(value):
        from .api import stack                       # TF packs a list of tensors
        return convert(stack([convert(v, dtype) for v in value]), dtype)
    return Tensor(value=to_numpy(value, dtype))


def _holds_tensor(seq):
    return any(isinstance(v, Tensor) or hasattr(v, "_flowjit_tensor") or
               (isinstance(v, (list, tuple)) and _holds_tensor(v)) for v in seq)


def node_of(t, ctx):
    """The graph node for tensor t in trace ctx (eager tensors become constants; in a
    loop body, values from outside become the body's captured inputs)."""
    if ctx.parent is not None and (t._node is None or t._graph is not ctx.graph):
        return ctx.capture(t)
    if t._node is not None:
        if t._graph is not ctx.graph:
            raise TracerError("a tensor traced in one @fj.jit function leaked into another "
                              "(store results, not traced tensors, outside the function)")
        return t._node
    key = id(t)
    hit = ctx.captured.get(key)
    if hit is None:
        g = ctx.graph
        # a copy: the compiled function keeps its constants, and the array may be the
        # caller's (a NumPy array closed over by the jitted function), changed later
        g.consts.append(np.array(t._value, copy=True))
        node = g.add("const", (), {"index": len(g.consts) - 1}, t._value.shape, t.dtype)
        hit = ctx.captured[key] = (node, t)
    return hit[0]


def apply_op(name, inputs, attrs=None, src=None):
    """Check and run (eager) or record (traced) op `name` on Tensors `inputs`."""
    op = REGISTRY[name]
    attrs = attrs or {}
    ctx = current_trace()
    if ctx is not None:
        nodes = [node_of(t, ctx) for t in inputs]
        shapes = [n.shape for n in nodes]
        dts = [n.dtype for n in nodes]
    else:
        for t in inputs:
            if t._node is not None:
                raise TracerError(f"{name}: a traced tensor was used outside its @fj.jit function")
        shapes = [t._value.shape for t in inputs]
        dts = [D.as_dtype(t._value.dtype) for t in inputs]
    if src is None:
        src = user_src()
    try:
        with concrete_sizes():          # messages show the call's sizes, not symbols
            shape, dtype = op.infer(shapes, dts, attrs)
    except (ShapeError, DTypeError, IndexError, ValueError, TypeError) as e:
        if isinstance(e, FlowjitError) and str(e).startswith(name):
            raise
        described = "; ".join(f"input {i}: {d.name}{describe_shape(s)}" for i, (s, d) in enumerate(zip(shapes, dts)))
        kind = type(e) if isinstance(e, FlowjitError) else (
            ShapeError if isinstance(e, (ValueError, IndexError)) else DTypeError)
        raise kind(f"{name} (at {src}): {e} [{described}]") from None
    if ctx is not None:
        node = ctx.graph.add(name, [n.id for n in nodes], attrs, shape, dtype, src)
        node.phase = ctx.phase
        out = Tensor(node=node, graph=ctx.graph)
    else:
        with np.errstate(all="ignore"):
            value = op.ref([t._value for t in inputs], attrs, shape, dtype)
        value = np.asarray(value)
        if value.dtype != dtype.np:
            value = value.astype(dtype.np)
        if value.shape != tuple(shape):
            value = np.broadcast_to(value, tuple(shape)).copy()
        out = Tensor(value=value)
    tapes = getattr(_state, "tapes", None)
    if tapes:
        for tape in tapes:
            tape._maybe_record(name, inputs, attrs, out)
    return out


def tracing_or_recording():
    """Whether a trace is open or an eager tape records on this thread (one read of the
    thread's state: a jitted call asks on every call)."""
    stack = getattr(_state, "stack", None)
    if stack:
        return True
    tapes = getattr(_state, "tapes", None)
    return bool(tapes) and any(t._recording for t in tapes)


def active_tapes():
    tapes = getattr(_state, "tapes", None)
    if tapes is None:
        tapes = _state.tapes = []
    return tapes


def describe_shape(shape):
    """`(3, 4)`: the sizes of the call being traced, then the symbols behind them
    (`(3, 4) [d0_0, d0_1]`) when some are symbolic (runtime sizes under jit)."""
    concrete = tuple(hint(d) for d in shape)
    text = str(concrete) if len(shape) != 1 else f"({concrete[0]},)"
    if any(isinstance(d, Sym) for d in shape):
        text += " [" + ", ".join(symbolic(d) for d in shape) + "]"
    return text
