"""The op registry: every op is defined once, here-registered from `flowjit/ops/`.

An `OpDef` holds:
- `kind`: how the passes treat it ('elementwise', 'reduce', 'access', 'view',
  'source', 'opaque');
- `infer(shapes, dtypes, attrs) -> (shape, dtype)`: the shape/dtype rule; it raises
  ShapeError/DTypeError with a plain message that the frontend decorates;
- `ref(arrays, attrs, shape, dtype) -> ndarray`: the NumPy reference (also what eager
  mode runs);
- `emit(args, attrs, in_dtypes, dtype) -> Expr` for elementwise ops: the output
  element as a structured scalar expression of the operands' (ir/scalar.py), which each
  backend renders; for reductions, a dict: kind, identity(dtype) (a Python value),
  update(dtype, acc, v) (an Expr);
- `grad(...)`: the gradient rule (filled in by the autodiff layer);
- `lower`: for opaque ops, a callable that emits the backend call;
- `runtime_error(value, bound) -> str`: the message when its kernel reports a bad value;
- `api`: the op's public names, which the frontends export by themselves;
- `multi`: the op has several results, read by `tuple_get` nodes (loops);
- `effect`: a host op run for its side effect (`print`): never folded or merged; the
  trace lists its nodes in `Graph.keep`, which keeps them alive though nothing reads them.
"""
from dataclasses import dataclass

REGISTRY = {}


@dataclass
class OpDef:
    name: str
    kind: str
    infer: object
    ref: object
    emit: object = None
    grad: object = None
    lower: object = None
    cost: int = 1          # relative cost of one element (transcendentals > 1)
    # for ops whose kernel reports a bad value through the error word: the message,
    # from the value and the bound the kernel wrote (default: an index out of range)
    runtime_error: object = None
    can_fail: bool = False         # its kernel may reject a value at run time (no in-place updates then)
    # (whether a loop must keep IEEE order is read from the expressions: ir/scalar.py)
    # a custom op's own kernels, by backend ("cpu", "cuda"), and the name generated code
    # calls them by (it carries a hash of their source, so an edited kernel is a new name)
    kernels: dict = None
    symbol: str = None
    # public names the frontends give the op ("softplus" in fj, "nn.softplus" in fj.nn
    # and tf.nn): an op that needs no more than apply_op needs no wrapper written for it
    api: tuple = ()
    # several results (a loop: ops/control.py): `ref` returns a list, and `tuple_get`
    # nodes read its results
    multi: bool = False
    # run for its side effect (ops/host_ops.py): never constant-folded or merged
    effect: bool = False
    # compiled code runs it as soon as its inputs are ready (passes/fusion.py), so the
    # steps after it overlap what it starts (an MPI allreduce: distributed/ops.py)
    schedule_early: bool = False


def register(name, kind, infer, ref, **kw):
    if name in REGISTRY:
        raise ValueError(f"op {name!r} registered twice")
    REGISTRY[name] = OpDef(name, kind, infer, ref, **kw)
    return REGISTRY[name]


def get(name):
    return REGISTRY[name]
