"""`@fj.jit`: trace once per signature, compile, cache, run.

Signature (SPEC): the structure of the arguments, static values, and for every array
input its dtype, rank and which dims are 1. Other sizes are symbols, so a new batch
size reuses the compiled code; facts that tracing learned about sizes are guards
checked on every call (see ir/shapes.py).

Python floats are dynamic (weakly typed: they take the dtype of the tensor they meet);
Python ints, bools, strings and None are static (a new value traces again), as are
arguments named in `static_argnames`.
"""
import functools
import inspect as _inspect

import numpy as np

from .. import dtypes as D
from ..errors import OutOfRangeError, TracerError
from ..ir.graph import Graph
from ..runtime import stats as S
from .pytree import flatten, unflatten
from .tensor import Tensor, TraceContext, current_trace, node_of


class _Dyn:
    """Marks a dynamic leaf position in the flattened arguments."""
    __slots__ = ("weak",)

    def __init__(self, weak):
        self.weak = weak


def _is_leaf(x):
    return isinstance(x, Tensor) or hasattr(x, "_flowjit_tensor")


def _classify(leaves):
    """Split argument leaves into dynamic arrays and static values (for the cache key)."""
    arrays, spec, statics = [], [], []
    for x in leaves:
        if isinstance(x, Tensor):
            a = x._value
            if a is None:
                raise TracerError("a traced tensor was passed into a jitted function from outside its trace")
            weak = False
        elif isinstance(x, np.ndarray):
            a = x
            weak = False
        elif isinstance(x, np.generic):
            a = np.asarray(x)
            weak = False
        elif isinstance(x, float):
            a = np.asarray(x, np.float64)
            weak = True
        else:
            try:
                hash(x)
            except TypeError:
                raise TypeError(f"jit: argument {x!r} is neither an array nor a hashable static value")
            statics.append(x)
            spec.append(("s",))
            continue
        if a.dtype not in _OK_DTYPES:
            a = a.astype(D.as_dtype(a.dtype).np)
        arrays.append(a)
        spec.append((a.dtype.num, a.ndim, tuple(d == 1 for d in a.shape), weak))
    return arrays, tuple(spec), tuple(statics)


_OK_DTYPES = {d.np for d in D.ALL}
_OK_NUMS = {d.np.num for d in D.ALL}
_is_one = (1).__eq__


def _fast_key(args):
    """Signature key of an all-array positional call, or (None, None)."""
    key = []
    arrays = []
    for a in args:
        t = type(a)
        if t is Tensor:
            a = a._value
            if a is None:
                return None, None
        elif t is not np.ndarray:
            return None, None
        num = a.dtype.num
        if num not in _OK_NUMS:
            return None, None
        key.append((num, a.ndim, tuple(map(_is_one, a.shape))))
        arrays.append(a)
    return tuple(key), arrays


class Compiled:
    """One traced signature: its graphs, program, executable and guard."""

    def __init__(self, graph, program, exe, guard, out_struct, out_static, rank0_out, notes):
        self.graph = graph
        self.program = program
        self.exe = exe
        self.guard = guard
        self.out_struct = out_struct
        self.out_static = out_static       # list: None for a tensor output, else the value
        self.rank0_out = rank0_out
        self.notes = notes
        g = program.graph
        self.consts = [np.ascontiguousarray(c).reshape(1) if c.ndim == 0 else np.ascontiguousarray(c)
                       for c in g.consts]
        used = sorted({n.attrs["index"] for n in g.nodes if n.op == "const"})
        self.consts = [self.consts[i] for i in used]
        self.streams = [g.rng_streams[i] for i in
                        sorted({n.attrs["stream"] for n in g.nodes if n.op == "rng_key"})]
        # the error word kernels write on a bad index (one per signature: calls of one
        # jitted function are not reentrant)
        self.err = np.zeros(3, np.int64)
        self.single = out_struct == "*" and out_static == [None]

    def run(self, arrays):
        args = [a if (a.ndim and a.flags.c_contiguous) else
                (a.reshape(1) if a.ndim == 0 else np.ascontiguousarray(a)) for a in arrays]
        if self.consts:
            args.extend(self.consts)
        for s in self.streams:
            args.append(np.array([s.next_key()], np.int64))
        err = self.err
        args.append(err)
        outs = self.exe.run(args)
        if err[0]:
            node = self.program.graph.nodes[self.exe.err_codes[int(err[0])]]
            bad, n = int(err[1]), int(err[2])
            err[:] = 0
            raise OutOfRangeError(f"{node.op} (at {node.src}): index {bad} is out of range [0, {n})")
        if self.single:
            o = outs[0]
            return Tensor(value=o.reshape(()) if self.rank0_out[0] else o)
        res = []
        k = 0
        for st in self.out_static:
            if st is None:
                o = outs[k]
                if self.rank0_out[k]:
                    o = o.reshape(())
                res.append(Tensor(value=o))
                k += 1
            else:
                res.append(st[0])
        return unflatten(self.out_struct, res)


class JitFunction:
    def __init__(self, fn, static_argnames=()):
        self.fn = fn
        if isinstance(static_argnames, str):
            static_argnames = (static_argnames,)
        self.static_argnames = tuple(static_argnames)
        self._sig = _inspect.signature(fn) if self.static_argnames else None
        self._cache = {}
        self._fast = {}     # all-positional-array calls: per-array key -> same entry list
        functools.update_wrapper(self, fn)

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return functools.partial(self.__call__, obj)

    def _split_static(self, args, kwargs):
        if not self.static_argnames:
            return args, kwargs, ()
        bound = self._sig.bind(*args, **kwargs)
        static = tuple((n, bound.arguments.pop(n)) for n in self.static_argnames if n in bound.arguments)
        return bound.args, bound.kwargs, static

    def __call__(self, *args, **kwargs):
        if current_trace() is not None:       # called inside another trace: inline it
            return self.fn(*args, **kwargs)
        if not kwargs:
            # fast path: every argument a positional array or eager Tensor
            key, arrays = _fast_key(args)
            if key is not None:
                entries = self._fast.get(key)
                if entries:
                    shapes = None
                    for c in entries:
                        if c.guard is not None:
                            if shapes is None:
                                shapes = tuple(a.shape for a in arrays)
                            if not c.guard(shapes):
                                continue
                        S._counters["cache_hits"] += 1
                        S._counters["calls"] += 1
                        return c.run(arrays)
        c, arrays = self._lookup(args, kwargs)
        S.bump("calls")
        return c.run(arrays)

    def _lookup(self, args, kwargs):
        dargs, dkwargs, static = self._split_static(args, kwargs)
        leaves, struct = flatten((dargs, dkwargs), _is_leaf)
        arrays, spec, statics = _classify(leaves)
        key = (struct, spec, statics, static)
        entries = self._cache.get(key)
        if entries:
            shapes = tuple(a.shape for a in arrays)
            for c in entries:
                if c.guard is None or c.guard(shapes):
                    S.bump("cache_hits")
                    return c, arrays
        c = self._trace(args, kwargs, leaves, struct, arrays, spec, static)
        entries = self._cache.setdefault(key, [])
        entries.append(c)
        if not kwargs and not self.static_argnames:
            fk, _ = _fast_key(args)
            if fk is not None:
                self._fast[fk] = entries
        return c, arrays

    def _trace(self, args, kwargs, leaves, struct, arrays, spec, static):
        from ..runtime.pipeline import build
        S.bump("traces")
        g = Graph()
        traced_leaves = []
        k = 0
        with TraceContext(g) as ctx:
            for x, sp in zip(leaves, spec):
                if sp[0] == "s":
                    traced_leaves.append(x)
                    continue
                a = arrays[k]
                shape = tuple(1 if d == 1 else g.env.new_symbol(d, k, j) for j, d in enumerate(a.shape))
                node = g.add("arg", (), {"index": k}, shape, D.as_dtype(a.dtype))
                g.args.append(node.id)
                t = Tensor(node=node, graph=g, weak=sp[3])
                traced_leaves.append(t)
                k += 1
            dargs, dkwargs = unflatten(struct, traced_leaves)
            for name, v in static:
                dkwargs[name] = v
            if static:
                bound = self._sig.bind_partial(*dargs, **dkwargs)
                result = self.fn(*bound.args, **bound.kwargs)
            else:
                result = self.fn(*dargs, **dkwargs)
            out_leaves, out_struct = flatten(result, _is_leaf)
            out_static, rank0 = [], []
            for o in out_leaves:
                if hasattr(o, "_flowjit_tensor"):
                    o = o._flowjit_tensor()
                if isinstance(o, Tensor):
                    nid = node_of(o, ctx).id
                    g.outputs.append(nid)
                    out_static.append(None)
                    rank0.append(len(g.nodes[nid].shape) == 0)
                else:
                    out_static.append((o,))
        program, exe = build(g)
        guard = _compile_guard(g.env.guards)
        return Compiled(g, program, exe, guard, out_struct, out_static, rank0, list(g.env.notes))

    def inspect(self, *args, **kwargs):
        """The traced graph, fusion groups and generated source for these arguments."""
        c, _ = self._lookup(args, kwargs)
        return Inspection(c)


def _compile_guard(guards):
    if not guards:
        return None
    src = "lambda s: " + " and ".join(f"({g})" for g in guards)
    return eval(src, {})


class Inspection:
    """What `jitted.inspect(*args)` returns; `str()` shows all of it."""

    def __init__(self, c):
        self.graph = c.graph.dump()
        self.optimized_graph = c.program.graph.dump()
        self.fusion_groups = c.program.describe()
        self.num_fused_loops = sum(1 for s in c.program.steps if s.kind == "loop")
        self.steps = [s.kind for s in c.program.steps]
        self.forward_source = c.exe.source()
        self.backward_source = None
        self.specializations = c.notes
        self.guards = list(c.graph.env.guards)

    def __str__(self):
        parts = ["== traced graph ==", self.graph, "== after simplification ==", self.optimized_graph,
                 "== fusion groups ==", self.fusion_groups,
                 "== specialisations ==", "\n".join(self.specializations) or "(none: all sizes symbolic)",
                 "== forward function (Numba source) ==", self.forward_source,
                 "== backward function ==", self.backward_source or "(none: no gradients taken)"]
        return "\n".join(parts)

    __repr__ = __str__


def jit(fn=None, *, static_argnames=()):
    """Trace `fn` into a graph per signature, fuse it and compile it with Numba."""
    if fn is None:
        return lambda f: JitFunction(f, static_argnames)
    return JitFunction(fn, static_argnames)
