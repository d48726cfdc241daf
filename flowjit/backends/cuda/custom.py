"""The CUDA side of `fj.custom_op`: an elementwise op's kernel as a device function that
generated kernels call by its symbol. Its `cuda_kernel`, or else its CPU kernel's
Python function (plain scalar math compiles for the device too). An opaque custom op
has no CUDA lowering: it runs its reference on the host, and the placement log says so."""
from numba import cuda

from ...ir.registry import REGISTRY

_device_functions = {}


def kernel_globals(text):
    """{symbol: device function} for every custom-op kernel the generated `text` calls."""
    out = {}
    for op in REGISTRY.values():
        if op.symbol is not None and op.kind == "elementwise" and op.symbol in text:
            f = _device_functions.get(op.symbol)
            if f is None:
                fn = op.kernels.get("cuda") or getattr(op.kernels["cpu"], "py_func", op.kernels["cpu"])
                f = _device_functions[op.symbol] = cuda.jit(device=True)(fn)
            out[op.symbol] = f
    return out
