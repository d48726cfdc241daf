"""Which variable updates a program may write straight into the variable's buffer
(the backends' shared decision: the executables report it as `inplace`, and the
frontend copies only the other updates after the step)."""
from ..ir.registry import REGISTRY
from ..ir.shapes import hint


def inplace_effects(prog):
    """Effects (variable updates) the compiled code may write straight into the
    variable's buffer: the new value comes from a loop that reads the old value only
    at the element it writes, nothing reads the old value afterwards, and no step can
    fail (so a failing step still leaves every variable unchanged)."""
    g = prog.graph
    if not prog.allow_inplace:
        return []
    if any(s.kind == "opaque" and REGISTRY[g.nodes[s.node].op].can_fail for s in prog.steps):
        return []
    order = {id(s): k for k, s in enumerate(prog.steps)}
    writer = {}
    for s in prog.steps:
        if s.kind == "loop":
            for o in s.group.stores:
                writer[o] = s
    outputs = set(g.outputs)
    out = []
    for k, (a, v) in enumerate(g.effects):
        s = writer.get(v)
        if s is None or a in outputs or g.nodes[v].op == "arg":
            continue
        shape = g.nodes[a].shape
        if len(shape) != len(s.group.shape) or \
                any(hint(x) != hint(y) for x, y in zip(shape, s.group.shape)):
            continue
        ok = True
        for t in prog.steps:
            if t.kind == "loop":
                reads = [ld for ld in t.group.loads.values() if ld.base == a]
                if not reads:
                    continue
                if t is s and all(not ld.chain for ld in reads):
                    continue
                if order[id(t)] < order[id(s)]:
                    continue
                ok = False
            elif a in g.nodes[t.node].inputs:
                if t.kind == "view" or order[id(t)] > order[id(s)]:
                    ok = False     # a view aliases the old value; a later reader needs it
        if ok:
            out.append(k)
    return out
