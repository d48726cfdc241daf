"""Loops that compile as loops, and branches that run one side: `fj.scan`,
`fj.fori_loop`, `fj.while_loop`, `fj.cond`.

Eagerly, `scan` is a Python loop (each op runs, and a tape records every step). Inside
`@fj.jit` the body is traced once, into a graph of its own (a `BodyTrace` nested in
the function's trace), and the loop is one `scan` node of the function's graph
(ops/control.py) whose trip count is a size: a new sequence length reuses the compiled
code, and compile time does not depend on it. Values the body reads from outside
(weights, variables, other traced tensors, NumPy constants) become the node's extra
inputs.

The gradient of a scan is a scan in the other direction over the body's backward: from
the carry entering each step (the forward saves it, stacked), each backward step
replays the body under a tape and applies its vector-Jacobian product; the captured
values' gradients are summed in the carry. The backward body is traced like any other,
so it compiles as a loop too, and gradients of gradients go through it the same way.
"""
import numpy as np

from ..errors import TracerError
from ..ir.graph import Graph
from ..ir.registry import REGISTRY
from ..ir.shapes import Sym, hint, same, unify_dims
from ..ops.control import scan_results
from . import api as F
from .autodiff import GradientTape, TupleCotangent, needs_gradient
from .pytree import flatten, unflatten
from .tensor import Tensor, TraceContext, active_tapes, apply_op, convert, current_trace, describe_shape


def _is_leaf(x):
    return isinstance(x, Tensor) or hasattr(x, "_flowjit_tensor")


class BodyTrace(TraceContext):
    """The trace of a loop body, nested in `parent`'s trace. Its graph shares the
    parent's symbolic sizes. Anything from outside (a tensor of an enclosing trace, an
    eager value, a Variable) is captured: it becomes one more argument of the body and
    one more input of the loop node in the parent."""

    def __init__(self, parent):
        super().__init__(Graph(env=parent.graph.env))
        self.parent = parent
        self.captures = []               # tensors of the parent trace, in argument order
        self._captured = {}              # id(parent node) -> body arg node
        self.outer_tapes = []            # tapes active where the loop was called

    def arg(self, shape, dtype):
        g = self.graph
        node = g.add("arg", (), {"index": len(g.args)}, shape, dtype)
        g.args.append(node.id)
        return Tensor(node=node, graph=g)

    def lift(self, t):
        """t as a tensor of this trace."""
        if t._node is not None and t._graph is self.graph:
            return t
        return Tensor(node=self.capture(t), graph=self.graph)

    def capture(self, t):
        outer = _lift_into(self.parent, t)
        node = self._captured.get(outer._node.id)
        if node is None:
            node = self.arg(outer.shape, outer.dtype)._node
            self._captured[outer._node.id] = node
            self.captures.append(outer)
        return node

    def read_variable(self, var):
        outer = self.parent.read_variable(var)
        for tape in self.outer_tapes:           # the parent's tapes see the read
            tape._on_variable_read(var, outer)
        return self.lift(outer)

    def assign_variable(self, var, value):
        raise TracerError(f"Variable {var.name} is assigned inside an fj.scan body; loop bodies "
                          f"cannot change variables yet: carry the new value and assign it after "
                          f"the loop")


def _lift_into(ctx, t):
    """t as a tensor of trace ctx (an eager value becomes a constant of it)."""
    if ctx.parent is not None:
        return ctx.lift(t)
    if t._node is not None and t._graph is ctx.graph:
        return t                  # the same object: tapes track tensors by identity
    from .tensor import node_of
    return Tensor(node=node_of(t, ctx), graph=ctx.graph)


def _tensors(tree, what):
    if tree is None:
        return [], None
    leaves, struct = flatten(tree, _is_leaf)
    out = []
    for x in leaves:
        try:
            out.append(convert(x))
        except (TypeError, ValueError) as e:
            raise TypeError(f"fj.scan: {what} must hold tensors or arrays, got {type(x).__name__}: {e}") from None
    return out, struct


def _check_carry(old, new, where):
    if len(old) != len(new):
        raise TypeError(f"fj.scan: the body returned a carry of {len(new)} tensors for a carry "
                        f"of {len(old)} ({where})")
    for k, (a, b) in enumerate(zip(old, new)):
        if a.dtype is not b.dtype or len(a.shape) != len(b.shape) or \
                not all(hint(x) == hint(y) for x, y in zip(a.shape, b.shape)):
            raise TypeError(f"fj.scan: carry {k} enters the body as {a.dtype.name}"
                            f"{describe_shape(a.shape)} and leaves it as {b.dtype.name}"
                            f"{describe_shape(b.shape)}; a carry keeps its shape and dtype ({where})")
        for x, y in zip(a.shape, b.shape):
            unify_dims(x, y)          # equal sizes from different inputs: a guard says so


def scan(fn, init, xs=None, length=None, reverse=False, checkpoint=None):
    """Loop `carry, y = fn(carry, x)` over the leading dim of `xs` (JAX's `lax.scan`).

    `init` and `xs` are pytrees of tensors; returns `(final carry, ys)`, where `ys` is
    the pytree of the steps' `y`s stacked on a new leading dim. `length` gives the trip
    count when `xs` is None. `reverse=True` runs from the last element to the first
    (ys stay in xs's order). Inside `@fj.jit` the loop compiles as one loop: a new
    sequence length does not recompile.

    For the gradient the loop saves, per step, the values its backward needs (matmul
    results, the carry). `checkpoint=k` saves only the carry every k steps instead and
    recomputes each stretch of k steps in the backward: memory for a long loop, at the
    cost of running the forward twice. The trip count must then be a multiple of k (and
    is fixed in the compiled code)."""
    carry, carry_struct = _tensors(init, "the initial carry")
    xl, x_struct = _tensors(xs, "xs")
    n = _trip_count(xl, length)
    traced = current_trace() is not None
    if not traced:
        return _scan_eager(fn, carry, carry_struct, xl, x_struct, n, reverse)
    if checkpoint is not None:
        return _checkpointed(fn, carry, carry_struct, xl, x_struct, n, reverse, int(checkpoint))
    return _scan_traced(fn, carry, carry_struct, xl, x_struct, n, reverse)


def _checkpointed(fn, carry, carry_struct, xl, x_struct, n, reverse, k):
    """An outer loop over stretches of k steps, each an inner scan; the outer loop saves
    no residuals (its backward runs each stretch again, whose own backward then has its
    k steps' residuals)."""
    if k < 1 or hint(n) % k:
        raise ValueError(f"fj.scan: checkpoint={k} must divide the trip count {hint(n)}")
    segs = [F.reshape(x, (-1, k) + tuple(x.shape[1:])) for x in xl]

    def stretch(c, seg):
        return scan(fn, c, unflatten(x_struct, seg) if xl else None, length=k, reverse=reverse)
    final, ys = _scan_traced(stretch, carry, carry_struct, segs, flatten(list(segs), _is_leaf)[1],
                             hint(n) // k, reverse, remat=True)
    if ys is None:
        return final, None
    leaves, struct = _tensors(ys, "ys")
    return final, unflatten(struct, [F.reshape(y, (-1,) + tuple(y.shape[2:])) for y in leaves])



def _trip_count(xl, length):
    if not xl:
        if length is None:
            raise ValueError("fj.scan: give xs or length")
        return length if isinstance(length, Sym) else int(length)
    n = None
    for x in xl:
        if not x.shape:
            raise ValueError("fj.scan: each xs tensor needs a leading dim to loop over, got a scalar")
        if n is None:
            n = x.shape[0]
        elif hint(n) != hint(x.shape[0]):
            raise ValueError(f"fj.scan: xs tensors have different leading dims: "
                             f"{describe_shape(xl[0].shape)} and {describe_shape(x.shape)}")
        else:
            n = unify_dims(n, x.shape[0])
    if length is not None and not same(n, length if isinstance(length, Sym) else int(length)):
        raise ValueError(f"fj.scan: length={length} but xs has {describe_shape((n,))} elements")
    return n


def _split_out(out):
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("fj.scan: the body must return a pair (new carry, y); y may be None")
    return out[0], out[1]


def _scan_eager(fn, carry, carry_struct, xl, x_struct, n, reverse):
    n = int(n)
    state = unflatten(carry_struct, carry)
    ys = []
    for t in (range(n - 1, -1, -1) if reverse else range(n)):
        x_t = unflatten(x_struct, [x[t] for x in xl]) if xl else None
        new, y = _split_out(fn(state, x_t))
        new_l, new_struct = _tensors(new, "the carry")
        _check_carry(carry, new_l, "eager")
        state = unflatten(carry_struct, new_l)
        ys.append(y)
    if reverse:
        ys.reverse()
    if n == 0:
        return state, _empty_ys(fn, state, xl, x_struct)
    if ys[0] is None:
        return state, None
    y_leaves = [_tensors(y, "y")[0] for y in ys]
    y_struct = _tensors(ys[0], "y")[1]
    stacked = [F.stack([leaves[k] for leaves in y_leaves]) for k in range(len(y_leaves[0]))]
    return state, unflatten(y_struct, stacked)


def _empty_ys(fn, state, xl, x_struct):
    """The ys of a loop that ran no step: traced once to learn their shapes."""
    from .jit import jit
    shapes = {}

    def probe(*args):
        c = args[0]
        xs = unflatten(x_struct, [x[0] for x in args[1:]]) if xl else None
        _, y = _split_out(fn(c, xs))
        leaves, struct = _tensors(y, "y")
        shapes["y"] = [(tuple(hint_shape(v.shape)), v.dtype) for v in leaves], struct
        return 0.0
    jit(probe)(state, *[F.zeros((1,) + tuple(x.shape[1:]), x.dtype) for x in xl])
    leaves, struct = shapes["y"]
    if struct is None:
        return None
    return unflatten(struct, [F.zeros((0,) + s, d) for s, d in leaves])


def hint_shape(shape):
    return tuple(hint(d) for d in shape)


def _scan_traced(fn, carry, carry_struct, xl, x_struct, n, reverse, remat=False):
    outer = current_trace()
    carry = [_lift_into(outer, c) for c in carry]
    xl = [_lift_into(outer, x) for x in xl]
    body = BodyTrace(outer)
    tapes = active_tapes()
    body.outer_tapes = list(tapes)
    tapes.clear()                  # the outer tapes record the loop node, not the body's ops
    try:
        with body:
            c_args = [body.arg(c.shape, c.dtype) for c in carry]
            x_args = [body.arg(tuple(x.shape[1:]), x.dtype) for x in xl]
            new, y = _split_out(fn(unflatten(carry_struct, c_args),
                                   unflatten(x_struct, x_args) if xl else None))
            new_l = [body.lift(t) for t in _tensors(new, "the carry")[0]]
            _check_carry(c_args, new_l, "traced")
            y_l, y_struct = _tensors(y, "y")
            y_l = [body.lift(t) for t in y_l]
    finally:
        tapes[:] = body.outer_tapes
    g = body.graph
    g.outputs = [t._node.id for t in new_l + y_l]
    outs = ([(tuple(c.shape), c.dtype) for c in carry] +
            [((n,) + tuple(y.shape), y.dtype) for y in y_l] +
            [((n,) + tuple(c.shape), c.dtype) for c in carry])
    attrs = {"body": g, "n_carry": len(carry), "n_xs": len(xl), "reverse": bool(reverse),
             "length": n, "outs": outs, "remat": remat}
    node = apply_op("scan", carry + xl + list(body.captures), attrs)
    res = [_result(node, k, outs) for k in range(len(carry) + len(y_l))]
    return (unflatten(carry_struct, res[:len(carry)]),
            unflatten(y_struct, res[len(carry):]) if y is not None else None)


def _result(node, k, outs):
    shape, dtype = outs[k]
    return apply_op("tuple_get", [node], {"index": k, "shape": shape, "dtype": dtype})


def fori_loop(lower, upper, body_fun, init_val):
    """`for i in range(lower, upper): val = body_fun(i, val)`; returns val (JAX's
    `lax.fori_loop`). The bounds are Python ints or sizes; `i` is an int32 tensor."""
    lo, hi = int(lower), int(upper)
    idx = F.range(lo, max(hi, lo), dtype="int32")

    def step(val, i):
        return body_fun(i, val), None
    return scan(step, init_val, idx)[0]


def _trace_body(fn, args, what):
    """Trace fn(*args-shaped tensors) as a body nested in the current trace: (body
    trace, its output tensors (lifted into it), their structure, the raw output)."""
    outer = current_trace()
    body = BodyTrace(outer)
    tapes = active_tapes()
    body.outer_tapes = list(tapes)
    tapes.clear()
    try:
        with body:
            targs = [body.arg(a.shape, a.dtype) for a in args]
            raw = fn(targs)
            res, struct = _tensors(raw, what)
            res = [body.lift(t) for t in res]
    finally:
        tapes[:] = body.outer_tapes
    body.graph.outputs = [t._node.id for t in res]
    return body, res, struct, raw


def _same_results(a, b, what):
    if len(a) != len(b):
        raise TypeError(f"{what}: the branches return {len(a)} and {len(b)} tensors")
    for k, (x, y) in enumerate(zip(a, b)):
        if x.dtype is not y.dtype or len(x.shape) != len(y.shape) or \
                not all(hint(p) == hint(q) for p, q in zip(x.shape, y.shape)):
            raise TypeError(f"{what}: result {k} is {x.dtype.name}{describe_shape(x.shape)} in the "
                            f"true branch and {y.dtype.name}{describe_shape(y.shape)} in the false one")
        for p, q in zip(x.shape, y.shape):
            unify_dims(p, q)


def cond(pred, true_fn, false_fn, *operands):
    """`true_fn(*operands)` if `pred` else `false_fn(*operands)` (TF's `tf.cond`, whose
    branches take no arguments, and JAX's `lax.cond`). Inside `@fj.jit` both branches are
    traced (they must return the same structure, shapes and dtypes) and only the taken
    one runs. Differentiable."""
    pred = convert(pred)
    if pred.shape and int(np.prod([hint(d) for d in pred.shape])) != 1:
        raise ValueError(f"fj.cond: pred must be a scalar, got shape {describe_shape(pred.shape)}")
    ops, ops_struct = _tensors(list(operands), "operands")
    if current_trace() is None:
        return (true_fn if bool(pred.numpy().reshape(-1)[0]) else false_fn)(*operands)
    outer = current_trace()
    pred = _lift_into(outer, pred)
    ops = [_lift_into(outer, o) for o in ops]

    def branch(fn):
        return lambda targs: fn(*unflatten(ops_struct, targs))
    tb, tres, tstruct, _ = _trace_body(branch(true_fn), ops, "fj.cond's true branch")
    fb, fres, fstruct, _ = _trace_body(branch(false_fn), ops, "fj.cond's false branch")
    if tstruct != fstruct:
        raise TypeError(f"fj.cond: the branches return different structures: {tstruct} and {fstruct}")
    _same_results(tres, fres, "fj.cond")
    outs = [(tuple(t.shape), t.dtype) for t in tres]
    attrs = {"true": tb.graph, "false": fb.graph, "n_ops": len(ops), "n_true": len(tb.captures),
             "outs": outs}
    node = apply_op("cond", [pred] + ops + tb.captures + fb.captures, attrs)
    res = [_result(node, k, outs) for k in range(len(outs))]
    return unflatten(tstruct, res) if tstruct is not None else None


def while_loop(cond, body, loop_vars, maximum_iterations=None):
    """`while cond(*vars): vars = body(*vars)`; returns the final vars (TF's argument order;
    `loop_vars` a list/tuple whose items are passed as arguments, or a single tensor).
    Inside `@fj.jit` it compiles as one `while` loop.

    Differentiable when `maximum_iterations` is given (as XLA requires): under a recording
    GradientTape the loop then runs as a scan of that many steps whose step runs the body
    only while the loop is still going (fj.cond), so the gradient is the scan's and the
    cond's. Without it, a gradient through the loop raises."""
    single = not isinstance(loop_vars, (list, tuple))
    vars_ = [loop_vars] if single else list(loop_vars)
    leaves, struct = _tensors(vars_, "loop_vars")
    if maximum_iterations is not None and any(t._recording for t in active_tapes()):
        res = _bounded_while(cond, body, vars_, struct, int(maximum_iterations), single)
        return res[0] if single else type(loop_vars)(res)
    if maximum_iterations is not None:
        limit = int(maximum_iterations)
        inner_cond, inner_body = cond, body

        def cond(*a):
            return F.logical_and(a[0] < limit, inner_cond(*a[1:]))

        def body(*a):
            out = inner_body(*a[1:])
            return [a[0] + 1] + (list(out) if isinstance(out, (list, tuple)) else [out])
        res = while_loop(cond, body, [F.constant(0)] + vars_)
        return res[1] if single else type(loop_vars)(res[1:])

    def call(fn, vals):
        out = fn(*unflatten(struct, vals))
        return out
    if current_trace() is None:
        vals = leaves
        while bool(convert(call(cond, vals)).numpy().reshape(-1)[0]):
            new, new_struct = _tensors(_as_list(call(body, vals), single), "the body's result")
            if new_struct != struct:
                raise TypeError(f"fj.while_loop: the body returned {new_struct} for loop_vars {struct}")
            _check_carry(vals, new, "fj.while_loop, eager")
            vals = new
        res = unflatten(struct, vals)
        return res[0] if single else type(loop_vars)(res)
    outer = current_trace()
    leaves = [_lift_into(outer, v) for v in leaves]
    cb, cres, _, _ = _trace_body(lambda t: call(cond, t), leaves, "fj.while_loop's cond")
    if len(cres) != 1 or cres[0].shape and int(np.prod([hint(d) for d in cres[0].shape])) != 1:
        raise ValueError("fj.while_loop: cond must return one scalar")
    if not cres[0].dtype.is_bool:
        raise TypeError(f"fj.while_loop: cond must return a bool, got {cres[0].dtype.name}")
    bb, bres, bstruct, _ = _trace_body(lambda t: _as_list(call(body, t), single), leaves,
                                       "fj.while_loop's body")
    if bstruct != struct:
        raise TypeError(f"fj.while_loop: the body returned {bstruct} for loop_vars {struct}")
    _check_carry(leaves, bres, "fj.while_loop")
    outs = [(tuple(v.shape), v.dtype) for v in leaves]
    attrs = {"cond": cb.graph, "body": bb.graph, "n_vars": len(leaves), "n_cond": len(cb.captures),
             "outs": outs}
    node = apply_op("while", leaves + cb.captures + bb.captures, attrs)
    res = unflatten(struct, [_result(node, k, outs) for k in range(len(outs))])
    return res[0] if single else type(loop_vars)(res)


def _bounded_while(cond, body, vars_, struct, limit, single):
    """The loop as `limit` scan steps, each `vars = body(vars)` while still going."""
    def step(carry, _):
        going, vals = carry
        go = F.logical_and(going, convert(cond(*vals)))
        new = cond_(go, lambda *v: _as_list(body(*v), single), lambda *v: list(v), *vals)
        return (go, list(new)), None
    (_, vals), _ = scan(step, (F.constant(True), list(vars_)), None, length=limit)
    return vals


def _as_list(out, single):
    if single:
        return [out]
    return list(out) if isinstance(out, (list, tuple)) else [out]


# --- replaying a body, and the gradient ----------------------------------------
def replay(g, inputs, mapping=None):
    """g's outputs computed again by applying its ops to `inputs` in the current trace
    (under whatever tapes are recording). `mapping` receives g's node id -> tensor."""
    vals = dict(zip(g.args, inputs))
    for n in g.nodes:
        if n.id in vals:
            continue
        vals[n.id] = apply_op(n.op, [vals[i] for i in n.inputs], dict(n.attrs), src=n.src)
    if mapping is not None:
        mapping.update(vals)
    return [vals[o] for o in g.outputs]


def _zeros(shape, dtype):
    return F.zeros(shape, dtype)


class _Spec:
    """The shape and dtype of a body argument."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), dtype


class _phase:
    """Nodes made in this block belong to `phase` of the current trace."""

    def __init__(self, phase):
        self.ctx, self.phase = current_trace(), phase

    def __enter__(self):
        if self.ctx is not None:
            self.saved, self.ctx.phase = self.ctx.phase, self.phase

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.phase = self.saved


def _scan_grad(inputs, out, g, attrs):
    """The backward of a scan: a scan the other way, one step the body's vector-Jacobian
    product. Its step is traced once as the body replayed under a tape plus the tape's
    gradient; the partition (passes/partition.py, as for a jitted function) then splits
    that step into what the forward can save (matmul results, long chains) and what the
    backward computes. The forward scan node gains the saved values as stacked results
    (residuals), so the backward loop does not run the body's matmuls again."""
    node = out._node
    na = node.attrs                     # the node's own attrs (the tape holds a copy)
    nc, ny = scan_results(na)
    nx = na["n_xs"]
    outs = na["outs"]
    carry0, xs, consts = inputs[:nc], inputs[nc:nc + nx], inputs[nc + nx:]
    parts = g.parts if isinstance(g, TupleCotangent) else {}
    # the carry's cotangent flows through every step, so every float carry takes part;
    # sequences and captures only where the tape wants their gradient (not a captured
    # constant such as a forget bias)
    fc = [k for k in range(nc) if carry0[k].dtype.is_floating]
    fx = [k for k in range(nx) if xs[k].dtype.is_floating and needs_gradient(xs[k])]
    fk = [k for k in range(len(consts)) if consts[k].dtype.is_floating and needs_gradient(consts[k])]
    fy = [k for k in range(ny) if outs[nc + k][1].is_floating]
    g_carry = [parts.get(k) if parts.get(k) is not None else _zeros(*outs[k]) for k in fc]
    # a y nothing differentiates (an RNN's outputs when the loss reads the last state)
    # has a zero cotangent: the step makes its zeros itself rather than reading a stacked
    # array of them (a fill of T x batch x units, and a slice read every step)
    fy_given = [k for k in fy if parts.get(nc + k) is not None]
    g_ys = [parts[nc + k] for k in fy_given]
    # cotangents of the stacked entering carries (a second-order gradient reads them):
    # added to the carry's cotangent at its step
    g_in = [parts.get(nc + ny + k) for k in fc]
    g_in = [] if all(v is None for v in g_in) else \
        [v if v is not None else _zeros(*outs[nc + ny + k]) for v, k in zip(g_in, fc)]
    # cotangents of residuals an earlier gradient added (a second-order gradient reaches
    # the values the first-order backward read): added at their step like a y's
    fr_given = [r for r in range(na.get("n_res", 0)) if parts.get(2 * nc + ny + r) is not None]
    g_res = [parts[2 * nc + ny + r] for r in fr_given]
    with _phase("fwd"):       # forward results: the partition saves them as residuals
        entering = [_result(out, nc + ny + k, outs) for k in range(nc)]
    body = na["body"]
    gk0 = [F.zeros_like(consts[k]) for k in fk]
    carry_b = g_carry + gk0
    xs_b = entering + list(xs) + g_ys + g_in + g_res
    ncb = len(carry_b)
    replayed = {}

    def back(targs):
        gc, gk = targs[:len(fc)], targs[len(fc):ncb]
        rest = targs[ncb:]
        c_t, x_t = rest[:nc], rest[nc:nc + nx]
        given = dict(zip(fy_given, rest[nc + nx:nc + nx + len(fy_given)]))
        gy_t = [given[k] if k in given else _zeros(outs[nc + k][0][1:], outs[nc + k][1]) for k in fy]
        at = nc + nx + len(fy_given)
        gin_t, gres_t = rest[at:at + len(g_in)], rest[at + len(g_in):]
        here = current_trace()
        kc = [here.lift(c) for c in consts]
        srcs = [c_t[k] for k in fc] + [x_t[k] for k in fx] + [kc[k] for k in fk]
        with GradientTape(watch_accessed_variables=False) as tape:
            for s in srcs:
                tape.watch(s)
            res = replay(body, list(c_t) + list(x_t) + kc, replayed)
        targets = [res[k] for k in fc] + [res[nc + k] for k in fy] + [res[nc + ny + r] for r in fr_given]
        grads = tape.gradient(targets, srcs, output_gradients=list(gc) + list(gy_t) + list(gres_t),
                              unconnected_gradients="zero")
        a, b = len(fc), len(fc) + len(fx)
        g_c = [p + q for p, q in zip(grads[:a], gin_t)] if gin_t else grads[:a]
        return g_c + [p + q for p, q in zip(gk, grads[b:])] + grads[a:b]

    specs = carry_b + [_Spec(x.shape[1:], x.dtype) for x in xs_b]
    step, _, _, _ = _trace_body(back, specs, "the backward of fj.scan")
    if na.get("remat"):        # (checkpointing: the backward runs the body again)
        bwd_body, saved = step.graph, []
    else:
        bwd_body, saved = _split_step(step.graph, replayed, ncb + len(xs_b))
    bwd_body, xs_b = _without_unread_slices(bwd_body, ncb, xs_b)
    if saved:
        res_results = _add_residuals(out, saved, na)
    else:
        res_results = []
    outs_b = ([(tuple(c.shape), c.dtype) for c in carry_b] +
              [(tuple(xs[k].shape), xs[k].dtype) for k in fx] +
              [((na["length"],) + tuple(c.shape), c.dtype) for c in carry_b])
    attrs_b = {"body": bwd_body, "n_carry": ncb, "n_xs": len(xs_b) + len(res_results),
               "reverse": not na["reverse"], "length": na["length"], "outs": outs_b}
    node_b = apply_op("scan", carry_b + xs_b + res_results + list(step.captures), attrs_b)
    result = [None] * len(inputs)
    for j, k in enumerate(fc):
        result[k] = _result(node_b, j, outs_b)
    for j, k in enumerate(fk):
        result[nc + nx + k] = _result(node_b, len(fc) + j, outs_b)
    for j, k in enumerate(fx):
        result[nc + k] = _result(node_b, ncb + j, outs_b)
    return result


# A loop step's backward recomputes only cheap forward chains (a few adds and
# multiplies), not transcendentals: per-step values are small, so writing one into its
# stacked residual and reading it back costs less than the step's exp or tanh again,
# and those steps run one after another. (The LSTM's backward cell kernel: 220 us ->
# 36 us a step, recomputing its four gates' sigmoids and tanhs no more.)
STEP_RECOMPUTE_MAX_COST = 4


def _split_step(joint, replayed, n_loop_args):
    """(the backward step's graph, [(forward body node id, joint node) saved]) from the
    joint step graph (the body replayed, then its gradient). Without a split (nothing
    the forward could save), the joint graph itself is the backward step."""
    from ..passes.partition import partition
    back_of = {t._node.id: i for i, t in replayed.items() if t._node is not None and t._graph is joint}
    split = partition(joint, recompute_max_cost=STEP_RECOMPUTE_MAX_COST)
    if split is None or not split.saved or any(s not in back_of for s in split.saved) or \
            len(split.bwd_outputs) != len(joint.outputs):
        return joint, []
    bg = split.backward
    # the backward's args: the joint step's (carry, per-step slices, captures), then one
    # per residual; residuals are per-step slices too, so they go before the captures
    n_joint = len(joint.args)
    bg.args = bg.args[:n_loop_args] + bg.args[n_joint:] + bg.args[n_loop_args:n_joint]
    return bg, [(back_of[s], joint.nodes[s]) for s in split.saved]


def _without_unread_slices(body, first, xs):
    """(body, xs) less the per-step slices the backward step does not read: once the
    partition saved what the step needs (an LSTM's gate activations), the forward's
    own sequence (its input projection) is often unread, and passing it anyway kept it
    alive as a residual and recomputed it before the backward loop. Body arguments
    `first`.. are the slices of xs."""
    users = body.users()
    unread = {body.args[first + k] for k in range(len(xs))
              if not users[body.args[first + k]] and body.args[first + k] not in body.outputs}
    if not unread:
        return body, xs
    from ..passes.simplify import dead_code_eliminated
    kept = [x for k, x in enumerate(xs) if body.args[first + k] not in unread]
    body = Graph(env=body.env, nodes=body.nodes, args=[a for a in body.args if a not in unread],
                 consts=body.consts, outputs=list(body.outputs), rng_streams=body.rng_streams,
                 effects=list(body.effects), keep=list(body.keep))
    return dead_code_eliminated(body), kept


def _add_residuals(out, saved, na):
    """The forward scan node also returns the body values `saved` stacked over the steps
    (results appended after the existing ones); their tuple_get tensors."""
    body = na["body"]
    na["body"] = Graph(env=body.env, nodes=body.nodes, args=body.args, consts=body.consts,
                       outputs=list(body.outputs) + [i for i, _ in saved])
    first = len(na["outs"])
    na["outs"] = list(na["outs"]) + [((na["length"],) + tuple(n.shape), n.dtype) for _, n in saved]
    na["n_res"] = na.get("n_res", 0) + len(saved)
    with _phase("fwd"):
        return [_result(out, first + r, na["outs"]) for r in range(len(saved))]


def _tuple_get_grad(inputs, out, g, attrs):
    return [TupleCotangent({attrs["index"]: g})]


def _cond_grad(inputs, out, g, attrs):
    n_ops, n_true = attrs["n_ops"], attrs["n_true"]
    outs = attrs["outs"]
    parts = g.parts if isinstance(g, TupleCotangent) else {}
    pred, ops = inputs[0], inputs[1:1 + n_ops]
    tcaps, fcaps = inputs[1 + n_ops:1 + n_ops + n_true], inputs[1 + n_ops + n_true:]
    fo = [k for k in range(len(outs)) if outs[k][1].is_floating]
    g_out = [parts.get(k) if parts.get(k) is not None else _zeros(*outs[k]) for k in fo]
    wrt = [k for k, x in enumerate(list(ops) + list(tcaps) + list(fcaps)) if x.dtype.is_floating]

    def arm(graph, lo, hi):
        """The backward of one branch; its captures are items lo..hi of ops + captures."""
        def run(*a):
            here = current_trace()
            o, gs = list(a[:n_ops]), list(a[n_ops:])
            everything = o + [here.lift(x) for x in list(tcaps) + list(fcaps)]
            with GradientTape(watch_accessed_variables=False) as tape:
                for k in wrt:
                    tape.watch(everything[k])
                res = replay(graph, o + everything[lo:hi])
            return tape.gradient([res[k] for k in fo], [everything[k] for k in wrt],
                                 output_gradients=gs, unconnected_gradients="zero")
        return run
    end = n_ops + len(tcaps) + len(fcaps)
    grads = cond(pred, arm(attrs["true"], n_ops, n_ops + n_true), arm(attrs["false"], n_ops + n_true, end),
                 *(list(ops) + g_out))
    result = [None] * len(inputs)
    for j, k in enumerate(wrt):
        result[1 + k] = grads[j]
    return result


def _while_grad(inputs, out, g, attrs):
    raise TracerError("fj.while_loop is differentiable only with maximum_iterations (then it runs "
                      "as a bounded loop under a GradientTape); or write it with fj.scan / fj.fori_loop")


cond_ = cond          # (while_loop's argument `cond` shadows it there)
REGISTRY["scan"].grad = _scan_grad
REGISTRY["cond"].grad = _cond_grad
REGISTRY["while"].grad = _while_grad
REGISTRY["tuple_get"].grad = _tuple_get_grad
