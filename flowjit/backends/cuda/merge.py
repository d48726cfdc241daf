"""Which steps of a program the CUDA backend runs inside another step's kernel.

- A bias gradient `reduce_sum(x, axis=0)` of a loop group moves into the later weight
  gradient matmul `h^T @ x`, whose tiles already read every row of x: the matmul's
  first row of tiles adds up the columns of the x tiles it loads (`colsum`). The group
  keeps its elementwise part.
- A loop group without reductions that is the only reader of a 2-D matmul's (or a
  conv2d's) result runs as that kernel's epilogue, on each element in registers
  (codegen.epilogue_code), when the steps between the two do not produce what the
  group reads and the group writes no variable in place (the product's other tiles may
  still read it).
`plan(prog, kept, alias)` returns a `Plan`; backend._steps follows it.
"""
from dataclasses import dataclass, field, replace

from .codegen import epilogue_fits


@dataclass
class Plan:
    groups: dict = field(default_factory=dict)      # step index -> its group, changed
    colsums: dict = field(default_factory=dict)     # matmul step index -> reduce node it computes
    allocs: dict = field(default_factory=dict)      # loop step index -> moved reduce nodes
    epilogues: dict = field(default_factory=dict)   # producer step index -> loop step index
    merged: set = field(default_factory=set)        # loop steps run as an epilogue


def plan(prog, kept, alias):
    g = prog.graph
    p = Plan()
    steps = prog.steps
    _bias_gradients(g, steps, p)
    for k, s in enumerate(steps):
        if s.kind not in ("matmul", "opaque"):
            continue
        j = _reader(g, steps, k, s.node, p)
        if j is None:
            continue
        grp = p.groups.get(j, steps[j].group)
        # what the steps between produce (a weight gradient matmul also its bias gradient)
        between = {o for s2 in steps[k + 1:j] for o in s2.outputs()} | \
            {p.colsums[i] for i in range(k + 1, j) if i in p.colsums}
        if any(o in alias for o in grp.stores) or any(ld.base in between for ld in grp.loads.values()):
            continue
        if epilogue_fits(g, grp, s.node, kept):
            p.epilogues[k] = j
            p.merged.add(j)
    return p


def _reader(g, steps, k, node, p):
    """Index of the first loop step after k that reads `node`, if no other step between
    does and it is not merged already."""
    for j in range(k + 1, len(steps)):
        s = steps[j]
        reads = [ld.base for ld in s.group.loads.values()] if s.kind == "loop" else g.nodes[s.node].inputs
        if node in reads:
            return j if s.kind == "loop" and j not in p.merged else None
    return None


def _bias_gradients(g, steps, p):
    for i, s in enumerate(steps):
        if s.kind != "loop" or len(s.group.reduces) != 1:
            continue
        r = g.nodes[s.group.reduces[0]]
        x = r.inputs[0]
        if r.op != "reduce_sum" or tuple(r.attrs["axes"]) != (0,) or x not in s.group.stores or \
                len(g.nodes[x].shape) != 2 or r.dtype != g.nodes[x].dtype:
            continue
        m = _weight_gradient(g, steps, i, x)
        if m is None or not _read_after(g, steps, r.id, m):
            continue
        p.groups[i] = replace(s.group, nodes=[n for n in s.group.nodes if n != r.id], reduces=[])
        p.colsums[m] = r.id
        p.allocs[i] = [r.id]


def _weight_gradient(g, steps, i, x):
    """Index of the first matmul step after i computing a^T @ x (2-D, x as it is)."""
    for m in range(i + 1, len(steps)):
        s = steps[m]
        if s.kind != "matmul":
            continue
        n = g.nodes[s.node]
        if n.inputs[1] == x and n.attrs["transpose_a"] and not n.attrs["transpose_b"] and \
                len(n.shape) == 2 and all(len(g.nodes[q].shape) == 2 for q in n.inputs):
            return m
    return None


def _read_after(g, steps, r, m):
    """Whether every step reading r (or a view of it, transitively) other than views
    comes after step m."""
    names = {r}
    for k, s in enumerate(steps):
        if s.kind == "view":
            if g.nodes[s.node].inputs[0] in names:
                names.add(s.node)
            continue
        reads = [ld.base for ld in s.group.loads.values()] if s.kind == "loop" else g.nodes[s.node].inputs
        if k <= m and names & set(reads):
            return False
    return True
