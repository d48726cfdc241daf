"""Control flow: one IR node per loop, whose body is a traced graph of its own.

`scan` (fj.scan; frontend/control_flow.py traces the body):
- inputs: the initial carry (n_carry tensors), the sequences xs (n_xs tensors, the
  loop runs over their first dim), then the body's captured values (weights, outer
  tensors it reads);
- attrs: `body`, a Graph whose args are the carry, one step's slices of xs, then the
  captures, and whose outputs are the new carry then the step's outputs ys;
  `length` (the trip count, a size: symbolic when it is xs's leading dim, so a new
  sequence length does not recompile); `reverse`; `outs`, the (shape, dtype) of each
  of the node's results;
- results, read by `tuple_get` nodes: the final carry, each y stacked over the steps,
  then the carry entering each step, stacked (what the gradient replays the body from;
  computed only when a tuple_get reads it).

A scan node is an opaque step of the program: the CPU backend emits it as one `for`
loop in the entry with the body's fused kernels inside (backends/cpu/codegen.py), so
compile time does not depend on the trip count.
"""
import numpy as np

from ..ir.evaluate import run_graph
from ..ir.registry import register
from .. import dtypes as D


def scan_results(attrs):
    """(n_carry, n_ys): how the node's results split into final carry, ys, stacked carries."""
    nc = attrs["n_carry"]
    return nc, len(attrs["outs"]) - 2 * nc


def _scan_infer(shapes, dts, attrs):
    # the node itself is a bundle of results; its shape/dtype are placeholders (its
    # tuple_get readers carry the real ones)
    return (), D.float32


def _scan_ref(arrs, attrs, shape, dtype):
    nc, ny = scan_results(attrs)
    nx = attrs["n_xs"]
    carry = [np.array(a) for a in arrs[:nc]]
    xs, consts = arrs[nc:nc + nx], list(arrs[nc + nx:])
    n = int(attrs["length"])
    outs = attrs["outs"]
    ys = [np.empty(s, d.np) for s, d in outs[nc:nc + ny]]
    stacked = [np.empty(s, d.np) for s, d in outs[nc + ny:]]
    body = attrs["body"]
    sizes = {}
    for t in (range(n - 1, -1, -1) if attrs["reverse"] else range(n)):
        for k in range(nc):
            stacked[k][t] = carry[k].reshape(stacked[k].shape[1:])
        res = run_graph(body, carry + [x[t] for x in xs] + consts, sizes)
        carry = [np.array(r, outs[k][1].np).reshape(outs[k][0]) for k, r in enumerate(res[:nc])]
        for k in range(ny):
            ys[k][t] = np.asarray(res[nc + k]).reshape(ys[k].shape[1:])
    return [c.reshape(outs[k][0]) for k, c in enumerate(carry)] + ys + stacked


register("scan", "opaque", _scan_infer, _scan_ref, multi=True)


def _tuple_get_infer(shapes, dts, attrs):
    return tuple(attrs["shape"]), attrs["dtype"]


register("tuple_get", "opaque", _tuple_get_infer, lambda arrs, attrs, s, d: arrs[0][attrs["index"]])
