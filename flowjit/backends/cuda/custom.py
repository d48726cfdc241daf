"""The CUDA side of `fj.custom_op`.

An elementwise op's kernel is a device function that generated kernels call by its
symbol: its `cuda_kernel`, or else its CPU kernel's Python function (plain scalar math
compiles for the device too).

An opaque op's `cuda_kernel(*inputs, out, **attrs)` is a device function too, called by
a generated kernel launched with one thread per output element (the user's code finds
its element with `cuda.grid(1)`). That kernel passes the node's attributes as literals,
like the CPU backend's "call" lowering, but by position: neither Numba's CUDA target
nor its simulator binds keywords in a call of a device function. An opaque op without a
`cuda_kernel` has no CUDA lowering: it runs its reference on the host, and the
placement log says so.
"""
import inspect
import math

import numpy as np
from numba import cuda

from ...errors import CompileError
from ...ir.registry import REGISTRY
from ..loops import prod_src
from .codegen import shape_tuple
from .kernels import kernel_def, named

_device_functions = {}


def kernel_globals(text):
    """{symbol: device function} for every custom-op kernel the generated `text` calls."""
    out = {}
    for op in REGISTRY.values():
        if op.symbol is not None and op.symbol in text:
            f = _device_function(op)
            if f is not None:
                out[op.symbol] = f
    return out


def _device_function(op):
    """`op`'s kernel compiled for the device (once per symbol), or None if it has none."""
    f = _device_functions.get(op.symbol)
    if f is None:
        fn = op.kernels.get("cuda")
        if fn is None and op.kind == "elementwise":
            fn = op.kernels["cpu"]
        if fn is None:
            return None
        # a Numba dispatcher (njit or cuda.jit) is compiled afresh from its Python function
        f = _device_functions[op.symbol] = cuda.jit(device=True)(getattr(fn, "py_func", fn))
    return f


def opaque_lowering(op_name):
    """The lowering of an opaque custom op that has a `cuda_kernel`, else None."""
    op = REGISTRY.get(op_name)
    if op is None or op.symbol is None or op.kind != "opaque" or "cuda" not in op.kernels:
        return None
    return _launch


def _launch(ctx, n):
    """A 1-d grid of at least out.size threads runs the op's device function on the
    inputs and the output viewed in their logical shapes (the entry's buffers are flat)."""
    g, buf = ctx.g, ctx.buf
    op = REGISTRY[n.op]
    shapes = [g.nodes[p].shape for p in n.inputs]
    params = [f"x{i}" for i in range(len(shapes))] + ["out"]
    body = f"    {op.symbol}({', '.join(_call_args(op, params, n.attrs))})\n"
    name, src = named(kernel_def(", ".join(params), body), f"custom op {n.op}")
    size = prod_src(n.shape)
    views = [f"{buf(p)}.reshape({shape_tuple(s)})" for p, s in zip(n.inputs, shapes)]
    views.append(f"{buf(n.id)}.reshape({shape_tuple(n.shape)})")
    return {name: src}, [ctx.alloc(n.id, size, f"np.{n.dtype.np.name}"),
                         f"{name}[RT.cdiv({size}, RT.TPB), RT.TPB]({', '.join(views)})"]


def _call_args(op, params, attrs):
    """The device function's arguments in the order of its parameters: the arrays, then
    each attribute (or its default) as a literal."""
    fn = getattr(op.kernels["cuda"], "py_func", op.kernels["cuda"])
    try:
        bound = inspect.signature(fn).bind(*params, **attrs)
        bound.apply_defaults()          # then every parameter but a keyword-only one is in args
        if bound.kwargs:
            raise TypeError(f"keyword-only parameters {sorted(bound.kwargs)}")
    except TypeError as e:
        raise CompileError(f"custom op {op.name!r}: its cuda_kernel {fn.__qualname__} cannot be "
                           f"called as kernel({', '.join(params + sorted(attrs))}): {e}") from None
    return params + [_literal(v) for v in bound.args[len(params):]]


def _literal(v):
    """Source text of attribute value `v` in a kernel module."""
    if isinstance(v, tuple):
        return "(" + "".join(_literal(x) + ", " for x in v) + ")"
    if isinstance(v, np.generic):
        name = type(v).__name__
        return f"np.{name}({_literal(v.item())})" if hasattr(np, name) else _literal(v.item())
    if isinstance(v, float) and not math.isfinite(v):
        return "np.nan" if v != v else ("np.inf" if v > 0 else "-np.inf")
    return repr(v)
