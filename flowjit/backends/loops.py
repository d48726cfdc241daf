"""What both Numba backends share about a fused loop group, before either emits a line:
the index map of every load, the reduction epilogue, coalesced loop dims (analyse_loop),
and the small source helpers for sizes, index terms and loads (the CPU indexes
n-d arrays, the GPU flat buffers: each passes its own subscript renderer)."""
from dataclasses import dataclass

from ..ir import scalar as S
from ..ir.registry import REGISTRY
from ..ir.shapes import Sym, hint, is_one, render
from .pyexpr import npt


def node_expr(n, names, nodes):
    """The scalar expression of elementwise node n, its operands read from `names`
    (node id -> source text)."""
    return REGISTRY[n.op].emit([S.var(names[p]) for p in n.inputs], n.attrs,
                               [nodes[p].dtype for p in n.inputs], n.dtype)


def dim_src(d):
    return render(d, lambda sid: f"d{sid}")


def shape_src(shape):
    if len(shape) == 0:
        return "(1,)"
    return "(" + "".join(dim_src(d) + ", " for d in shape) + ")"


def int_arg(src):
    """An integer kernel argument. Wrapped so Numba types it int64, not Literal[int]:
    a literal would make it compile the kernel once per distinct constant."""
    return f"np.int64({src})"


def prod_src(dims):
    if not dims:
        return "1"
    return " * ".join(dim_src(d) for d in dims)


def _leaf_index(g, grp, load, value_id):
    """Index map of a load: per base dim (group dim or None, start dim, step), and
    which base dims are pad-guarded."""
    R = len(grp.shape)
    shape = g.nodes[value_id].shape
    r = len(shape)
    idx = [(None, 0, 0) if is_one(shape[k]) else (R - r + k, 0, 1) for k in range(r)]
    guards = set()
    for a in load.chain:
        n = g.nodes[a]
        src_shape = g.nodes[n.inputs[0]].shape
        new = [(None, 0, 0)] * len(src_shape)
        if n.op == "transpose":
            for j, p in enumerate(n.attrs["perm"]):
                new[p] = idx[j]
        elif n.op == "slice":
            j = 0
            for k, e in enumerate(n.attrs["spec"]):
                if e[0] == "index":
                    new[k] = (None, e[1], 0)
                else:
                    d, s0, s1 = idx[j]
                    new[k] = (d, e[1] + e[2] * s0, e[2] * s1) if d is not None else (None, e[1] + e[2] * s0, 0)
                    j += 1
        elif n.op == "pad":
            for k, (lo, hi) in enumerate(n.attrs["paddings"]):
                d, s0, s1 = idx[k]
                new[k] = (d, s0 - int(lo), s1)
                if int(lo) or int(hi):
                    guards.add(k)
        else:
            raise AssertionError(n.op)
        for k, dsz in enumerate(src_shape):
            if is_one(dsz) and k not in guards:
                new[k] = (None, 0, 0)
        idx = new
    return idx, guards


@dataclass
class LoopAnalysis:
    """What both code generators need to know about a loop group before emitting it."""
    loop_dims: list      # group dims that are not 1
    leaves: list         # one dict per load: vid, load, idx, guards, identity, present, scalar
    epilogue: set        # elementwise nodes that run after a reduction's row loop
    epi_inputs: set
    body_inputs: set
    red_axes: dict       # reduce node -> its axes
    cdims: list          # coalesced dims: lists of adjacent group dims walked alike
    cof: dict            # group dim -> its coalesced dim
    C: int


def analyse_loop(g, grp, apart=()):
    """Classify the group's loads, find the reduction epilogue, and coalesce adjacent
    loop dims that every operand (and every reduction) walks the same way. `apart`:
    group dims that stay loops of their own (a store into a slice along that dim)."""
    nodes = g.nodes
    gshape = grp.shape
    loop_dims = [d for d in range(len(gshape)) if not is_one(gshape[d])]
    leaves = []
    for vid, load in grp.loads.items():
        idx, guards = _leaf_index(g, grp, load, vid)
        identity = not load.chain
        present = [e[0] for e in idx if e[0] is not None] if identity else None
        leaves.append(dict(vid=vid, load=load, idx=idx, guards=guards, identity=identity,
                           present=present, scalar=identity and not present))
    epilogue = {i for i in grp.nodes if grp.reduces and REGISTRY[nodes[i].op].kind == "elementwise"
                and not (len(nodes[i].shape) == len(gshape) and
                         all(hint(a) == hint(b) for a, b in zip(nodes[i].shape, gshape)))}
    epi_inputs = {p for i in epilogue for p in nodes[i].inputs}
    body_inputs = {p for i in grp.nodes if i not in epilogue for p in nodes[i].inputs}
    body_inputs |= {s for s in grp.stores if s not in grp.nodes}     # a copy loop stores a load
    blocked = set(apart)
    for lf in leaves:
        if not lf["identity"]:
            blocked |= {e[0] for e in lf["idx"] if e[0] is not None}
    for i in grp.nodes:
        if nodes[i].op == "iota":
            blocked.add(nodes[i].attrs["axis"] + len(gshape) - len(nodes[i].shape))
    red_axes = {r: set(nodes[r].attrs["axes"]) for r in grp.reduces}
    cdims = []
    for d in loop_dims:
        if cdims:
            prev = cdims[-1][-1]
            ok = prev not in blocked and d not in blocked
            ok = ok and all((prev in lf["present"]) == (d in lf["present"]) for lf in leaves if lf["identity"])
            ok = ok and all((prev in ax) == (d in ax) for ax in red_axes.values())
            if ok:
                cdims[-1].append(d)
                continue
        cdims.append([d])
    cof = {d: c for c, ds in enumerate(cdims) for d in ds}
    return LoopAnalysis(loop_dims, leaves, epilogue, epi_inputs, body_inputs, red_axes,
                        cdims, cof, len(cdims))


def index_term(d, s0, s1, cof, params, call, starts, loop_var=lambda c: f"i{c}"):
    """One base dim's index in an access-chain load: its start (a kernel argument
    P<k> unless 0) plus step * the coalesced loop variable (loop_var(c), default i<c>).
    Returns (expr, starts)."""
    st = ""
    if not (not isinstance(s0, Sym) and int(s0) == 0):
        params.append(f"P{starts}")
        call.append(int_arg(dim_src(s0)))
        st = f"P{starts}"
        starts += 1
    if d is None:
        return st or "0", starts
    step = int(s1)
    term = loop_var(cof[d]) if step == 1 else f"{step} * {loop_var(cof[d])}"
    return (f"{st} + {term}" if st else term), starts


def load_lines(j, p, lf, exprs, bounds, index, nodes, out):
    """`v<j> = p[...]` for an access-chain load; a padded dim reads the pad constant
    when its index falls outside `bounds`. `index(exprs)` renders the subscript."""
    if lf["guards"]:
        for k in lf["guards"]:
            out.append(f"e{j}_{k} = {exprs[k]}")
            exprs[k] = f"e{j}_{k}"
        pad = nodes[lf["load"].chain[-1]]
        cond = " and ".join(f"0 <= {exprs[k]} < {bounds[k]}" for k in sorted(lf["guards"]))
        pv = f"{npt(pad.dtype)}({pad.attrs['constant']!r})"
        out.append(f"v{j} = {p}[{index(exprs)}] if {cond} else {pv}")
    else:
        out.append(f"v{j} = {p}[{index(exprs)}]")


def candidate_draws(uniform, log, exp):
    """The loop of a candidate sampler's kernel (ops/sampling.sample_candidates, one draw
    at a time) with the backend's names for the counter-based uniform, log and exp: it
    reads `k` (the key as uint64) and the kernel's parameters, and fills `out`."""
    return f'''log_range = {log}(range_max + 1.0)
i = 0
tries = 0
c = 0
while i < num_sampled:
    u = {uniform}(k, np.uint64(c))
    c += 1
    tries += 1
    if log_uniform:
        v = (np.int64({exp}(u * log_range)) - 1) % range_max
    else:
        v = np.int64(u * range_max) % range_max
    fresh = True
    if unique:
        for j in range(i):
            if out[j] == v:
                fresh = False
                break
    if fresh:
        out[i] = v
        i += 1
out[num_sampled] = tries
'''
