"""Variable updates by a scaled product, `W - lr * (x^T @ dz)` (SGD on a dense layer),
rewritten as `W + x^T @ (-lr * dz)`: the factor moves onto the product's smaller
operand, so the update is an add of a product, which a backend can run as one GEMM
adding into the variable's buffer (the CPU's, where the update is written in place:
backends/cpu/codegen.py, `_products_into_updates`) instead of a GEMM writing the
gradient and a pass reading it and the weight back. The scaled operand is usually a
loop's result already (the layer's backpropagated error), which then stores it scaled."""
from ..ir.graph import Graph
from ..ir.shapes import hint
from .simplify import dead_code_eliminated


def _size(shape):
    n = 1
    for d in shape:
        n *= max(hint(d), 1)
    return n


def _scaled_product(g, users, kept, v):
    """(weight, product, factor, sign) when node v computes weight -/+ product * factor
    with a 2-D matmul read only there and a 0-d factor of its dtype; else None."""
    n = g.nodes[v]
    if n.op not in ("subtract", "add") or len(n.shape) != 2 or not n.dtype.is_floating:
        return None
    w, t = n.inputs
    tn = g.nodes[t]
    if tn.op != "multiply" or users[t] != [v] or t in kept:
        return None
    for m, s in (tn.inputs, tn.inputs[::-1]):
        mn, sn = g.nodes[m], g.nodes[s]
        if mn.op == "matmul" and users[m] == [t] and m not in kept and sn.shape == () and sn.dtype is n.dtype \
                and mn.dtype is n.dtype and g.nodes[w].dtype is n.dtype and len(mn.shape) == 2 \
                and tuple(map(hint, mn.shape)) == tuple(map(hint, n.shape)) \
                and tuple(map(hint, g.nodes[w].shape)) == tuple(map(hint, n.shape)):
            return w, m, s, -1 if n.op == "subtract" else 1
    return None


def products_into_updates(g):
    """g with each variable update `W -/+ (a @ b) * s` (s a 0-d factor, the product
    read nowhere else) rewritten as `W + a' @ b'`, the factor (negated for -) applied to
    whichever of a and b has fewer elements; g itself when there is none."""
    users = g.users()
    kept = g.kept()
    found = {v: f for _, v in g.effects if v not in g.outputs
             for f in [_scaled_product(g, users, kept, v)] if f is not None}
    if not found:
        return g
    out = Graph(env=g.env)
    out.rng_streams, out.consts = g.rng_streams, g.consts
    remap = {}
    for n in g.nodes:
        if n.id not in found:
            nn = out.add(n.op, tuple(remap[i] for i in n.inputs), n.attrs, n.shape, n.dtype, n.src)
            nn.phase = n.phase
            remap[n.id] = nn.id
            continue
        w, m, s, sign = found[n.id]
        mn = g.nodes[m]
        a, b = mn.inputs
        k = 0 if _size(g.nodes[a].shape) < _size(g.nodes[b].shape) else 1
        o = g.nodes[mn.inputs[k]]
        factor = remap[s]
        made = []
        if sign < 0:
            made.append(out.add("negative", (factor,), {}, (), n.dtype, n.src))
            factor = made[-1].id
        made.append(out.add("multiply", (remap[o.id], factor), {}, o.shape, o.dtype, n.src))
        ins = [remap[a], remap[b]]
        ins[k] = made[-1].id
        made.append(out.add("matmul", tuple(ins), mn.attrs, mn.shape, mn.dtype, mn.src))
        made.append(out.add("add", (remap[w], made[-1].id), {}, n.shape, n.dtype, n.src))
        for x in made:
            x.phase = n.phase
        remap[n.id] = made[-1].id
    out.args = [remap[a] for a in g.args]
    out.outputs = [remap[o] for o in g.outputs]
    out.effects = [(remap[a], remap[b]) for a, b in g.effects]
    out.keep = [remap[k] for k in g.keep]
    return dead_code_eliminated(out)
