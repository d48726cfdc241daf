"""`fj.custom_op`: a user's op, registered through the same registry as the built-ins.

    softplus = fj.custom_op("my_softplus", shape_fn=same_shape, cpu_kernel=scalar_fn,
                            grad=softplus_grad, elementwise=True)

The entry gets the user's shape rule, a NumPy reference (theirs, or the kernel run
eagerly), their gradient rule, and their kernels by backend. An elementwise op's
scalar code is a call of its kernel, so it fuses into the loops around it like `exp`;
any other op is opaque and its kernel `kernel(*inputs, out, **attrs)` writes the
output array (each backend compiles it: `backends/*/custom.py`). The name generated
code calls a kernel by carries a hash of the kernel's source, so an edited kernel is
compiled afresh while an unchanged one comes from the disk cache in a new process.
"""
import hashlib
import inspect
import marshal
import re

import numpy as np

from .. import dtypes as D
from ..errors import DTypeError, ShapeError
from ..ir.registry import REGISTRY, register
from ..ir import scalar as S
from ..ops.grads import defgrad, unbroadcast
from .tensor import Tensor, apply_op, convert

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def custom_op(name, *, shape_fn, cpu_kernel, grad=None, reference=None, cuda_kernel=None,
              elementwise=False):
    """Register op `name` and return `op(*tensors, **attrs)`. See the module docstring and
    SPEC ("custom ops") for the contract of each function."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"custom_op: name must be a Python identifier, got {name!r}")
    if name in REGISTRY:
        raise ValueError(f"custom_op: an op named {name!r} is already registered")
    for what, fn in (("shape_fn", shape_fn), ("cpu_kernel", cpu_kernel)):
        if not callable(fn):
            raise TypeError(f"custom_op {name!r}: {what} must be a function, got {fn!r}")
    kernels = {"cpu": cpu_kernel}
    if cuda_kernel is not None:
        kernels["cuda"] = cuda_kernel
    where = _defined_at(cpu_kernel)
    symbol = f"cx_{name}_{_source_hash(kernels)}"
    register(name, "elementwise" if elementwise else "opaque",
             _infer(name, shape_fn, where),
             _reference(name, reference, kernels["cpu"], elementwise),
             emit=_emit(symbol) if elementwise else None,
             lower=None if elementwise else {"kind": "call", "kernel": _opaque_kernel(symbol),
                                             "fixed": lambda attrs, shapes: (len(shapes), attrs)},
             cost=8, kernels=kernels, symbol=symbol,
             can_fail=not elementwise)      # a user's kernel may raise: no in-place updates
    if grad is not None:
        defgrad(name, _grad_rule(name, grad))

    def op(*tensors, **attrs):
        attrs = _static_attrs(name, attrs)
        for t in tensors:       # a graph of another front end (TF1) records the op itself
            record = getattr(type(t), "__flowjit_custom_op__", None)
            if record is not None:
                return record(name, op, tensors, attrs)
        ts = [t if isinstance(t, Tensor) else convert(t) for t in tensors]
        return apply_op(name, ts, attrs)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"The custom op {name!r} (kernel defined at {where})."
    return op


def _python_function(fn):
    """The Python function behind a Numba dispatcher (or `fn` itself)."""
    return getattr(fn, "py_func", fn)


def _defined_at(fn):
    code = getattr(_python_function(fn), "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else repr(fn)


def _source_hash(kernels):
    h = hashlib.sha1()
    for backend in sorted(kernels):
        fn = _python_function(kernels[backend])
        try:
            h.update(inspect.getsource(fn).encode())
        except (OSError, TypeError):          # no source file: the bytecode stands in
            h.update(marshal.dumps(fn.__code__.co_code))
            h.update(repr(fn.__code__.co_consts).encode())
    return h.hexdigest()[:12]


def _static_attrs(name, attrs):
    for k, v in attrs.items():
        if not isinstance(v, (bool, int, float, str, tuple, np.integer, np.floating)):
            raise TypeError(f"custom op {name!r}: attribute {k}={v!r} must be a number, string or "
                            f"tuple (attributes are compiled into the kernel)")
    return dict(attrs)


def _infer(name, shape_fn, where):
    def infer(shapes, dtypes, attrs):
        try:
            res = shape_fn([tuple(s) for s in shapes], list(dtypes), **attrs)
        except (ShapeError, DTypeError):
            raise
        except Exception as e:      # a bug or a refusal in the user's rule: say whose
            raise ShapeError(f"the shape_fn of custom op {name!r} raised "
                             f"{type(e).__name__}: {e}") from None
        try:
            shape, dtype = res
            return tuple(shape), D.as_dtype(dtype)
        except Exception:
            raise TypeError(f"the shape_fn of custom op {name!r} must return (shape, dtype), "
                            f"got {res!r}") from None
    return infer


def _reference(name, reference, kernel, elementwise):
    if reference is not None:
        return lambda arrays, attrs, shape, dtype: reference(*arrays, **attrs)
    if elementwise:
        def run_elementwise(arrays, attrs, shape, dtype):
            f = np.vectorize(lambda *xs: kernel(*xs, **attrs), otypes=[dtype.np])
            return f(*arrays)
        return run_elementwise

    def run_kernel(arrays, attrs, shape, dtype):
        out = np.empty(tuple(int(s) for s in shape), dtype.np)
        kernel(*[np.ascontiguousarray(a) for a in arrays], out, **attrs)
        return out
    return run_kernel


def _emit(symbol):
    def emit(args, attrs, in_dtypes, dtype):
        return S.cast(S.extern(symbol, args, attrs), dtype)
    return emit


def _opaque_kernel(symbol):
    """Kernel template for the generic "call" lowering: the user's kernel with the node's
    attributes as literals (`fixed` hands them over)."""
    def source(fname, dtype, fixed):
        n_inputs, attrs = fixed
        params = ", ".join([f"x{i}" for i in range(n_inputs)] + ["out"])
        kw = "".join(f", {k}={v!r}" for k, v in sorted(attrs.items()))
        return f"""
def {fname}({params}):
    {symbol}({params}{kw})
"""
    return source


def _grad_rule(name, grad):
    def rule(ins, out, g, attrs):
        cts = grad(list(ins), out, g, **attrs)
        cts = list(cts) if isinstance(cts, (list, tuple)) else [cts]
        if len(cts) != len(ins):
            raise ValueError(f"the grad of custom op {name!r} returned {len(cts)} cotangents for "
                             f"{len(ins)} inputs (use None for an input without one)")
        # an input that was broadcast gets its cotangent summed back to its shape
        return [None if ct is None else unbroadcast(convert(ct), x.shape) for ct, x in zip(cts, ins)]
    return rule


def kernel_error(graph, err):
    """A CompileError for Numba's failure `err` to compile a program of `graph`: it names
    the custom op whose kernel Numba rejected (and where that kernel is defined)."""
    from ..errors import CompileError
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    for n in graph.nodes:
        op = REGISTRY.get(n.op)
        if op is not None and op.symbol is not None and op.symbol in str(err):
            dts = ", ".join(graph.nodes[p].dtype.name for p in n.inputs)
            return CompileError(f"custom op {n.op!r} (at {n.src}): Numba could not compile its "
                                f"kernel (defined at {_defined_at(op.kernels['cpu'])}) for inputs "
                                f"({dts}): {first}")
    return CompileError(f"generated code failed to compile (a flowjit bug, please report): {err}")
