"""The TF1 graph: `Graph`, `Operation`, `Tensor`, `TensorShape`, name scopes, control
dependencies and device scopes.

The graph is a symbolic Python DAG. Each `Operation` knows its inputs and how to
compute its outputs from their values with flowjit ops (`Operation.compute`); the
session turns the part of the DAG that a fetch needs into one Python function and
compiles it with `fj.jit` (session.py). Static shapes (`get_shape()`, `print(t)`) come
from flowjit's own shape rules: every graph keeps an abstract flowjit trace in which a
placeholder's `None` dims are symbolic sizes, and a new op is first applied there, so
shape errors between known dims are raised while the graph is built, as in TF1.
"""
import contextlib
import threading

import numpy as np

from ... import dtypes as D
from ...errors import DTypeError, FlowjitError
from ...frontend.tensor import Tensor as FjTensor, TraceContext, user_src
from ...ir.graph import Graph as IRGraph
from ...ir.shapes import Sym

# A placeholder's None dim is a symbol with this size in the abstract trace; a static
# result that is a multiple of it came from such a dim and is reported as unknown.
_UNKNOWN_HINT = 1000003


# --- shapes -----------------------------------------------------------------------
class Dimension:
    """One dim of a TF1 `TensorShape` (`.value` is an int or None)."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = None if value is None else int(value)

    def __int__(self):
        if self.value is None:
            raise ValueError("int() of an unknown Dimension")
        return self.value

    __index__ = __int__

    def __eq__(self, other):
        other = other.value if isinstance(other, Dimension) else other
        if self.value is None or other is None:
            return None
        return self.value == other

    def __ne__(self, other):
        r = self.__eq__(other)
        return None if r is None else not r

    def __hash__(self):
        return hash(self.value)

    def __repr__(self):
        return f"Dimension({self.value})"

    def __str__(self):
        return "?" if self.value is None else str(self.value)


class TensorShape:
    """A static shape with unknown dims (None) or unknown rank, printed as TF1 does."""

    def __init__(self, dims):
        if dims is None:
            self._dims = None
        else:
            if isinstance(dims, TensorShape):
                dims = dims.as_list() if dims._dims is not None else None
            self._dims = None if dims is None else [
                d.value if isinstance(d, Dimension) else (None if d is None else int(d)) for d in dims]

    @property
    def dims(self):
        return None if self._dims is None else [Dimension(d) for d in self._dims]

    @property
    def ndims(self):
        return None if self._dims is None else len(self._dims)

    rank = ndims

    def as_list(self):
        if self._dims is None:
            raise ValueError("as_list() is not defined on an unknown TensorShape")
        return list(self._dims)

    def is_fully_defined(self):
        return self._dims is not None and all(d is not None for d in self._dims)

    def num_elements(self):
        if not self.is_fully_defined():
            return None
        return int(np.prod(self._dims, dtype=np.int64))

    def is_compatible_with(self, other):
        other = other if isinstance(other, TensorShape) else TensorShape(other)
        if self._dims is None or other._dims is None:
            return True
        if len(self._dims) != len(other._dims):
            return False
        return all(a is None or b is None or a == b for a, b in zip(self._dims, other._dims))

    def __len__(self):
        if self._dims is None:
            raise ValueError("len() of a TensorShape of unknown rank")
        return len(self._dims)

    def __iter__(self):
        if self._dims is None:
            raise ValueError("cannot iterate over a TensorShape of unknown rank")
        return iter(Dimension(d) for d in self._dims)

    def __getitem__(self, key):
        if self._dims is None:
            return Dimension(None) if isinstance(key, int) else TensorShape(None)
        if isinstance(key, slice):
            return TensorShape(self._dims[key])
        return Dimension(self._dims[key])

    def __eq__(self, other):
        try:
            other = other if isinstance(other, TensorShape) else TensorShape(other)
        except (TypeError, ValueError):
            return NotImplemented
        return self._dims == other._dims

    def __hash__(self):
        return hash(None if self._dims is None else tuple(self._dims))

    def __str__(self):
        if self._dims is None:
            return "<unknown>"
        parts = ["?" if d is None else str(d) for d in self._dims]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"

    def __repr__(self):
        if self._dims is None:
            return "TensorShape(None)"
        return "TensorShape([" + ", ".join(repr(Dimension(d)) for d in self._dims) + "])"


def as_shape(shape):
    return shape if isinstance(shape, TensorShape) else TensorShape(shape)


def _static_dims(fj_shape):
    """A shape from the abstract trace as TF1 dims (symbolic sizes are unknown)."""
    out = []
    for d in fj_shape:
        if isinstance(d, Sym):
            n = d.norm()
            out.append(None if isinstance(n, Sym) else _static_int(n))
        else:
            out.append(_static_int(d))
    return out


def _static_int(d):
    d = int(d)
    return None if d >= _UNKNOWN_HINT and d % _UNKNOWN_HINT == 0 else d


# TF1's string dtype: only string *constants* exist, and a session returns them as they
# are (hello-world programs); no op computes with them.
string = D.DType("string", object)


# --- the graph ----------------------------------------------------------------------
class GraphKeys:
    GLOBAL_VARIABLES = "variables"
    TRAINABLE_VARIABLES = "trainable_variables"
    LOCAL_VARIABLES = "local_variables"
    SUMMARIES = "summaries"
    GLOBAL_STEP = "global_step"
    UPDATE_OPS = "update_ops"
    METRIC_VARIABLES = "metric_variables"
    REGULARIZATION_LOSSES = "regularization_losses"
    LOSSES = "losses"
    VARIABLES = GLOBAL_VARIABLES


class Graph:
    """A TF1 graph: operations with unique names, collections, scopes."""

    def __init__(self):
        self._ops = []
        self._by_name = {}
        self._names_in_use = {}
        self._name_stack = ""
        self._control_stack = []      # lists of control-input ops, innermost last
        self._device_stack = []
        self._collections = {}
        self.seed = None
        self._finalized = False
        self._abstract = _AbstractTrace()
        self._version = 0

    # -- names ---------------------------------------------------------------------
    def unique_name(self, name, mark_as_used=True):
        """TF1's rule: names are unique case-insensitively; repeats get _1, _2, ..."""
        if self._name_stack:
            name = self._name_stack + "/" + name
        key = name.lower()
        i = self._names_in_use.get(key, 0)
        if mark_as_used:
            self._names_in_use[key] = i + 1
        if i > 0:
            base = key
            while key in self._names_in_use:
                key = f"{base}_{i}"
                i += 1
            if mark_as_used:
                self._names_in_use[key] = 1
            name = f"{name}_{i - 1}"
        return name

    def get_name_scope(self):
        return self._name_stack

    @contextlib.contextmanager
    def name_scope(self, name):
        old = self._name_stack
        if not name:
            new = ""
        elif name.endswith("/"):
            new = name[:-1]
        else:
            new = self.unique_name(name)
        self._name_stack = new
        try:
            yield (new + "/") if new else ""
        finally:
            self._name_stack = old

    # -- scopes --------------------------------------------------------------------
    @contextlib.contextmanager
    def control_dependencies(self, control_inputs):
        if control_inputs is None:
            saved, self._control_stack = self._control_stack, []
            try:
                yield
            finally:
                self._control_stack = saved
            return
        ops = []
        for c in control_inputs:
            ops.append(as_operation(c))
        self._control_stack.append(ops)
        try:
            yield
        finally:
            self._control_stack.pop()

    @contextlib.contextmanager
    def device(self, spec):
        """Ops created in the block get this device: a string (merged into the enclosing
        blocks' one, field by field: "/job:ps/task:0", "/gpu:0", "/job:worker/task:1/cpu:0"),
        a function of the op returning one (tf.train.replica_device_setter), or None
        (clears it)."""
        if callable(spec):
            entry = spec
        elif spec is None or spec == "":
            entry = None
        else:
            if hasattr(spec, "to_string"):
                spec = spec.to_string()
            parse_device(spec)                 # fails now, at the user's line
            entry = str(spec)
        self._device_stack.append(entry)
        try:
            yield
        finally:
            self._device_stack.pop()

    def _device_of(self, op):
        """The device string of an op created now (see device())."""
        merged = {}
        for entry in self._device_stack:
            if entry is None:
                merged = {}
            elif callable(entry):
                op.device = device_string(merged)
                got = entry(op)
                if got:
                    merged = {**merged, **parse_device(got.to_string() if hasattr(got, "to_string") else got)}
            else:
                merged = {**merged, **parse_device(entry)}
        return device_string(merged)

    @contextlib.contextmanager
    def as_default(self):
        _default_stack().append(self)
        try:
            yield self
        finally:
            _default_stack().pop()

    # -- lookup --------------------------------------------------------------------
    def get_operations(self):
        return list(self._ops)

    def get_operation_by_name(self, name):
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"the graph has no operation named {name!r}") from None

    def get_tensor_by_name(self, name):
        op_name, _, idx = name.rpartition(":")
        if not op_name or not idx.isdigit():
            raise ValueError(f"{name!r} is not a tensor name (it needs an output index, e.g. 'Add:0')")
        op = self.get_operation_by_name(op_name)
        i = int(idx)
        if i >= len(op.outputs):
            raise KeyError(f"operation {op_name!r} has {len(op.outputs)} outputs, not {i + 1}")
        return op.outputs[i]

    def as_graph_element(self, obj):
        if isinstance(obj, (Tensor, Operation)):
            if obj.graph is not self:
                raise ValueError(f"{obj.name} belongs to another graph")
            return obj
        if isinstance(obj, str):
            return self.get_tensor_by_name(obj) if ":" in obj else self.get_operation_by_name(obj)
        raise TypeError(f"cannot interpret {obj!r} as a tensor or operation of the graph")

    # -- collections ---------------------------------------------------------------
    def add_to_collection(self, name, value):
        self._collections.setdefault(name, []).append(value)

    def add_to_collections(self, names, value):
        for n in ([names] if isinstance(names, str) else names):
            self.add_to_collection(n, value)

    def get_collection(self, name, scope=None):
        items = list(self._collections.get(name, []))
        if scope:
            items = [x for x in items if getattr(x, "name", "").startswith(scope)]
        return items

    def get_collection_ref(self, name):
        return self._collections.setdefault(name, [])

    def as_graph_def(self, from_version=None, add_shapes=False):
        """This graph as a TensorFlow `GraphDef` proto (needs the tensorboard package;
        see summary.graph_def)."""
        from .summary import graph_def
        return graph_def(self)

    def finalize(self):
        self._finalized = True

    @property
    def finalized(self):
        return self._finalized

    # -- op creation -----------------------------------------------------------------
    def _add_op(self, op):
        if self._finalized:
            raise RuntimeError("Graph is finalized and cannot be modified.")
        op._id = len(self._ops)
        self._ops.append(op)
        self._by_name[op.name] = op
        self._version += 1


# --- default graph ----------------------------------------------------------------
_local = threading.local()
_global_default = []


def _default_stack():
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def get_default_graph():
    s = _default_stack()
    if s:
        return s[-1]
    if not _global_default:
        _global_default.append(Graph())
    return _global_default[0]


def reset_default_graph():
    if _default_stack():
        raise AssertionError("Do not use tf.reset_default_graph() inside a `with graph.as_default()` "
                             "block or a Session context; leave it first")
    _global_default[:] = [Graph()]


# --- device strings ------------------------------------------------------------------
def parse_device(spec):
    """'/job:ps/replica:0/task:1/device:GPU:0' (any part left out; '/cpu:0', 'GPU:1',
    'cpu' too) -> {"job", "replica", "task", "type", "index"} (the parts given)."""
    d = {}
    text = str(spec).strip()
    for part in text.split("/"):
        if not part:
            continue
        key, _, rest = part.partition(":")
        k = key.lower()
        if k == "job" and rest:
            d["job"] = rest
        elif k in ("replica", "task") and rest.isdigit():
            d[k] = int(rest)
        elif k == "device" and rest:
            typ, _, idx = rest.partition(":")
            if typ.lower() not in ("cpu", "gpu") or not (idx.isdigit() or idx in ("", "*")):
                raise ValueError(f"tf.device: cannot parse device {spec!r}")
            d["type"], d["index"] = typ.upper(), int(idx) if idx.isdigit() else 0
        elif k in ("cpu", "gpu") and (rest.isdigit() or rest in ("", "*")):
            d["type"], d["index"] = k.upper(), int(rest) if rest.isdigit() else 0
        else:
            raise ValueError(f"tf.device: cannot parse device {spec!r}; use e.g. '/cpu:0', '/gpu:0', "
                             f"'/job:ps/task:0' or '/job:worker/task:1/gpu:0'")
    return d


def device_string(d):
    out = ""
    if "job" in d:
        out += f"/job:{d['job']}"
    if "replica" in d:
        out += f"/replica:{d['replica']}"
    if "task" in d:
        out += f"/task:{d['task']}"
    if "type" in d:
        out += f"/device:{d['type']}:{d.get('index', 0)}"
    return out


def local_device(spec):
    """The device part of a device string ('/device:GPU:0'), '' when it names none."""
    d = parse_device(spec) if spec else {}
    return f"/device:{d['type']}:{d.get('index', 0)}" if "type" in d else ""


# --- operations and tensors ----------------------------------------------------------
class Operation:
    """A node of the TF1 graph. `compute(ev, values)` returns its outputs' flowjit
    values; `stateful` ops (variables, assignments, random, optimizer steps) get the
    evaluator so they can reach the session's state."""

    def __init__(self, graph, type, name, inputs, compute, control_inputs=(), attrs=None,
                 stateful=False):
        self.graph = graph
        self.type = type
        self.name = name
        self.inputs = list(inputs)
        self.control_inputs = list(control_inputs)
        self.outputs = []
        self.compute = compute
        self.attrs = dict(attrs or {})
        self.stateful = stateful
        self.device = ""
        self.device = graph._device_of(self) if graph._device_stack else ""
        self._src = user_src()
        self._id = None
        self._cf_context = None   # the loop body / cond branch (control_flow.Subgraph) it is part of

    @property
    def node_def(self):
        return self

    def values(self):
        return tuple(self.outputs)

    def get_attr(self, name):
        return self.attrs[name]

    def run(self, feed_dict=None, session=None):
        from .session import _session_for
        _session_for(self, session).run(self, feed_dict)

    def __repr__(self):
        return f"<tf.Operation '{self.name}' type={self.type}>"

    def __str__(self):
        ins = "".join(f'\ninput: "{t.name[:-2] if t.name.endswith(":0") else t.name}"' for t in self.inputs)
        ctl = "".join(f'\ninput: "^{c.name}"' for c in self.control_inputs)
        return f'name: "{self.name}"\nop: "{self.type}"{ins}{ctl}'


def as_operation(x):
    if isinstance(x, Operation):
        return x
    if isinstance(x, Tensor):
        return x.op
    if hasattr(x, "op"):
        return x.op
    raise TypeError(f"{x!r} is neither a tf.Operation nor a tf.Tensor")


class Tensor:
    """One output of an Operation: `name` is 'op_name:index'."""

    __array_priority__ = 100
    __array_ufunc__ = None       # ndarray <op> Tensor defers to the Tensor's operators

    @staticmethod
    def __flowjit_custom_op__(name, fn, args, attrs):
        """`fj.custom_op` called on TF1 tensors: an op of type `name` in this graph."""
        from .ops import apply
        return apply(name, lambda *xs: fn(*xs, **attrs), args)

    def __init__(self, op, index, dtype, shape, abstract=None):
        self.op = op
        self.value_index = index
        self.dtype = dtype if dtype is string else D.as_dtype(dtype)
        self._shape = as_shape(shape)
        self._abstract = abstract     # the flowjit traced tensor standing for it, or None

    @property
    def name(self):
        return f"{self.op.name}:{self.value_index}"

    @property
    def graph(self):
        return self.op.graph

    @property
    def device(self):
        return self.op.device

    @property
    def shape(self):
        return self._shape

    def get_shape(self):
        return self._shape

    def set_shape(self, shape):
        shape = as_shape(shape)
        if not self._shape.is_compatible_with(shape):
            raise ValueError(f"set_shape: shape {shape} is not compatible with {self._shape} of {self.name}")
        if shape._dims is None:
            return
        if self._shape._dims is None:
            self._shape = shape
        else:
            self._shape = TensorShape([a if a is not None else b
                                       for a, b in zip(self._shape._dims, shape._dims)])

    def consumers(self):
        return [op for op in self.graph._ops if any(t is self for t in op.inputs)]

    def eval(self, feed_dict=None, session=None):
        from .session import _session_for
        return _session_for(self, session).run(self, feed_dict)

    def __repr__(self):
        return f"<tf.Tensor '{self.name}' shape={self._shape} dtype={self.dtype.name}>"

    def __str__(self):
        return f'Tensor("{self.name}", shape={self._shape}, dtype={self.dtype.name})'

    def __hash__(self):
        return id(self)

    def __bool__(self):
        raise TypeError("Using a `tf.Tensor` as a Python `bool` is not allowed: its value exists "
                        "only when a Session runs it. Use tf.cond-free code or sess.run(t).")

    def __iter__(self):
        raise TypeError("`tf.Tensor` objects are not iterable while the graph is built; "
                        "use tf.unstack or slice it")

    def __len__(self):
        raise TypeError("len() of a tf.Tensor is not defined; use t.get_shape()")

    # Python operators are installed by ops.py (TF1 names them `add`, `mul`, ...)


# --- the abstract trace (shape and dtype inference) ------------------------------------
class _AbstractTrace:
    """A flowjit trace that is never compiled: each TF1 tensor of known rank has a traced
    stand-in whose None dims are symbols, so flowjit's shape rules give TF1's static
    shapes (and raise its shape errors) as the graph is built."""

    def __init__(self):
        self.graph = IRGraph()
        self.ctx = TraceContext(self.graph)

    def new_input(self, shape, dtype):
        shape = as_shape(shape)
        if shape._dims is None:
            return None
        g = self.graph
        k = len(g.args)
        dims = tuple(g.env.new_symbol(_UNKNOWN_HINT, k, j) if d is None else int(d)
                     for j, d in enumerate(shape._dims))
        node = g.add("arg", (), {"index": k}, dims, D.as_dtype(dtype))
        g.args.append(node.id)
        return FjTensor(node=node, graph=g)

    def run(self, fn, args):
        with self.ctx:
            return fn(*args)


def _flatten_outputs(result):
    if isinstance(result, (list, tuple)):
        return list(result)
    return [result]


def make_op(type, compute, inputs=(), name=None, attrs=None, stateful=False, out_specs=None,
            graph=None, default_name=None):
    """Create an op in the default graph (or `graph`) and its output tensors.

    `compute(*values)` (or `compute(ev, *values)` when stateful) maps input values to
    output values. The output dtypes/shapes come from `out_specs` [(dtype, shape)] when
    given, otherwise from running `compute` on the abstract stand-ins of the inputs."""
    graph = graph or (inputs[0].graph if inputs else get_default_graph())
    for t in inputs:
        if t.graph is not graph:
            raise ValueError(f"{type}: tensor {t.name} belongs to another graph than the op's")
        if t.op._cf_context is not None:
            raise ValueError(f"Cannot use '{t.name}' as input to a new {type} op because it was created "
                             f"inside {t.op._cf_context.what} (at {t.op._src}) and has a value only "
                             f"there; use the loop's or the cond's results")
        if t.dtype is string:
            raise TypeError(f"{type}: {t.name} is a string tensor; flowjit computes only with "
                            f"numbers, so string constants can be fetched but not used in ops")
    full = graph.unique_name(name or default_name or type)
    ctrl = [op for level in graph._control_stack for op in level]
    op = Operation(graph, type, full, inputs, compute, ctrl, attrs, stateful)
    if out_specs is None:
        out_specs = _infer(graph, op, compute, inputs)
    else:
        out_specs = [(dt, sh, graph._abstract.new_input(sh, dt)) for dt, sh in out_specs]
    for i, (dt, sh, ab) in enumerate(out_specs):
        op.outputs.append(Tensor(op, i, dt, sh, ab))
    graph._add_op(op)
    return op


def _infer(graph, op, compute, inputs):
    ab = graph._abstract
    known = all(t._abstract is not None for t in inputs)
    if known:
        try:
            res = _flatten_outputs(ab.run(compute, [t._abstract for t in inputs]))
            return [(r.dtype, TensorShape(_static_dims(r.shape)), r) for r in res]
        except FlowjitError as e:
            # shapes that disagree only where a None dim is involved are checked when the
            # session runs (TF1 too accepts them while building the graph)
            if not any(None in (t.shape._dims or []) for t in inputs):
                raise type(e)(f"{op.type} op '{op.name}': {e}") from None
    # unknown rank (or a size question about None dims): try the op with stand-ins of two
    # ranks for the unknown inputs; what both agree on is known (a full reduction is a
    # scalar whatever its input), the rest unknown
    trials, errors = [], []
    for rank in (0, 3):
        try:
            stand = [t._abstract if t._abstract is not None else ab.new_input([None] * rank, t.dtype)
                     for t in inputs]
            trials.append(_flatten_outputs(ab.run(compute, stand)))
        except Exception as e:
            trials.append(None)
            errors.append(e)
    first, second = trials
    if first is None and second is None:
        if all(isinstance(e, DTypeError) for e in errors):     # wrong whatever the shapes
            raise DTypeError(f"{op.type} op '{op.name}': {errors[0]}") from None
        return [(inputs[0].dtype if inputs else D.float32, TensorShape(None), None)]
    res = first or second
    out = []
    for k, r in enumerate(res):
        shape = TensorShape(None)
        if first is not None and second is not None and len(first) == len(second):
            a, b = _static_dims(first[k].shape), _static_dims(second[k].shape)
            if a == b and None not in a:
                shape = TensorShape(a)
        out.append((r.dtype, shape, ab.new_input(shape, r.dtype) if shape.ndims is not None else None))
    return out
