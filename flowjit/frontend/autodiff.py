"""Reverse-mode autodiff: `GradientTape`, `grad`, `value_and_grad`.

A tape records every op (eager or traced) whose inputs it tracks; `gradient` walks
the records backwards and applies each op's gradient rule, itself written in flowjit
ops. Under `@fj.jit` those ops become the backward part of the traced graph (marked
phase "bwd"), which the compiler partitions into a separate backward function.
Tapes nest; gradient ops are recorded by outer tapes, so gradients of gradients work.
"""
import functools

from ..errors import FlowjitError
from ..ir.registry import REGISTRY
from .pytree import flatten, unflatten
from .tensor import Tensor, active_tapes, convert, current_trace


class TupleCotangent:
    """The cotangent of a node with several results (a loop, ops/control.py): {result
    index: tensor}, gathered from the `tuple_get` nodes that read them."""

    def __init__(self, parts):
        self.parts = dict(parts)

    def __add__(self, other):
        parts = dict(self.parts)
        for k, v in other.parts.items():
            parts[k] = v if k not in parts else parts[k] + v
        return TupleCotangent(parts)


_computing = []       # the tracked-id sets of the tapes computing gradients now (innermost last)


def needs_gradient(x):
    """Whether the tape computing gradients now tracks x (a gradient rule may skip the
    cotangents of inputs nobody asked about: a loop's captured constants, say)."""
    return not _computing or id(x) in _computing[-1]


def _is_var(x):
    return hasattr(x, "_flowjit_tensor") and hasattr(x, "_buf")


class GradientTape:
    def __init__(self, persistent=False, watch_accessed_variables=True):
        self.persistent = persistent
        self.watch_accessed_variables = watch_accessed_variables
        self._records = []
        self._tracked = set()
        self._keep = []                   # keeps tracked tensors alive (ids stay unique)
        self._var_reads = {}              # id(var) -> [read tensors]
        self._read_vars = []              # the variables behind _var_reads, in order of first read
        self._watched_vars = set()
        self._recording = False
        self._used = False

    def __enter__(self):
        active_tapes().append(self)
        self._recording = True
        return self

    def __exit__(self, *exc):
        self._recording = False
        tapes = active_tapes()
        if self in tapes:
            tapes.remove(self)

    def watch(self, tensor):
        for t in flatten(tensor, lambda x: isinstance(x, Tensor) or _is_var(x))[0]:
            if _is_var(t):
                self._watched_vars.add(id(t))
                if all(v is not t for v in self._read_vars):
                    self._read_vars.append(t)
            elif isinstance(t, Tensor):
                self._tracked.add(id(t))
                self._keep.append(t)

    def watched_variables(self):
        """The variables this tape watched (read while recording, or watched by hand)."""
        return list(self._read_vars)

    def stop_recording(self):
        tape = self

        class _Pause:
            def __enter__(self_):
                tape._recording = False

            def __exit__(self_, *e):
                tape._recording = True
        return _Pause()

    def reset(self):
        self.__init__(self.persistent, self.watch_accessed_variables)

    # called by apply_op and Variable reads
    def _maybe_record(self, name, inputs, attrs, out):
        if not self._recording:
            return
        tracked = self._tracked
        for t in inputs:
            if id(t) in tracked:
                self._records.append((name, tuple(inputs), attrs, out))
                tracked.add(id(out))
                self._keep.append(out)
                return

    def _on_variable_read(self, var, t):
        if not self._recording:
            return
        if (self.watch_accessed_variables and var.trainable) or id(var) in self._watched_vars:
            if id(var) not in self._var_reads and all(v is not var for v in self._read_vars):
                self._read_vars.append(var)
            self._var_reads.setdefault(id(var), []).append(t)
            self._tracked.add(id(t))
            self._keep.append(t)

    def gradient(self, target, sources, output_gradients=None, unconnected_gradients="none"):
        if self._used and not self.persistent:
            raise RuntimeError("a non-persistent GradientTape can compute gradients only once; "
                               "use GradientTape(persistent=True)")
        self._used = True
        from . import api as F
        targets = flatten(target, lambda x: isinstance(x, Tensor) or _is_var(x))[0]
        srcs, struct = flatten(sources, lambda x: isinstance(x, Tensor) or _is_var(x))
        ogs = [None] * len(targets) if output_gradients is None else \
            flatten(output_gradients, lambda x: isinstance(x, Tensor))[0]
        ctx = current_trace()
        prev_phase = ctx.phase if ctx is not None else None
        was = self._recording
        self._recording = False
        if ctx is not None:
            ctx.phase = "bwd"
        try:
            grads = {}
            for t, og in zip(targets, ogs):
                t = t._flowjit_tensor() if _is_var(t) else t
                g = F.ones_like(t) if og is None else convert(og, t.dtype)
                grads[id(t)] = g if id(t) not in grads else grads[id(t)] + g
            _computing.append(self._tracked)
            for name, inputs, attrs, out in reversed(self._records):
                g = grads.get(id(out))
                if g is None:
                    continue
                rule = REGISTRY[name].grad
                if rule is None:
                    raise LookupError(f"no gradient is defined for op {name!r}")
                in_grads = rule(list(inputs), out, g, attrs)
                for x, gx in zip(inputs, in_grads):
                    if gx is None or not x.dtype.is_floating:
                        continue
                    k = id(x)
                    if k not in grads:
                        grads[k] = gx
                    else:
                        grads[k] = grads[k] + gx if isinstance(gx, TupleCotangent) else F.add(grads[k], gx)
            result = []
            for s in srcs:
                if _is_var(s):
                    parts = [grads[id(r)] for r in self._var_reads.get(id(s), []) if id(r) in grads]
                    g = F.add_n(parts) if parts else None
                else:
                    g = grads.get(id(s)) if isinstance(s, Tensor) else None
                if g is not None and not s.dtype.is_floating:
                    g = None
                if g is None and unconnected_gradients == "zero":
                    g = F.zeros_like(s._flowjit_tensor() if _is_var(s) else s)
                result.append(g)
        finally:
            if _computing and _computing[-1] is self._tracked:
                _computing.pop()
            self._recording = was
            if ctx is not None:
                ctx.phase = prev_phase
        if not self.persistent:
            self._records = []
        return unflatten(struct, result)


def value_and_grad(f, argnums=0):
    """f -> a function returning (f(*args), gradients of f w.r.t. args[argnums])."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    @functools.wraps(f, updated=())
    def wrapped(*args, **kwargs):
        args = list(args)
        with GradientTape(watch_accessed_variables=False) as tape:
            for i in nums:
                if not _is_var(args[i]):
                    args[i] = convert(args[i])
                tape.watch(args[i])
            out = f(*args, **kwargs)
        value = out[0] if isinstance(out, tuple) else out   # has_aux style: first is the loss
        gs = tape.gradient(value, [args[i] for i in nums])
        return out, (gs[0] if isinstance(argnums, int) else tuple(gs))
    return wrapped


def grad(f, argnums=0):
    """f -> a function returning the gradient of f w.r.t. args[argnums]."""
    vg = value_and_grad(f, argnums)

    @functools.wraps(f, updated=())
    def wrapped(*args, **kwargs):
        return vg(*args, **kwargs)[1]
    return wrapped
