"""`fj.print` (TF2's tf.print): print values when the step runs, also inside `@fj.jit`.

Eagerly the values are printed at once. Under a trace the call records a `print` op
(ops/host_ops.py) whose inputs are the tensors among the arguments: compiled code
calls back into Python while the step runs (CPU: Numba's object mode inside the op's
kernel; tier 0 and the GPU: the op's reference on the host), so a jitted step prints on
every call, with that call's values, in the order the prints were made. Nothing reads
the op's result: the trace lists the node in `Graph.keep`, so the passes keep it.

Not supported yet: printing inside the body of `fj.scan`/`fj.while_loop`/`fj.cond` under
jit (return the values from the loop and print them after it).
"""
import numpy as np

from .. import dtypes as D
from ..errors import TracerError
from ..ops import host_ops as H
from .tensor import Tensor, apply_op, current_trace, user_src


def _is_tensor(x):
    return isinstance(x, Tensor) or hasattr(x, "_flowjit_tensor")


def _tensor(x):
    return x._flowjit_tensor() if hasattr(x, "_flowjit_tensor") else x


def print(*inputs, output_stream=None, summarize=3, sep=" ", end="\n", name=None):  # noqa: A001
    """Print `inputs` (tensors, NumPy arrays, Python values and lists/tuples/dicts of them)
    separated by `sep` and followed by `end`, when the step runs: eagerly at once, under
    `@fj.jit` on every call of the compiled function. Tensors print as TF prints them
    (`[1 2 3]`; a dim longer than 2 * summarize shows its first and last `summarize`
    entries; summarize=None or -1 shows all). output_stream: a file object (default:
    sys.stderr, looked up when printing, as in TF), or "file://path" to append to a file.
    Returns None (in TF2 graphs the print op; flowjit keeps the print for its effect)."""
    tensors = []

    def walk(v):
        if _is_tensor(v) or isinstance(v, np.ndarray):
            tensors.append(_tensor(v) if _is_tensor(v) else Tensor(value=v))
            return H.Slot(len(tensors) - 1)
        if type(v) is list:
            return [walk(x) for x in v]
        if type(v) is tuple:
            return tuple(walk(x) for x in v)
        if type(v) is dict:
            return {k: walk(x) for k, x in v.items()}
        return v
    parts = []
    for v in inputs:
        w = walk(v)
        if isinstance(w, H.Slot):
            parts.append(("slot", w.index))
        elif isinstance(w, str):
            parts.append(("text", w))
        elif isinstance(w, (list, tuple, dict)):
            parts.append(("struct", w))
        else:
            parts.append(("text", str(w)))
    _emit(parts, tensors, dict(stream=output_stream, sep=sep, end=end, summarize=summarize))


def print_v1(message, data, first_n=None, summarize=None, counter=None):
    """TF1's tf.Print side: `message` then each tensor of `data` as `[first values...]`
    (its first `summarize` values, 3 by default), on stderr; only the first `first_n`
    times when first_n >= 0 (`counter`, a one-element list, keeps the count across
    traces of the same op)."""
    tensors = [_tensor(v) if _is_tensor(v) else Tensor(value=np.asarray(v)) for v in data]
    _emit([("text", "" if message is None else str(message))], tensors,
          dict(style="tf1", summarize=summarize, first_n=first_n, counter=counter))


def _emit(parts, tensors, opts):
    ctx = current_trace()
    if ctx is None:
        arrays = [np.asarray(t) for t in tensors]
        H.PrintSite(parts, [a.ndim for a in arrays], **opts).emit(arrays)
        return
    if ctx.parent is not None:
        raise TracerError(f"print (at {user_src()}): printing inside the body of fj.scan, "
                          f"fj.while_loop or fj.cond under @fj.jit is not supported yet; return "
                          f"the values from the loop (as ys) and print them after it")
    from .api import constant
    g = ctx.graph
    # the previous print's result orders this one after it (a constant 0 for the first)
    token = Tensor(node=g.nodes[g.keep[-1]], graph=g) if g.keep else constant(0, D.int32)
    site = H.new_site(H.PrintSite(parts, [len(t.shape) for t in tensors], **opts))
    out = apply_op("print", [token] + tensors, {"site": site})
    g.keep.append(out._node.id)
