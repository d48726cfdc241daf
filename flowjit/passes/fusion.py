"""Fusion: partition a simplified graph into the steps a backend runs.

- Elementwise ops and the reductions that consume them are merged into *loop groups*
  (one loop nest each) when they share an iteration shape, as long as the merge
  creates no cycle between steps and no reduction feeds a node of its own group.
- Access ops (transpose, slice, pad) are not computed at all: a group reads through
  them with an index map (a *load* = access chain + base buffer). They get a copy
  loop of their own only when a non-loop step needs them as a buffer.
- matmul, opaque ops (concat, gather, argmax) and views (reshape) are steps of their
  own. A node is *materialised* (gets a buffer) when something outside its group
  reads it, or it is an output, a reduction, a matmul/opaque/view result or an input.
"""
from dataclasses import dataclass, field

from ..ir.registry import REGISTRY
from ..ir.shapes import same

SOURCES = {"arg", "const", "rng_key", "sym_scalar"}


@dataclass
class Load:
    base: int        # node id of a materialised buffer
    chain: tuple     # access node ids, consumer side first


@dataclass
class LoopGroup:
    shape: tuple
    nodes: list = field(default_factory=list)     # computed in the loop, topo order
    stores: list = field(default_factory=list)    # nodes written to buffers (non-reduce)
    reduces: list = field(default_factory=list)   # reduce nodes (their results are buffers)
    loads: dict = field(default_factory=dict)     # node id read by the loop -> Load


@dataclass
class Step:
    kind: str                 # 'loop', 'matmul', 'view', 'opaque'
    node: int = None          # for matmul / view / opaque
    group: LoopGroup = None
    body: list = None         # a control-flow node's graphs (ops/control.py), fused as Programs

    def outputs(self):
        if self.kind == "loop":
            return self.group.stores + self.group.reduces
        return [self.node]


@dataclass
class Program:
    graph: object
    steps: list
    materialised: set
    # variable updates may be written into the variable's buffer by the compiled code;
    # off for a forward function whose backward still reads the old values
    allow_inplace: bool = True

    def describe(self):
        """Human-readable fusion groups (used by `inspect`)."""
        g = self.graph
        lines = []
        for k, s in enumerate(self.steps):
            if s.kind == "loop":
                grp = s.group
                body = [f"%{i}={g.nodes[i].op}" for i in grp.nodes]
                loads = [f"%{b.base}" + ("".join(f".{g.nodes[c].op}" for c in reversed(b.chain)))
                         for b in grp.loads.values()]
                lines.append(f"step {k}: fused loop over {g.shape_str(grp.shape)}: "
                             f"[{', '.join(body) or 'copy'}] reads {', '.join(loads) or '-'} "
                             f"writes {', '.join(f'%{i}' for i in grp.stores + grp.reduces)}")
            else:
                n = g.nodes[s.node]
                lines.append(f"step {k}: {s.kind} %{n.id}={n.op}"
                             f"({', '.join(f'%{i}' for i in n.inputs)})")
        return "\n".join(lines)


def kind_of(n):
    if n.op in SOURCES:
        return "src"
    return REGISTRY[n.op].kind


def fuse(g):
    nodes = g.nodes
    users = g.users()
    kinds = {n.id: kind_of(n) for n in nodes}
    outputs = set(g.outputs) | {v for _, v in g.effects}

    def iter_shape(i):
        n = nodes[i]
        return nodes[n.inputs[0]].shape if kinds[i] == "reduce" else n.shape

    parent = {n.id: n.id for n in nodes if kinds[n.id] in ("elementwise", "reduce")}
    members = {i: [i] for i in parent}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def body_shape(merged):
        for i in merged:
            if kinds[i] == "reduce":
                return iter_shape(i)
        return None

    def is_epilogue(i, merged):
        """An elementwise node computed after the reductions of its group finish: it has
        the reductions' keepdims shape and (transitively) reads a reduction."""
        bs = body_shape(merged)
        return bs is not None and kinds[i] == "elementwise" and not _same_shape(nodes[i].shape, bs)

    def conflict(merged):
        m = set(merged)
        reds = [i for i in merged if kinds[i] == "reduce"]
        if reds:
            r0 = nodes[reds[0]]
            rank = len(r0.shape)
            axes = r0.attrs["axes"]
            bs = iter_shape(reds[0])
            # one loop nest: every reduction walks the same iteration space
            if any(not _same_shape(iter_shape(r), bs) for r in reds):
                return True
            # reductions over different axes share a loop only without an epilogue
            # (each accumulates into its own output); the checks below still apply
            mixed = any(nodes[r].attrs["axes"] != axes for r in reds)
            for i in merged:
                if is_epilogue(i, merged):
                    if mixed:
                        return True
                    # epilogues need keepdims reductions over trailing axes, and their own
                    # shape must be that keepdims shape
                    if not all(nodes[r].attrs["keepdims"] for r in reds) or \
                            axes != tuple(range(rank - len(axes), rank)) or \
                            not _same_shape(nodes[i].shape, r0.shape):
                        return True
        for i in merged:
            for p in nodes[i].inputs:
                if p in m and (kinds[p] == "reduce" or is_epilogue(p, merged)) \
                        and not is_epilogue(i, merged):
                    return True
        # a path leaving the merged group and coming back would be a cycle of steps;
        # another group runs as one unit, so reaching any member reaches all its users
        stack = [u for i in merged for u in users[i] if u not in m]
        seen = set()
        while stack:
            u = stack.pop()
            if u in seen:
                continue
            if u in m:
                return True
            seen.add(u)
            if u in parent:
                stack.extend(x for x in members[find(u)] if x not in seen)
            stack.extend(users[u])
        return False

    for n in nodes:
        if kinds[n.id] not in ("elementwise", "reduce"):
            continue
        for p in n.inputs:
            if kinds[p] not in ("elementwise", "reduce"):
                continue
            gp, gc = find(p), find(n.id)
            if gp == gc:
                continue
            if kinds[p] == "reduce":
                # a reduction's consumer may run as its epilogue (same keepdims shape)
                if kinds[n.id] != "elementwise" or not nodes[p].attrs["keepdims"] or \
                        not _same_shape(nodes[p].shape, n.shape):
                    continue
            elif not _same_shape(iter_shape(p), iter_shape(n.id)):
                continue
            merged = members[gp] + members[gc]
            if conflict(merged):
                continue
            parent[gc] = gp
            members[gp] = sorted(merged)
            del members[gc]

    # -- what needs a buffer ---------------------------------------------------
    mat = set()
    for n in nodes:
        k = kinds[n.id]
        if k in ("src", "reduce", "matmul", "opaque", "view"):
            mat.add(n.id)
        elif k == "elementwise":
            gid = find(n.id)
            if n.id in outputs or any(kinds[u] not in ("elementwise", "reduce") or find(u) != gid
                                      for u in users[n.id]):
                mat.add(n.id)
        elif k == "access":
            if n.id in outputs or any(kinds[u] in ("matmul", "opaque", "view") for u in users[n.id]):
                mat.add(n.id)
            if n.op == "pad" and kinds[n.inputs[0]] == "access":
                mat.add(n.inputs[0])      # pad reads straight from a buffer
    for n in nodes:                      # non-loop steps read buffers
        if kinds[n.id] in ("matmul", "opaque", "view", "access"):
            for p in n.inputs:
                if kinds[p] != "access":
                    mat.add(p)

    def load_of(i):
        chain = []
        while i not in mat and kinds[i] == "access":
            chain.append(i)
            i = nodes[i].inputs[0]
        return Load(i, tuple(chain))

    # -- steps -------------------------------------------------------------------
    steps = []
    producer = {}
    for root, mem in members.items():
        bs = body_shape(mem)
        grp = LoopGroup(bs if bs is not None else iter_shape(root))
        grp.nodes = sorted(mem)
        ms = set(mem)
        for i in grp.nodes:
            if kinds[i] == "reduce":
                grp.reduces.append(i)
            elif i in mat:
                grp.stores.append(i)
            for p in nodes[i].inputs:
                if p not in ms:
                    grp.loads[p] = load_of(p)
        if not grp.stores and not grp.reduces:
            continue
        steps.append(Step("loop", group=grp))
    for n in nodes:
        k = kinds[n.id]
        if k == "access" and n.id in mat:
            grp = LoopGroup(n.shape, stores=[n.id])
            inner = load_of(n.inputs[0])
            grp.loads[n.id] = Load(inner.base, (n.id,) + inner.chain)
            steps.append(Step("loop", group=grp))
        elif k in ("matmul", "opaque", "view"):
            steps.append(Step(k, node=n.id, body=_loop_body(n)))
    for s in steps:
        for o in s.outputs():
            producer[o] = s

    def deps(s):
        if s.kind == "loop":
            bases = [ld.base for ld in s.group.loads.values()]
        else:
            bases = [load_of(p).base for p in nodes[s.node].inputs]
        return [producer[b] for b in bases if b in producer and producer[b] is not s]

    def early(s):
        return s.kind == "opaque" and REGISTRY[nodes[s.node].op].schedule_early

    ordered = _toposort(steps, deps, early)
    return Program(g, ordered, mat)


def _loop_body(n):
    """The fused bodies of a control-flow node (ops/control.py: one per graph attr), or
    None for other nodes."""
    from ..ops.control import SUBGRAPHS
    if n.op not in SUBGRAPHS:
        return None
    from .simplify import simplify
    progs = []
    for key in SUBGRAPHS[n.op]:
        body = simplify(n.attrs[key])
        n.attrs[key] = body       # the fused program's graph is the node's from now on
        progs.append(fuse(body))
    return progs


def _same_shape(a, b):
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


def _toposort(steps, deps, early=lambda s: False):
    """Steps in node order, each after the steps it reads; an `early` step goes right
    after the last step it reads instead."""
    first = {id(s): min(s.outputs()) for s in steps}
    for s in steps:
        if early(s) and deps(s):
            first[id(s)] = max(first[id(d)] for d in deps(s)) + 0.5
    done, order = set(), []
    pending = sorted(steps, key=lambda s: first[id(s)])
    while pending:
        for s in pending:
            if all(id(d) in done for d in deps(s)):
                order.append(s)
                done.add(id(s))
                pending.remove(s)
                break
        else:
            raise RuntimeError("fusion produced a cycle between steps (flowjit bug)")
    return order
