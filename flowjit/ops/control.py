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

`cond` (fj.cond): inputs [pred, operands..., true branch captures..., false branch
captures...]; attrs `true` and `false` (graphs whose args are the operands then their
own captures), `n_ops`, `outs`. Runs one branch.

`while` (fj.while_loop): inputs [loop vars..., cond captures..., body captures...];
attrs `cond` (a graph of the vars and its captures, returning a bool scalar), `body`
(the vars and its captures -> new vars), `n_vars`, `outs` (the final vars).

Each is an opaque step of the program: the CPU backend emits a `for` loop, an `if` or a
`while` in the entry with the bodies' fused kernels inside (backends/cpu/codegen.py), so
compile time does not depend on the trip count.
"""
import numpy as np

from ..ir.evaluate import run_graph
from ..ir.registry import register
from .. import dtypes as D

# the attrs of each control-flow op that hold a traced graph (fused and compiled with it)
SUBGRAPHS = {"scan": ("body",), "cond": ("true", "false"), "while": ("cond", "body")}


def scan_results(attrs):
    """(n_carry, n_ys). A scan's results: the final carry, each y stacked over the steps,
    the carry entering each step stacked, then `n_res` residuals (values of the body the
    gradient saved, stacked: frontend/control_flow.py adds them)."""
    nc = attrs["n_carry"]
    return nc, len(attrs["outs"]) - 2 * nc - attrs.get("n_res", 0)


def stacked_outputs(attrs):
    """[(result index, body output index)] of the results stacked over the steps: the
    ys, then the residuals (the body returns carry, ys, residuals)."""
    nc, ny = scan_results(attrs)
    return [(nc + k, nc + k) for k in range(ny)] + \
        [(2 * nc + ny + r, nc + ny + r) for r in range(attrs.get("n_res", 0))]


def _scan_ref(arrs, attrs, shape, dtype):
    nc, ny = scan_results(attrs)
    nx = attrs["n_xs"]
    carry = [np.array(a) for a in arrs[:nc]]
    xs, consts = arrs[nc:nc + nx], list(arrs[nc + nx:])
    n = int(attrs["length"])
    outs = attrs["outs"]
    results = [None] * len(outs)
    per_step = stacked_outputs(attrs)
    for i, _ in per_step:
        results[i] = np.empty(outs[i][0], outs[i][1].np)
    entering = [np.empty(s, d.np) for s, d in outs[nc + ny:2 * nc + ny]]
    body = attrs["body"]
    sizes = {}
    for t in (range(n - 1, -1, -1) if attrs["reverse"] else range(n)):
        for k in range(nc):
            entering[k][t] = carry[k].reshape(entering[k].shape[1:])
        res = run_graph(body, carry + [x[t] for x in xs] + consts, sizes)
        carry = [np.array(r, outs[k][1].np).reshape(outs[k][0]) for k, r in enumerate(res[:nc])]
        for i, j in per_step:
            results[i][t] = np.asarray(res[j]).reshape(results[i].shape[1:])
    results[:nc] = carry
    results[nc + ny:2 * nc + ny] = entering
    return results


register("scan", "opaque", lambda s, d, a: _bundle_infer(s, d, a), _scan_ref, multi=True)


def _tuple_get_infer(shapes, dts, attrs):
    return tuple(attrs["shape"]), attrs["dtype"]


register("tuple_get", "opaque", _tuple_get_infer, lambda arrs, attrs, s, d: arrs[0][attrs["index"]])


def _bundle_infer(shapes, dts, attrs):
    # the node itself is a bundle of results; its shape/dtype are placeholders (its
    # tuple_get readers carry the real ones)
    return (), D.float32


def _cond_ref(arrs, attrs, shape, dtype):
    n_ops, n_true = attrs["n_ops"], attrs["n_true"]
    ops = list(arrs[1:1 + n_ops])
    if bool(np.asarray(arrs[0]).reshape(-1)[0]):
        res = run_graph(attrs["true"], ops + list(arrs[1 + n_ops:1 + n_ops + n_true]))
    else:
        res = run_graph(attrs["false"], ops + list(arrs[1 + n_ops + n_true:]))
    return [np.array(r, d.np).reshape(s) for r, (s, d) in zip(res, attrs["outs"])]


register("cond", "opaque", _bundle_infer, _cond_ref, multi=True)


def _while_ref(arrs, attrs, shape, dtype):
    nv, nc = attrs["n_vars"], attrs["n_cond"]
    vs = [np.array(a) for a in arrs[:nv]]
    cond_caps, body_caps = list(arrs[nv:nv + nc]), list(arrs[nv + nc:])
    outs = attrs["outs"]
    sizes = {}
    while bool(np.asarray(run_graph(attrs["cond"], vs + cond_caps, sizes)[0]).reshape(-1)[0]):
        res = run_graph(attrs["body"], vs + body_caps, sizes)
        vs = [np.array(r, d.np).reshape(s) for r, (s, d) in zip(res, outs)]
    return vs


register("while", "opaque", _bundle_infer, _while_ref, multi=True)
