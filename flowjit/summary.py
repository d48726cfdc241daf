"""`fj.summary`: TensorBoard event files, TF2-style.

    writer = fj.summary.create_file_writer("logs/run1")
    with writer.as_default():
        fj.summary.scalar("loss", loss, step=step)
        fj.summary.histogram("w1", w1, step=step)
        fj.summary.graph(train_step, x, y)      # the traced graph, for the Graphs tab

Events are written by the `tensorboard` package's `EventFileWriter` (install the extra:
`pip install 'flowjit[tensorboard]'`); this module only builds the protos. The writer
also has the TF1 `FileWriter` surface (`add_summary(serialized_summary, global_step)`,
`add_graph`, `add_event`), and `scalar_summary` / `histogram_summary` /
`merge_summaries` return serialized `Summary` protos, so `tf.summary.merge_all` and
`FileWriter` can map onto this module.
"""
import contextlib
import time

import numpy as np

from .runtime import process

_INSTALL = ("fj.summary needs the tensorboard package to write event files: "
            "pip install 'flowjit[tensorboard]'  (or: pip install tensorboard)")


def _tb():
    """The tensorboard modules used here (imported on first use: they are not light)."""
    try:
        from tensorboard.compat.proto import (attr_value_pb2, event_pb2, graph_pb2, node_def_pb2,
                                              summary_pb2, tensor_shape_pb2, types_pb2)
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise ImportError(_INSTALL) from None
    return dict(attr=attr_value_pb2, event=event_pb2, graph=graph_pb2, node=node_def_pb2,
                summary=summary_pb2, shape=tensor_shape_pb2, types=types_pb2, EventFileWriter=EventFileWriter)


def _to_numpy(value, what):
    from .frontend.tensor import current_trace
    if current_trace() is not None:
        raise TypeError(f"fj.summary.{what} inside @fj.jit: summaries are written eagerly; return the "
                        f"value from the jitted function and write it outside")
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


# -- Summary protos (serialized bytes, like TF1's summary ops return) ---------------------

def scalar_summary(tag, value):
    """A serialized `Summary` with one scalar (TensorBoard's Scalars tab)."""
    a = _to_numpy(value, "scalar")
    if a.size != 1:
        raise ValueError(f"fj.summary.scalar({tag!r}): value of shape {a.shape} is not a scalar")
    pb = _tb()["summary"]
    return pb.Summary(value=[pb.Summary.Value(tag=tag, simple_value=float(a.reshape(())))]).SerializeToString()


def histogram_summary(tag, values, buckets=30):
    """A serialized `Summary` with a histogram of `values` (TensorBoard's Histograms and
    Distributions tabs): `buckets` equal-width buckets between the min and the max."""
    a = _to_numpy(values, "histogram").astype(np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"fj.summary.histogram({tag!r}): no values")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"fj.summary.histogram({tag!r}): values contain NaN or inf")
    lo, hi = float(a.min()), float(a.max())
    if lo == hi:
        counts, limits = np.array([a.size]), np.array([hi])
    else:
        counts, edges = np.histogram(a, bins=int(buckets), range=(lo, hi))
        limits = edges[1:]          # bucket i holds values <= limits[i] (and > limits[i-1])
    pb = _tb()["summary"]
    h = pb.HistogramProto(min=lo, max=hi, num=float(a.size), sum=float(a.sum()),
                          sum_squares=float(np.dot(a, a)), bucket_limit=limits.tolist(),
                          bucket=counts.astype(np.float64).tolist())
    return pb.Summary(value=[pb.Summary.Value(tag=tag, histo=h)]).SerializeToString()


def merge_summaries(serialized):
    """One serialized `Summary` holding the values of all of `serialized` (TF1 `merge`)."""
    pb = _tb()["summary"]
    out = pb.Summary()
    for s in serialized:
        out.MergeFromString(s)
    return out.SerializeToString()


# -- graphs -----------------------------------------------------------------------------

_TF_TYPES = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int32": "DT_INT32", "int64": "DT_INT64",
             "bool": "DT_BOOL"}


def graph_def(graph):
    """A TensorFlow `GraphDef` proto drawing a flowjit `ir.Graph`: one NodeDef per node,
    named `<op>_<id>` (inputs under `inputs/`, variables under `variables/` with '/' in
    their names written '.', so `w` and its slot `w/m` are two nodes; nodes the
    gradient tape made under `gradients/`), with dtype, output shape (-1 for symbolic
    sizes), attributes and the user's source line; variable assignments become
    `assign/<variable>` nodes and the results `outputs/<k>`."""
    tb = _tb()
    A, T = tb["attr"], tb["types"]
    names = {}
    for n in graph.nodes:
        if n.op == "arg":
            names[n.id] = f"variables/{n.attrs['variable'].split(':')[0].replace('/', '.')}" if "variable" in n.attrs \
                else f"inputs/input_{n.attrs.get('index', n.id)}"
        else:
            names[n.id] = ("gradients/" if n.phase == "bwd" else "") + f"{n.op}_{n.id}"

    def shape_proto(shape):
        dims = [tb["shape"].TensorShapeProto.Dim(size=d if isinstance(d, (int, np.integer)) else -1)
                for d in shape]
        return tb["shape"].TensorShapeProto(dim=dims)

    def attrs(dtype, shape, extra):
        out = {"T": A.AttrValue(type=T.DataType.Value(_TF_TYPES.get(dtype.name, "DT_INVALID"))),
               "_output_shapes": A.AttrValue(list=A.AttrValue.ListValue(shape=[shape_proto(shape)]))}
        for k, v in extra.items():
            if k == "value":
                a = np.asarray(v)
                v = a.tolist() if a.size <= 16 else f"<{a.dtype}{list(a.shape)}>"
            out[k] = A.AttrValue(s=str(v).encode("utf-8"))
        return out

    nodes = []
    for n in graph.nodes:
        extra = dict(n.attrs)
        if n.src:
            extra["src"] = n.src
        nodes.append(tb["node"].NodeDef(name=names[n.id], op=n.op, input=[names[i] for i in n.inputs],
                                        attr=attrs(n.dtype, n.shape, extra)))
    for var_node, value_node in graph.effects:
        v = graph.nodes[var_node]
        nodes.append(tb["node"].NodeDef(
            name=f"assign/{names[var_node].split('/', 1)[1]}", op="assign",
            input=[names[value_node], names[var_node]], attr=attrs(v.dtype, v.shape, {})))
    for k, o in enumerate(graph.outputs):
        v = graph.nodes[o]
        nodes.append(tb["node"].NodeDef(name=f"outputs/output_{k}", op="output", input=[names[o]],
                                        attr=attrs(v.dtype, v.shape, {})))
    return tb["graph"].GraphDef(node=nodes)


def _as_graph_def(graph_or_fn, args, kwargs, optimized):
    tb = _tb()
    if isinstance(graph_or_fn, tb["graph"].GraphDef):
        return graph_or_fn
    if isinstance(graph_or_fn, (bytes, bytearray)):
        g = tb["graph"].GraphDef()
        g.ParseFromString(bytes(graph_or_fn))
        return g
    from .frontend.jit import JitFunction
    from .ir.graph import Graph
    if isinstance(graph_or_fn, Graph):
        return graph_def(graph_or_fn)
    if isinstance(graph_or_fn, JitFunction):
        ins = graph_or_fn.inspect(*args, **kwargs)
        return graph_def(ins.optimized_graph_ir if optimized else ins.graph_ir)
    raise TypeError(f"fj.summary.graph: expected a @fj.jit function (with its arguments), an ir.Graph "
                    f"or a GraphDef, got {type(graph_or_fn).__name__}")


# -- the writer -------------------------------------------------------------------------

_default_writers = []


class _DiscardingEventWriter:
    """What a rank that does not write files (runtime/process.py) writes events to."""

    def add_event(self, event):
        pass

    def flush(self):
        pass

    def close(self):
        pass

_default_step = [None]


class SummaryWriter:
    """Writes one event file under `logdir` (what `create_file_writer` returns).

    TF2 surface: `as_default()` (a context manager; also `with writer:`),
    `set_as_default()`, `flush()`, `close()`. TF1 `FileWriter` surface:
    `add_summary(serialized, global_step)`, `add_graph(graph_def)`, `add_event(event)`,
    plus `add_scalar` / `add_histogram` for direct use."""

    def __init__(self, logdir, max_queue=10, flush_secs=120, filename_suffix=""):
        tb = _tb()
        self.logdir = str(logdir)
        self._pb = tb
        if process.writes_files():
            self._writer = tb["EventFileWriter"](self.logdir, max_queue_size=max_queue,
                                                 flush_secs=flush_secs, filename_suffix=filename_suffix)
        else:       # another rank of this multi-rank job writes the event files
            self._writer = _DiscardingEventWriter()
        self.closed = False

    # TF1 FileWriter surface
    def add_event(self, event):
        if self.closed:
            raise ValueError(f"SummaryWriter({self.logdir!r}) is closed")
        self._writer.add_event(event)

    def add_summary(self, summary, global_step=None):
        """`summary`: a serialized `Summary` (bytes, what the *_summary functions and a TF1
        summary op return) or a `Summary` proto."""
        ev = self._pb["event"].Event(wall_time=time.time())
        if isinstance(summary, (bytes, bytearray)):
            ev.summary.ParseFromString(bytes(summary))
        else:
            ev.summary.CopyFrom(summary)
        if global_step is not None:
            ev.step = int(global_step)
        self.add_event(ev)

    def add_graph(self, graph, *args, step=0, optimized=False, **kwargs):
        """The Graphs tab: `graph` is a jitted function (traced for `*args`), an `ir.Graph`,
        a `GraphDef` or its serialization."""
        gd = _as_graph_def(graph, args, kwargs, optimized)
        self.add_event(self._pb["event"].Event(wall_time=time.time(), step=int(step),
                                               graph_def=gd.SerializeToString()))

    # direct use
    def add_scalar(self, tag, value, step):
        self.add_summary(scalar_summary(tag, value), step)

    def add_histogram(self, tag, values, step, buckets=30):
        self.add_summary(histogram_summary(tag, values, buckets), step)

    # TF2 surface
    def flush(self):
        if not self.closed:
            self._writer.flush()

    def close(self):
        if not self.closed:
            self._writer.close()
            self.closed = True
        while self in _default_writers:
            _default_writers.remove(self)

    @contextlib.contextmanager
    def as_default(self, step=None):
        _default_writers.append(self)
        old_step = _default_step[0]
        if step is not None:
            _default_step[0] = step
        try:
            yield self
        finally:
            _default_step[0] = old_step
            for i in range(len(_default_writers) - 1, -1, -1):     # the innermost entry
                if _default_writers[i] is self:
                    del _default_writers[i]
                    break
            self.flush()

    def set_as_default(self, step=None):
        _default_writers.append(self)
        if step is not None:
            _default_step[0] = step

    def __enter__(self):
        self._ctx = self.as_default()
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

    def __repr__(self):
        return f"<fj.summary.SummaryWriter {self.logdir!r}{' closed' if self.closed else ''}>"


FileWriter = SummaryWriter


def create_file_writer(logdir, max_queue=10, flush_millis=120_000, filename_suffix=""):
    """A writer of TensorBoard event files under `logdir` (created if needed)."""
    return SummaryWriter(logdir, max_queue=max_queue, flush_secs=max(flush_millis / 1000.0, 0.001),
                         filename_suffix=filename_suffix)


def _current(writer):
    return writer if writer is not None else (_default_writers[-1] if _default_writers else None)


def _step(step, what):
    step = _default_step[0] if step is None else step
    if step is None:
        raise ValueError(f"fj.summary.{what}: no step given and no default step "
                         f"(pass step=..., or fj.summary.set_step(n))")
    return int(np.asarray(step.numpy() if hasattr(step, "numpy") else step))


def set_step(step):
    """The step used by summaries written without `step=`."""
    _default_step[0] = step


def get_step():
    return _default_step[0]


def scalar(name, data, step=None, writer=None):
    """Write scalar `data` under tag `name` to the default writer (or `writer`). Like
    TF2, returns False and writes nothing when there is no writer."""
    w = _current(writer)
    if w is None:
        return False
    w.add_scalar(name, data, _step(step, "scalar"))
    return True


def histogram(name, data, step=None, buckets=30, writer=None):
    """Write a histogram of `data` under tag `name` (False when there is no writer)."""
    w = _current(writer)
    if w is None:
        return False
    w.add_histogram(name, data, _step(step, "histogram"), buckets)
    return True


def graph(graph_or_fn, *args, step=0, optimized=False, writer=None, **kwargs):
    """Write a graph for TensorBoard's Graphs tab: `fj.summary.graph(train_step, x, y)`
    draws the graph `train_step` traces for those arguments (`optimized=True`: after
    simplification, with the backward nodes); also takes an `ir.Graph` or a GraphDef.
    False when there is no writer."""
    w = _current(writer)
    if w is None:
        return False
    w.add_graph(graph_or_fn, *args, step=step, optimized=optimized, **kwargs)
    return True


def flush(writer=None):
    w = _current(writer)
    if w is not None:
        w.flush()
