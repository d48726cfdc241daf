"""Nested tuples/lists/dicts/namedtuples of leaves: flatten to a list + a hashable structure.

Plain recursive functions, not closures: a closure that calls itself is a reference
cycle, and one holding the leaves would keep a call's inputs and outputs alive until
the garbage collector runs (the CPU tier then could not reuse its output buffers)."""


def flatten(tree, is_leaf=None):
    leaves = []
    return leaves, _flatten(tree, is_leaf, leaves)


def _flatten(x, is_leaf, leaves):
    if is_leaf is not None and is_leaf(x):
        leaves.append(x)
        return "*"
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return ("nt", type(x), tuple(_flatten(v, is_leaf, leaves) for v in x))
    if isinstance(x, (tuple, list)):
        return (type(x).__name__, tuple(_flatten(v, is_leaf, leaves) for v in x))
    if isinstance(x, dict):
        keys = sorted(x, key=repr)
        return ("dict", tuple(keys), tuple(_flatten(x[k], is_leaf, leaves) for k in keys))
    leaves.append(x)
    return "*"


def unflatten(struct, leaves):
    return _unflatten(struct, iter(leaves))


def _unflatten(s, it):
    if s == "*":
        return next(it)
    tag = s[0]
    if tag == "nt":
        return s[1](*(_unflatten(v, it) for v in s[2]))
    if tag == "dict":
        return {k: _unflatten(v, it) for k, v in zip(s[1], s[2])}
    vals = [_unflatten(v, it) for v in s[1]]
    return tuple(vals) if tag == "tuple" else vals
