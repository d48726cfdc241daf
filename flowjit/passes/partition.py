"""Forward/backward partition of a traced joint graph (the AOTAutograd idea).

Nodes created while a tape computed gradients (phase "bwd"), and everything that
depends on them (e.g. optimizer updates), form the backward graph; the rest is the
forward graph. Forward values the backward reads are either *saved* (returned by the
forward function as residuals: matmul/reduction/opaque results and expensive chains)
or *recomputed* inside the backward's fused loops (cheap elementwise chains, index
maps and views), which saves memory traffic. An elementwise value the forward writes to
memory anyway (a matmul or opaque op reads it, or it is an output) is saved: reading it
back costs the backward no more than reading the cone's inputs, and recomputing it would
repeat the cone's arithmetic (a sigmoid's exp per element, say). Both graphs share the symbolic shape
environment: the backward function receives every original input first, then the
residuals.
"""
from dataclasses import dataclass, field

from ..ir.graph import Graph
from ..ir.registry import REGISTRY

RECOMPUTE_MAX_COST = 40      # summed op cost of an elementwise cone worth recomputing


@dataclass
class Split:
    forward: Graph
    backward: Graph
    fwd_outputs: list          # positions (in joint outputs) computed by the forward
    bwd_outputs: list          # positions computed by the backward
    fwd_effects: list          # effect indices written by the forward
    bwd_effects: list
    saved: list = field(default_factory=list)       # joint node ids saved as residuals
    recomputed: list = field(default_factory=list)  # joint node ids recomputed in backward


def _kind(n):
    if n.op in ("arg", "const", "rng_key", "sym_scalar"):
        return "src"
    return REGISTRY[n.op].kind


def _cone(nodes, o):
    out, stack = set(), [o]
    while stack:
        i = stack.pop()
        if i not in out:
            out.add(i)
            stack.extend(nodes[i].inputs)
    return out


def _sinkable(g, is_b):
    """Forward outputs the backward computes instead: with no variable updates in the
    graph (a loss and its gradients, say), an output made of elementwise work and
    reductions over the inputs joins the backward's loops over the same inputs, so the
    data is read once, not once per function (the two functions run back to back)."""
    if g.effects:
        return set()
    out = set()
    for o in g.outputs:
        if is_b[o]:
            continue
        cone = _cone(g.nodes, o)
        if all(g.nodes[i].op in ("arg", "const") or
               (_kind(g.nodes[i]) in ("elementwise", "reduce", "access", "view") and
                g.nodes[i].op not in ("random", "iota")) for i in cone):
            out.add(o)
    return out


def partition(g, recompute_max_cost=RECOMPUTE_MAX_COST):
    nodes = g.nodes
    is_b = {}
    for n in nodes:
        is_b[n.id] = n.phase == "bwd" or any(is_b[i] for i in n.inputs)
    if not any(is_b.values()):
        return None

    need = set()
    for n in nodes:
        if is_b[n.id]:
            need.update(i for i in n.inputs if not is_b[i])

    sink = _sinkable(g, is_b)
    fwd_outs = {o for o in g.outputs if not is_b[o] and o not in sink}
    read_from_memory = set()       # forward values a matmul / opaque op reads as a buffer
    for n in nodes:
        if not is_b[n.id] and _kind(n) in ("matmul", "opaque"):
            read_from_memory.update(n.inputs)

    cost_memo = {}

    def cone_cost(i):
        if i in cost_memo:
            return cost_memo[i]
        n = nodes[i]
        k = _kind(n)
        if k in ("access", "view"):
            c = cone_cost(n.inputs[0])
        elif k == "elementwise":
            c = REGISTRY[n.op].cost + sum(cone_cost(p) for p in n.inputs)
        else:
            c = 0
        cost_memo[i] = c
        return c

    saved, recompute = set(), set()

    def decide(i):
        if i in saved or i in recompute:
            return
        n = nodes[i]
        k = _kind(n)
        if n.op in ("arg", "const", "sym_scalar"):
            recompute.add(i)          # available to the backward as is
            return
        if n.op == "rng_key" or k in ("reduce", "matmul", "opaque"):
            saved.add(i)
            return
        if k == "elementwise" and (i in read_from_memory or i in fwd_outs):
            saved.add(i)              # written by the forward anyway
            return
        if k in ("access", "view") or cone_cost(i) <= recompute_max_cost:
            recompute.add(i)
            for p in n.inputs:
                decide(p)
            return
        saved.add(i)

    for i in sorted(need):
        decide(i)
    for o in sink:                    # computed by the backward, in its loops
        recompute.update(i for i in _cone(nodes, o) if i not in saved)

    # forward graph: the joint graph with forward outputs + residuals as outputs
    fwd = Graph(env=g.env, nodes=g.nodes, args=g.args, consts=g.consts, rng_streams=g.rng_streams)
    fwd_outputs = [k for k, o in enumerate(g.outputs) if not is_b[o] and o not in sink]
    fwd_effects = [k for k, (a, v) in enumerate(g.effects) if not is_b[v]]
    saved_list = sorted(saved)
    fwd.outputs = [g.outputs[k] for k in fwd_outputs] + saved_list
    fwd.effects = [g.effects[k] for k in fwd_effects]
    fwd.keep = [k for k in g.keep if not is_b[k]]      # host ops (prints) run where they were made

    # backward graph: original args, residual args, then recomputed and backward nodes
    bwd = Graph(env=g.env, rng_streams=g.rng_streams)
    remap = {}
    for a in g.args:
        n = nodes[a]
        nn = bwd.add("arg", (), dict(n.attrs), n.shape, n.dtype, n.src)
        bwd.args.append(nn.id)
        remap[a] = nn.id
    for r in saved_list:
        n = nodes[r]
        nn = bwd.add("arg", (), {"index": len(bwd.args), "residual": r}, n.shape, n.dtype, n.src)
        bwd.args.append(nn.id)
        remap[r] = nn.id
    for n in nodes:
        if n.id in remap:
            continue
        if not (is_b[n.id] or n.id in recompute):
            continue
        attrs = dict(n.attrs)
        if n.op == "const":
            bwd.consts.append(g.consts[n.attrs["index"]])
            attrs["index"] = len(bwd.consts) - 1
        nn = bwd.add(n.op, tuple(remap[i] for i in n.inputs), attrs, n.shape, n.dtype, n.src)
        nn.phase = n.phase
        remap[n.id] = nn.id
    bwd_outputs = [k for k, o in enumerate(g.outputs) if is_b[o] or o in sink]
    bwd_effects = [k for k, (a, v) in enumerate(g.effects) if is_b[v]]
    bwd.outputs = [remap[g.outputs[k]] for k in bwd_outputs]
    bwd.effects = [(remap[g.effects[k][0]], remap[g.effects[k][1]]) for k in bwd_effects]
    bwd.keep = [remap[k] for k in g.keep if is_b[k]]
    return Split(fwd, bwd, fwd_outputs, bwd_outputs, fwd_effects, bwd_effects,
                 saved_list, sorted(i for i in recompute if nodes[i].op not in ("arg", "const")))
