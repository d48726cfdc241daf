"""`tf.data` under `import flowjit.compat.v1 as tf`: the pipelines of
flowjit/data_pipeline.py, and TF1's iterators over them inside a Session.

`iterator.get_next()` is an `IteratorGetNext` op whose outputs are graph tensors of the
element's dtypes and shapes; `Session.run` (its hook calls `before_run` here) finds the
iterator ops a run needs, runs their initializers first (`MakeIterator`: a new pass over
the dataset, kept per session; placeholders the dataset holds are read from the run's
feeds), then pulls one element per `IteratorGetNext` op and feeds it to that op's
outputs, so the compiled plan sees them as fed values. At the end of the data the run
raises `tf.errors.OutOfRangeError`, as TF1's training loops expect.

A TF1 dataset's `map`/`filter` function is traced once into a private graph on
placeholders of the element's spec (`GraphFunction`), as TF1 traces it, and replayed
eagerly for each element.
"""
import numpy as np

from ... import dtypes as D
from ...data_pipeline import (  # noqa: F401
    AUTOTUNE, INFINITE_CARDINALITY, UNKNOWN_CARDINALITY, DatasetV2, Options, TensorSpec, _Ctx,
    _flatten, _pack, _np_value, experimental, string as _string,
)
from ...frontend.tensor import Tensor as FjTensor
from .errors import FailedPreconditionError, OutOfRangeError
from .graph import Graph, Operation, Tensor, TensorShape, get_default_graph, make_op


class _AnyDataset(type):
    def __instancecheck__(cls, obj):          # every pipeline is a tf.data.Dataset
        return isinstance(obj, DatasetV2)


class DatasetV1(DatasetV2, metaclass=_AnyDataset):
    """TF1's `tf.data.Dataset`: the same pipelines (its constructors flag them `_v1`, so
    their map/filter functions are traced into graphs)."""
    _V1 = True


Dataset = DatasetV1


# --- iterators ------------------------------------------------------------------------------
class Iterator:
    """A TF1 iterator: `get_next()` gives graph tensors that each `Session.run` fills
    with the next element; `initializer` (initializable iterators) starts a new pass."""

    def __init__(self, kind, dataset, tree, dtypes, shapes, graph, shared_name=None):
        self._kind = kind                    # "one_shot", "initializable" or "reinitializable"
        self._dataset = dataset
        self._tree, self._dtypes, self._shapes = tree, list(dtypes), list(shapes)
        self._graph = graph
        self._initializer = None
        for d in self._dtypes:
            if d is _string:
                raise TypeError("flowjit.compat.v1 iterators cannot give string components (flowjit "
                                "computes only with numbers); map them to numbers first")
        if dataset is not None and kind == "initializable":
            self._initializer = self.make_initializer(dataset, name="MakeIterator")

    @staticmethod
    def from_structure(output_types, output_shapes=None, shared_name=None, output_classes=None):
        """A reinitializable iterator: `make_initializer(dataset)` points it at a dataset
        of this structure (e.g. training and validation data)."""
        types = []
        tree = _flatten(output_types, types, lists_are_leaves=False)
        dtypes = [D.as_dtype(t) for t in types]
        if output_shapes is None:
            shapes = [None] * len(types)
        else:
            from ...data_pipeline import _flatten_up_to, _shape_tuple
            raw = []
            _flatten_up_to(tree, output_shapes, raw, "Iterator.from_structure output_shapes")
            shapes = [_shape_tuple(s) for s in raw]
        return Iterator("reinitializable", None, tree, dtypes, shapes, get_default_graph(), shared_name)

    @staticmethod
    def from_string_handle(string_handle, output_types, output_shapes=None, output_classes=None):
        from .errors import UnimplementedError
        raise UnimplementedError("feedable iterators (Iterator.from_string_handle) are not supported by "
                                 "flowjit.compat.v1; use Iterator.from_structure and make_initializer")

    @property
    def initializer(self):
        if self._initializer is None:
            raise ValueError("Iterator does not have an initializer: a one-shot iterator starts by "
                             "itself, a reinitializable one gets one from make_initializer(dataset)")
        return self._initializer

    def make_initializer(self, dataset, name=None):
        """An op that starts a new pass of this iterator over `dataset`."""
        if not isinstance(dataset, DatasetV2):
            raise TypeError(f"make_initializer: expected a Dataset, got {type(dataset).__name__}")
        tree, dtypes, shapes = dataset._spec()
        if tree != self._tree or len(dtypes) != len(self._dtypes) or \
                any(a is not b for a, b in zip(dtypes, self._dtypes)):
            raise TypeError(f"make_initializer: the dataset's element types {dataset.output_types} do not "
                            f"match the iterator's {self.output_types}")
        for s, t in zip(shapes, self._shapes):
            if not TensorShape(t).is_compatible_with(TensorShape(s)):
                raise TypeError(f"make_initializer: the dataset's element shapes {dataset.output_shapes} "
                                f"are not compatible with the iterator's {self.output_shapes}")
        op = make_op("MakeIterator", lambda ev: [], (), name=name, default_name="MakeIterator",
                     stateful=True, out_specs=[], graph=self._graph,
                     attrs={"initializer": True, "data_iterator": self, "dataset": dataset})
        self._graph._data_ops = True
        return op

    def get_next(self, name=None):
        """Graph tensors (in the element's structure) holding the next element in each run."""
        def compute(ev):
            raise FailedPreconditionError(f"internal error: {op.name} was not fed by its iterator")
        specs = [(d, TensorShape(s)) for d, s in zip(self._dtypes, self._shapes)]
        op = make_op("IteratorGetNext", compute, (), name=name, default_name="IteratorGetNext",
                     stateful=True, out_specs=specs, graph=self._graph, attrs={"data_iterator": self})
        self._graph._data_ops = True
        return _pack(self._tree, list(op.outputs))[0]

    def string_handle(self, name=None):
        from .errors import UnimplementedError
        raise UnimplementedError("Iterator.string_handle is not supported by flowjit.compat.v1")

    @property
    def output_types(self):
        return _pack(self._tree, list(self._dtypes))[0]

    @property
    def output_shapes(self):
        return _pack(self._tree, [TensorShape(s) for s in self._shapes])[0]

    @property
    def output_classes(self):
        return _pack(self._tree, [Tensor] * len(self._dtypes))[0]

    @property
    def element_spec(self):
        return _pack(self._tree, [TensorSpec(s, d) for d, s in zip(self._dtypes, self._shapes)])[0]


def make_one_shot_iterator(dataset):
    """An iterator that starts by itself on its first `get_next` run in each Session."""
    tree, dtypes, shapes = dataset._spec()
    return Iterator("one_shot", dataset, tree, dtypes, shapes, get_default_graph())


def make_initializable_iterator(dataset, shared_name=None):
    """An iterator started (and restarted) by running `iterator.initializer`; the
    placeholders the dataset holds are fed in that run."""
    tree, dtypes, shapes = dataset._spec()
    return Iterator("initializable", dataset, tree, dtypes, shapes, get_default_graph(), shared_name)


def get_output_types(dataset_or_iterator):
    return dataset_or_iterator.output_types


def get_output_shapes(dataset_or_iterator):
    return dataset_or_iterator.output_shapes


def get_output_classes(dataset_or_iterator):
    return dataset_or_iterator.output_classes


# --- the Session hook ----------------------------------------------------------------------
def before_run(session, leaves, feed_dict):
    """Called by `Session.run` on graphs that have iterator ops: runs the initializers
    the fetches reach, then pulls an element for each `get_next` op they reach; returns
    the feed dict with those elements added."""
    g = session.graph
    fed_ids = set()
    if feed_dict:
        for k in feed_dict:
            t = g.as_graph_element(k) if isinstance(k, str) else k
            fed_ids.add(id(t))
    walks = session.__dict__.setdefault("_data_walks", {})
    key = (tuple(map(id, leaves)), tuple(sorted(fed_ids)))
    walk = walks.get(key)
    if walk is None:
        walk = walks[key] = _walk(leaves, fed_ids)
    inits, nexts = walk
    if not inits and not nexts:
        return feed_dict
    states = session.__dict__.setdefault("_data_iterators", {})
    for op in inits:
        states[op.attrs["data_iterator"]] = _start(session, op.attrs["dataset"], feed_dict, op)
    if not nexts:
        return feed_dict
    out = dict(feed_dict) if feed_dict else {}
    for op in nexts:
        it = op.attrs["data_iterator"]
        state = states.get(it)
        if state is None:
            if it._kind != "one_shot":
                raise FailedPreconditionError(
                    f"GetNext() failed because the iterator has not been initialized. Ensure that you "
                    f"have run the initializer operation for this iterator before getting the next "
                    f"element. [{op.name}, created at {op._src}]")
            state = states[it] = _start(session, it._dataset, None, op)
        try:
            values = next(state)
        except StopIteration:
            raise OutOfRangeError(f"End of sequence [[{op.name}, created at {op._src}]]") from None
        for t, v in zip(op.outputs, values):
            out[t] = _np_value(v)
    return out


def _walk(leaves, fed_ids):
    """The MakeIterator and IteratorGetNext ops the fetches depend on (through inputs and
    control inputs, stopping at fed tensors), each in creation order."""
    inits, nexts, seen = [], [], set()
    stack = []
    for x in leaves:
        if isinstance(x, Operation):
            stack.append(x)
        elif isinstance(x, Tensor) and id(x) not in fed_ids:
            stack.append(x.op)
    while stack:
        op = stack.pop()
        if id(op) in seen:
            continue
        seen.add(id(op))
        if op.type == "MakeIterator":
            inits.append(op)
        elif op.type == "IteratorGetNext":
            nexts.append(op)
        for t in op.inputs:
            if id(t) not in fed_ids:
                stack.append(t.op)
        stack.extend(op.control_inputs)
    inits.sort(key=lambda o: o._id)
    nexts.sort(key=lambda o: o._id)
    return inits, nexts


def _start(session, dataset, feed_dict, op):
    """A new pass over `dataset` for `session`: the graph tensors it holds are read from
    this run's feeds (or computed by the session)."""
    caps = dataset._captured()
    values = {}
    if caps:
        feeds = {id(k): v for k, v in (feed_dict or {}).items() if not isinstance(k, str)}
        todo = []
        for t in caps:
            if id(t) in feeds:
                values[id(t)] = _to_array(feeds[id(t)])
            elif t.op.type == "Const":
                values[id(t)] = t.op.attrs["value"]
            else:
                todo.append(t)
        if todo:
            try:
                got = session.run(todo, feed_dict=feed_dict)
            except Exception as e:
                if op.type == "IteratorGetNext":
                    raise type(e)(f"{e} (a one-shot iterator cannot read placeholders: use "
                                  f"make_initializable_iterator and feed them when its initializer "
                                  f"runs)") from None
                raise
            for t, v in zip(todo, got):
                values[id(t)] = np.asarray(v)
    return dataset._iter_elements(_Ctx(values))


def _to_array(v):
    if isinstance(v, FjTensor):
        return v.numpy()
    return np.asarray(v)


# --- traced dataset functions ------------------------------------------------------------------
class GraphFunction:
    """A TF1 dataset function traced once into a private graph (placeholders of the
    input element's spec) and replayed eagerly for each element."""

    def __init__(self, fn, spec):
        from .placeholders import placeholder
        from .session import Session, _Plan
        tree, dtypes, shapes = spec
        if any(d is _string for d in dtypes):
            raise TypeError("string components cannot be traced")
        self.graph = Graph()
        with self.graph.as_default():
            phs = [placeholder(d, s) for d, s in zip(dtypes, shapes)]
            x = _pack(tree, phs)[0]
            out = fn(*x) if type(x) is tuple else fn(x)
            flat = []
            self.out_tree = _flatten(out, flat, lists_are_leaves=False)
            from .ops import convert_to_tensor
            outs = [v if isinstance(v, Tensor) else convert_to_tensor(v) for v in flat]
        for t in outs:
            if t.graph is not self.graph:
                raise ValueError("the function returned a tensor of another graph")
        self.out_dtypes = [t.dtype for t in outs]
        self.out_shapes = [None if t.shape.ndims is None else tuple(t.shape.as_list()) for t in outs]
        self.placeholders = phs
        self.session = Session(graph=self.graph)
        self.plan = _Plan(self.session, outs, phs)
        self.plan.checked = True
        if self.plan.needs_init:
            raise ValueError("the function reads variables")

    def __call__(self, leaves):
        from .session import _evaluate
        feeds = [FjTensor(value=_np_value(v)) for v in leaves]
        values = _evaluate(self.plan, feeds)
        return [v.numpy() for v in values]
