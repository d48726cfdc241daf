"""`tf.summary`: TF1 summary ops and `FileWriter`, mapped onto `fj.summary`.

`tf.summary.scalar(name, t)` / `histogram(name, t)` are graph ops (in the SUMMARIES
collection, named by the name scope like TF1's: the op's name is also its tag) whose
fetched value is a serialized `Summary` protobuf; `merge` / `merge_all` give an op whose
value is the merged `Summary`. The bytes are made on the host: a session fetches a
summary's numeric inputs alongside the other fetches from the compiled plan (which
stays numeric) and then builds the protos with `fj.summary.scalar_summary` /
`histogram_summary` / `merge_summaries` (session.py, `_Plan.leaf_values`).

`FileWriter(logdir, graph)` writes event files through `fj.summary.SummaryWriter` (the
`tensorboard` package's writer); a TF1 graph becomes a `GraphDef` (`graph_def`) with
TF1's node names, op types, inputs (`^op` for control inputs), devices, dtypes and
static shapes, so TensorBoard's Graphs tab draws it.
"""
import re

import numpy as np

from ... import summary as fj_summary
from .errors import UnimplementedError
from .graph import Graph, GraphKeys, Operation, Tensor, TensorShape, get_default_graph, string
from . import ops as O

_INVALID_TAG_CHARS = re.compile(r"[^-/\w\.]")


def _clean_tag(name):
    """TF1 replaces characters that are not allowed in op names by '_' (and drops a
    leading '/')."""
    if name is None:
        return None
    cleaned = _INVALID_TAG_CHARS.sub("_", str(name)).lstrip("/")
    return cleaned or "summary"


def _summary_op(type_, name, family, inputs, make_bytes, collections, graph):
    """A summary op: string output of shape (), computed on the host by
    `make_bytes(tag, value of the input)` after the plan's numeric fetches."""
    name, family = _clean_tag(name), _clean_tag(family)
    base = name if family is None else f"{family}/{name}"
    with graph.name_scope(base) as scope:
        op_name = scope.rstrip("/")
    tag = op_name if family is None else f"{family}/{op_name}"
    ctrl = [op for level in graph._control_stack for op in level]
    op = Operation(graph, type_, op_name, inputs, _no_compute, ctrl,
                   {"host": True, "summary": lambda vals: make_bytes(tag, vals[0]), "tag": tag})
    op.outputs.append(Tensor(op, 0, string, TensorShape([])))
    graph._add_op(op)
    out = op.outputs[0]
    for key in ([GraphKeys.SUMMARIES] if collections is None else collections):
        graph.add_to_collection(key, out)
    return out


def _no_compute(*args):
    raise RuntimeError("internal error: a summary op is computed on the host, not in a plan")


def _numeric_input(value, what):
    t = O.convert_to_tensor(value)
    if t.dtype is string:
        raise TypeError(f"{what}: {t.name} is a string tensor; summaries take numbers")
    return t


def scalar(name, tensor, collections=None, family=None):
    """A `Summary` with one `simple_value` tagged with this op's name (TF1's
    ScalarSummary); `tensor` must be a scalar."""
    t = _numeric_input(tensor, f"tf.summary.scalar({name!r})")
    if t.shape.ndims not in (None, 0) and t.shape.num_elements() != 1:
        raise ValueError(f"tf.summary.scalar({name!r}): {t.name} has shape {t.shape}; the value of a "
                         f"scalar summary must be a scalar")
    return _summary_op("ScalarSummary", name, family, [t], fj_summary.scalar_summary, collections,
                       t.graph)


def histogram(name, values, collections=None, family=None):
    """A `Summary` with a histogram of all elements of `values` (TF1's HistogramSummary):
    a NaN or inf among them is an InvalidArgumentError when the op runs, as in TF1."""
    t = _numeric_input(values, f"tf.summary.histogram({name!r})")
    return _summary_op("HistogramSummary", name, family, [t], fj_summary.histogram_summary,
                       collections, t.graph)


def merge(inputs, collections=None, name=None):
    """One `Summary` holding the values of all `inputs` (summary tensors): TF1's
    MergeSummary, named `Merge/MergeSummary` by default."""
    inputs = list(inputs)
    if not inputs:
        raise ValueError("tf.summary.merge: no summaries to merge")
    for t in inputs:
        if not isinstance(t, Tensor) or t.dtype is not string or not t.op.attrs.get("host"):
            raise TypeError(f"tf.summary.merge: {t!r} is not a summary tensor (tf.summary.scalar, "
                            f"histogram or merge)")
    g = inputs[0].graph
    for t in inputs:
        if t.graph is not g:
            raise ValueError(f"tf.summary.merge: {t.name} belongs to another graph than {inputs[0].name}")
    with g.name_scope(name or "Merge"):
        full = g.unique_name(name or "MergeSummary")     # TF1: Merge/MergeSummary, or name/name
    ctrl = [op for level in g._control_stack for op in level]
    op = Operation(g, "MergeSummary", full, inputs, _no_compute, ctrl,
                   {"host": True, "summary": _merge_values})
    op.outputs.append(Tensor(op, 0, string, TensorShape([])))
    g._add_op(op)
    for key in (collections or []):
        g.add_to_collection(key, op.outputs[0])
    return op.outputs[0]


def _merge_values(vals):
    return fj_summary.merge_summaries([v.item() if isinstance(v, np.ndarray) else v for v in vals])


def merge_all(key=GraphKeys.SUMMARIES, scope=None, name=None):
    """Merge every summary in collection `key` of the default graph; None when there is
    none (as in TF1)."""
    summaries = get_default_graph().get_collection(key, scope)
    if not summaries:
        return None
    return merge(summaries, name=name)


def _unsupported(name):
    def f(*args, **kwargs):
        raise UnimplementedError(f"tf.summary.{name} is not supported by flowjit.compat.v1 (it has "
                                 f"tf.summary.scalar, histogram, merge, merge_all and FileWriter)")
    f.__name__ = name
    return f


image = _unsupported("image")
text = _unsupported("text")
audio = _unsupported("audio")
tensor_summary = _unsupported("tensor_summary")


# --- GraphDef -----------------------------------------------------------------------
_DT = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int32": "DT_INT32", "int64": "DT_INT64",
       "bool": "DT_BOOL", "string": "DT_STRING"}
_DTYPE_ATTR_OPS = {"VariableV2", "Const", "Placeholder", "PlaceholderWithDefault"}


def _shape_proto(tb, shape):
    S = tb["shape"].TensorShapeProto
    if shape.ndims is None:
        return S(unknown_rank=True)
    return S(dim=[S.Dim(size=-1 if d is None else d) for d in shape.as_list()])


def _const_tensor(tb, op, dtype):
    """The value of a small Const as a TensorProto (TensorBoard shows it); None if big."""
    a = op.attrs.get("value")
    if a is None or np.size(a) > 16:
        return None
    a = np.asarray(a)
    T = tb["tensor"].TensorProto
    out = T(dtype=tb["types"].DataType.Value(_DT.get(dtype.name, "DT_INVALID")),
            tensor_shape=_shape_proto(tb, TensorShape(list(a.shape))))
    if dtype is string:
        out.string_val.extend(bytes(x) if isinstance(x, (bytes, bytearray)) else str(x).encode("utf-8")
                              for x in a.ravel())
    else:
        out.tensor_content = np.ascontiguousarray(a.astype(dtype.np)).tobytes()
    return out


def graph_def(graph):
    """A TensorFlow `GraphDef` of a TF1 `tf.Graph`: one NodeDef per operation with its
    TF1 name and type, inputs (`op`, `op:1`, `^op` for control inputs), device, `T` /
    `dtype` and `_output_shapes` attributes (-1 for unknown dims), Const values up to
    16 elements, a variable's `shape`, a summary's `tag`, and the user's source line."""
    tb = fj_summary._tb()
    from tensorboard.compat.proto import tensor_pb2
    tb = dict(tb, tensor=tensor_pb2)
    A, DT = tb["attr"], tb["types"].DataType
    nodes = []
    for op in graph.get_operations():
        attr = {}
        if op.outputs:
            dtype = op.outputs[0].dtype
            key = "dtype" if op.type in _DTYPE_ATTR_OPS else "T"
            attr[key] = A.AttrValue(type=DT.Value(_DT.get(dtype.name, "DT_INVALID")))
            attr["_output_shapes"] = A.AttrValue(list=A.AttrValue.ListValue(
                shape=[_shape_proto(tb, t.shape) for t in op.outputs]))
            if op.type in ("VariableV2", "Placeholder"):
                attr["shape"] = A.AttrValue(shape=_shape_proto(tb, op.outputs[0].shape))
            if op.type == "Const":
                value = _const_tensor(tb, op, dtype)
                if value is not None:
                    attr["value"] = A.AttrValue(tensor=value)
        if "tag" in op.attrs:
            attr["tag"] = A.AttrValue(s=op.attrs["tag"].encode("utf-8"))
        if op._src:
            attr["_src"] = A.AttrValue(s=str(op._src).encode("utf-8"))
        inputs = [t.op.name if t.value_index == 0 else t.name for t in op.inputs]
        inputs += [f"^{c.name}" for c in op.control_inputs]
        nodes.append(tb["node"].NodeDef(name=op.name, op=op.type, input=inputs, device=op.device or "",
                                        attr=attr))
    return tb["graph"].GraphDef(node=nodes)


_graph_def = graph_def       # FileWriter.add_graph has a parameter of that name


# --- FileWriter ---------------------------------------------------------------------
def _summary_value(summary):
    """bytes or a Summary proto from what `sess.run(summary_op)` gives (or a proto)."""
    if isinstance(summary, np.ndarray) and summary.dtype == object and summary.ndim == 0:
        summary = summary.item()
    if isinstance(summary, (bytes, bytearray)) or hasattr(summary, "SerializeToString"):
        return summary
    raise TypeError(f"FileWriter.add_summary: expected a serialized Summary (what sess.run of a "
                    f"tf.summary op returns) or a Summary proto, got {type(summary).__name__}")


class FileWriter:
    """TF1's `tf.summary.FileWriter(logdir, graph=None)`: event files for TensorBoard,
    written by `fj.summary.SummaryWriter`. Given `graph` (e.g. `sess.graph`), the graph
    is written at once for the Graphs tab."""

    def __init__(self, logdir, graph=None, max_queue=10, flush_secs=120, graph_def=None,
                 filename_suffix=None, session=None):
        self._logdir = str(logdir)
        self._args = dict(max_queue=max_queue, flush_secs=flush_secs, filename_suffix=filename_suffix or "")
        self._writer = fj_summary.SummaryWriter(self._logdir, **self._args)
        if graph is not None or graph_def is not None:
            self.add_graph(graph, graph_def=graph_def)

    def get_logdir(self):
        return self._logdir

    def add_summary(self, summary, global_step=None):
        """`summary`: the serialized Summary a summary op's fetch returns (or a proto)."""
        if global_step is not None:
            global_step = int(np.asarray(global_step))
        self._writer.add_summary(_summary_value(summary), global_step)

    def add_graph(self, graph, global_step=None, graph_def=None):
        """Write `graph` (a `tf.Graph`, or `graph_def=` a GraphDef) for the Graphs tab."""
        if graph is not None and graph_def is not None:
            raise ValueError("FileWriter.add_graph: pass graph or graph_def, not both")
        if isinstance(graph, Graph):
            gd = _graph_def(graph)
        elif graph is not None:
            raise TypeError(f"FileWriter.add_graph: expected a tf.Graph, got {type(graph).__name__}")
        else:
            gd = graph_def
        self._writer.add_graph(gd, step=0 if global_step is None else int(global_step))

    def add_event(self, event):
        self._writer.add_event(event)

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()

    def reopen(self):
        """After close(), write further events to a new event file in the same logdir."""
        if self._writer.closed:
            self._writer = fj_summary.SummaryWriter(self._logdir, **self._args)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<tf.summary.FileWriter {self._logdir!r}>"


class FileWriterCache:
    """One FileWriter per logdir, shared (TF1's FileWriterCache)."""
    _cache = {}

    @staticmethod
    def get(logdir):
        w = FileWriterCache._cache.get(str(logdir))
        if w is None:
            w = FileWriterCache._cache[str(logdir)] = FileWriter(logdir)
        return w

    @staticmethod
    def clear():
        for w in FileWriterCache._cache.values():
            w.close()
        FileWriterCache._cache.clear()
