"""`tf.data` pipelines on NumPy arrays: `fj.data.Dataset.from_tensor_slices(...)`,
`.map`, `.shuffle`, `.batch`, ... with no TF runtime.

An element is a nested structure (tuples, namedtuples, dicts) of arrays; inside the
pipeline it travels as a flat list of NumPy arrays (its leaves) and each dataset knows
the structure (`_tree`). Iterating a dataset (`for x in ds`, `iter(ds)`) gives the
structure back with each leaf an eager `fj.Tensor` (as TF gives EagerTensors), its
dtype mapped to flowjit's nearest dtype (float16 -> float32, unsigned -> int64); text
stays NumPy bytes. `as_numpy_iterator()` gives NumPy values.

Two ways to move data through a pipeline:

* elements, one at a time (`_gen_elements`): what `map`, `filter`, `from_generator` and
  `batch`'s output produce;
* blocks (`_gen_blocks`): a `_Block` stands for consecutive elements as rows of some
  source arrays, `src[idx]`, without copying them (idx a slice or an index array).
  `from_tensor_slices` yields one block for all its rows; `shuffle` permutes indices,
  `take`/`skip`/`repeat`/`shard`/`zip` cut and join blocks, and `batch` gathers each
  batch with one fancy-index per array: the chain `from_tensor_slices((x, y))
  .shuffle(n).batch(b)` costs one gather per batch, not Python work per example.

Either side converts to the other, and both give the same elements: `shuffle`'s
buffer semantics (TF's: a buffer of `buffer_size` elements, each output drawn
uniformly from it and its slot refilled from the input, the rest drained in random
order when the input ends) are computed from the same random draws whichever way the
elements come (the block form finds, for a run of draws, which slot write each draw
reads, with one stable sort), so a seeded shuffle gives one order.

Datasets built by `flowjit.compat.v1` (`tf.data` under `import flowjit.compat.v1 as tf`)
are the same classes, flagged `_v1`: their `map`/`filter` functions are traced once
into a private TF1 graph (as TF1 traces them) and replayed per element, their
`from_tensor_slices` may hold placeholders (fed when an initializable iterator's
initializer runs), and their iterators live in `flowjit/compat/v1/data.py`.
"""
import itertools
import os
import sys

import numpy as np

from . import dtypes as D
from .errors import InvalidArgumentError, OutOfRangeError
from .frontend.tensor import Tensor, TensorShape, to_numpy

AUTOTUNE = -1
INFINITE_CARDINALITY = -1
UNKNOWN_CARDINALITY = -2
string = D.DType("string", object)       # the dtype of text components (bytes)

_ROWS_CHUNK = 1024          # block -> elements: rows gathered this many at a time
_SHUFFLE_CHUNK = 8192       # draws handled per vectorised shuffle step
_RANGE_CHUNK = 1 << 20      # Dataset.range: rows per block (smaller ranges: one cached block)

try:                        # TF's TensorSpec (the one fj.function's input_signature takes)
    from .frontend.jit import TensorSpec as _SpecBase
except ImportError:         # pragma: no cover
    _SpecBase = None


class TensorSpec(_SpecBase or object):
    """The shape (None where unknown) and dtype of one component of an element."""

    def __init__(self, shape, dtype=D.float32, name=None):
        if _SpecBase is not None and dtype is not string:
            super().__init__(shape, dtype, name)
        else:
            self.dtype, self.name = dtype if dtype is string else D.as_dtype(dtype), name
        self.shape = None if shape is None else TensorShape(None if d is None else int(d) for d in shape)

    def __eq__(self, other):
        return (isinstance(other, TensorSpec) and self.dtype is other.dtype and self.shape == other.shape)

    def __hash__(self):
        return hash((self.dtype.name, self.shape))

    def __repr__(self):
        shape = "<unknown>" if self.shape is None else repr(self.shape)
        return f"TensorSpec(shape={shape}, dtype=fj.{self.dtype.name}, name={self.name!r})"


# --- nested structures ---------------------------------------------------------------------
# A tree is None (a leaf), ("t", subtrees) for a tuple, ("n", cls, subtrees) for a
# namedtuple, ("d", cls, keys, subtrees) for a dict (keys sorted, as TF's nest does).

def _flatten(x, out, lists_are_leaves=True):
    if isinstance(x, tuple):
        subs = tuple(_flatten(v, out, lists_are_leaves) for v in x)
        return ("n", type(x), subs) if hasattr(x, "_fields") else ("t", subs)
    if isinstance(x, dict):
        keys = _keys(x)
        return ("d", type(x), keys, tuple(_flatten(x[k], out, lists_are_leaves) for k in keys))
    if isinstance(x, list) and not lists_are_leaves:
        return ("t", tuple(_flatten(v, out, lists_are_leaves) for v in x))
    out.append(x)
    return None


def _keys(d):
    try:
        return tuple(sorted(d))
    except TypeError:
        return tuple(d)


def _pack(tree, leaves, pos=0):
    if tree is None:
        return leaves[pos], pos + 1
    vals = []
    for s in tree[-1]:
        v, pos = _pack(s, leaves, pos)
        vals.append(v)
    kind = tree[0]
    if kind == "t":
        return tuple(vals), pos
    if kind == "n":
        return tree[1](*vals), pos
    cls = tree[1]
    d = dict(zip(tree[2], vals))
    return (d if cls is dict else cls(d)), pos


def _packer(tree):
    """A fast function from a flat list of leaves to the structure `tree`."""
    if tree is None:
        return lambda leaves: leaves[0]
    if tree[0] == "t" and all(s is None for s in tree[1]):
        return tuple
    return lambda leaves: _pack(tree, leaves)[0]


def _num_leaves(tree):
    return 1 if tree is None else sum(_num_leaves(s) for s in tree[-1])


def _flatten_up_to(tree, x, out, what):
    """The values of `x` (a structure shaped like `tree`, or one value for every leaf) at
    `tree`'s leaves."""
    if tree is None:
        out.append(x)
        return
    if tree[0] == "d" and isinstance(x, dict):
        for k, s in zip(tree[2], tree[-1]):
            if k not in x:
                raise ValueError(f"{what}: the structure has no key {k!r}")
            _flatten_up_to(s, x[k], out, what)
    elif tree[0] != "d" and isinstance(x, (tuple, list)) and len(x) == len(tree[-1]):
        for v, s in zip(x, tree[-1]):
            _flatten_up_to(s, v, out, what)
    else:
        for _ in range(_num_leaves(tree)):
            out.append(x)


# --- values ---------------------------------------------------------------------------------
class _Sym:
    """A TF1 graph tensor inside a dataset (a placeholder, a constant): its value comes
    from the session when an iterator is initialized."""
    __slots__ = ("tensor",)

    def __init__(self, t):
        self.tensor = t

    @property
    def dtype(self):
        return self.tensor.dtype

    @property
    def shape(self):
        s = self.tensor.shape
        return None if s.ndims is None else tuple(s.as_list())


def _is_graph_tensor(x):
    mod = sys.modules.get("flowjit.compat.v1.graph")
    return mod is not None and isinstance(x, mod.Tensor)


def _as_leaf(v, what):
    """A component given to from_tensor_slices / from_tensors as a NumPy array (TF's
    conversion: Python floats -> float32, ints -> int32; arrays keep their dtype)."""
    if isinstance(v, DatasetV2):
        raise TypeError(f"{what}: a Dataset cannot be a component of an element")
    if _is_graph_tensor(v):
        return _Sym(v)
    if isinstance(v, Tensor):
        if v.is_traced:
            raise TypeError(f"{what}: a traced tensor (inside @fj.jit) cannot make a dataset; "
                            f"build datasets outside jitted functions")
        return v.numpy()
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "U":
            return np.char.encode(v, "utf-8")
        if v.dtype.kind not in "SO":
            D.as_dtype(v.dtype)                  # a dtype flowjit has (raises TypeError otherwise)
        return v
    if _is_text(v):
        return np.array(_as_bytes(v))
    if hasattr(v, "numpy") and not isinstance(v, np.generic):
        return np.asarray(v.numpy())
    return to_numpy(v)


def _is_text(v):
    if isinstance(v, (str, bytes)):
        return True
    return isinstance(v, (list, tuple)) and bool(v) and _is_text(v[0])


def _as_bytes(v):
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, (list, tuple)):
        return [_as_bytes(x) for x in v]
    return v


_TARGET = {}


def _target(dt):
    """The NumPy dtype an array of dtype `dt` leaves the pipeline with (False: text)."""
    t = _TARGET.get(dt)
    if t is None:
        t = False if dt.kind in "SUO" else D.as_dtype(dt).np
        _TARGET[dt] = t
    return t


def _np_value(v):
    """A leaf as the array the user gets: the flowjit dtype, never a view of the
    pipeline's arrays (a cached or sliced source stays as it was)."""
    a = v if type(v) is np.ndarray else np.asarray(v)
    t = _target(a.dtype)
    if t is False:
        return a
    if a.dtype != t:
        return a.astype(t)
    if not a.flags.owndata:
        return a.copy()
    return a


def _out(v):
    a = _np_value(v)
    if a.dtype.kind in "SUO":
        return a[()] if a.ndim == 0 else a
    return Tensor(value=a)


def _out_np(v):
    a = _np_value(v)
    return a[()] if a.ndim == 0 else a


def _from_user(v, what):
    """A value a user function returned (Tensor, array, Python number) as a leaf array."""
    if isinstance(v, Tensor):
        if v.is_traced:
            raise TypeError(f"{what} returned a traced tensor")
        return v.numpy()
    if isinstance(v, np.ndarray):
        return v
    if _is_graph_tensor(v):
        raise TypeError(f"{what} returned {v.name}, a tensor of a TF1 graph; inside a dataset "
                        f"function use the ops of the dataset's own API (tf.data under "
                        f"flowjit.compat.v1 traces its functions into a graph of their own)")
    if isinstance(v, DatasetV2):
        raise TypeError(f"{what} returned a Dataset; use flat_map to map elements to datasets")
    if _is_text(v):
        return np.array(_as_bytes(v))
    if hasattr(v, "numpy") and not isinstance(v, np.generic):
        return np.asarray(v.numpy())
    return to_numpy(v)


def _leaf_spec(a):
    """(dtype, shape) of one leaf value."""
    if isinstance(a, _Sym):
        return a.dtype, a.shape
    a = np.asarray(a)
    return (string if a.dtype.kind in "SUO" else D.as_dtype(a.dtype)), tuple(a.shape)


def _struct(tree, leaves):
    """The structure of `tree` with each leaf an fj Tensor (what a user function gets)."""
    return _pack(tree, [_out(v) for v in leaves])[0]


def _call(fn, tree, leaves):
    """fn(*element) for a tuple element (TF unpacks plain tuples), fn(element) otherwise."""
    x = _struct(tree, leaves)
    return fn(*x) if type(x) is tuple else fn(x)


# --- blocks ---------------------------------------------------------------------------------
class _Block:
    """`n` consecutive elements: row idx of each array in `src` (idx: a slice with step 1,
    or an int64 index array)."""
    __slots__ = ("src", "idx", "n")

    def __init__(self, src, idx, n):
        self.src, self.idx, self.n = src, idx, n

    def key(self):
        return tuple(map(id, self.src))

    def arrays(self):
        i = self.idx
        if isinstance(i, slice):
            return [a[i] for a in self.src]
        return [a.take(i, axis=0) for a in self.src]

    def ids(self):
        i = self.idx
        return np.arange(i.start, i.stop, dtype=np.int64) if isinstance(i, slice) else i

    def sub(self, a, b):
        i = self.idx
        if a == 0 and b == self.n:
            return self
        if isinstance(i, slice):
            return _Block(self.src, slice(i.start + a, i.start + b), b - a)
        return _Block(self.src, i[a:b], b - a)

    def pick(self, pos):
        i = self.idx
        ids = (pos + i.start) if isinstance(i, slice) else i[pos]
        return _Block(self.src, ids, len(pos))


def _whole(arrays, n):
    return _Block(tuple(arrays), slice(0, n), n)


def _concat_blocks(pieces):
    """One block for consecutive pieces: an index block when they share their source
    arrays (nothing is copied), otherwise the rows gathered and concatenated."""
    if len(pieces) == 1:
        return pieces[0]
    first = pieces[0]
    n = sum(p.n for p in pieces)
    key = first.key()
    if all(p.src is first.src or p.key() == key for p in pieces[1:]):
        if all(isinstance(p.idx, slice) for p in pieces) and \
                all(a.idx.stop == b.idx.start for a, b in zip(pieces, pieces[1:])):
            return _Block(first.src, slice(first.idx.start, pieces[-1].idx.stop), n)
        return _Block(first.src, np.concatenate([p.ids() for p in pieces]), n)
    parts = [p.arrays() for p in pieces]
    try:
        arrays = [np.concatenate([pa[k] for pa in parts]) for k in range(len(first.src))]
    except ValueError as e:
        raise InvalidArgumentError(f"Cannot batch tensors with different shapes ({e})") from None
    return _whole(arrays, n)


def _blocks_to_elements(blocks):
    for blk in blocks:
        for s in range(0, blk.n, _ROWS_CHUNK):
            part = blk.sub(s, min(blk.n, s + _ROWS_CHUNK))
            arrs = part.arrays()
            for r in range(part.n):
                yield [a[r] for a in arrs]


def _elements_to_blocks(elements):
    for leaves in elements:
        yield _whole([np.asarray(v)[None] for v in leaves], 1)


class _Ctx:
    """What one iteration knows: the values of captured TF1 graph tensors (by id), and
    whether it is only a peek at the first element (for element_spec), which must not
    advance shuffles' epochs."""
    __slots__ = ("values", "peek")

    def __init__(self, values=None, peek=False):
        self.values = values or {}
        self.peek = peek

    def value(self, sym):
        v = self.values.get(id(sym.tensor))
        if v is None:
            raise InvalidArgumentError(
                f"this dataset reads the graph tensor {sym.tensor.name}: iterate it with a TF1 iterator "
                f"(make_initializable_iterator) in a Session, feeding the placeholders when its "
                f"initializer runs")
        return np.asarray(v)


_EAGER = _Ctx()


def _ctx(ctx):
    return _EAGER if ctx is None else ctx


# --- seeds ----------------------------------------------------------------------------------
_DEFAULT_GRAPH_SEED = 87654321


def _seed_parts(seed, v1):
    """The seed of a random transformation, as TF picks it: (global or graph seed, op
    seed), or fresh entropy when neither the op nor the program was seeded."""
    if v1:
        from .compat.v1.graph import get_default_graph
        from .compat.v1.random_ops import get_seed
        s = get_seed(seed, len(get_default_graph()._ops))
        if s is not None:
            return tuple(int(p) for p in s)
    else:
        from .frontend import random as R
        g = R.get_seed()
        if seed is not None:
            return (_DEFAULT_GRAPH_SEED if g is None else g, int(seed))
        if g is not None:
            op = R._global["ops"]
            R._global["ops"] += 1
            return (g, op, 0xDA7A)
    return (int.from_bytes(os.urandom(8), "little"),)


def _rng(parts, *more):
    ent = [int(p) & 0xFFFFFFFFFFFFFFFF for p in parts + more]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(ent)))


class _Uniforms:
    """Uniform draws in [0, 1) in order, fetched from the generator in chunks (the values
    do not depend on the chunking)."""

    def __init__(self, rng):
        self.rng = rng
        self.buf = np.empty(0)
        self.pos = 0

    def take(self, k):
        have = len(self.buf) - self.pos
        if have < k:
            self.buf = np.concatenate([self.buf[self.pos:], self.rng.random(max(k - have, 4096))])
            self.pos = 0
        out = self.buf[self.pos:self.pos + k]
        self.pos += k
        return out

    def one(self):
        if self.pos >= len(self.buf):
            self.buf = self.rng.random(4096)
            self.pos = 0
        u = self.buf[self.pos]
        self.pos += 1
        return u


# --- the dataset -----------------------------------------------------------------------------
class DatasetV2:
    """A `tf.data.Dataset`: build one with `fj.data.Dataset.from_tensor_slices`,
    `from_tensors`, `range`, `zip` or `from_generator` and chain transformations."""

    _V1 = False
    _block_native = False

    def __init__(self, inputs=(), v1=None):
        self._inputs = tuple(inputs)
        if v1 is None:
            v1 = any(d._v1 for d in self._inputs) if self._inputs else type(self)._V1
        self._v1 = bool(v1)
        self._spec_cache = None

    # -- constructors (class methods, as TF's static ones) ----------------------------------
    @classmethod
    def from_tensor_slices(cls, tensors, name=None):
        """One element per row of the components (all must have the same first size)."""
        return _TensorSliceDataset(tensors, v1=cls._V1)

    @classmethod
    def from_tensors(cls, tensors, name=None):
        """A dataset of one element, `tensors`."""
        return _TensorDataset(tensors, v1=cls._V1)

    @classmethod
    def range(cls, *args, dtype=D.int64, name=None):
        """`range(stop)`, `range(start, stop[, step])` as int64 scalars (or `dtype`)."""
        return _RangeDataset(args, dtype, v1=cls._V1)

    @classmethod
    def zip(cls, *datasets, name=None):
        """Elements of several datasets side by side: `zip((a, b))` or `zip(a, b)` gives
        (a_i, b_i); a dict of datasets gives dicts. Ends with the shortest."""
        if len(datasets) == 1 and not isinstance(datasets[0], DatasetV2):
            datasets = datasets[0]
        return _ZipDataset(datasets, v1=cls._V1)

    @classmethod
    def from_generator(cls, generator, output_types=None, output_shapes=None, args=None,
                       output_signature=None, name=None):
        """Elements from `generator()` (a callable returning an iterable), each converted
        to the declared dtypes (`output_signature`, or `output_types`/`output_shapes`)."""
        return _GeneratorDataset(generator, output_types, output_shapes, args, output_signature,
                                 v1=cls._V1)

    # -- transformations --------------------------------------------------------------------
    def map(self, map_func, num_parallel_calls=None, deterministic=None, name=None):
        """`map_func(*element)` (tuple elements are unpacked) for each element, called on
        fj Tensors eagerly, in order."""
        return _MapDataset(self, map_func)

    def filter(self, predicate, name=None):
        """The elements for which `predicate(*element)` is True (a scalar bool)."""
        return _FilterDataset(self, predicate)

    def flat_map(self, map_func, name=None):
        """The elements of the datasets `map_func(*element)` returns, one after another."""
        return _FlatMapDataset(self, map_func)

    def batch(self, batch_size, drop_remainder=False, num_parallel_calls=None, deterministic=None,
              name=None):
        """Consecutive elements stacked: each component gains a first dimension of
        `batch_size` (the last batch smaller unless `drop_remainder`)."""
        return _BatchDataset(self, batch_size, drop_remainder)

    def padded_batch(self, batch_size, padded_shapes=None, padding_values=None, drop_remainder=False,
                     name=None):
        """Batches of elements padded (with `padding_values`, default 0 / b'') to
        `padded_shapes` (None or -1 in a shape: the longest in the batch)."""
        return _PaddedBatchDataset(self, batch_size, padded_shapes, padding_values, drop_remainder)

    def unbatch(self, name=None):
        """The rows of each element (the inverse of batch)."""
        return _UnbatchDataset(self)

    def shuffle(self, buffer_size, seed=None, reshuffle_each_iteration=None, name=None):
        """TF's shuffle: a buffer of `buffer_size` elements, each output drawn uniformly
        from it (a full shuffle when buffer_size >= the dataset's size). With a seed (or
        `fj.random.set_seed`) the orders repeat from run to run; each iteration draws a
        new order unless `reshuffle_each_iteration=False`."""
        return _ShuffleDataset(self, buffer_size, seed,
                               True if reshuffle_each_iteration is None else reshuffle_each_iteration)

    def repeat(self, count=None, name=None):
        """The dataset `count` times (None or -1: forever)."""
        return _RepeatDataset(self, count)

    def take(self, count, name=None):
        """The first `count` elements (-1: all)."""
        return _TakeDataset(self, count)

    def skip(self, count, name=None):
        """All but the first `count` elements (-1: none)."""
        return _SkipDataset(self, count)

    def prefetch(self, buffer_size, name=None):
        """The same elements (flowjit prepares each batch when it is asked for)."""
        return _PrefetchDataset(self, buffer_size)

    def cache(self, filename="", name=None):
        """The elements of the first complete pass, kept in memory and replayed after."""
        return _CacheDataset(self)

    def enumerate(self, start=0, name=None):
        """(index, element) pairs, the index an int64 counting from `start`."""
        return _EnumerateDataset(self, start)

    def shard(self, num_shards, index, name=None):
        """Every `num_shards`-th element, starting with element `index`."""
        return _ShardDataset(self, num_shards, index)

    def concatenate(self, dataset, name=None):
        """This dataset's elements, then `dataset`'s."""
        return _ConcatenateDataset(self, dataset)

    def apply(self, transformation_func):
        return transformation_func(self)

    def with_options(self, options, name=None):
        return self

    def options(self):
        return Options()

    def reduce(self, initial_state, reduce_func, name=None):
        """`reduce_func(state, element)` folded over the elements, from `initial_state`."""
        state = initial_state
        for x in self:
            state = reduce_func(state, x)
        return state

    def get_single_element(self, name=None):
        it = iter(self)
        try:
            x = next(it)
        except StopIteration:
            raise InvalidArgumentError("Dataset was empty.") from None
        try:
            next(it)
        except StopIteration:
            return x
        raise InvalidArgumentError("Dataset had more than one element.")

    # -- iteration --------------------------------------------------------------------------
    def __iter__(self):
        return _OwnedIterator(self)

    def as_numpy_iterator(self):
        """The elements as NumPy arrays (0-d ones as NumPy scalars)."""
        it = self._iter_elements(None)
        pack = None
        for leaves in it:
            if pack is None:
                pack = _packer(self._tree())
            yield pack([_out_np(v) for v in leaves])

    def __bool__(self):
        return True

    def __len__(self):
        n = self._card()
        if n == INFINITE_CARDINALITY:
            raise TypeError("The dataset is infinite.")
        if n == UNKNOWN_CARDINALITY:
            raise TypeError("The dataset length is unknown.")
        return n

    def cardinality(self):
        """The number of elements as an int64 tensor; INFINITE_CARDINALITY (-1) or
        UNKNOWN_CARDINALITY (-2) where that is what it is."""
        return Tensor(value=np.asarray(self._card(), np.int64))

    # -- structure --------------------------------------------------------------------------
    @property
    def element_spec(self):
        tree, dtypes, shapes = self._spec()
        return _pack(tree, [TensorSpec(s, d) for d, s in zip(dtypes, shapes)])[0]

    @property
    def output_types(self):          # TF1's names
        tree, dtypes, _ = self._spec()
        return _pack(tree, list(dtypes))[0]

    @property
    def output_shapes(self):
        tree, _, shapes = self._spec()
        if self._v1:                      # TF1's TensorShape (unknown dims print as '?')
            from .compat.v1.graph import TensorShape as V1Shape
            return _pack(tree, [V1Shape(s) for s in shapes])[0]
        return _pack(tree, [None if s is None else TensorShape(s) for s in shapes])[0]

    @property
    def output_classes(self):
        tree, dtypes, _ = self._spec()
        return _pack(tree, [Tensor] * len(dtypes))[0]

    def __repr__(self):
        try:
            spec = self.element_spec
        except Exception as e:                # noqa: BLE001  (a repr must not raise)
            spec = f"<unknown: {type(e).__name__}>"
        return f"<{type(self).__name__} element_spec={spec}>"

    # -- TF1 iterators (flowjit/compat/v1/data.py) ------------------------------------------
    def make_one_shot_iterator(self):
        from .compat.v1 import data as v1data
        return v1data.make_one_shot_iterator(self)

    def make_initializable_iterator(self, shared_name=None):
        from .compat.v1 import data as v1data
        return v1data.make_initializable_iterator(self, shared_name)

    # -- internals --------------------------------------------------------------------------
    def _iter_blocks(self, ctx):
        if self._block_native:
            return self._gen_blocks(ctx)
        return _elements_to_blocks(self._gen_elements(ctx))

    def _iter_elements(self, ctx):
        if self._block_native:
            return _blocks_to_elements(self._gen_blocks(ctx))
        return self._gen_elements(ctx)

    def _spec(self):
        """(tree, dtypes, shapes) of an element: shapes are tuples with None for unknown
        sizes, or None for an unknown rank."""
        if self._spec_cache is None:
            self._spec_cache = self._compute_spec()
        return self._spec_cache

    def _tree(self):
        return self._inputs[0]._tree() if self._inputs else self._spec()[0]

    def _compute_spec(self):
        return self._inputs[0]._spec()

    def _peek_spec(self):
        """The spec of the first element (for datasets whose functions were not traced)."""
        for leaves in self._iter_elements(_Ctx(peek=True)):
            specs = [_leaf_spec(v) for v in leaves]
            return self._tree(), [d for d, _ in specs], [s for _, s in specs]
        raise ValueError(f"{type(self).__name__}: the element structure is unknown (the "
                         f"dataset is empty)")

    def _card(self):
        return self._inputs[0]._card()

    def _captured(self):
        out = []
        for d in self._inputs:
            for t in d._captured():
                if all(t is not u for u in out):
                    out.append(t)
        return out


class Options:
    """`tf.data.Options`: accepted and kept; flowjit's pipelines have no knobs."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def merge(self, options):
        return self


class _OwnedIterator:
    """What `iter(dataset)` gives: `next()` returns the next element as fj Tensors."""

    def __init__(self, ds):
        self._ds = ds
        self._it = ds._iter_elements(None)
        self._pack = None

    def __iter__(self):
        return self

    def __next__(self):
        leaves = next(self._it)
        if self._pack is None:
            self._pack = _packer(self._ds._tree())
        return self._pack([_out(v) for v in leaves])

    next = __next__

    def get_next(self, name=None):
        try:
            return self.__next__()
        except StopIteration:
            raise OutOfRangeError("End of sequence") from None

    @property
    def element_spec(self):
        return self._ds.element_spec


# --- sources ---------------------------------------------------------------------------------
class _TensorSliceDataset(DatasetV2):
    _block_native = True

    def __init__(self, tensors, v1=False):
        super().__init__((), v1)
        leaves = []
        self._struct_tree = _flatten(tensors, leaves)
        self._leaves = [_as_leaf(v, "from_tensor_slices") for v in leaves]
        if not self._leaves:
            raise ValueError("from_tensor_slices: the structure has no components")
        sizes = []
        for v in self._leaves:
            shape = v.shape
            if shape is not None and len(shape) == 0:
                raise ValueError("from_tensor_slices: Unbatching a tensor is only supported for rank >= 1 "
                                 "(a component is a scalar)")
            sizes.append(None if shape is None else shape[0])
        known = sorted({s for s in sizes if s is not None})
        if len(known) > 1:
            raise ValueError(f"from_tensor_slices: the components have different first sizes: "
                             f"Dimensions {known[0]} and {known[1]} are not compatible")
        self._n = known[0] if known and None not in sizes else None
        self._symbolic = any(isinstance(v, _Sym) for v in self._leaves)

    def _gen_blocks(self, ctx):
        arrays = self._leaves
        if self._symbolic:
            c = _ctx(ctx)
            arrays = [c.value(v) if isinstance(v, _Sym) else v for v in arrays]
            sizes = {len(a) if a.ndim else -1 for a in arrays}
            if len(sizes) != 1 or -1 in sizes:
                raise InvalidArgumentError(f"from_tensor_slices: the fed components have first sizes "
                                           f"{sorted(sizes)}; they must all have one (rank >= 1)")
        n = len(arrays[0])
        if n:
            yield _Block(tuple(arrays), slice(0, n), n)

    def _compute_spec(self):
        specs = [_leaf_spec(v) for v in self._leaves]
        return self._struct_tree, [d for d, _ in specs], [None if s is None else s[1:] for _, s in specs]

    def _card(self):
        return UNKNOWN_CARDINALITY if self._n is None else self._n

    def _captured(self):
        return [v.tensor for v in self._leaves if isinstance(v, _Sym)]


class _TensorDataset(DatasetV2):
    _block_native = True

    def __init__(self, tensors, v1=False):
        super().__init__((), v1)
        leaves = []
        self._struct_tree = _flatten(tensors, leaves)
        self._leaves = [_as_leaf(v, "from_tensors") for v in leaves]

    def _gen_blocks(self, ctx):
        c = _ctx(ctx)
        vals = [c.value(v) if isinstance(v, _Sym) else np.asarray(v) for v in self._leaves]
        yield _whole([a[None] for a in vals], 1)

    def _compute_spec(self):
        specs = [_leaf_spec(v) for v in self._leaves]
        return self._struct_tree, [d for d, _ in specs], [s for _, s in specs]

    def _card(self):
        return 1

    def _captured(self):
        return [v.tensor for v in self._leaves if isinstance(v, _Sym)]


class _RangeDataset(DatasetV2):
    _block_native = True

    def __init__(self, args, dtype, v1=False):
        super().__init__((), v1)
        if not 1 <= len(args) <= 3:
            raise TypeError(f"range takes 1 to 3 arguments (stop / start, stop[, step]), got {len(args)}")
        vals = [int(np.asarray(a.numpy() if isinstance(a, Tensor) else a)) for a in args]
        self._range = range(*vals)          # raises ValueError for step 0, as TF
        self._dtype = D.as_dtype(dtype)
        self._cached = None

    def _gen_blocks(self, ctx):
        r = self._range
        n = len(r)
        if n == 0:
            return
        if n <= _RANGE_CHUNK:
            if self._cached is None:     # one array for every pass: shuffles keep indices into it
                self._cached = np.arange(r.start, r.stop, r.step, dtype=self._dtype.np)
            yield _Block((self._cached,), slice(0, n), n)
            return
        for s in range(0, n, _RANGE_CHUNK):
            sub = r[s:s + _RANGE_CHUNK]
            arr = np.arange(sub.start, sub.stop, sub.step, dtype=self._dtype.np)
            yield _whole([arr], len(arr))

    def _compute_spec(self):
        return None, [self._dtype], [()]

    def _card(self):
        return len(self._range)


class _GeneratorDataset(DatasetV2):
    def __init__(self, generator, output_types, output_shapes, args, output_signature, v1=False):
        super().__init__((), v1)
        if not callable(generator):
            raise TypeError("from_generator: `generator` must be callable (a function returning an "
                            "iterable, e.g. a generator function)")
        self._gen_fn = generator
        self._args = tuple(args) if args is not None else ()
        if output_signature is not None:
            if output_types is not None or output_shapes is not None:
                raise TypeError("from_generator: give output_signature, or output_types (and "
                                "output_shapes), not both")
            specs = []
            self._struct_tree = _flatten(output_signature, specs, lists_are_leaves=False)
            self._dtypes = [_spec_dtype(s.dtype) for s in specs]
            self._shapes = [None if s.shape is None else _shape_tuple(s.shape) for s in specs]
        elif output_types is not None:
            types = []
            self._struct_tree = _flatten(output_types, types, lists_are_leaves=False)
            self._dtypes = [_spec_dtype(t) for t in types]
            if output_shapes is None:
                self._shapes = [None] * len(types)
            else:
                shapes = []
                _flatten_up_to(self._struct_tree, output_shapes, shapes, "from_generator output_shapes")
                self._shapes = [None if s is None else _shape_tuple(s) for s in shapes]
        else:
            raise TypeError("from_generator: give output_signature (or output_types)")

    def _gen_elements(self, ctx):
        tree, dtypes, shapes = self._struct_tree, self._dtypes, self._shapes
        for value in self._gen_fn(*self._args):
            vals = []
            try:
                _flatten_up_to(tree, value, vals, "from_generator")
            except ValueError as e:
                raise InvalidArgumentError(f"`generator` yielded an element that did not match the "
                                           f"expected structure: {e}") from None
            if len(vals) != len(dtypes):
                raise InvalidArgumentError(f"`generator` yielded an element of {len(vals)} components "
                                           f"where {len(dtypes)} were expected")
            leaves = []
            for v, dt, shape in zip(vals, dtypes, shapes):
                if dt is string:
                    a = np.array(_as_bytes(v) if _is_text(v) else v)
                else:
                    try:
                        a = to_numpy(v.numpy() if isinstance(v, Tensor) else v, dt)
                    except (TypeError, ValueError) as e:
                        raise InvalidArgumentError(f"`generator` yielded an element that could not be "
                                                   f"converted to the expected type {dt.name}: {e}") from None
                if shape is not None and (len(shape) != a.ndim or
                                          any(s is not None and s != n for s, n in zip(shape, a.shape))):
                    raise InvalidArgumentError(f"`generator` yielded an element of shape {a.shape} where "
                                               f"an element of shape {tuple(shape)} was expected.")
                leaves.append(a)
            yield leaves

    def _compute_spec(self):
        return self._struct_tree, list(self._dtypes), list(self._shapes)

    def _card(self):
        return UNKNOWN_CARDINALITY


def _spec_dtype(t):
    if t is string or getattr(t, "name", None) == "string" or t in (str, bytes):
        return string
    return D.as_dtype(t)


def _shape_tuple(s):
    if hasattr(s, "as_list"):
        try:
            s = s.as_list()
        except ValueError:            # a TF1 TensorShape of unknown rank
            return None
    if s is None:
        return None
    return tuple(None if d is None or (isinstance(d, int) and d < 0) else int(d) for d in s)


# --- element-wise functions ---------------------------------------------------------------------
_UNSET = object()


class _Function:
    """A user function over elements: called eagerly on fj Tensors, or (a TF1 dataset)
    traced once into a private TF1 graph and replayed per element."""

    def __init__(self, fn, input_ds, what):
        if not callable(fn):
            raise TypeError(f"{what}: expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.input = input_ds
        self.what = what
        self.graph_fn = None
        self.tried_graph = not input_ds._v1
        self.out_tree = _UNSET          # (None is the tree of a single leaf)

    def __call__(self, leaves):
        if not self.tried_graph:
            self.tried_graph = True
            try:
                from .compat.v1.data import GraphFunction
                self.graph_fn = GraphFunction(self.fn, self.input._spec())
            except Exception:          # noqa: BLE001  (not traceable: call it eagerly)
                self.graph_fn = None
        if self.graph_fn is not None:
            self.out_tree = self.graph_fn.out_tree
            return self.graph_fn(leaves)
        out = _call(self.fn, self.input._tree(), leaves)
        flat = []
        tree = _flatten(out, flat, lists_are_leaves=False)   # a returned list is a tuple, as TF2
        if self.out_tree is _UNSET:
            self.out_tree = tree
        return [_from_user(v, self.what) for v in flat]

    def spec(self):
        """(tree, dtypes, shapes) of the outputs, from a trace (TF1 graph, or fj.eval_shape);
        None when the function cannot be traced."""
        if self.input._v1:
            try:
                from .compat.v1.data import GraphFunction
                g = self.graph_fn or GraphFunction(self.fn, self.input._spec())
                self.graph_fn, self.tried_graph = g, True
                return g.out_tree, g.out_dtypes, g.out_shapes
            except Exception:          # noqa: BLE001
                self.tried_graph = True
                return None
        try:
            tree, dtypes, shapes = self.input._spec()
            if any(d is string for d in dtypes) or any(s is None for s in shapes):
                return None
            from .frontend.jit import ShapeDtypeStruct, eval_shape
            specs = _pack(tree, [ShapeDtypeStruct(s, d) for d, s in zip(dtypes, shapes)])[0]
            fn = self.fn
            if type(specs) is tuple:
                res = eval_shape(lambda *a: fn(*a), *specs)
            else:
                res = eval_shape(lambda a: fn(a), specs)
            flat = []
            out_tree = _flatten(res, flat, lists_are_leaves=False)
            out_d, out_s = [], []
            for v in flat:
                if isinstance(v, ShapeDtypeStruct):
                    out_d.append(v.dtype)
                    out_s.append(tuple(v.shape))
                else:
                    d, s = _leaf_spec(_from_user(v, self.what))
                    out_d.append(d)
                    out_s.append(s)
            return out_tree, out_d, out_s
        except Exception:              # noqa: BLE001  (eval_shape could not trace it)
            return None


class _MapDataset(DatasetV2):
    def __init__(self, ds, fn):
        super().__init__((ds,))
        self._fn = _Function(fn, ds, "map function")

    def _gen_elements(self, ctx):
        fn = self._fn
        for leaves in self._inputs[0]._iter_elements(ctx):
            yield fn(leaves)

    def _tree(self):
        if self._fn.out_tree is not _UNSET:
            return self._fn.out_tree
        return self._spec()[0]

    def _compute_spec(self):
        spec = self._fn.spec()
        if spec is None:
            spec = self._peek_spec()
        return spec

    def _peek_spec(self):
        for leaves in self._iter_elements(_Ctx(peek=True)):
            specs = [_leaf_spec(v) for v in leaves]
            return self._fn.out_tree, [d for d, _ in specs], [s for _, s in specs]
        raise ValueError("map: the element structure is unknown (the dataset is empty)")


class _FilterDataset(DatasetV2):
    def __init__(self, ds, predicate):
        super().__init__((ds,))
        self._fn = _Function(predicate, ds, "filter predicate")

    def _gen_elements(self, ctx):
        fn = self._fn
        for leaves in self._inputs[0]._iter_elements(ctx):
            r = fn(leaves)
            if len(r) != 1 or np.ndim(r[0]) != 0 or np.asarray(r[0]).dtype != np.bool_:
                raise InvalidArgumentError("filter: the predicate must return a scalar boolean tensor")
            if bool(r[0]):
                yield leaves

    def _card(self):
        return UNKNOWN_CARDINALITY


class _FlatMapDataset(DatasetV2):
    def __init__(self, ds, fn):
        super().__init__((ds,))
        self._func = fn
        self._out_tree = _UNSET

    def _gen_elements(self, ctx):
        tree = self._inputs[0]._tree()
        for leaves in self._inputs[0]._iter_elements(ctx):
            sub = _call(self._func, tree, leaves)
            if not isinstance(sub, DatasetV2):
                raise TypeError(f"flat_map: the function must return a Dataset, got {type(sub).__name__}")
            if self._out_tree is _UNSET:
                self._out_tree = sub._tree()
            yield from sub._iter_elements(ctx)

    def _tree(self):
        return self._out_tree if self._out_tree is not _UNSET else self._spec()[0]

    def _compute_spec(self):
        return self._peek_spec()

    def _peek_spec(self):
        for leaves in self._iter_elements(_Ctx(peek=True)):
            specs = [_leaf_spec(v) for v in leaves]
            return self._out_tree, [d for d, _ in specs], [s for _, s in specs]
        raise ValueError("flat_map: the element structure is unknown (the dataset is empty)")

    def _card(self):
        return UNKNOWN_CARDINALITY


# --- batching ----------------------------------------------------------------------------------
def _check_count(x, what, minimum):
    n = int(np.asarray(x.numpy() if isinstance(x, Tensor) else x))
    if n < minimum:
        raise InvalidArgumentError(f"{what} must be >= {minimum}, got {n}")
    return n


class _BatchDataset(DatasetV2):
    def __init__(self, ds, batch_size, drop_remainder):
        super().__init__((ds,))
        self._b = _check_count(batch_size, "batch_size", 1)
        self._drop = bool(drop_remainder)

    def _gen_elements(self, ctx):
        inp, b = self._inputs[0], self._b
        if inp._block_native:
            pieces, have = [], 0
            for blk in inp._gen_blocks(ctx):
                pos = 0
                while pos < blk.n:
                    t = min(b - have, blk.n - pos)
                    pieces.append(blk.sub(pos, pos + t))
                    have += t
                    pos += t
                    if have == b:
                        yield _concat_blocks(pieces).arrays()
                        pieces, have = [], 0
            if have and not self._drop:
                yield _concat_blocks(pieces).arrays()
            return
        group = []
        for leaves in inp._iter_elements(ctx):
            group.append(leaves)
            if len(group) == b:
                yield _stack(group)
                group = []
        if group and not self._drop:
            yield _stack(group)

    def _compute_spec(self):
        tree, dtypes, shapes = self._inputs[0]._spec()
        first = self._b if self._drop else None
        return tree, dtypes, [None if s is None else (first,) + tuple(s) for s in shapes]

    def _card(self):
        n = self._inputs[0]._card()
        if n < 0:
            return n
        return n // self._b if self._drop else -(-n // self._b)


def _stack(group):
    out = []
    for k in range(len(group[0])):
        vals = [e[k] for e in group]
        try:
            out.append(np.stack(vals))
        except ValueError:
            shapes = [np.shape(v) for v in vals]
            bad = next(i for i, s in enumerate(shapes) if s != shapes[0])
            raise InvalidArgumentError(
                f"Cannot batch tensors with different shapes in component {k}. First element had "
                f"shape {list(shapes[0])} and element {bad} had shape {list(shapes[bad])}; use "
                f"padded_batch to pad them to one shape") from None
    return out


class _PaddedBatchDataset(DatasetV2):
    def __init__(self, ds, batch_size, padded_shapes, padding_values, drop_remainder):
        super().__init__((ds,))
        self._b = _check_count(batch_size, "batch_size", 1)
        self._drop = bool(drop_remainder)
        self._padded_shapes_arg = padded_shapes
        self._padding_values_arg = padding_values
        self._resolved = None

    def _resolve(self):
        if self._resolved is None:
            tree, dtypes, shapes = self._inputs[0]._spec()
            n = len(dtypes)
            if self._padded_shapes_arg is None:
                ps = [None] * n
            else:
                ps = []
                _flatten_up_to(tree, self._padded_shapes_arg, ps, "padded_batch padded_shapes")
                ps = [_shape_tuple(s) for s in ps]
            if self._padding_values_arg is None:
                pv = [b"" if d is string else 0 for d in dtypes]
            else:
                pv = []
                _flatten_up_to(tree, self._padding_values_arg, pv, "padded_batch padding_values")
                pv = [v.numpy() if isinstance(v, Tensor) else v for v in pv]
            self._resolved = (ps, pv)
        return self._resolved

    def _gen_elements(self, ctx):
        group = []
        for leaves in self._inputs[0]._iter_elements(ctx):
            group.append(leaves)
            if len(group) == self._b:
                yield self._pad(group)
                group = []
        if group and not self._drop:
            yield self._pad(group)

    def _pad(self, group):
        ps, pv = self._resolve()
        out = []
        for k in range(len(group[0])):
            vals = [np.asarray(e[k]) for e in group]
            rank = vals[0].ndim
            if any(v.ndim != rank for v in vals):
                raise InvalidArgumentError(f"padded_batch: component {k} has elements of different ranks")
            want = ps[k]
            if want is not None and len(want) != rank:
                raise InvalidArgumentError(f"padded_batch: padded shape {want} of component {k} does not "
                                           f"have the rank of its elements ({rank})")
            top = [max(v.shape[d] for v in vals) for d in range(rank)]
            target = [top[d] if want is None or want[d] is None else want[d] for d in range(rank)]
            if any(t < m for t, m in zip(target, top)):
                raise InvalidArgumentError(f"padded_batch: an element of component {k} has shape larger "
                                           f"than the padded shape {target} (largest: {top})")
            dt = vals[0].dtype
            arr = np.full([len(vals)] + target, pv[k], dtype=dt)
            for i, v in enumerate(vals):
                arr[(i,) + tuple(slice(0, s) for s in v.shape)] = v
            out.append(arr)
        return out

    def _compute_spec(self):
        tree, dtypes, shapes = self._inputs[0]._spec()
        ps, _ = self._resolve()
        first = self._b if self._drop else None
        out = []
        for s, p in zip(shapes, ps):
            if p is not None:
                out.append((first,) + tuple(p))
            elif s is None:
                out.append(None)
            else:
                out.append((first,) + (None,) * len(s))
        return tree, dtypes, out

    def _card(self):
        n = self._inputs[0]._card()
        if n < 0:
            return n
        return n // self._b if self._drop else -(-n // self._b)


class _UnbatchDataset(DatasetV2):
    _block_native = True

    def __init__(self, ds):
        super().__init__((ds,))

    def _gen_blocks(self, ctx):
        for leaves in self._inputs[0]._iter_elements(ctx):
            arrays = [np.asarray(v) for v in leaves]
            if any(a.ndim == 0 for a in arrays):
                raise InvalidArgumentError("unbatch: Input element must have a non-scalar value in each "
                                           "component.")
            sizes = {a.shape[0] for a in arrays}
            if len(sizes) != 1:
                raise InvalidArgumentError(f"unbatch: Input element must have the same batch size in "
                                           f"each component ({sorted(sizes)})")
            n = sizes.pop()
            if n:
                yield _whole(arrays, n)

    def _compute_spec(self):
        tree, dtypes, shapes = self._inputs[0]._spec()
        return tree, dtypes, [None if s is None else tuple(s[1:]) for s in shapes]

    def _card(self):
        return UNKNOWN_CARDINALITY


# --- shuffle ------------------------------------------------------------------------------------
class _ShuffleDataset(DatasetV2):
    def __init__(self, ds, buffer_size, seed, reshuffle):
        super().__init__((ds,))
        self._size = _check_count(buffer_size, "buffer_size", 1)
        self._seed = _seed_parts(None if seed is None else int(seed), self._v1)
        self._reshuffle = bool(reshuffle)
        self._epochs = itertools.count()
        self._block_native = ds._block_native

    def _gen_blocks(self, ctx):
        for kind, x in self._run(ctx):
            if kind == "b":
                yield x
            else:
                yield _whole([np.asarray(v)[None] for v in x], 1)

    def _gen_elements(self, ctx):
        for kind, x in self._run(ctx):
            if kind == "e":
                yield x
            else:
                yield from _blocks_to_elements([x])

    def _run(self, ctx):
        """The shuffled stream as ("b", block) / ("e", leaves) items. Blocks over one
        source are shuffled as indices (vectorised); anything else element by element.
        Both consume the same draws: a uniform per output while the input lasts (slot
        floor(u * size)), then one permutation for the rest."""
        c = _ctx(ctx)
        epoch = next(self._epochs) if (self._reshuffle and not c.peek) else 0
        steady = _Uniforms(_rng(self._seed, epoch, 0))
        size = self._size
        inp = self._inputs[0]
        src, pieces, filled = None, [], 0      # lazy mode: pieces of ids into src
        buf_ids = None                          # ids of the full buffer (lazy, steady state)
        elems = None                            # element mode: the buffer as a list
        source = inp._iter_blocks(ctx) if inp._block_native else None
        if source is not None:
            for blk in source:
                if blk.n == 0:
                    continue
                if src is None:
                    src = blk.src
                    key = blk.key()
                if blk.src is not src and blk.key() != key:
                    # another source: continue element by element from the buffer's contents
                    elems = self._buffer_rows(src, buf_ids, pieces)
                    rest = itertools.chain(_blocks_to_elements([blk]), _blocks_to_elements(source))
                    yield from self._elements_steady(elems, rest, steady)
                    yield from self._drain_elements(elems, epoch)
                    return
                pos = 0
                if buf_ids is None:
                    t = min(size - filled, blk.n)
                    pieces.append(blk.sub(0, t).ids())
                    filled += t
                    pos = t
                    if filled == size:
                        buf_ids = np.concatenate(pieces)
                        pieces = []
                while pos < blk.n:
                    c_n = min(_SHUFFLE_CHUNK, blk.n - pos)
                    inc = blk.sub(pos, pos + c_n).ids()
                    pos += c_n
                    j = (steady.take(c_n) * size).astype(np.int64)
                    np.minimum(j, size - 1, out=j)
                    order = np.argsort(j, kind="stable")
                    js = j[order]
                    same = js[1:] == js[:-1]
                    out_ids = buf_ids[j]
                    later = order[1:][same]
                    out_ids[later] = inc[order[:-1][same]]
                    last = order[np.append(~same, True)]
                    buf_ids[j[last]] = inc[last]
                    yield "b", _Block(src, out_ids, c_n)
            if src is None:
                return
            ids = buf_ids if buf_ids is not None else np.concatenate(pieces)
            perm = _rng(self._seed, epoch, 1).permutation(len(ids))
            yield "b", _Block(src, ids[perm], len(ids))
            return
        elems = []
        it = inp._iter_elements(ctx)
        for leaves in it:
            elems.append(leaves)
            if len(elems) == size:
                break
        yield from self._elements_steady(elems, it, steady)
        yield from self._drain_elements(elems, epoch)

    @staticmethod
    def _buffer_rows(src, buf_ids, pieces):
        if src is None:
            return []
        ids = buf_ids if buf_ids is not None else (np.concatenate(pieces) if pieces else
                                                   np.empty(0, np.int64))
        return list(_blocks_to_elements([_Block(src, ids, len(ids))]))

    def _elements_steady(self, elems, rest, steady):
        size = self._size
        if len(elems) < size:                  # still filling
            for leaves in rest:
                elems.append(leaves)
                if len(elems) == size:
                    break
            else:
                return
        for leaves in rest:
            j = min(int(steady.one() * size), size - 1)
            out = elems[j]
            elems[j] = leaves
            yield "e", out

    def _drain_elements(self, elems, epoch):
        perm = _rng(self._seed, epoch, 1).permutation(len(elems))
        for p in perm:
            yield "e", elems[p]


# --- order and counting ---------------------------------------------------------------------------
class _PassThrough(DatasetV2):
    """A transformation that works on blocks and on elements alike."""

    def __init__(self, ds):
        super().__init__((ds,))
        self._block_native = ds._block_native

    def _gen_blocks(self, ctx):
        return self._apply(lambda c: self._inputs[0]._iter_blocks(c), ctx, True)

    def _gen_elements(self, ctx):
        return self._apply(lambda c: self._inputs[0]._iter_elements(c), ctx, False)


class _RepeatDataset(_PassThrough):
    def __init__(self, ds, count):
        super().__init__(ds)
        self._count = None if count is None else int(np.asarray(count.numpy() if isinstance(count, Tensor)
                                                                 else count))
        if self._count is not None and self._count < 0:
            self._count = None

    def _apply(self, source, ctx, blocks):
        rounds = 0
        while self._count is None or rounds < self._count:
            produced = False
            for x in source(ctx):
                produced = True
                yield x
            if not produced:        # an empty input repeated forever is empty
                return
            rounds += 1

    def _card(self):
        n = self._inputs[0]._card()
        if self._count is None:
            return 0 if n == 0 else INFINITE_CARDINALITY
        if self._count == 0:
            return 0
        if n < 0:
            return n
        return n * self._count


class _TakeDataset(_PassThrough):
    def __init__(self, ds, count):
        super().__init__(ds)
        self._count = int(np.asarray(count.numpy() if isinstance(count, Tensor) else count))

    def _apply(self, source, ctx, blocks):
        left = self._count
        if left == 0:
            return
        it = source(ctx)
        if left < 0:
            yield from it
            return
        for x in it:
            k = x.n if blocks else 1
            if k >= left:
                yield x.sub(0, left) if blocks else x
                return
            left -= k
            yield x

    def _card(self):
        n = self._inputs[0]._card()
        c = self._count
        if c < 0:
            return n
        if n == INFINITE_CARDINALITY:
            return c
        if n == UNKNOWN_CARDINALITY:
            return 0 if c == 0 else n
        return min(n, c)


class _SkipDataset(_PassThrough):
    def __init__(self, ds, count):
        super().__init__(ds)
        self._count = int(np.asarray(count.numpy() if isinstance(count, Tensor) else count))

    def _apply(self, source, ctx, blocks):
        left = self._count
        it = source(ctx)
        if left < 0:
            for _ in it:
                pass
            return
        for x in it:
            if left == 0:
                yield x
                continue
            k = x.n if blocks else 1
            if k <= left:
                left -= k
                continue
            yield x.sub(left, x.n)
            left = 0

    def _card(self):
        n = self._inputs[0]._card()
        if n < 0:
            return n
        return 0 if self._count < 0 else max(0, n - self._count)


class _PrefetchDataset(_PassThrough):
    def __init__(self, ds, buffer_size):
        super().__init__(ds)
        n = int(np.asarray(buffer_size.numpy() if isinstance(buffer_size, Tensor) else buffer_size))
        if n < 0 and n != AUTOTUNE:
            raise InvalidArgumentError(f"prefetch: buffer_size must be >= 0 or AUTOTUNE, got {n}")

    def _apply(self, source, ctx, blocks):
        return source(ctx)


class _CacheDataset(_PassThrough):
    def __init__(self, ds):
        super().__init__(ds)
        self._store = {}        # "blocks" / "elements" -> the items of a complete pass

    def _apply(self, source, ctx, blocks):
        kind = "blocks" if blocks else "elements"
        done = self._store.get(kind)
        if done is not None:
            if blocks:
                yield from done
            else:
                for leaves in done:     # views: the user gets copies, the cache stays intact
                    yield [v[...] if isinstance(v, np.ndarray) else v for v in leaves]
            return
        items = []
        for x in source(ctx):
            items.append(x)
            yield x if blocks else [v[...] if isinstance(v, np.ndarray) else v for v in x]
        if not (ctx is not None and ctx.peek):
            self._store[kind] = items


class _EnumerateDataset(_PassThrough):
    def __init__(self, ds, start):
        super().__init__(ds)
        self._start = int(np.asarray(start.numpy() if isinstance(start, Tensor) else start))

    def _apply(self, source, ctx, blocks):
        i = self._start
        for x in source(ctx):
            if blocks:
                yield _whole([np.arange(i, i + x.n, dtype=np.int64)] + x.arrays(), x.n)
                i += x.n
            else:
                yield [np.int64(i)] + list(x)
                i += 1

    def _tree(self):
        return ("t", (None, self._inputs[0]._tree()))

    def _compute_spec(self):
        tree, dtypes, shapes = self._inputs[0]._spec()
        return ("t", (None, tree)), [D.int64] + list(dtypes), [()] + list(shapes)


class _ShardDataset(_PassThrough):
    def __init__(self, ds, num_shards, index):
        super().__init__(ds)
        self._num = _check_count(num_shards, "num_shards", 1)
        self._index = int(np.asarray(index.numpy() if isinstance(index, Tensor) else index))
        if not 0 <= self._index < self._num:
            raise InvalidArgumentError(f"shard: index must be in [0, num_shards={self._num}), got "
                                       f"{self._index}")

    def _apply(self, source, ctx, blocks):
        if not blocks:
            yield from itertools.islice(source(ctx), self._index, None, self._num)
            return
        offset = 0
        for blk in source(ctx):
            first = (self._index - offset) % self._num
            offset += blk.n
            if first < blk.n:
                yield blk.pick(np.arange(first, blk.n, self._num, dtype=np.int64))

    def _card(self):
        n = self._inputs[0]._card()
        if n < 0:
            return n
        return n // self._num + (1 if self._index < n % self._num else 0)


class _ConcatenateDataset(DatasetV2):
    def __init__(self, a, b):
        if not isinstance(b, DatasetV2):
            raise TypeError(f"concatenate: expected a Dataset, got {type(b).__name__}")
        super().__init__((a, b))
        self._block_native = a._block_native and b._block_native

    def _gen_blocks(self, ctx):
        for d in self._inputs:
            yield from d._iter_blocks(ctx)

    def _gen_elements(self, ctx):
        for d in self._inputs:
            yield from d._iter_elements(ctx)

    def _compute_spec(self):
        (ta, da, sa), (tb, db, sb) = (d._spec() for d in self._inputs)
        if ta != tb or any(x is not y for x, y in zip(da, db)):
            raise TypeError(f"concatenate: the datasets' element types differ ({da} vs {db})")
        shapes = []
        for x, y in zip(sa, sb):
            if x is None or y is None or len(x) != len(y):
                shapes.append(None)
            else:
                shapes.append(tuple(p if p == q else None for p, q in zip(x, y)))
        return ta, da, shapes

    def _card(self):
        a, b = (d._card() for d in self._inputs)
        if INFINITE_CARDINALITY in (a, b):
            return INFINITE_CARDINALITY
        if UNKNOWN_CARDINALITY in (a, b):
            return UNKNOWN_CARDINALITY
        return a + b


class _ZipDataset(DatasetV2):
    def __init__(self, datasets, v1=False):
        flat = []
        self._ds_tree = _flatten(datasets, flat, lists_are_leaves=False)
        for d in flat:
            if not isinstance(d, DatasetV2):
                raise TypeError(f"zip: expected Datasets (a tuple or dict of them), got {type(d).__name__}")
        if not flat:
            raise ValueError("zip: no datasets")
        super().__init__(flat, v1 or None)
        self._block_native = all(d._block_native for d in flat)

    def _tree(self):
        subs = iter([d._tree() for d in self._inputs])
        return _subst(self._ds_tree, subs)

    def _gen_elements(self, ctx):
        for parts in zip(*(d._iter_elements(ctx) for d in self._inputs)):
            yield [v for p in parts for v in p]

    def _gen_blocks(self, ctx):
        its = [d._iter_blocks(ctx) for d in self._inputs]
        cur = [None] * len(its)
        pos = [0] * len(its)
        while True:
            for i, it in enumerate(its):
                while cur[i] is None or pos[i] >= cur[i].n:
                    nxt = next(it, None)
                    if nxt is None:
                        return
                    cur[i], pos[i] = nxt, 0
            m = min(b.n - p for b, p in zip(cur, pos))
            parts = [b.sub(p, p + m) for b, p in zip(cur, pos)]
            for i in range(len(pos)):
                pos[i] += m
            first = parts[0].idx
            if all(isinstance(p.idx, slice) and p.idx == first for p in parts) and isinstance(first, slice):
                yield _Block(tuple(a for p in parts for a in p.src), first, m)
            else:
                yield _whole([a for p in parts for a in p.arrays()], m)

    def _compute_spec(self):
        specs = [d._spec() for d in self._inputs]
        tree = _subst(self._ds_tree, iter([s[0] for s in specs]))
        return tree, [d for s in specs for d in s[1]], [x for s in specs for x in s[2]]

    def _card(self):
        ns = [d._card() for d in self._inputs]
        finite = [n for n in ns if n >= 0]
        if finite:
            return min(finite) if UNKNOWN_CARDINALITY not in ns else (
                min(finite) if min(finite) == 0 else UNKNOWN_CARDINALITY)
        return UNKNOWN_CARDINALITY if UNKNOWN_CARDINALITY in ns else INFINITE_CARDINALITY


def _subst(tree, subs):
    """`tree` with each leaf replaced by the next tree of `subs`."""
    if tree is None:
        return next(subs)
    inner = tuple(_subst(s, subs) for s in tree[-1])
    return tree[:-1] + (inner,)


# --- fj.data.experimental ------------------------------------------------------------------------
def cardinality(dataset):
    return dataset.cardinality()


def get_single_element(dataset):
    return dataset.get_single_element()


class _Experimental:
    AUTOTUNE = AUTOTUNE
    INFINITE_CARDINALITY = INFINITE_CARDINALITY
    UNKNOWN_CARDINALITY = UNKNOWN_CARDINALITY
    cardinality = staticmethod(cardinality)
    get_single_element = staticmethod(get_single_element)

    def __repr__(self):
        return "<module 'fj.data.experimental'>"


experimental = _Experimental()
