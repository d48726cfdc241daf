"""The traced program: an SSA graph of nodes, each an op with attributes, an inferred
shape and dtype, and the user source line that created it."""
from dataclasses import dataclass, field

from .shapes import ShapeEnv, Sym, render


@dataclass(eq=False)
class Node:
    id: int
    op: str
    inputs: tuple          # node ids
    attrs: dict
    shape: tuple           # ints and Syms
    dtype: object          # flowjit DType
    src: str = None        # "file.py:12: y = x + 1"
    phase: str = "fwd"     # "bwd" for nodes created while a tape computes gradients

    def attr_key(self):
        return tuple(sorted((k, _hashable(v)) for k, v in self.attrs.items()))


def _hashable(v):
    from .shapes import Sym
    if isinstance(v, Sym):
        n = v.norm()
        return ("sym", n.terms) if isinstance(n, Sym) else n
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, tuple):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


@dataclass(eq=False)
class Graph:
    env: ShapeEnv = field(default_factory=ShapeEnv)
    nodes: list = field(default_factory=list)
    args: list = field(default_factory=list)        # node ids of inputs, call order
    consts: list = field(default_factory=list)      # NumPy values of 'const' nodes
    outputs: list = field(default_factory=list)     # node ids
    rng_streams: list = field(default_factory=list)  # per 'rng_key' node: stream object
    effects: list = field(default_factory=list)      # (variable arg node, new value node)
    # nodes run for their side effect (host ops: fj.print), kept though nothing reads them
    keep: list = field(default_factory=list)

    def add(self, op, inputs, attrs, shape, dtype, src=None):
        node = Node(len(self.nodes), op, tuple(inputs), dict(attrs), tuple(shape), dtype, src)
        self.nodes.append(node)
        return node

    def normalise_shapes(self):
        """Rewrite every shape with what tracing learned last: a symbol specialised after
        a node was made (x[1:] of a size-2 input, broadcast as 1) is then a plain int,
        so the compiler sees the size-1 dim it must broadcast."""
        for n in self.nodes:
            n.shape = tuple(d.norm() if isinstance(d, Sym) else d for d in n.shape)

    def kept(self):
        """The nodes read from outside the graph: outputs, both sides of each effect
        (variable and new value), and nodes kept for their side effects."""
        return set(self.outputs) | {x for e in self.effects for x in e} | set(self.keep)

    def users(self):
        out = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.id)
        return out

    def shape_str(self, shape):
        return "(" + ", ".join(render(d, lambda s: f"d{self.env.sources[s][0]}_{self.env.sources[s][1]}")
                               .strip("()") for d in shape) + ("," if len(shape) == 1 else "") + ")"

    def dump(self):
        """Readable listing, one node per line."""
        lines = []
        for n in self.nodes:
            ins = ", ".join(f"%{i}" for i in n.inputs)
            attrs = ", ".join(f"{k}={v!r}" for k, v in n.attrs.items() if k != "value")
            lines.append(f"%{n.id} = {n.op}({ins}{', ' if ins and attrs else ''}{attrs})"
                         f" : {n.dtype.name}{self.shape_str(n.shape)}"
                         + (f"    # {n.src}" if n.src else ""))
        if self.keep:
            lines.append("keep " + ", ".join(f"%{k}" for k in self.keep))
        lines.append("return " + ", ".join(f"%{o}" for o in self.outputs))
        return "\n".join(lines)
