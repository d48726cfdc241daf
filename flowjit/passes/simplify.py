"""Graph clean-up before fusion: constant folding, common-subexpression elimination
and dead-code elimination, done in one forward rebuild plus one backward sweep."""
import numpy as np

from ..ir.graph import Graph, _hashable
from ..ir.registry import REGISTRY
from ..ir.shapes import Sym

FOLD_MAX_ELEMENTS = 4096
NO_CSE = {"arg", "rng_key"}
NO_FOLD = {"arg", "rng_key", "const", "random", "scan", "cond", "while", "tuple_get"}


def _static_size(shape):
    n = 1
    for d in shape:
        if isinstance(d, Sym):
            return None
        n *= int(d)
    return n


def simplify(g):
    """Return a new Graph: live nodes only, duplicates merged, small constants folded."""
    live = _live(g)
    out = Graph(env=g.env)
    out.rng_streams = g.rng_streams
    remap = {}
    seen = {}
    const_seen = {}
    for n in g.nodes:
        if n.id not in live:
            continue
        ins = tuple(remap[i] for i in n.inputs)
        if n.op == "const":
            v = g.consts[n.attrs["index"]]
            ck = (v.dtype.str, v.shape, v.tobytes()) if v.size <= FOLD_MAX_ELEMENTS else ("id", id(v))
            if ck in const_seen:
                remap[n.id] = const_seen[ck]
                continue
            out.consts.append(v)
            nn = out.add("const", (), {"index": len(out.consts) - 1}, n.shape, n.dtype, n.src)
            remap[n.id] = const_seen[ck] = nn.id
            continue
        # constant folding: every input a small constant, output small and static
        op = REGISTRY.get(n.op)
        if (op is not None and n.op not in NO_FOLD and not op.effect and ins and
                all(out.nodes[i].op == "const" for i in ins)):
            size = _static_size(n.shape)
            if size is not None and size <= FOLD_MAX_ELEMENTS:
                vals = [out.consts[out.nodes[i].attrs["index"]] for i in ins]
                with np.errstate(all="ignore"):
                    v = np.asarray(op.ref(vals, n.attrs, n.shape, n.dtype)).astype(n.dtype.np)
                ck = (v.dtype.str, v.shape, v.tobytes())
                if ck in const_seen:
                    remap[n.id] = const_seen[ck]
                    continue
                out.consts.append(v)
                nn = out.add("const", (), {"index": len(out.consts) - 1}, n.shape, n.dtype, n.src)
                remap[n.id] = const_seen[ck] = nn.id
                continue
        # algebraic no-ops
        if n.op == "cast" and out.nodes[ins[0]].dtype is n.dtype:
            remap[n.id] = ins[0]
            continue
        if n.op in ("identity", "broadcast_to", "reshape") and \
                _same_shape(out.nodes[ins[0]].shape, n.shape) and n.op != "identity":
            remap[n.id] = ins[0]
            continue
        if n.op in ("stop_gradient", "identity") and n.id not in g.outputs:
            remap[n.id] = ins[0]          # only meaningful while tracing/differentiating
            continue
        if n.op == "transpose" and n.attrs["perm"] == tuple(range(len(n.shape))):
            remap[n.id] = ins[0]
            continue
        attrs = n.attrs
        if n.op == "matmul":       # matmul(transpose(x)) -> matmul(x, transpose_a=True): BLAS reads x.T
            ins = list(ins)
            attrs = dict(attrs)
            for k, flag in ((0, "transpose_a"), (1, "transpose_b")):
                src = out.nodes[ins[k]]
                r = len(src.shape)
                if src.op == "transpose" and r >= 2 and \
                        src.attrs["perm"] == tuple(range(r - 2)) + (r - 1, r - 2):
                    ins[k] = src.inputs[0]
                    attrs[flag] = not attrs[flag]
            ins = tuple(ins)
        key = None
        if n.op not in NO_CSE and not (op is not None and op.effect):
            key = (n.op, ins, tuple(sorted((k, _hashable(v)) for k, v in attrs.items())))
            if key in seen:
                remap[n.id] = seen[key]
                continue
        nn = out.add(n.op, ins, attrs, n.shape, n.dtype, n.src)
        nn.phase = n.phase
        if key is not None:
            seen[key] = nn.id
        remap[n.id] = nn.id
    out.args = [remap[a] for a in g.args]      # in g's order (a loop body's may differ from node order)
    out.outputs = [remap[o] for o in g.outputs]
    out.effects = [(remap[a], remap[b]) for a, b in g.effects]
    out.keep = [remap[k] for k in g.keep]
    return dead_code_eliminated(out)


def _same_shape(a, b):
    from ..ir.shapes import same
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


def _live(g):
    roots = list(g.outputs) + [x for e in g.effects for x in e] + list(g.keep)
    live = set(g.args)
    stack = list(roots)
    while stack:
        i = stack.pop()
        if i in live and i not in g.args:
            continue
        live.add(i)
        stack.extend(g.nodes[i].inputs)
    return live


def dead_code_eliminated(g):
    """g less the nodes no output, effect or kept node reads (and no arg): a new Graph,
    node ids renumbered, or g itself when everything is live."""
    live = _live(g)
    if len(live) == len(g.nodes):
        return g
    out = Graph(env=g.env)
    out.rng_streams = g.rng_streams
    out.consts = g.consts
    remap = {}
    for n in g.nodes:
        if n.id in live:
            nn = out.add(n.op, tuple(remap[i] for i in n.inputs), n.attrs, n.shape, n.dtype, n.src)
            nn.phase = n.phase
            remap[n.id] = nn.id
    out.args = [remap[a] for a in g.args]
    out.outputs = [remap[o] for o in g.outputs]
    out.effects = [(remap[a], remap[b]) for a, b in g.effects]
    out.keep = [remap[k] for k in g.keep]
    return out
