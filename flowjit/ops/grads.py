"""Helpers for gradient rules. A rule is `grad(inputs, out, g, attrs) -> [cotangent or
None per input]`, written with flowjit's own API, so the backward graph is traced,
fused and compiled like any other (and can itself be differentiated)."""
from ..ir.shapes import is_one


_API = []      # the user API (frontend/api.py), installed by it: ops/ imports no frontend


def install_api(module):
    _API[:] = [module]


def api():
    return _API[0]


def apply_op(name, inputs, attrs=None):
    """Record op `name` (a gradient rule's raw op), through the installed frontend."""
    return api().apply_op(name, inputs, attrs)


def unbroadcast(g, shape):
    """Sum g over the dims that broadcasting added or stretched, back to `shape`."""
    F = api()
    gs = tuple(g.shape)
    shape = tuple(shape)
    if len(gs) == len(shape) and all((is_one(a) == is_one(b)) for a, b in zip(gs, shape)):
        return g
    lead = len(gs) - len(shape)
    axes = list(range(lead))
    for k, d in enumerate(shape):
        if is_one(d) and not is_one(gs[lead + k]):
            axes.append(lead + k)
    if axes:
        g = F.reduce_sum(g, axis=axes, keepdims=True)
    if lead or tuple(g.shape) != shape:
        g = F.reshape(g, shape)
    return g


def defgrad(name, fn):
    from ..ir.registry import REGISTRY
    REGISTRY[name].grad = fn
