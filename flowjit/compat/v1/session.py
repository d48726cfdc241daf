"""`tf.Session`: runs the part of the graph that the fetches need.

`sess.run(fetches, feed_dict)` finds (once per (fetches, fed tensors)) the ops the
fetches need, in an order that respects data and control dependencies, stopping at
fed tensors; it checks that every placeholder on the way is fed. That plan becomes one
Python function of the fed values that replays the ops with flowjit ops, and the
function is compiled with `fj.jit`: the fed values are its dynamic inputs (a new
batch size does not recompile), the session's `fj.Variable`s its state (assignments
are compiled effects), and a plan that takes gradients opens a GradientTape inside
the traced function (so only it gets a backward function). A run that only
initializes variables is replayed eagerly: it runs once per session, so compiling it
would cost compile time and save nothing.
"""
import contextlib
import os
import sys
import threading

import numpy as np

from ... import config as _fj_config
from ...errors import DTypeError, FlowjitError, InvalidArgumentError, ShapeError
from ...frontend import device as _device
from ...frontend.autodiff import GradientTape
from ...frontend.jit import jit
from ...frontend.random import _mix
from ...frontend.tensor import Tensor as FjTensor, current_trace, src_override
from ...frontend.variables import Variable as FjVariable
from . import cluster as _cluster
from .errors import FailedPreconditionError
from .graph import Operation, Tensor, get_default_graph, local_device, _default_stack
from .variables import Variable


class ConfigProto:
    """Session options; flowjit uses `log_device_placement` and `allow_soft_placement`
    and keeps the others for code that reads them back."""

    def __init__(self, log_device_placement=False, allow_soft_placement=False, gpu_options=None,
                 intra_op_parallelism_threads=0, inter_op_parallelism_threads=0, device_count=None,
                 **kwargs):
        self.log_device_placement = bool(log_device_placement)
        self.allow_soft_placement = bool(allow_soft_placement)
        self.gpu_options = gpu_options if gpu_options is not None else GPUOptions()
        self.intra_op_parallelism_threads = intra_op_parallelism_threads
        self.inter_op_parallelism_threads = inter_op_parallelism_threads
        self.device_count = dict(device_count or {})
        for k, v in kwargs.items():
            setattr(self, k, v)


class GPUOptions:
    def __init__(self, allow_growth=False, per_process_gpu_memory_fraction=1.0, **kwargs):
        self.allow_growth = allow_growth
        self.per_process_gpu_memory_fraction = per_process_gpu_memory_fraction
        for k, v in kwargs.items():
            setattr(self, k, v)


class RunOptions:
    FULL_TRACE = 3

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class RunMetadata:
    pass


# --- default session ---------------------------------------------------------------------
_local = threading.local()


def _session_stack():
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def get_default_session():
    s = _session_stack()
    return s[-1] if s else None


def _session_for(obj, session):
    sess = session or get_default_session()
    if sess is None:
        raise ValueError(f"Cannot evaluate {obj.name} with eval()/run(): no default session is "
                         f"registered. Use `with tf.Session() as sess:`, `with sess.as_default():` "
                         f"or pass session=sess")
    if sess.graph is not obj.graph:
        raise ValueError(f"{obj.name} belongs to another graph than the session's")
    return sess


# --- per-op random streams -----------------------------------------------------------------
class _Stream:
    """64-bit keys for one random op in one session: one per run."""

    def __init__(self, parts):
        self.parts = parts
        self.count = 0

    def next_key(self):
        k = _mix(*self.parts, self.count)
        self.count += 1
        return np.int64(np.uint64(k).view(np.int64))


# --- the plan of one (fetches, feeds) --------------------------------------------------------
class _Plan:
    def __init__(self, session, leaves, feed_tensors):
        self.session = session
        self.leaves = leaves
        # host ops (string constants, summaries) are answered on the host from the numeric
        # values they need, which the compiled plan fetches with the others
        self.feed_tensors = feed_tensors
        fed = set(feed_tensors)
        self.fetch_tensors = []
        position = {}               # id(numeric tensor) -> its index in fetch_tensors
        self.leaf_index = []        # per leaf: index in fetch_tensors, or None (op / host)

        def fetch(t):
            k = position.get(id(t))
            if k is None:
                k = position[id(t)] = len(self.fetch_tensors)
                self.fetch_tensors.append(t)
            return k
        self.host = {}
        for i, x in enumerate(leaves):
            if isinstance(x, Tensor) and x.op.attrs.get("host") and x not in fed:
                self.host[i] = x
                self.leaf_index.append(None)
            elif isinstance(x, Tensor):
                self.leaf_index.append(len(self.fetch_tensors))
                self.fetch_tensors.append(x)
                position.setdefault(id(x), self.leaf_index[-1])
            else:
                self.leaf_index.append(None)
        for x in self.host.values():
            for t in _host_inputs(x.op, fed):
                fetch(t)
        self.host_position = position
        self.fetch_ops = [x for x in leaves if isinstance(x, Operation)]
        reads, written, order, done = set(), set(), [], set()
        roots = []
        for t in self.fetch_tensors:
            dep = self._producer(t, fed, reads)
            if dep is not None:
                roots.append(dep)
        roots.extend(self.fetch_ops)
        roots.extend(x.op for x in self.host.values())
        stack = [(op, False) for op in reversed(roots)]
        while stack:
            op, expanded = stack.pop()
            if op in done:
                continue
            if op._cf_context is not None:
                raise InvalidArgumentError(
                    f"{op.name} was created inside {op._cf_context.what} (at {op._src}): it has a "
                    f"value only while that runs, so it cannot be fetched or used outside it; fetch "
                    f"the loop's or the cond's results")
            if op.attrs.get("host"):
                # not replayed (made on the host after the run), but what it reads and its
                # control inputs run
                done.add(op)
                deps = list(op.control_inputs)
                for t in op.inputs:
                    d = t.op if t not in fed and t.op.attrs.get("host") else self._producer(t, fed, reads)
                    if d is not None:
                        deps.append(d)
                stack.extend((d, False) for d in reversed(deps) if d not in done)
                continue
            if expanded:
                done.add(op)
                order.append(op)
                continue
            stack.append((op, True))
            deps = list(op.control_inputs)
            for t in op.inputs:
                d = self._producer(t, fed, reads)
                if d is not None:
                    deps.append(d)
            reads.update(op.attrs.get("reads", ()))
            if op.type == "Assign":
                written.add(op.attrs["variable"])
            for d in reversed(deps):
                if d not in done:
                    stack.append((d, False))
        self.order = [op for op in order if op.type != "VariableV2"]
        self.variables = sorted(reads | written, key=lambda v: v.op._id)
        self.shared = None          # the ps variables it uses, in a cluster (cluster.py)
        self.needs_init = [v for v in reads if v not in written and v not in fed]
        self.needs_init.sort(key=lambda v: v.op._id)
        self.grad_ops = [op for op in self.order if op.type == "Gradients"]
        self.watch_vars = [x for op in self.grad_ops for x in op.attrs["xs"]
                           if isinstance(x, Variable) and x not in fed]
        self.watch_tensors = {x for op in self.grad_ops for x in op.attrs["xs"]
                              if not isinstance(x, Variable) or x in fed}
        # initializers only (or nothing to compute): replayed eagerly, not compiled
        self.init_only = (not self.fetch_tensors
                          and all(op.attrs.get("initializer") for op in self.fetch_ops))
        self.checked = False
        self.device = self._placement()
        self.jitted = None if self.init_only else jit(self._traced)

    @staticmethod
    def _producer(t, fed, reads):
        """The op that must run to give tensor t (None: fed or a variable read)."""
        if t in fed:
            return None
        if isinstance(t, Variable):
            reads.add(t)
            return None
        if t.op.type == "Placeholder":
            raise InvalidArgumentError(
                f"You must feed a value for placeholder tensor '{t.op.name}' with dtype "
                f"{t.dtype.name} and shape {t.shape} (created at {t.op._src})")
        return t.op

    def _placement(self):
        """Check the ops' device requests; the device the plan is compiled for."""
        cfg = self.session._config
        soft = bool(cfg and cfg.allow_soft_placement)
        devs = set()
        for op in self.order:
            loc = local_device(op.device) if op.device else ""
            if not loc:                # none asked for, or only a job/task (cluster.py)
                continue
            try:
                devs.add(_device.parse(loc))
            except FlowjitError as e:
                if not soft:
                    raise InvalidArgumentError(
                        f"Cannot assign a device for operation {op.name} (created at {op._src}): "
                        f"{e}; pass tf.ConfigProto(allow_soft_placement=True) to fall back to the "
                        f"CPU") from None
                devs.add(_device.CPU0)
        dev = devs.pop() if len(devs) == 1 else _device.CPU0
        if dev == _device.CPU0:
            dev = _device.CPU0          # the shared object: run() tests it with `is`
        if cfg is not None and cfg.log_device_placement:
            for op in self.order:
                print(f"{op.name}: ({op.type}): {dev.name}", file=sys.stderr)
        return dev

    def leaf_values(self, values, feeds):
        """The value of each fetch leaf (None for ops) from the plan's numeric values:
        host tensors are built here, e.g. a summary's serialized Summary from the values
        of its inputs."""
        fed = dict(zip(map(id, self.feed_tensors), feeds))
        memo = {}

        def host_value(t):
            if id(t) in fed:
                return fed[id(t)]
            if not t.op.attrs.get("host"):
                return values[self.host_position[id(t)]]
            v = memo.get(id(t))
            if v is None:
                op = t.op
                if "summary" not in op.attrs:          # a string constant
                    v = op.attrs["value"]
                else:
                    vals = [host_value(x) for x in op.inputs]
                    try:
                        v = np.array(op.attrs["summary"](vals), dtype=object)
                    except (ValueError, TypeError) as e:
                        raise InvalidArgumentError(f"{op.type} op '{op.name}' (created at {op._src}): "
                                                   f"{e}") from None
                memo[id(t)] = v
            return v
        out = []
        for i, k in enumerate(self.leaf_index):
            if k is not None:
                out.append(values[k])
            elif i in self.host:
                out.append(host_value(self.host[i]))
            else:
                out.append(None)
        return out

    def _traced(self, *feeds):
        return tuple(_evaluate(self, feeds))

    def run(self, arrays):
        sess = self.session
        if not self.checked:
            for v in self.needs_init:
                if v not in sess._vars:
                    raise FailedPreconditionError(
                        f"Attempting to use uninitialized value {v.op.name} (created at {v.op._src}); "
                        f"run tf.global_variables_initializer() (or {v.op.name}.initializer) first")
            self.checked = True
        cfg = sess._config
        log = cfg is not None and cfg.log_device_placement
        try:
            if self.device is _device.CPU0 and not log and not self.init_only:
                values = self.jitted(*arrays)         # the per-step path: nothing else to set up
            else:
                with _device.device(self.device), _log_placement(log):
                    if self.init_only:
                        values = _evaluate(self, [FjTensor(value=a) for a in arrays])
                    else:
                        values = self.jitted(*arrays)
        except FlowjitError as e:
            if not arrays:
                raise
            # sizes inside the message may be symbolic (d0_1 is dim 1 of fed value 0)
            fed = ", ".join(f"d{i}: {t.name} {a.shape}" for i, (t, a) in
                            enumerate(zip(self.feed_tensors, arrays)))
            raise type(e)(f"{e} [fed values: {fed}]") from None
        return [v.numpy() for v in values]


@contextlib.contextmanager
def _log_placement(on):
    if not on:
        yield
        return
    saved = _fj_config.log_device_placement
    _fj_config.log_device_placement = True
    try:
        yield
    finally:
        _fj_config.log_device_placement = saved


class _Evaluator:
    """Replays a plan's ops on flowjit values (traced under jit, or eager)."""

    def __init__(self, plan, tape):
        self.plan = plan
        self.session = plan.session
        self.tape = tape
        self.memo = {}

    def value(self, t):
        v = self.memo.get(t)
        if v is not None:
            return v
        if isinstance(t, Variable):
            return self.variable(t).read_value()
        raise RuntimeError(f"internal error: {t.name} was not computed before use")

    def variable(self, var, create=False):
        sess = self.session
        fv = sess._vars.get(var)
        if fv is None:
            if not create:
                raise FailedPreconditionError(
                    f"Attempting to use uninitialized value {var.op.name} (created at {var.op._src})")
            fv = sess._new_variable(var)
        return fv

    def random_key(self, op):
        stream = self.session._stream(op)
        ctx = current_trace()
        if ctx is None:
            return FjTensor(value=np.asarray(stream.next_key(), np.int64))
        if ctx.parent is not None:        # (bodies draw through control_flow._BodyEvaluator.draw)
            raise FlowjitError(f"internal error: random op {op.name} asked for a key inside a loop body")
        g = ctx.graph
        g.rng_streams.append(stream)
        from ... import dtypes as D
        node = g.add("rng_key", (), {"stream": len(g.rng_streams) - 1}, (), D.int64)
        return FjTensor(node=node, graph=g)

    def set(self, t, v):
        self.memo[t] = v
        if self.tape is not None and t in self.plan.watch_tensors:
            self.tape.watch(v)


def _evaluate(plan, feeds):
    tape = None
    if plan.grad_ops:
        tape = GradientTape(persistent=True, watch_accessed_variables=False)
    ev = _Evaluator(plan, tape)
    with (tape if tape is not None else contextlib.nullcontext()):
        if tape is not None:
            for v in plan.watch_vars:
                tape.watch(ev.variable(v))
        for t, v in zip(plan.feed_tensors, feeds):
            ev.set(t, v)
        for op in plan.order:
            _run_op(ev, op)
        return [ev.value(t) for t in plan.fetch_tensors]


def _run_op(ev, op):
    try:
        with src_override(op._src):
            vals = [ev.value(t) for t in op.inputs]
            outs = op.compute(ev, *vals) if op.stateful else op.compute(*vals)
    except FlowjitError as e:
        if str(e).startswith(f"{op.type} op '{op.name}'"):
            raise
        raise type(e)(f"{op.type} op '{op.name}' (created at {op._src}): {e}") from None
    if not op.outputs:
        return
    if not isinstance(outs, (list, tuple)):
        outs = [outs]
    for t, v in zip(op.outputs, outs):
        ev.set(t, v)


def _host_inputs(op, fed):
    """The numeric tensors a host op's value is made from (through merged summaries)."""
    out = []
    for t in op.inputs:
        if t in fed or not t.op.attrs.get("host"):
            out.append(t)
        else:
            out.extend(_host_inputs(t.op, fed))
    return out


# --- fetches ------------------------------------------------------------------------------------
def _flatten_fetch(f, graph, leaves):
    if f is None:
        raise TypeError("Fetch argument None has invalid type <class 'NoneType'>")
    if isinstance(f, (Tensor, Operation)):
        if f.graph is not graph:
            raise ValueError(f"Fetch {f.name} belongs to another graph than the session's")
        leaves.append(f)
        return len(leaves) - 1
    if isinstance(f, str):
        leaves.append(graph.as_graph_element(f))
        return len(leaves) - 1
    if isinstance(f, list):
        return [_flatten_fetch(x, graph, leaves) for x in f]
    if isinstance(f, tuple):
        items = [_flatten_fetch(x, graph, leaves) for x in f]
        return (type(f), items)
    if isinstance(f, dict):
        return (type(f), {k: _flatten_fetch(v, graph, leaves) for k, v in f.items()})
    raise TypeError(f"Fetch argument {f!r} has invalid type {type(f)}: fetches must be tf.Tensor, "
                    f"tf.Operation, their names, or lists/tuples/dicts of them")


def _rebuild(s, vals):
    if isinstance(s, int):
        return vals[s]
    if isinstance(s, list):
        return [_rebuild(x, vals) for x in s]
    typ, items = s
    if isinstance(items, dict):
        out = {k: _rebuild(v, vals) for k, v in items.items()}
        return out if typ is dict else typ(out)
    items = [_rebuild(x, vals) for x in items]
    if typ is tuple:
        return tuple(items)
    return typ(*items) if hasattr(typ, "_fields") else typ(items)


def _to_feed_array(t, value):
    arr = value
    if type(arr) is not np.ndarray:
        if isinstance(value, (Tensor, Operation)):
            raise TypeError(f"The value of a feed cannot be a tf.Tensor ({value.name}); feed Python "
                            f"scalars, lists or NumPy arrays (use sess.run to get a value first)")
        arr = value.numpy() if isinstance(value, FjTensor) else np.asarray(value)
    target = t.dtype.np
    if arr.dtype != target:
        k = arr.dtype.kind
        ok = (k in "biuf" and target.kind == "f") or (k in "biu" and target.kind in "iu") or \
             (k == "b" and target.kind == "b")
        if not ok:
            raise DTypeError(
                f"Cannot feed a value of dtype {arr.dtype} and shape {arr.shape} to "
                f"{t.op.type} '{t.name}', which has dtype {t.dtype.name} and shape {t.shape} "
                f"(created at {t.op._src})")
        arr = arr.astype(target)
    dims = t._shape._dims
    if dims is not None:
        shape = arr.shape
        if len(dims) != len(shape) or any(d is not None and d != n for d, n in zip(dims, shape)):
            raise ShapeError(f"Cannot feed value of shape {arr.shape} for Tensor '{t.name}', which "
                             f"has shape {t.shape} (created at {t.op._src})")
    return arr


# --- the session ------------------------------------------------------------------------------
class Session:
    """Runs ops of one graph; holds that graph's variable values for this session."""

    def __init__(self, target="", graph=None, config=None):
        self._graph = graph if graph is not None else get_default_graph()
        self._config = config
        self._vars = {}            # tf.Variable -> fj.Variable
        self._streams = {}         # random op -> _Stream
        self._plans = {}
        self._closed = False
        self._entropy = int.from_bytes(os.urandom(8), "little")
        self._ctx = []

    @property
    def graph(self):
        return self._graph

    @property
    def graph_def(self):
        return self._graph.as_graph_def()

    @property
    def sess_str(self):
        return ""

    def run(self, fetches, feed_dict=None, options=None, run_metadata=None):
        if self._closed:
            raise RuntimeError("Attempted to use a closed Session.")
        g = self._graph
        leaves = []
        if isinstance(fetches, (Tensor, Operation)) and fetches.graph is g:
            leaves.append(fetches)
            struct = 0
        else:
            struct = _flatten_fetch(fetches, g, leaves)
        if getattr(g, "_data_ops", False):       # tf.data iterators: start them, feed get_next's values
            from .data import before_run
            feed_dict = before_run(self, leaves, feed_dict)
        feed_ts, arrays = [], []
        if feed_dict:
            for k, v in feed_dict.items():
                t = k
                if not isinstance(t, Tensor):
                    t = g.as_graph_element(k) if isinstance(k, str) else None
                    if not isinstance(t, Tensor):
                        raise TypeError(f"feed_dict key {k!r} is not a tf.Tensor")
                if t.op.graph is not g:
                    raise ValueError(f"feed_dict key {t.name} belongs to another graph than the session's")
                feed_ts.append(t)
                arrays.append(_to_feed_array(t, v))
            if len(feed_ts) > 1:
                # one plan per *set* of fed tensors, whatever the dict's order
                order = sorted(range(len(feed_ts)), key=lambda i: (feed_ts[i].op._id,
                                                                   feed_ts[i].value_index))
                feed_ts = [feed_ts[i] for i in order]
                arrays = [arrays[i] for i in order]
        key = (tuple(map(id, leaves)), tuple(map(id, feed_ts)))
        plan = self._plans.get(key)
        if plan is None:
            plan = _Plan(self, leaves, feed_ts)
            self._plans[key] = plan
        rt = _cluster.runtime()
        if rt is not None and rt.store is not None:      # a worker of a TF1 cluster (cluster.py)
            pulled = _cluster.before_run(rt, self, plan)
            values = plan.run(arrays)
            _cluster.after_run(rt, self, plan, pulled)
        else:
            values = plan.run(arrays)
        if plan.host:
            out = plan.leaf_values(values, arrays)
        else:
            out = [None if k is None else values[k] for k in plan.leaf_index]
        for i, v in enumerate(out):
            if v is not None and v.ndim == 0:
                out[i] = v[()]
        return _rebuild(struct, out)

    def partial_run_setup(self, *a, **k):
        raise NotImplementedError("partial_run is not supported by flowjit.compat.v1")

    def _new_variable(self, var):
        spec = local_device(var.op.device)
        dev = _device.CPU0
        if spec:
            try:
                dev = _device.parse(spec)
            except FlowjitError:
                dev = _device.CPU0
        with _device.device(dev):
            fv = FjVariable(np.zeros(var.shape.as_list(), var.dtype.np), name=var.op.name,
                            trainable=var.trainable)
        self._vars[var] = fv
        return fv

    def _load(self, var, value):
        fv = self._vars.get(var) or self._new_variable(var)
        fv.assign(_to_feed_array(var, value))

    def _stream(self, op):
        s = self._streams.get(op)
        if s is None:
            seed = op.attrs.get("seed")
            parts = (seed[0], 0x7F1, seed[1]) if seed is not None else (self._entropy, 0x5EED, op._id)
            s = self._streams[op] = _Stream(parts)
        return s

    def close(self):
        self._closed = True
        self._plans.clear()
        self._vars.clear()

    def as_default(self):
        return _default_session(self)

    def __enter__(self):
        cm_s = _default_session(self)
        cm_g = self._graph.as_default()
        cm_s.__enter__()
        cm_g.__enter__()
        self._ctx.append((cm_s, cm_g))
        return self

    def __exit__(self, *exc):
        cm_s, cm_g = self._ctx.pop()
        cm_g.__exit__(*exc)
        cm_s.__exit__(*exc)
        self.close()


@contextlib.contextmanager
def _default_session(sess):
    _session_stack().append(sess)
    try:
        yield sess
    finally:
        _session_stack().remove(sess)


class InteractiveSession(Session):
    """A Session that makes itself the default one on creation (for t.eval() in a shell)."""

    def __init__(self, target="", graph=None, config=None):
        super().__init__(target, graph, config)
        _session_stack().append(self)
        _default_stack().append(self._graph)
        self._installed = True

    def close(self):
        if getattr(self, "_installed", False):
            self._installed = False
            if self in _session_stack():
                _session_stack().remove(self)
            ds = _default_stack()
            for i in range(len(ds) - 1, -1, -1):
                if ds[i] is self._graph:
                    del ds[i]
                    break
        super().close()
