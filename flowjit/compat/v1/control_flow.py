"""TF1 control flow: `tf.while_loop`, `tf.cond`, `tf.scan`, and the subgraph facility
that they and `tf.nn.dynamic_rnn` (rnn.py) are built on.

A loop body or a cond branch is a *subgraph* of the TF1 graph. While the graph is
built, the user's function is called once, on fresh TF1 tensors standing for its
arguments (`Subgraph.arg`: their dtypes and static shapes are known), and the ops it
creates are recorded. `Subgraph.close` keeps the ones its results need, in creation
order (a topological order), and finds the tensors from outside that they read (its
*captures*: outer tensors, Variables, tensors of an enclosing body). The op standing
for the whole loop lists the captures among its inputs, so the session's plan computes
them first, and reads the variables in them (their initialization is checked as for
any op).

When the session replays the plan, that op calls `fj.while_loop`, `fj.cond` or
`fj.scan` with a Python function that evaluates the subgraph's ops on flowjit values:
a child evaluator (`_BodyEvaluator`) holds the values of the arguments and of the ops
it computes, and takes the captures' values from the outer op's inputs. Inside `fj.jit`
that function is traced once as the loop's body, so the loop compiles as one loop.

Variables created by the function (an RNN cell's weights, made by `tf.get_variable` on
its first call) are ordinary graph variables: their ops are left out of the subgraph,
so `tf.global_variables_initializer()` initializes them and optimizers train them.

Random ops inside a body cannot draw inside the compiled loop (fj.scan refuses them);
the draw is made just before the loop instead: for a `tf.scan`/`dynamic_rnn` body, one
draw of shape [trip count, ...] whose step-t slice the body reads at step t (fresh
numbers per step, as in TF1); for a cond branch, one draw the branch reads (made
whether or not the branch is taken). `tf.while_loop` bodies refuse them (the trip count
is known only when the loop ends). Assignments and other stateful ops are refused in
every body.

A tensor made inside a body has a value only there: using it in an op outside raises
ValueError (as TF1 does for while loops), fetching it InvalidArgumentError. Gradients
go through `tf.cond` and `tf.scan`/`dynamic_rnn` (fj.cond and fj.scan are
differentiable); `tf.gradients` through a `tf.while_loop` raises when the graph is
built, naming the loop and its line (check_differentiable).
"""
import contextlib

from ... import dtypes as D
from ...errors import FlowjitError
from ...frontend import api as F
from ...frontend import control_flow as CF
from ...frontend.tensor import current_trace
from .errors import UnimplementedError
from .graph import Operation, TensorShape, get_default_graph, make_op
from . import ops as O


# --- nested structures (TF's `nest`): lists, tuples (namedtuples too), dicts -------------------
def is_sequence(x):
    return isinstance(x, (list, tuple, dict))


def flatten(structure):
    """The leaves of a nested structure, in TF's order (dicts by sorted key)."""
    if isinstance(structure, dict):
        return [leaf for k in sorted(structure) for leaf in flatten(structure[k])]
    if isinstance(structure, (list, tuple)):
        return [leaf for x in structure for leaf in flatten(x)]
    return [structure]


def _sequence_like(instance, items):
    if isinstance(instance, dict):
        keys = sorted(instance)
        return type(instance)(zip(keys, items)) if type(instance) is not dict else dict(zip(keys, items))
    if isinstance(instance, tuple) and hasattr(instance, "_fields"):
        return type(instance)(*items)
    return type(instance)(items)


def pack_sequence_as(structure, flat):
    """`flat` (a list of leaves) rebuilt with the nesting of `structure`."""
    flat = list(flat)
    pos = [0]

    def build(s):
        if isinstance(s, dict):
            return _sequence_like(s, [build(s[k]) for k in sorted(s)])
        if isinstance(s, (list, tuple)):
            return _sequence_like(s, [build(x) for x in s])
        v = flat[pos[0]]
        pos[0] += 1
        return v
    if len(flatten(structure)) != len(flat):
        raise ValueError(f"the structure has {len(flatten(structure))} leaves, got {len(flat)} values")
    return build(structure)


def map_structure(fn, structure):
    return pack_sequence_as(structure, [fn(x) for x in flatten(structure)])


def _same_nesting(a, b):
    """True when a and b nest alike (list and tuple are interchangeable, as TF1's loops
    compare `list(loop_vars)` with `list(body_result)`)."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and sorted(a) == sorted(b) and \
            all(_same_nesting(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) \
            and all(_same_nesting(x, y) for x, y in zip(a, b))
    return True


def _as_tensor(x, what):
    if isinstance(x, Operation):
        raise UnimplementedError(f"{what} returned the operation {x.name}; flowjit.compat.v1 control "
                                 f"flow returns tensors only (an op inside a branch or a loop body "
                                 f"would be a side effect)")
    if x is None:
        raise ValueError(f"{what} returned None where a tensor is expected")
    return O.convert_to_tensor(x)


# --- the subgraph facility ------------------------------------------------------------------
def _never(ev):
    raise FlowjitError("internal error: a loop or branch argument was computed outside its subgraph")


def _stateful_ok(op, kind):
    """May stateful op `op` be part of a body of this kind?"""
    if op.type in ("NoOp", "PlaceholderWithDefault") or op.attrs.get("control_flow"):
        return True
    if "seed" in op.attrs:            # a random op: drawn before the loop (see module doc)
        return kind in ("scan", "cond")
    return False


class Subgraph:
    """The ops of one loop body, loop condition or cond branch (see the module doc).

    kind: "while" (a while_loop's cond or body), "scan" (tf.scan / dynamic_rnn bodies),
    "cond" (a branch). what: how errors name it, e.g. "the body of tf.while_loop 'while'"."""

    def __init__(self, kind, what, graph=None):
        self.kind = kind
        self.what = what
        self.graph = graph or get_default_graph()
        self.args = []
        self.ops = []
        self.outputs = []
        self.captures = []
        self.control_captures = []
        self._start = None

    @contextlib.contextmanager
    def recording(self):
        """Ops created inside belong to the subgraph (except variables' own ops). The
        enclosing control dependencies do not reach inside: the op that stands for the
        loop gets them."""
        g = self.graph
        self._start = len(g._ops)
        with g.control_dependencies(None):
            yield self

    def arg(self, dtype, shape, abstract=None, name="Identity"):
        """A fresh TF1 tensor standing for one argument of the function."""
        op = make_op("Identity", _never, (), name=name, stateful=True, graph=self.graph,
                     out_specs=[(dtype, shape)], attrs={"subgraph_arg": True})
        t = op.outputs[0]
        if abstract is not None and abstract.dtype is t.dtype and t.shape.ndims == len(abstract.shape):
            t._abstract = abstract      # shares its sizes' symbols with the value it stands for
        self.args.append(t)
        return t

    def close(self, outputs):
        """Fix the subgraph: `outputs` (TF1 tensors) are what it computes."""
        g = self.graph
        self.outputs = list(outputs)
        new = g._ops[self._start:]
        arg_ops = {t.op for t in self.args}
        first = self._start
        # variables made inside (a cell's weights): their ops stay ordinary graph ops
        var_ops = set()
        for op in new:
            if op.type != "VariableV2":
                continue
            var = op.outputs[0]
            stack = [op, var.initializer]
            while stack:
                o = stack.pop()
                if o in var_ops or o._id < first:
                    continue
                if o in arg_ops:
                    raise ValueError(f"the initial value of variable {var.op.name}, created inside "
                                     f"{self.what}, depends on a value that exists only inside it; "
                                     f"give the variable an initializer that does not")
                var_ops.add(o)
                stack.extend(t.op for t in o.inputs)
                stack.extend(o.control_inputs)
        cands = [op for op in new if op not in var_ops and op not in arg_ops
                 and op._cf_context is None]
        cset = set(cands)
        bad = [op for op in cands if (op.stateful and not _stateful_ok(op, self.kind))
               or op.attrs.get("host")]
        if bad:
            self._refuse(bad)
        reach = set()
        stack = [t.op for t in self.outputs if t.op in cset]
        while stack:
            op = stack.pop()
            if op in reach:
                continue
            reach.add(op)
            stack.extend(t.op for t in op.inputs if t.op in cset)
            stack.extend(c for c in op.control_inputs if c in cset)
        self.ops = [op for op in cands if op in reach]
        seen = set()

        def capture(t):
            if t.op not in reach and t.op not in arg_ops and id(t) not in seen:
                seen.add(id(t))
                self.captures.append(t)
        for op in self.ops:
            for t in op.inputs:
                capture(t)
            for c in op.control_inputs:
                if c not in reach and c not in arg_ops and c not in self.control_captures:
                    self.control_captures.append(c)
        for t in self.outputs:
            capture(t)
        for op in cands:
            op._cf_context = self
        for op in arg_ops:
            op._cf_context = self
        return self

    def _refuse(self, bad):
        names = ", ".join(f"{op.name} ({op.type}, created at {op._src})" for op in bad[:3])
        randoms = [op for op in bad if "seed" in op.attrs]
        if self.kind == "cond":
            raise UnimplementedError(
                f"tf.cond: the branches create stateful ops: {names}. flowjit.compat.v1 runs the "
                f"taken branch as a compiled subgraph, which cannot assign variables or run "
                f"optimizer or gradient ops, so only side-effect-free branches are supported "
                f"(compute the new value in the branch and assign it after the cond)")
        if randoms and len(randoms) == len(bad):
            raise UnimplementedError(
                f"{self.what} draws random numbers: {names}. A tf.while_loop's trip count is known "
                f"only when it ends, so flowjit.compat.v1 cannot draw them before the loop (as it "
                f"does for tf.nn.dynamic_rnn and tf.scan); draw them before the loop, e.g. as a "
                f"[max_steps, ...] tensor the body indexes with a loop counter")
        raise UnimplementedError(
            f"{self.what} creates stateful ops: {names}. A loop body is compiled as one traced "
            f"subgraph, which cannot assign variables or run optimizer or gradient ops yet: carry "
            f"the new value as a loop variable and assign it after the loop")

    def describe(self):
        return self.what

    # -- replay --------------------------------------------------------------------------------
    def run(self, parent, args, outer, loop=None):
        """The outputs' flowjit values, given the arguments' values `args` and the
        captures' values `outer` (a dict); `parent` is the evaluator of the enclosing
        plan or body. `loop` = (trip count, step counter) in a scan body."""
        ev = _BodyEvaluator(parent, self, outer, loop)
        for t, v in zip(self.args, args):
            ev.set(t, v)
        from .session import _run_op
        for op in self.ops:
            _run_op(ev, op)
        return [ev.value(t) for t in self.outputs]


class _BodyEvaluator:
    """Evaluates a subgraph's ops (the session's _Evaluator, one level in)."""

    def __init__(self, parent, sub, outer, loop):
        self.parent = parent
        self.sub = sub
        self.plan = parent.plan
        self.session = parent.session
        self.tape = None
        self.outer = outer
        self.loop = loop
        self.memo = {}

    def value(self, t):
        v = self.memo.get(t)
        if v is None:
            v = self.outer.get(t)
        if v is None:
            raise FlowjitError(f"internal error: {t.name} has no value inside {self.sub.what}")
        return v

    def set(self, t, v):
        self.memo[t] = v

    def variable(self, var, create=False):
        return self.parent.variable(var, create)

    def random_key(self, op):
        raise FlowjitError(f"internal error: {op.name} asked for a random key inside {self.sub.what}")

    def draw(self, op, dist, shape, dtype):
        """Random numbers for op `op` at this step: drawn by the enclosing evaluator
        before the loop (see the module doc)."""
        from .random_ops import draw
        here = current_trace()
        if here is None or here.parent is None:     # eager: the loop is a Python loop
            return draw(self.parent, op, dist, shape, dtype)
        if self.sub.kind == "while":
            raise UnimplementedError(f"{op.type} op '{op.name}' (created at {op._src}) draws random "
                                     f"numbers inside {self.sub.what}, which is not supported")
        with here.parent:
            if self.loop is not None:
                every = draw(self.parent, op, dist, (self.loop[0],) + tuple(shape), dtype)
            else:
                every = draw(self.parent, op, dist, shape, dtype)
        if self.loop is not None:
            return F.gather(every, self.loop[1])
        return every


def _outer_op(type_, compute, inputs, sub_list, name, out_specs, attrs):
    """The op standing for a loop or cond: its inputs are `inputs` then the captures of
    every subgraph in `sub_list` (once each); compute(ev, inputs' values, captures' values
    as a dict)."""
    caps, seen = [], set()
    for s in sub_list:
        for t in s.captures:
            if id(t) not in seen:
                seen.add(id(t))
                caps.append(t)
    n = len(inputs)

    def run(ev, *vals):
        return compute(ev, list(vals[:n]), dict(zip(caps, vals[n:])))

    attrs = dict(attrs, control_flow=type_, subgraphs=list(sub_list))
    op = make_op(type_, run, list(inputs) + caps, name=name, stateful=True, out_specs=out_specs,
                 attrs=attrs)
    for s in sub_list:
        for c in s.control_captures:
            if c not in op.control_inputs:
                op.control_inputs.append(c)
    return op


def _merge_shapes(a, b):
    """The most specific shape both a and b have (None where they differ or are unknown);
    None when their known sizes conflict."""
    if a.ndims is None or b.ndims is None:
        return TensorShape(None) if a.ndims is None and b.ndims is None else (a if b.ndims is None else b)
    if a.ndims != b.ndims:
        return None
    out = []
    for x, y in zip(a.as_list(), b.as_list()):
        if x is not None and y is not None and x != y:
            return None
        out.append(x if x is not None else y)
    return TensorShape(out)


# --- tf.while_loop -----------------------------------------------------------------------------
def while_loop(cond, body, loop_vars, shape_invariants=None, parallel_iterations=10, back_prop=True,
               swap_memory=False, maximum_iterations=None, name=None, return_same_structure=False):
    """TF1's `tf.while_loop`: `while cond(*loop_vars): loop_vars = body(*loop_vars)`.

    loop_vars is a (nested) list or tuple (a single tensor is taken too); cond and body
    are called once while the graph is built. The session runs it as one `fj.while_loop`
    (one compiled loop, the trip count decided at run time). `maximum_iterations` adds
    TF1's iteration counter. Differentiable when `maximum_iterations` is known while the
    graph is built (it then runs as a bounded scan under the session's tape); otherwise
    `tf.gradients` through it raises, naming it (back_prop=False makes its results
    constants for gradients)."""
    if not callable(cond) or not callable(body):
        raise TypeError("tf.while_loop: cond and body must be callable")
    if parallel_iterations < 1:
        raise TypeError("parallel_iterations must be a positive integer.")
    single_tensor = not isinstance(loop_vars, (list, tuple))
    if single_tensor:
        loop_vars = [loop_vars]
    if not flatten(loop_vars):
        raise ValueError("No loop variables provided")
    g = get_default_graph()
    bound = _static_int(maximum_iterations)
    with g.name_scope(name or "while") as scope:
        scope_name = scope[:-1]
        try_to_pack = len(loop_vars) == 1 and not return_same_structure
        if maximum_iterations is not None:
            maximum_iterations = O.convert_to_tensor(maximum_iterations, name="maximum_iterations")
            if maximum_iterations.shape.ndims not in (None, 0):
                raise ValueError(f"maximum_iterations must be a scalar, saw shape: "
                                 f"{maximum_iterations.shape}")
            counter = O.constant(0, dtype=maximum_iterations.dtype, name="iteration_counter")
            orig_cond, orig_body = cond, body
            mi = maximum_iterations
            if try_to_pack:
                loop_vars = (counter, loop_vars[0])

                def cond(i, lv):
                    return O.logical_and(i < mi, orig_cond(lv))

                def body(i, lv):
                    return (i + 1, orig_body(lv))
            else:
                loop_vars = (counter, loop_vars)

                def cond(i, lv):
                    return O.logical_and(i < mi, orig_cond(*lv))

                def body(i, lv):
                    return (i + 1, orig_body(*lv))
            try_to_pack = False
        result = _build_while(cond, body, loop_vars, shape_invariants, back_prop, scope_name,
                              return_same_structure or not try_to_pack, bound)
    if maximum_iterations is not None:
        return result[1]
    return result


def _static_int(x):
    """maximum_iterations as a Python int when it is known while the graph is built."""
    if x is None:
        return None
    try:
        v = O.static_value(x, "maximum_iterations")
    except TypeError:
        return None
    return int(v) if isinstance(v, (int, float)) or hasattr(v, "__index__") else None


def _build_while(cond, body, loop_vars, shape_invariants, back_prop, scope_name, same_structure,
                 bound=None):
    leaves = [O.convert_to_tensor(v) for v in flatten(loop_vars)]
    if shape_invariants is not None:
        invs = flatten(shape_invariants)
        if len(invs) != len(leaves):
            raise ValueError(f"shape_invariants has {len(invs)} shapes for {len(leaves)} loop variables")
        invs = [TensorShape(s) if not isinstance(s, TensorShape) else s for s in invs]
        for v, s in zip(leaves, invs):
            if not s.is_compatible_with(v.shape) or (s.ndims is not None and v.shape.ndims is not None
                                                     and s.ndims != v.shape.ndims):
                raise ValueError(f"The shape invariant specified for {v.name} is not compatible with "
                                 f"the initial shape of the loop variable. It enters the loop with "
                                 f"shape {v.shape}, but the specified shape invariant is {s}.")
    else:
        invs = [v.shape for v in leaves]

    def args_for(sub):
        args = [sub.arg(v.dtype, s, v._abstract if s == v.shape else None) for v, s in zip(leaves, invs)]
        return args, pack_sequence_as(loop_vars, args)

    csub = Subgraph("while", f"the condition of tf.while_loop '{scope_name}'")
    with csub.recording():
        _, packed = args_for(csub)
        pred = _as_tensor(cond(*packed), f"the cond of tf.while_loop '{scope_name}'")
    if not pred.dtype.is_bool or pred.shape.ndims not in (None, 0):
        raise ValueError(f"tf.while_loop '{scope_name}': cond must return a boolean scalar tensor, "
                         f"got {pred}")
    csub.close([pred])

    bsub = Subgraph("while", f"the body of tf.while_loop '{scope_name}'")
    with bsub.recording():
        _, packed = args_for(bsub)
        res = body(*packed)
        if not is_sequence(res):
            res = [res]
        structure = res
        outs = [_as_tensor(x, f"the body of tf.while_loop '{scope_name}'") for x in flatten(res)]
    if len(outs) != len(leaves) or not _same_nesting(list(loop_vars), list(structure)):
        raise ValueError(f"tf.while_loop '{scope_name}': the body returned {len(outs)} tensors "
                         f"nested as {_describe(structure)} for loop_vars nested as "
                         f"{_describe(list(loop_vars))}; they must have the same structure")
    for k, (v, s, o) in enumerate(zip(leaves, invs, outs)):
        if o.dtype is not v.dtype:
            raise TypeError(f"tf.while_loop '{scope_name}': loop variable {k} enters the loop as "
                            f"{v.dtype.name} and leaves the body as {o.dtype.name}")
        if not s.is_compatible_with(o.shape) or (s.ndims is not None and o.shape.ndims is not None
                                                 and s.ndims != o.shape.ndims):
            raise ValueError(f"Input tensor '{v.name}' enters the loop with shape {s}, but has shape "
                             f"{o.shape} after one iteration. flowjit.compat.v1 keeps each loop "
                             f"variable's shape fixed across iterations.")
    bsub.close(outs)

    def compute(ev, vals, outer):
        def c(*vs):
            return csub.run(ev, list(vs), outer)[0]

        def b(*vs):
            return bsub.run(ev, list(vs), outer)
        try:
            # with a bound known when the graph was built, a loop being differentiated
            # runs as a bounded scan (fj.while_loop's maximum_iterations)
            res = CF.while_loop(c, b, list(vals), maximum_iterations=bound)
        except TypeError as e:
            raise UnimplementedError(f"tf.while_loop '{scope_name}': {e} (flowjit.compat.v1 keeps each "
                                     f"loop variable's shape fixed: shape_invariants that let a shape "
                                     f"change between iterations are not supported)") from None
        res = list(res)
        if not back_prop:
            res = [F.stop_gradient(r) if r.dtype.is_floating else r for r in res]
        return res

    op = _outer_op("While", compute, leaves, [csub, bsub], "Exit",
                   [(v.dtype, s) for v, s in zip(leaves, invs)],
                   {"back_prop": bool(back_prop), "maximum_iterations": bound})
    exits = list(op.outputs)
    for t, v, s in zip(exits, leaves, invs):
        if s == v.shape and v._abstract is not None:
            t._abstract = v._abstract
    packed = pack_sequence_as(structure, exits)
    if same_structure:
        return packed
    return packed[0] if len(exits) == 1 else packed


def _describe(s):
    if isinstance(s, dict):
        return "{" + ", ".join(f"{k!r}: {_describe(s[k])}" for k in sorted(s)) + "}"
    if isinstance(s, (list, tuple)):
        inner = ", ".join(_describe(x) for x in s)
        return f"[{inner}]" if isinstance(s, list) else f"({inner}{',' if len(s) == 1 else ''})"
    return "T"


# --- tf.cond --------------------------------------------------------------------------------------
def cond(pred, true_fn=None, false_fn=None, strict=False, name=None, fn1=None, fn2=None):
    """TF1's `tf.cond`: the value of `true_fn()` if pred else of `false_fn()`.

    Both branches are built (they must return the same structure and dtypes, and shapes
    that agree where both are known) and only the taken one runs: the session runs it
    with `fj.cond`. Differentiable. Branches may read variables and draw random numbers
    (drawn whether or not the branch is taken) but not assign or run optimizers.
    Singleton results are unpacked unless strict=True."""
    true_fn = true_fn if true_fn is not None else fn1
    false_fn = false_fn if false_fn is not None else fn2
    if true_fn is None:
        raise TypeError("cond(): true_fn argument required")
    if false_fn is None:
        raise TypeError("cond(): false_fn argument required")
    if not callable(true_fn):
        raise TypeError("true_fn must be callable.")
    if not callable(false_fn):
        raise TypeError("false_fn must be callable.")
    g = get_default_graph()
    with g.name_scope(name or "cond") as scope:
        scope_name = scope[:-1]
        pred = O.convert_to_tensor(pred)
        if not pred.dtype.is_bool or pred.shape.ndims not in (None, 0):
            raise TypeError(f"tf.cond: pred must be a scalar bool tensor, got {pred}")
        results = []
        subs = []
        for fn, which in ((true_fn, "true_fn"), (false_fn, "false_fn")):
            sub = Subgraph("cond", f"the {which} branch of tf.cond '{scope_name}'")
            with sub.recording():
                raw = fn()
                if raw is None:
                    raise ValueError(f"{which} must have a return value.")
                flat = [_as_tensor(x, f"{which} of tf.cond '{scope_name}'") for x in flatten(raw)]
            sub.close(flat)
            results.append((raw, flat))
            subs.append(sub)
        (rt, ft), (rf, ff) = results
        if not _same_nesting(rt, rf) or len(ft) != len(ff):
            raise ValueError(f"Incompatible return values of true_fn and false_fn: they return "
                             f"{_describe(rt)} and {_describe(rf)}")
        specs = []
        for k, (x, y) in enumerate(zip(ft, ff)):
            if x.dtype is not y.dtype:
                raise ValueError(f"Outputs of true_fn and false_fn must have the same type: "
                                 f"{x.dtype.name}, {y.dtype.name}")
            shape = _merge_shapes(x.shape, y.shape)
            if shape is None:
                raise ValueError(f"tf.cond '{scope_name}': output {k} has shape {x.shape} in true_fn "
                                 f"and {y.shape} in false_fn; flowjit.compat.v1 needs both branches "
                                 f"to give the same shape")
            specs.append((x.dtype, shape))
        tsub, fsub = subs

        def compute(ev, vals, outer):
            p = vals[0]
            res = CF.cond(p, lambda: tsub.run(ev, [], outer), lambda: fsub.run(ev, [], outer))
            return list(res)

        if not specs:
            raise ValueError("tf.cond: the branches return no tensors")
        op = _outer_op("If", compute, [pred], subs, "Merge", specs, {})
    merged = pack_sequence_as(rt, list(op.outputs))
    if not strict and isinstance(merged, (list, tuple)) and len(merged) == 1:
        return merged[0]
    return merged


# --- tf.scan ------------------------------------------------------------------------------------
def scan(fn, elems, initializer=None, parallel_iterations=10, back_prop=True, swap_memory=False,
         infer_shape=True, reverse=False, name=None):
    """TF1's `tf.scan`: acc = fn(acc, x) for each x of elems (unstacked on dim 0), the
    accs stacked. Runs as one `fj.scan` (differentiable; a new length does not
    recompile). elems and initializer may be nested; without initializer the first
    element is the initial acc (and is returned as the first output)."""
    if not callable(fn):
        raise TypeError("fn must be callable.")
    g = get_default_graph()
    with g.name_scope(name or "scan") as scope:
        scope_name = scope[:-1]
        xs = [O.convert_to_tensor(e) for e in flatten(elems)]
        if not xs:
            raise ValueError("elems must not be empty")
        for x in xs:
            if x.shape.ndims == 0:
                raise ValueError(f"tf.scan: elems must have a leading dimension to scan over; "
                                 f"{x.name} is a scalar")
        first_acc = initializer is None
        if first_acc:
            # TF1: the first element (the last when reverse) is the initial value, and the
            # output at its position
            k0 = -1 if reverse else 0
            rest = slice(None, -1) if reverse else slice(1, None)
            init_leaves = [O.apply("StridedSlice", lambda v: v[k0], (x,), default_name="strided_slice")
                           for x in xs]
            init_struct = elems
            xs_run = [O.apply("StridedSlice", lambda v: v[rest], (x,), default_name="strided_slice")
                      for x in xs]
        else:
            init_leaves = [O.convert_to_tensor(v) for v in flatten(initializer)]
            init_struct = initializer
            xs_run = xs
        sub = Subgraph("scan", f"the fn of tf.scan '{scope_name}'")
        with sub.recording():
            a_args = [sub.arg(v.dtype, v.shape, v._abstract) for v in init_leaves]
            x_args = [sub.arg(x.dtype, x.shape[1:],
                              g._abstract.run(lambda a: a[0], [x._abstract]) if x._abstract is not None
                              else None) for x in xs_run]
            res = fn(pack_sequence_as(init_struct, a_args), pack_sequence_as(elems, x_args))
            outs = [_as_tensor(v, f"the fn of tf.scan '{scope_name}'") for v in flatten(res)]
        if len(outs) != len(init_leaves) or not _same_nesting(init_struct, res):
            raise ValueError(f"tf.scan '{scope_name}': fn returned {_describe(res)} for an accumulator "
                             f"{_describe(init_struct)}; they must have the same structure")
        for k, (v, o) in enumerate(zip(init_leaves, outs)):
            if o.dtype is not v.dtype:
                raise TypeError(f"tf.scan '{scope_name}': accumulator {k} is {v.dtype.name} but fn "
                                f"returned {o.dtype.name}")
            if not v.shape.is_compatible_with(o.shape):
                raise ValueError(f"tf.scan '{scope_name}': accumulator {k} has shape {v.shape} but fn "
                                 f"returned shape {o.shape}")
        sub.close(outs)
        na, nx = len(init_leaves), len(xs_run)
        steps = xs[0].shape[0].value
        steps_run = None if steps is None else (steps - 1 if first_acc else steps)

        def compute(ev, vals, outer):
            init, seqs = list(vals[:na]), list(vals[na:na + nx])
            length = seqs[0].shape[0]

            def step(carry, x):
                t, acc = carry[0], carry[1:]
                new = sub.run(ev, list(acc) + list(x), outer, loop=(length, t))
                return [t + 1] + list(new), list(new)
            _, ys = CF.scan(step, [F.constant(0, D.int32)] + init, seqs, reverse=reverse)
            ys = list(ys)
            if first_acc:
                ys = [F.concat([F.expand_dims(a, 0), y], 0) if not reverse else
                      F.concat([y, F.expand_dims(a, 0)], 0) for a, y in zip(init, ys)]
            if not back_prop:
                ys = [F.stop_gradient(y) if y.dtype.is_floating else y for y in ys]
            return ys

        specs = [(v.dtype, TensorShape(None) if v.shape.ndims is None else
                  TensorShape([steps if first_acc else steps_run] + v.shape.as_list()))
                 for v in init_leaves]
        op = _outer_op("Scan", compute, init_leaves + xs_run, [sub], "Exit", specs,
                       {"back_prop": bool(back_prop)})
    return pack_sequence_as(init_struct, list(op.outputs))


# --- gradients: loops that cannot be differentiated ---------------------------------------------
def _undifferentiable(op):
    """A While whose gradient is asked for (back_prop) with no bound known at graph build."""
    return op.attrs.get("control_flow") == "While" and op.attrs.get("back_prop") and \
        op.attrs.get("maximum_iterations") is None


def _nested_while(op):
    """A back_prop While op inside op's subgraphs (at any depth), or None."""
    for sub in op.attrs.get("subgraphs", ()):
        for inner in sub.ops:
            if _undifferentiable(inner):
                return inner
            found = _nested_while(inner)
            if found is not None:
                return found
    return None


def check_differentiable(ancestors, xs, ancestors_of):
    """Raise, naming the loop and the line that made it, when a gradient w.r.t. one of
    xs would have to go through a tf.while_loop (flowjit's while loop has no gradient)."""
    xset = set(map(id, xs))
    seen = set()
    for t in ancestors:
        op = getattr(t, "op", None)
        if op is None or op in seen or not op.attrs.get("control_flow") or not t.dtype.is_floating:
            continue            # (gradients flow only through floating-point results)
        seen.add(op)
        loop = op if _undifferentiable(op) else _nested_while(op)
        if loop is None:
            continue
        hit = [x for x in ancestors_of(op.inputs) if id(x) in xset]
        if hit:
            where = loop.name.rsplit("/", 1)[0]
            raise UnimplementedError(
                f"tf.gradients: the gradient w.r.t. {hit[0].name} goes through tf.while_loop "
                f"'{where}' (created at {loop._src}), whose trip count is decided at run time "
                f"with no bound: give it maximum_iterations (a Python int), write the loop "
                f"with tf.scan or tf.nn.dynamic_rnn, or pass back_prop=False to treat its "
                f"results as constants")
