"""The CPU side of `fj.custom_op`: the user's kernels as Numba functions that generated
modules call by their symbol (`cx_<name>_<hash>`, see frontend/custom_op.py)."""
from numba import njit
from numba.core.registry import CPUDispatcher

from ...ir.registry import REGISTRY

_dispatchers = {}


def kernel_globals(text):
    """{symbol: dispatcher} for every custom-op kernel the generated `text` calls."""
    out = {}
    for op in REGISTRY.values():
        if op.symbol is not None and op.symbol in text:
            d = _dispatchers.get(op.symbol)
            if d is None:
                fn = op.kernels["cpu"]
                d = _dispatchers[op.symbol] = fn if isinstance(fn, CPUDispatcher) else njit(fn)
            out[op.symbol] = d
    return out
