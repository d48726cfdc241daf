"""A graph evaluated with its ops' NumPy references, on concrete input arrays.

What a control-flow op's reference runs for its body (ops/control.py): the body is a
graph of its own, whose shapes are symbolic; the sizes of one call are read off the
arrays given for its arguments."""
from math import prod

import numpy as np

from .registry import REGISTRY
from .shapes import Sym, evaluate


def bind_sizes(g, inputs, sizes=None):
    """{symbol id: size} for every argument dim of g that is a plain symbol."""
    sizes = {} if sizes is None else sizes
    for a, v in zip(g.args, inputs):
        shape = g.nodes[a].shape
        got = np.shape(v)
        if len(got) != len(shape):          # a 0-d value travels as shape (1,)
            continue
        for d, n in zip(shape, got):
            if isinstance(d, Sym) and d.atom is not None:
                sizes.setdefault(d.atom, int(n))
    return sizes


def concrete(v, sizes):
    """attrs / shapes with every symbolic size replaced by its value."""
    if isinstance(v, Sym):
        return evaluate(v, sizes)
    if isinstance(v, (list, tuple)):
        return type(v)(concrete(x, sizes) for x in v)
    if isinstance(v, dict):
        return {k: concrete(x, sizes) for k, x in v.items()}
    return v


def run_graph(g, inputs, sizes=None):
    """g's outputs for these argument arrays (in g.args order)."""
    sizes = bind_sizes(g, inputs, sizes)
    values = {}
    for a, v in zip(g.args, inputs):
        shape = tuple(evaluate(d, sizes) for d in g.nodes[a].shape)
        values[a] = np.asarray(v).reshape(shape)
    for n in g.nodes:
        if n.id in values:
            continue
        op = REGISTRY[n.op]
        shape = tuple(evaluate(d, sizes) for d in n.shape)
        v = op.ref([values[i] for i in n.inputs], concrete(n.attrs, sizes), shape, n.dtype)
        if not op.multi:
            v = np.asarray(v, n.dtype.np)
            if v.shape != shape:
                v = v.reshape(shape) if v.size == prod(shape) else np.broadcast_to(v, shape).copy()
        values[n.id] = v
    return [values[o] for o in g.outputs]
