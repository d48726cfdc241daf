"""The entry skeleton both Numba backends share: the entry function's parameters, in
the executor's order, the lines reading every size symbol from the input shapes, and the
names a scan's loop gives its carry, its stacked results and its body's arguments."""
from ..ops.control import scan_results


def entry_params(g):
    """The entry's parameter names, in the executor's order: inputs a<k>, constants c<i>,
    random keys r<s>, the error word; and node id -> name for those source nodes."""
    names = {a: f"a{k}" for k, a in enumerate(g.args)}
    params = [names[a] for a in g.args]
    for n in g.nodes:
        if n.op == "const":
            names[n.id] = f"c{n.attrs['index']}"
        elif n.op == "rng_key":
            names[n.id] = f"r{n.attrs['stream']}"
    consts = sorted({n.attrs["index"] for n in g.nodes if n.op == "const"})
    keys = sorted({n.attrs["stream"] for n in g.nodes if n.op == "rng_key"})
    params += [f"c{i}" for i in consts] + [f"r{i}" for i in keys] + ["err"]
    return names, params


def size_lines(g, names):
    """Entry lines reading every representative size symbol from its input's shape."""
    env = g.env
    reps = sorted({env.find(s) for s in env.hints if env.find(s) not in env.fixed})
    out = []
    for s in reps:
        a, d = env.sources[s]
        out.append(f"d{s} = {names.get(g.args[a], 'a%d' % a)}.shape[{d}]")
    return out


def scan_result_name(p, attrs, k):
    """The name holding result k of a scan whose loop names start with `p`: the carry
    p c<k>, the carry entering each step stacked p h<k>, the other stacked results p y<k>."""
    nc, ny = scan_results(attrs)
    if k < nc:
        return f"{p}c{k}"
    if nc + ny <= k < 2 * nc + ny:
        return f"{p}h{k - nc - ny}"
    return f"{p}y{k}"


def scan_body_names(bg, n, p, buf):
    """{arg node id of body graph bg: name}: the carry p c<k>, this step's slice of xs
    p x<k>, and the captures by their names outside (`buf`)."""
    nc, nx = n.attrs["n_carry"], n.attrs["n_xs"]
    names = {}
    for k, arg in enumerate(bg.args):
        names[arg] = f"{p}c{k}" if k < nc else f"{p}x{k - nc}" if k < nc + nx else buf(n.inputs[k])
    return names


def results_read(g, n):
    """The result indices of multi-result node n that tuple_get nodes read."""
    return {u.attrs["index"] for u in g.nodes if u.op == "tuple_get" and u.inputs[0] == n.id}
