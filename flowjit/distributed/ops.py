"""The `mpi_collective` op: an allreduce (sum/mean/max/min) or a broadcast as a graph
node, so a jitted step runs its collective between its kernels and stays one compiled
function.

Inputs: the tensor, then optionally ordering tokens (earlier collectives' results, only
read for the order: every rank must run the collectives in the same order). Attributes:
`code` (_comm.CODES), `root`, and `group` (0: COMM_WORLD; else a sub-communicator
registered with _comm.add_group, e.g. a TF1 cluster's workers). Output: the tensor's shape and dtype.

Where it runs (as `print`, ops/host_ops.py):
- eagerly and in tier 0 (and GPU programs, which run ops without a CUDA kernel on host
  copies): the NumPy reference calls `_comm.host_collective`;
- compiled CPU code: the op's kernel enters Numba's object mode and calls
  `_comm.host_collective(code, root, x, out)`, which runs the MPI collective on the
  buffer and writes the result into the kernel's output buffer. A background-compile
  child process (which runs the kernels once on zeros) is not the process that called
  `init()`, so there the callback only copies.
The `effect` flag keeps the node from being constant-folded (which would run the
collective while compiling, maybe on one rank only) or merged with another.

Gradients: allreduce-sum's gradient is the allreduce-sum of the cotangent, mean's the
mean (y_r = sum_s x_s / n, so dL/dx_s = sum_r g_r / n); max, min and broadcast have none
here (an error names them).
"""
import numpy as np

from ..ir.registry import REGISTRY, register
from . import _comm as C

OP = "mpi_collective"


def _infer(shapes, dts, attrs):
    return shapes[0], dts[0]


def _ref(arrs, attrs, shape, dtype):
    x = np.asarray(arrs[0])
    out = np.empty(x.shape, x.dtype)
    C.host_collective(attrs["code"], attrs["root"], attrs.get("group", 0), x, out)
    return out


def _kernel_source(fname, dtype, n_inputs):
    xs = "".join(f"x{i}, " for i in range(n_inputs))
    return f'''
def {fname}({xs}out, code, root, group):
    with objmode():
        host_collective(code, root, group, x0, out)

from numba import objmode
from flowjit.distributed._comm import host_collective
'''


def _grad(ins, out, g, attrs):
    name = C.NAMES[attrs["code"]]
    if name not in ("sum", "mean"):
        raise NotImplementedError(f"fj.distributed: no gradient through a {name} collective")
    from ..frontend.tensor import apply_op
    return [apply_op(OP, [g], {"code": attrs["code"], "root": 0, "group": attrs.get("group", 0)})] \
        + [None] * (len(ins) - 1)


def _register():
    if OP in REGISTRY:
        return
    register(OP, "opaque", _infer, _ref, effect=True)
    REGISTRY[OP].lower = dict(kind="call", kernel=_kernel_source,
                              fixed=lambda attrs, shapes: len(shapes),
                              args=lambda attrs: [attrs["code"], attrs["root"], attrs.get("group", 0)])
    from ..ops.grads import defgrad
    defgrad(OP, _grad)


_register()


# ---- an allreduce in two halves, so a compiled step overlaps it -----------------------
# mpi_start(x1, ..., xk): packs the bucket and starts its Iallreduce; output: an int64
# token (the slot). It is scheduled as early as its inputs allow (schedule_early), so the
# kernels computing the other gradients run while the bucket is reduced.
# mpi_wait(token, x1, ..., xk): completes it; output: the reduced bucket, flat (the x's
# only give its size and dtype, and keep it after them).
START, WAIT = "mpi_start", "mpi_wait"
_slots = [0]


def _start_ref(arrs, attrs, shape, dtype):
    token = np.zeros((), np.int64)
    C.host_start(attrs["code"], attrs.get("group", 0), attrs["slot"], arrs, token)
    return token


def _wait_infer(shapes, dts, attrs):
    return (attrs["size"],), dts[1]


def _wait_ref(arrs, attrs, shape, dtype):
    out = np.empty(shape, dtype.np if hasattr(dtype, "np") else dtype)
    C.host_wait(arrs[0], out)
    return out


def _start_kernel(fname, dtype, n_inputs):
    xs = ", ".join(f"x{i}" for i in range(n_inputs))
    return f'''
def {fname}({xs}, out, code, group, slot):
    with objmode():
        host_start(code, group, slot, ({xs},), out)

from numba import objmode
from flowjit.distributed._comm import host_start
'''


def _wait_kernel(fname, dtype, n_inputs):
    xs = ", ".join(f"x{i}" for i in range(n_inputs))
    return f'''
def {fname}({xs}, out):
    with objmode():
        host_wait(x0, out)

from numba import objmode
from flowjit.distributed._comm import host_wait
'''


def _no_grad(ins, out, g, attrs):
    # internal to DistributedOptimizer's reduction of the gradients: what it feeds is an
    # optimizer update, which nothing differentiates; its inputs count as constants
    return [None] * len(ins)


def _register_split():
    if START in REGISTRY:
        return
    from .. import dtypes as D
    register(START, "opaque", lambda shapes, dts, attrs: ((), D.int64), _start_ref, effect=True,
             schedule_early=True)
    REGISTRY[START].lower = dict(kind="call", kernel=_start_kernel,
                                 fixed=lambda attrs, shapes: len(shapes),
                                 args=lambda attrs: [attrs["code"], attrs.get("group", 0), attrs["slot"]])
    register(WAIT, "opaque", _wait_infer, _wait_ref, effect=True)
    REGISTRY[WAIT].lower = dict(kind="call", kernel=_wait_kernel,
                                fixed=lambda attrs, shapes: len(shapes), args=lambda attrs: [])
    from ..ops.grads import defgrad
    defgrad(START, _no_grad)
    defgrad(WAIT, _no_grad)


_register_split()


def start_and_wait(tensors, name, group=0):
    """Record the split allreduce of a bucket of same-dtype tensors (static sizes):
    returns a function that records the wait and gives the reduced bucket, flat. All
    starts should be recorded before the waits."""
    from ..frontend.tensor import apply_op
    _slots[0] += 1
    slot = _slots[0]
    code = C.CODES[name]
    token = apply_op(START, list(tensors), {"code": code, "group": int(group), "slot": slot})
    size = sum(int(np.prod([int(d) for d in t.shape])) for t in tensors)

    def wait():
        return apply_op(WAIT, [token] + list(tensors), {"size": size, "slot": slot})
    return wait


def collective(t, name, root=0, after=(), group=0):
    """Record (or, eagerly, run) collective `name` on tensor t over COMM_WORLD or the
    sub-communicator `group`; `after`: tensors this one must run after."""
    from ..frontend.tensor import apply_op
    return apply_op(OP, [t] + list(after), {"code": C.CODES[name], "root": int(root),
                                            "group": int(group)})


