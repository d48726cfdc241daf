"""`tf.gradients(ys, xs)`: a graph op whose outputs are d(sum ys)/dx for each x.

When a session runs it, the evaluator has opened a GradientTape for the whole plan and
watched every x, so the forward ops that lead from the xs to the ys were recorded; the
op then calls `tape.gradient`, i.e. flowjit's autodiff builds the backward part of the
traced function, which `fj.jit` compiles as the plan's backward function."""
from ...frontend import api as F
from .graph import Tensor, make_op
from .variables import Variable
from . import ops as O


def _ancestors(ys):
    seen, stack = set(), list(ys)
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if isinstance(t, Variable):
            continue
        for i in t.op.inputs:
            if i not in seen:
                stack.append(i)
    return seen


def gradients(ys, xs, grad_ys=None, name="gradients", colocate_gradients_with_ops=False,
              gate_gradients=False, aggregation_method=None, stop_gradients=None,
              unconnected_gradients="none"):
    ys = list(ys) if isinstance(ys, (list, tuple)) else [ys]
    xs = list(xs) if isinstance(xs, (list, tuple)) else [xs]
    ys = [O.convert_to_tensor(y) for y in ys]
    for x in xs:
        if not isinstance(x, Tensor):
            raise TypeError(f"tf.gradients: xs must be tf.Tensors or tf.Variables, got {x!r}")
    if grad_ys is None:
        grad_ys = [None] * len(ys)
    elif not isinstance(grad_ys, (list, tuple)):
        grad_ys = [grad_ys]
    grad_ys = [None if g is None else O.convert_to_tensor(g, y.dtype) for g, y in zip(grad_ys, ys)]
    for y in ys:
        if not y.dtype.is_floating:
            raise TypeError(f"tf.gradients: ys must be floating-point tensors, {y.name} is {y.dtype.name}")
    anc = _ancestors(ys)
    connected = [x for x in xs if x in anc and x.dtype.is_floating]
    from .control_flow import check_differentiable
    check_differentiable(anc, connected, _ancestors)
    zero_fill = unconnected_gradients == "zero"
    out_xs = connected if not zero_fill else [x for x in xs if x.dtype.is_floating]
    if not out_xs:
        return [None] * len(xs)
    gy_tensors = [g for g in grad_ys if g is not None]
    n_y = len(ys)

    def compute(ev, *vals):
        y_vals = list(vals[:n_y])
        it = iter(vals[n_y:])
        ogs = [None if g is None else next(it) for g in grad_ys]
        srcs = [ev.variable(x) if isinstance(x, Variable) and x not in ev.plan.feed_tensors
                else ev.value(x) for x in out_xs]
        grads = ev.tape.gradient(y_vals, srcs, output_gradients=ogs)
        return [F.zeros_like(ev.value(x)) if g is None else g for x, g in zip(out_xs, grads)]

    op = make_op("Gradients", compute, ys + gy_tensors, name=name, stateful=True,
                 out_specs=[(x.dtype, x.shape) for x in out_xs], attrs={"xs": out_xs})
    by_x = dict(zip(map(id, out_xs), op.outputs))
    return [by_x.get(id(x)) for x in xs]
