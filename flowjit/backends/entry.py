"""The entry skeleton both Numba backends share: the entry function's parameters, in
the executor's order, and the lines reading every size symbol from the input shapes."""


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
