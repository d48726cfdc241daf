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
from ..errors import InvalidArgumentError, OutOfRangeError, TracerError
from ..ir.graph import Graph
from ..ir.registry import REGISTRY
from ..ir.shapes import concrete_sizes
from ..runtime import devices, stats as S
from ..runtime.interrupts import deferred_interrupts, reraise_interrupt
from . import device as _device
from .custom_op import kernel_error
from .pytree import flatten, unflatten
from .tensor import DeviceTensor, Tensor, TraceContext, node_of, to_numpy, tracing_or_recording


class _Dyn:
    """Marks a dynamic leaf position in the flattened arguments."""
    __slots__ = ("weak",)

    def __init__(self, weak):
        self.weak = weak


def _is_leaf(x):
    return isinstance(x, Tensor) or hasattr(x, "_flowjit_tensor") or _is_number_list(x)


def _is_number_list(x):
    """A list of numbers (nested lists too): passed to a jitted function it is one array,
    as eager ops take it. (Tuples stay structure: a tuple of ints is a shape or axes.)"""
    if type(x) is not list or not x:
        return False
    flat = x
    while flat and all(type(v) is list for v in flat):
        flat = [w for v in flat for w in v]
    return bool(flat) and all(isinstance(v, (int, float, np.number)) for v in flat)


def _classify(leaves):
    """Split argument leaves into dynamic arrays and static values (for the cache key)."""
    arrays, spec, statics = [], [], []
    for x in leaves:
        if type(x) is DeviceTensor:       # a device's memory, used where it is
            a = x._array
            weak = False
        elif isinstance(x, Tensor):
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
        elif type(x) is list:                     # _is_number_list: converted as eagerly
            try:
                a = to_numpy(x)
            except ValueError:
                raise TypeError(f"jit: argument {x!r} is a ragged list of numbers; pass an array") from None
            weak = False
        elif _device.is_device_array(x):
            dev = devices.as_device_array(x)
            a = devices.DeviceArray(devices.kind_of(x), dev, dev.shape)
            weak = False
        else:
            try:
                hash(x)
            except TypeError:
                raise TypeError(f"jit: argument {x!r} is neither an array nor a hashable static value")
            statics.append(x)
            spec.append(("s",))
            continue
        if a.dtype not in _OK_DTYPES:
            a = to_numpy(a.host() if type(a) is devices.DeviceArray else a)     # range-checked
        arrays.append(a)
        spec.append((a.dtype.num, a.ndim, tuple(d == 1 for d in a.shape), weak)
                    + ((a.kind,) if type(a) is devices.DeviceArray else ()))
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


class StageRunner:
    """Runs one compiled program (forward or backward): appends its constants, fresh
    random keys and the error word to the arguments, and turns a kernel-reported bad
    index into an exception naming the op."""

    def __init__(self, stage, memory):
        self.program = stage.program
        self.exe = stage.exe
        g = stage.program.graph
        used = sorted({n.attrs["index"] for n in g.nodes if n.op == "const"})
        self.consts = memory.constants([g.consts[i] for i in used])     # placed once
        self.streams = [g.rng_streams[i] for i in
                        sorted({n.attrs["stream"] for n in g.nodes if n.op == "rng_key"})]
        # the error word kernels write on a bad index (calls are not reentrant)
        self.err = np.zeros(3, np.int64)

    def extended(self, args, dry=False):
        """The program's arguments: args, its constants, fresh random keys (zeros, which
        advance no stream, for a dry run), the error word."""
        if self.consts:
            args = args + self.consts
        if self.streams:
            args = args + [np.array([0 if dry else s.next_key()], np.int64) for s in self.streams]
        return args + [np.zeros(3, np.int64) if dry else self.err]

    def __call__(self, args):
        err = self.err
        try:
            outs = self.exe.run(self.extended(args))
        except SystemError as e:
            reraise_interrupt(e)
        except Exception as e:
            if type(e).__module__.startswith("numba"):    # a kernel Numba would not compile
                raise kernel_error(self.program.graph, e) from None
            raise
        if err[0]:
            node = self.exe.err_codes[int(err[0])]
            if isinstance(node, int):         # (a loop body's node is given as itself)
                node = self.program.graph.nodes[node]
            bad, n = int(err[1]), int(err[2])
            err[:] = 0
            message = REGISTRY[node.op].runtime_error
            if message is not None:
                raise InvalidArgumentError(f"{node.op} (at {node.src}): {message(bad, n)}")
            raise OutOfRangeError(f"{node.op} (at {node.src}): index {bad} is out of range [0, {n})")
        return outs


def _host_tensor(o, rank0):
    return Tensor(value=o.reshape(()) if rank0 else o)


def _device_tensor(kind):
    def wrap(o, rank0):
        return DeviceTensor(devices.DeviceArray(kind, o, () if rank0 else o.shape))
    return wrap


class Compiled:
    """One traced signature: forward (and backward) programs, guard, output layout."""

    def __init__(self, traced, joint, stages, split, guard, out_struct, out_static, variables, notes,
                 device=_device.CPU0):
        self.graph = traced
        self.device = device
        self.on_host = device.kind == "CPU"
        # the one device interface: inputs, variables, constants and outputs go through
        # the memory of the device the program was compiled for
        self.memory = devices.memory(device.kind)
        self.wrap = _host_tensor if self.on_host else _device_tensor(device.kind)
        self.joint = joint
        self.split = split
        self.program = stages[0].program
        self.exe = stages[0].exe
        self.fwd = StageRunner(stages[0], self.memory)
        self.bwd = StageRunner(stages[1], self.memory) if len(stages) > 1 else None
        self.stages = stages
        self.guard = guard
        self.out_struct = out_struct
        self.out_static = out_static
        self.variables = variables
        self.notes = notes
        n_dyn = len(traced.args) - len(variables)
        pos = {a: k for k, a in enumerate(joint.args)}
        self.effect_vars = [variables[pos[a] - n_dyn] for a, _ in joint.effects]
        self.rank0_out = [len(joint.nodes[o].shape) == 0 for o in joint.outputs]
        # effects the compiled code already wrote into the variable's own buffer
        done = set()
        if split is None:
            done = set(stages[0].exe.inplace)
        else:
            done = {split.fwd_effects[k] for k in stages[0].exe.inplace} | \
                   {split.bwd_effects[k] for k in stages[1].exe.inplace}
        self.effect_copy = [k not in done for k in range(len(joint.effects))]
        in_place = {joint.effects[k][1] for k in done}
        self.copy_out = [_shares_state(joint, o, in_place) for o in joint.outputs]
        self.single = (out_struct == "*" and out_static == [None] and not joint.effects
                       and self.bwd is None and not self.copy_out[0])
        if self.bwd is not None and hasattr(self.exe, "runs_next") and not self.exe.runs_next:
            self.exe.runs_next.append((self.bwd.exe, self._backward_args))
        # a training step's forward and backward share one setup of the backend's
        # threads, where it has them (thread_group: the CPU's costs 3-4 us)
        self.thread_group = getattr(self.exe, "thread_group", None) if self.bwd is not None else None
        # what compiled code takes for the variables' own buffers (the host's are
        # C-contiguous already: only a 0-d one is viewed as shape (1,))
        self.variable_arguments = getattr(self.memory, "variable_arguments", self.memory.arguments)
        if split is not None:
            self._combined_at = _combined_positions(joint, split)

    def _backward_args(self, fwd_args, fwd_outs):
        """The backward's arguments after the forward ran on fwd_args and returned
        fwd_outs (a backend compiling both programs' kernels ahead of the first call
        uses it with a dry run's outputs)."""
        n = len(fwd_args) - (len(self.fwd.extended([], dry=True)))
        nf = len(self.split.fwd_outputs)
        residuals = list(fwd_outs[nf:nf + len(self.split.saved)])
        return self.bwd.extended(list(fwd_args[:n]) + residuals, dry=True)

    def run(self, arrays):
        group = self.thread_group and self.thread_group()
        if not group:
            return self._run_atomic(arrays)
        begin, end = group
        try:
            begin()         # (inside the try: an interrupted begin is undone by end)
            return self._run_atomic(arrays)
        finally:
            end()

    def _run_atomic(self, arrays):
        if self.effect_vars:        # a step that updates variables: all of it or none
            with deferred_interrupts():
                return self._run(arrays)
        return self._run(arrays)

    def _run(self, arrays):
        args = self.memory.arguments(arrays)
        if self.variables:
            kind = self.memory.kind
            if kind != "CPU" or devices.anything_placed_off_host():
                for v in self.variables:
                    v._place(kind)
            args.extend(self.variable_arguments([v._buf for v in self.variables]))
        outs = self.fwd(args)
        if self.single:
            return self.wrap(outs[0], self.rank0_out[0])
        values, effects = self._combine(args, outs)
        return self._results(values, effects)

    def _results(self, values, effects):
        """The user's outputs (statics put back, arguments returned as copies), then the
        variable updates the compiled code did not already make in place. Outputs come
        first: they may read a variable's old buffer."""
        res = []
        k = 0
        for st in self.out_static:
            if st is None:
                o = values[k]
                if self.copy_out[k]:
                    o = self.memory.copy(o)
                res.append(self.wrap(o, self.rank0_out[k]))
                k += 1
            else:
                res.append(st[0])
        for var, v, copy in zip(self.effect_vars, effects, self.effect_copy):
            if copy:
                var._write(v, copy=True)
        return res[0] if self.out_struct == "*" else unflatten(self.out_struct, res)

    def _combine(self, args, outs):
        """(program outputs, variable updates) from the forward (and backward) runs."""
        n_out = len(self.joint.outputs)
        if self.bwd is None:
            values = list(outs[:n_out])
            effects = outs[n_out:]
        else:
            nf, ns = len(self.split.fwd_outputs), len(self.split.saved)
            bouts = self.bwd(args + list(outs[nf:nf + ns]))
            both = (*outs, *bouts, None)
            value_at, effect_at = self._combined_at
            values = [both[i] for i in value_at]
            effects = [both[i] for i in effect_at]
        return values, effects


def _combined_positions(joint, split):
    """(for each output of the joint program, for each of its effects): the position of
    its value in (*forward outputs, *backward outputs, None), where the forward returns
    its outputs, the residuals, then its effects and the backward its outputs, then its
    effects (None: neither program returns it)."""
    n_fwd = len(split.fwd_outputs) + len(split.saved) + len(split.fwd_effects)
    nb = len(split.bwd_outputs)
    none = n_fwd + nb + len(split.bwd_effects)
    values = [none] * len(joint.outputs)
    for i, k in enumerate(split.fwd_outputs):
        values[k] = i
    for i, k in enumerate(split.bwd_outputs):
        values[k] = n_fwd + i
    effects = [none] * len(joint.effects)
    for i, k in enumerate(split.fwd_effects):
        effects[k] = len(split.fwd_outputs) + len(split.saved) + i
    for i, k in enumerate(split.bwd_effects):
        effects[k] = n_fwd + nb + i
    return values, effects


def _shares_state(g, nid, in_place):
    """Whether output `nid` may be the memory of an input, a variable or a constant
    (directly or through reshape views): such an output is returned as a copy, so a
    returned value never changes when a later step updates a variable in place."""
    while g.nodes[nid].op == "reshape":
        nid = g.nodes[nid].inputs[0]
    return g.nodes[nid].op in ("arg", "const") or nid in in_place


class JitFunction:
    def __init__(self, fn, static_argnames=()):
        self.fn = fn
        if isinstance(static_argnames, str):
            static_argnames = (static_argnames,)
        self.static_argnames = tuple(static_argnames)
        self._sig = _inspect.signature(fn) if self.static_argnames else None
        # name/doc only: copying fn.__dict__ would copy another JitFunction's caches
        functools.update_wrapper(self, fn, updated=())
        self._cache = {}
        self._fast = {}     # all-positional-array calls: per-array key -> same entry list

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
        if tracing_or_recording():
            # inside another trace: inline it; an eager tape recording: run the ops
            # eagerly so it can differentiate them
            return self.fn(*args, **kwargs)
        if not kwargs:
            # fast path: every argument a positional array or eager Tensor
            key, arrays = _fast_key(args)
            if key is not None:
                entries = self._fast.get((_device.explicit(), key))
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
        dev = _device.explicit()
        key = (struct, spec, statics, static, dev)
        entries = self._cache.get(key)
        c = None
        if entries:
            shapes = tuple(a.shape for a in arrays)
            for e in entries:
                if e.guard is None or e.guard(shapes):
                    S.bump("cache_hits")
                    c = e
                    break
        if c is None:
            c = self._trace(args, kwargs, leaves, struct, arrays, spec, static, dev)
            entries = self._cache.setdefault(key, [])
            entries.append(c)
            if not kwargs and not self.static_argnames:
                fk, _ = _fast_key(args)
                if fk is not None:
                    self._fast[(dev, fk)] = entries
        return c, arrays

    def _trace(self, args, kwargs, leaves, struct, arrays, spec, static, dev=None):
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
                t = Tensor(node=node, graph=g)
                if sp[3]:
                    # a Python float: float32 like eagerly, but it keeps its exact float64
                    # value for when it meets a float64 tensor
                    exact = Tensor(node=node, graph=g, weak=True)
                    from .api import cast
                    t = cast(exact, D.float32)
                    t._weak = exact
                traced_leaves.append(t)
                k += 1
            dargs, dkwargs = unflatten(struct, traced_leaves)
            for name, v in static:
                dkwargs[name] = v
            with concrete_sizes():      # errors raised while tracing show real sizes
                if static:
                    bound = self._sig.bind_partial(*dargs, **dkwargs)
                    result = self.fn(*bound.args, **bound.kwargs)
                else:
                    result = self.fn(*dargs, **dkwargs)
            ctx.finish_effects()
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
        if dev is None:     # no fj.device block: the GPU if the data already lives there
            on_gpu = any(type(a) is devices.DeviceArray for a in arrays) or \
                any(v._device == "GPU" for v in ctx.variables)
            dev = _device.GPU0 if on_gpu else _device.CPU0
        joint, stages, split = build(g, dev)
        guard = _compile_guard(g.env.guards)
        return Compiled(g, joint, stages, split, guard, out_struct, out_static, list(ctx.variables),
                        list(g.env.notes), dev)

    def inspect(self, *args, **kwargs):
        """The traced graph, fusion groups and generated source for these arguments."""
        c, _ = self._lookup(args, kwargs)
        return Inspection(c)


class ShapeDtypeStruct:
    """An array's shape and dtype without its values (what `eval_shape` takes and gives);
    None in a shape is a size known only at the call."""
    __slots__ = ("shape", "dtype")

    def __init__(self, shape, dtype=D.float32):
        self.shape = tuple(None if d is None else int(d) for d in shape)
        self.dtype = D.as_dtype(dtype)

    def __repr__(self):
        return f"ShapeDtypeStruct(shape={self.shape}, dtype={self.dtype.name})"


def eval_shape(fn, *args, **kwargs):
    """The shapes and dtypes `fn` returns for arguments of these shapes, traced and never
    run (as `jax.eval_shape`). Array arguments are `ShapeDtypeStruct`s, Tensors or arrays;
    other values pass through. A returned size that depends on a None input size is None.
    Variables created while tracing (a layer building its weights) stay. A None size
    stands for 4096 while tracing: large, so a window or a stride never finds it too small."""
    leaves, struct = flatten((args, kwargs), lambda x: isinstance(x, (ShapeDtypeStruct, Tensor, np.ndarray)))
    specs, out_struct, specialised = _eval_specs(fn, leaves, struct, 4096)
    if specialised:
        # an op fixed a None size to its stand-in value (a convolution's spatial size):
        # trace again with another stand-in; the sizes that change depend on it
        again, _, _ = _eval_specs(fn, leaves, struct, 4099)
        specs = [a if not isinstance(a, ShapeDtypeStruct) else
                 ShapeDtypeStruct([d if d == e else None for d, e in zip(a.shape, b.shape)], a.dtype)
                 for a, b in zip(specs, again)]
    return unflatten(out_struct, specs)


def _eval_specs(fn, leaves, struct, hint):
    g = Graph()
    traced = []
    with TraceContext(g) as ctx:
        for k, x in enumerate(leaves):
            if not isinstance(x, (ShapeDtypeStruct, Tensor, np.ndarray)):
                traced.append(x)
                continue
            shape = tuple(g.env.new_symbol(hint, k, j) if d is None else d for j, d in enumerate(x.shape))
            node = g.add("arg", (), {"index": len(g.args)}, shape, D.as_dtype(x.dtype))
            g.args.append(node.id)
            traced.append(Tensor(node=node, graph=g))
        a, kw = unflatten(struct, traced)
        with concrete_sizes():
            result = fn(*a, **kw)
        out, out_struct = flatten(result, _is_leaf)
        specs = []
        for o in out:
            if hasattr(o, "_flowjit_tensor"):
                o = o._flowjit_tensor()
            if isinstance(o, Tensor):
                n = g.nodes[node_of(o, ctx).id]
                specs.append(ShapeDtypeStruct([d if isinstance(d, (int, np.integer)) else None
                                               for d in n.shape], n.dtype))
            else:
                specs.append(o)
    return specs, out_struct, bool(g.env.notes)


def _compile_guard(guards):
    if not guards:
        return None
    src = "lambda s: " + " and ".join(f"({g})" for g in guards)
    return eval(src, {})


class Inspection:
    """What `jitted.inspect(*args)` returns; `str()` shows all of it."""

    def __init__(self, c):
        self.graph_ir = c.graph              # the ir.Graph objects (fj.summary.graph draws them)
        self.optimized_graph_ir = c.joint
        self.graph = c.graph.dump()
        self.optimized_graph = c.joint.dump()
        self.fusion_groups = c.program.describe()
        self.num_fused_loops = sum(1 for s in c.program.steps if s.kind == "loop")
        self.steps = [s.kind for s in c.program.steps]
        self.forward_source = c.stages[0].exe.source()
        self.backward_source = c.stages[1].exe.source() if len(c.stages) > 1 else None
        if c.split is not None:
            self.backward_fusion_groups = c.stages[1].program.describe()
            jn = c.joint.nodes
            self.saved = [f"%{i}={jn[i].op}{c.joint.shape_str(jn[i].shape)}" for i in c.split.saved]
            self.recomputed = [f"%{i}={jn[i].op}" for i in c.split.recomputed]
        else:
            self.backward_fusion_groups = None
            self.saved, self.recomputed = [], []
        self.specializations = c.notes
        self.guards = list(c.graph.env.guards)

    def __str__(self):
        parts = ["== traced graph ==", self.graph, "== after simplification ==", self.optimized_graph,
                 "== fusion groups ==", self.fusion_groups,
                 "== specialisations ==", "\n".join(self.specializations) or "(none: all sizes symbolic)",
                 "== forward function (Numba source) ==", self.forward_source,
                 "== residuals saved by the forward ==", "\n".join(self.saved) or "(none)",
                 "== recomputed in the backward ==", "\n".join(self.recomputed) or "(none)",
                 "== backward fusion groups ==", self.backward_fusion_groups or "(none)",
                 "== backward function ==", self.backward_source or "(none: no gradients taken)"]
        return "\n".join(parts)

    __repr__ = __str__


class TensorSpec:
    """The shape (None for any size) and dtype an argument must have: TF2's
    `tf.TensorSpec`, for `fj.function(input_signature=[...])`."""

    def __init__(self, shape, dtype=D.float32, name=None):
        self.shape = None if shape is None else tuple(None if d is None else int(d) for d in shape)
        self.dtype = D.as_dtype(dtype)
        self.name = name

    def is_compatible_with(self, x):
        shape = tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)
        dtype = D.as_dtype(x.dtype) if hasattr(x, "dtype") else None
        if dtype is not None and dtype is not self.dtype:
            return False
        return self.shape is None or (len(shape) == len(self.shape) and
                                      all(a is None or a == b for a, b in zip(self.shape, shape)))

    def __repr__(self):
        return f"TensorSpec(shape={self.shape}, dtype=fj.{self.dtype.name}, name={self.name!r})"


class SignedFunction:
    """A jitted function whose positional arguments must match an input signature (TF2's
    `tf.function(input_signature=...)`): others raise before anything is traced."""

    def __init__(self, jitted, signature):
        self.jitted = jitted
        self.signature = list(signature)
        functools.update_wrapper(self, jitted.fn, updated=())

    def __get__(self, obj, objtype=None):           # a method: `self` is not in the signature
        return self if obj is None else functools.partial(self._call, (obj,))

    def __call__(self, *args, **kwargs):
        return self._call((), *args, **kwargs)

    def _call(self, bound, *args, **kwargs):
        if len(args) != len(self.signature) or kwargs:
            raise TypeError(f"{self.jitted.__name__}: the input_signature has {len(self.signature)} arguments, "
                            f"got {len(args)} positional and {sorted(kwargs)} keyword ones")
        converted = []
        for i, (x, spec) in enumerate(zip(args, self.signature)):
            if isinstance(x, (int, float, list, tuple)):
                x = np.asarray(x, spec.dtype.np)
            if not spec.is_compatible_with(x):
                with concrete_sizes():
                    raise ValueError(f"{self.jitted.__name__}: argument {i} has shape {tuple(np.shape(x))} "
                                     f"and dtype {getattr(x, 'dtype', type(x).__name__)}, which do not match "
                                     f"the input_signature's {spec!r}")
            converted.append(x)
        return self.jitted(*bound, *converted)

    def __getattr__(self, name):            # inspect(), the caches: the jitted function's
        return getattr(self.jitted, name)


def function(func=None, input_signature=None, autograph=True, jit_compile=None, reduce_retracing=False,
             experimental_relax_shapes=None, experimental_compile=None, **kwargs):
    """TF2's `tf.function`: `fj.jit` under TF's name. `input_signature` (a list of
    `fj.TensorSpec`) is checked on every call. Python control flow on tensors is not
    converted (no AutoGraph): loops unroll, and a branch on a tensor's value needs
    `fj.cond`; sizes are symbolic anyway, so `reduce_retracing` needs nothing."""
    def wrap(f):
        jitted = JitFunction(f)
        return jitted if input_signature is None else SignedFunction(jitted, input_signature)
    return wrap if func is None else wrap(func)


def jit(fn=None, *, static_argnames=()):
    """Trace `fn` into a graph per signature, fuse it and compile it with Numba."""
    if fn is None:
        return lambda f: JitFunction(f, static_argnames)
    return JitFunction(fn, static_argnames)
