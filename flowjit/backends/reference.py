"""Tier 0: run a program's graph node by node with each op's NumPy reference.

This is what a jitted function runs while its kernels compile in a child process
(backends/cpu/background.py), so a learner's first step answers at once. It takes the
arguments of the compiled entry, in the same order (inputs, constants, random keys,
the error word: backends/entry.entry_params), and returns what the entry returns (the
graph's outputs, then the variables' new values), as C-contiguous arrays of the node's
dtype and shape (a 0-d one as shape (1,)), so the next tier, or the other stage's
tier, takes them unchanged. The
references are the ones eager mode runs; random ops draw from the same counter-based
streams as the kernels, so both tiers give the same numbers to float tolerance.
"""
from math import prod

import numpy as np

from ..errors import FlowjitError
from ..ir.registry import REGISTRY
from ..ir.shapes import Sym, evaluate
from .entry import entry_params

SOURCES = ("arg", "const", "rng_key")


class ReferenceProgram:
    """`run(args)`: the graph `g` evaluated by its ops' references. `inplace`: effect
    indices the compiled code writes into the variable's buffer; this tier writes them
    there too, after every value is computed, so the caller copies the same updates."""

    def __init__(self, g, inplace=()):
        self.g = g
        self.inplace = list(inplace)
        names, params = entry_params(g)
        position = {name: k for k, name in enumerate(params)}
        self.source = {nid: position[name] for nid, name in names.items()}
        wanted = list(g.outputs) + [v for _, v in g.effects]
        live = set(wanted) | set(g.keep)       # host ops (prints) run for their effect
        for n in reversed(g.nodes):
            if n.id in live:
                live.update(n.inputs)
        self.order = [n for n in g.nodes if n.id in live]
        # free an intermediate after its last reader: a big step holds only what it needs
        last = {}
        for k, n in enumerate(self.order):
            for i in n.inputs:
                last[i] = k
        keep = set(wanted)
        self.free_after = [[i for i in set(n.inputs) if last[i] == k and i not in keep]
                           for k, n in enumerate(self.order)]
        env = g.env
        self.reps = sorted({env.find(s) for s in env.hints if env.find(s) not in env.fixed})
        self._concrete = {}      # sizes of a call -> per node (shape, attrs) with ints

    def _sizes(self, args):
        env, g = self.g.env, self.g
        out = {}
        for s in self.reps:
            a, d = env.sources[s]
            out[s] = args[self.source[g.args[a]]].shape[d]
        return out

    def _plan(self, sizes):
        key = tuple(sizes[s] for s in self.reps)
        plan = self._concrete.get(key)
        if plan is None:
            plan = [(tuple(evaluate(d, sizes) for d in n.shape), _concrete_attrs(n.attrs, sizes))
                    for n in self.order]
            self._concrete[key] = plan
        return plan

    def run(self, args):
        # as in eager mode (and in compiled code): IEEE results, no NumPy warnings
        with np.errstate(all="ignore"):
            return self._run(args)

    def _run(self, args):
        g = self.g
        plan = self._plan(self._sizes(args))
        values = {}
        for k, n in enumerate(self.order):
            shape, attrs = plan[k]
            if n.op in SOURCES:
                v = args[self.source[n.id]].reshape(shape)      # a 0-d input arrives as (1,)
            else:
                try:
                    v = REGISTRY[n.op].ref([values[i] for i in n.inputs], attrs, shape, n.dtype)
                except FlowjitError as e:
                    raise type(e)(_at(n, e)) from None
                if not REGISTRY[n.op].multi:      # (a loop's results stay a list)
                    v = np.asarray(v, n.dtype.np)
                if not REGISTRY[n.op].multi and v.shape != shape:
                    # (1,) for a scalar, or a scalar where the op broadcasts, as eagerly
                    v = v.reshape(shape) if v.size == prod(shape) else np.broadcast_to(v, shape).copy()
            values[n.id] = v
            for i in self.free_after[k]:
                del values[i]
        roots = {id(_root(a)) for a in args}
        outs = [_fresh(values[o], roots) for o in g.outputs]
        effects = [_fresh(values[v], roots) for _, v in g.effects]
        for k in self.inplace:
            buf = args[self.source[g.effects[k][0]]]
            buf.reshape(effects[k].shape)[...] = effects[k]
            effects[k] = buf
        return tuple(outs + effects)


def _fresh(v, roots):
    """v as the compiled entry returns a buffer: C-contiguous, a 0-d value as shape (1,)
    (as compiled code allocates it, so the other stage's compiled tier takes the same
    types), and its own memory (`stop_gradient(x)` is `x` here but a copy in compiled
    code, and a variable updated in place later must not change a returned value).
    `roots`: the ids of the arrays owning the arguments' memory."""
    if not v.flags.c_contiguous or id(_root(v)) in roots:
        v = v.copy(order="C")
    return v.reshape(1) if v.ndim == 0 else v


def _root(a):
    """The array owning a's memory (NumPy views keep their base)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _at(n, e):
    msg = str(e)
    prefix = n.op + ": "
    return f"{n.op} (at {n.src}): {msg[len(prefix):] if msg.startswith(prefix) else msg}"


def _concrete_attrs(attrs, sizes):
    def conv(v):
        if isinstance(v, Sym):
            return evaluate(v, sizes)
        if isinstance(v, (list, tuple)):
            return type(v)(conv(x) for x in v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return {k: conv(v) for k, v in attrs.items()}
