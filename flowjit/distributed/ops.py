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


def collective(t, name, root=0, after=(), group=0):
    """Record (or, eagerly, run) collective `name` on tensor t over COMM_WORLD or the
    sub-communicator `group`; `after`: tensors this one must run after."""
    from ..frontend.tensor import apply_op
    return apply_op(OP, [t] + list(after), {"code": C.CODES[name], "root": int(root),
                                            "group": int(group)})


