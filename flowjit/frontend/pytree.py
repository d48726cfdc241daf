"""Nested tuples/lists/dicts/namedtuples of leaves: flatten to a list + a hashable structure."""


def flatten(tree, is_leaf=None):
    leaves = []

    def rec(x):
        if is_leaf is not None and is_leaf(x):
            leaves.append(x)
            return "*"
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            return ("nt", type(x), tuple(rec(v) for v in x))
        if isinstance(x, (tuple, list)):
            return (type(x).__name__, tuple(rec(v) for v in x))
        if isinstance(x, dict):
            keys = sorted(x, key=repr)
            return ("dict", tuple(keys), tuple(rec(x[k]) for k in keys))
        leaves.append(x)
        return "*"

    return leaves, rec(tree)


def unflatten(struct, leaves):
    it = iter(leaves)

    def rec(s):
        if s == "*":
            return next(it)
        tag = s[0]
        if tag == "nt":
            return s[1](*(rec(v) for v in s[2]))
        if tag == "dict":
            return {k: rec(v) for k, v in zip(s[1], s[2])}
        vals = [rec(v) for v in s[1]]
        return tuple(vals) if tag == "tuple" else vals

    return rec(struct)
