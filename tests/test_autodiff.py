"""Autodiff: central-difference checks (float64) of the gradient of every differentiable
op, eagerly and under @fj.jit (which must agree with eager), second derivatives,
GradientTape / grad / value_and_grad semantics, and the forward/backward split that
jit compiles when a function takes gradients.

Every gradient check differentiates L = sum_k sum(w_k * f(x)_k) for fixed random
weights w_k, so each element of each output contributes with a different weight.
One jitted function per case; shapes are tiny so the file stays fast.

The bugs this file found are described in the BUG_* strings below; all are fixed (FIXED),
and a bug found later can be recorded the same way, as a strict xfail until it is fixed."""
import collections
import zlib

import numpy as np
import pytest

import flowjit as fj
from conftest import assert_close

EPS = 1e-6
FD_RTOL = 1e-6
JIT_RTOL, JIT_ATOL = 1e-10, 1e-12


# --- input generators: each is rng -> list of arrays (float64 unless said) ----------
def rn(*shapes, scale=1.0):
    """Standard normal inputs, one per shape."""
    return lambda r: [r.standard_normal(s) * scale for s in shapes]


def pos(*shapes, lo=0.3, hi=2.0):
    """Positive inputs in [lo, hi)."""
    return lambda r: [r.uniform(lo, hi, s) for s in shapes]


def nonzero(*shapes, lo=0.2, hi=2.0):
    """|x| in [lo, hi) with random signs: away from the kink at 0."""
    return lambda r: [r.uniform(lo, hi, s) * r.choice([-1.0, 1.0], s) for s in shapes]


def distinct(*shapes, spacing=0.25):
    """Inputs whose values are all different (by >= spacing) across every input, so
    max/min/maximum/minimum have no ties anywhere, even after broadcasting."""
    def gen(r):
        n = sum(int(np.prod(s)) for s in shapes)
        vals = (r.permutation(n) - n / 2) * spacing + r.uniform(0, 0.05, n)
        out, k = [], 0
        for s in shapes:
            m = int(np.prod(s))
            out.append(vals[k:k + m].reshape(s))
            k += m
        return out
    return gen


def avoiding(shape, points, gap=0.15, lo=-3.0, hi=3.0):
    """Uniform inputs at least `gap` away from each kink in `points`."""
    def gen(r):
        x = r.uniform(lo, hi, shape)
        for _ in range(100):
            bad = np.zeros(shape, bool)
            for p in points:
                bad |= np.abs(x - p) < gap
            if not bad.any():
                break
            x[bad] = r.uniform(lo, hi, int(bad.sum()))
        return [x]
    return gen


def cat(*gens):
    """Concatenate the inputs of several generators."""
    return lambda r: [a for g in gens for a in g(r)]


def const(*arrays):
    return lambda r: [np.asarray(a) for a in arrays]


def labels_probs(shape):
    def gen(r):
        p = r.uniform(0.1, 1.0, shape)
        return [p / p.sum(axis=-1, keepdims=True)]
    return gen


class Case:
    def __init__(self, fn, inputs, diff=None, via="tape", xfail=None, xfail_eager=None):
        self.fn = fn              # (*tensors) -> tensor, or a list/tuple of tensors
        self.inputs = inputs      # rng -> list of np arrays
        self.diff = diff          # which inputs to differentiate (default: the float ones)
        self.via = via            # "tape": GradientTape; "grad": fj.grad
        self.xfail = xfail        # reason the jit check is a known bug
        self.xfail_eager = xfail_eager  # reason the eager finite-difference check is a known bug


C = Case

# Known flowjit bugs, each documented by a strict xfail below.
BUG_0D_INDEX = ("eager indexing of every axis with an int (x[1, 2] -> 0-d) raises 'cannot broadcast "
                "a non-scalar to a scalar array': the slice op's NumPy reference calls "
                "np.ascontiguousarray, which turns a 0-d result into shape (1,) (jit is fine)")
BUG_FLOORMOD = ("floormod (x % y) has no gradient (its rule returns None for both inputs, so "
                "d/dx is silently dropped); TF's FloorMod gradient is (g, -g * floor(x / y))")
BUG_FUSION_CYCLE = ("fusion merges two loop groups that each need the other's reduction (through a "
                    "reshape view) and raises 'fusion produced a cycle between steps (flowjit bug)'; "
                    "hit by the second derivative of x * reduce_max(x, axis=0) under jit")
BUG_SCATTER_EAGER = ("eager scatter_add (gather's gradient) with axis > 0 and indices of rank > 1 "
                     "raises 'array is not broadcastable to correct shape': _scatter_ref moves only "
                     "one index axis to the front")
BUG_PROD_ZERO = ("reduce_prod's gradient is out * g / x, which is NaN (0/0) where x == 0; TF "
                 "returns the product of the other elements there")
BUG_GRAD_THROUGH_JIT = ("a call of a jitted function is not recorded by an enclosing GradientTape: "
                        "fj.grad(fj.jit(f))(x) and a tape around jf(x) silently return None "
                        "(TF differentiates through tf.function, JAX through jit)")
BUG_WEAK_FLOAT = ("a Python float argument is float32 eagerly (TF's rule) but float64 under jit, so "
                  "fj.jit(fj.grad(f))(3.0) returns a float64 gradient where fj.grad(f)(3.0) "
                  "returns float32 (the forward fj.jit(lambda a: a * a)(3.0) is float64 too)")
BUG_JIT_OF_GRAD_OF_JIT = ("fj.jit(fj.grad(jf)) for a jitted jf silently runs jf itself and returns "
                          "its value: functools.wraps in grad/value_and_grad copies jf's instance "
                          "__dict__ (fn, _cache, _fast) onto the wrapper, and JitFunction's "
                          "update_wrapper copies it back over the new JitFunction's own fn and caches")
CASES = {}


def add_cases(prefix, **cases):
    for k, v in cases.items():
        name = f"{prefix}-{k}" if prefix else k
        assert name not in CASES, name
        CASES[name] = v


# --- elementwise unary ---------------------------------------------------------------
S = (3, 4)
add_cases(
    "unary",
    negative=C(fj.negative, rn(S)),
    neg_operator=C(lambda x: -x, rn(S)),
    abs=C(fj.abs, nonzero(S)),
    square=C(fj.square, rn(S)),
    sqrt=C(fj.sqrt, pos(S)),
    rsqrt=C(fj.rsqrt, pos(S)),
    exp=C(fj.exp, rn(S)),
    expm1=C(fj.expm1, rn(S)),
    log=C(fj.log, pos(S)),
    log1p=C(fj.log1p, pos(S, lo=-0.7)),
    tanh=C(fj.tanh, rn(S)),
    sigmoid=C(fj.sigmoid, rn(S, scale=2.0)),
    sin=C(fj.sin, rn(S, scale=2.0)),
    cos=C(fj.cos, rn(S, scale=2.0)),
    identity=C(fj.identity, rn(S)),
    tanh_0d=C(fj.tanh, rn(())),
    exp_1d=C(fj.exp, rn((5,))),
    nn_sigmoid=C(fj.nn.sigmoid, rn(S)),
    nn_tanh=C(fj.nn.tanh, rn(S)),
    chain=C(lambda x: fj.sin(fj.exp(x) * x) + fj.sqrt(fj.square(x) + 1.0), rn(S)),
)

# --- elementwise binary, with broadcasting ---------------------------------------------
B1 = ((3, 1), (1, 4))     # both sides stretched
B2 = ((2, 3), (3,))       # rank broadcast
for _name, _fn in (("add", fj.add), ("subtract", fj.subtract), ("multiply", fj.multiply)):
    add_cases(
        _name,
        b_3x1_1x4=C(_fn, rn(*B1)),
        b_2x3_3=C(_fn, rn(*B2)),
        b_3_2x3=C(_fn, rn((3,), (2, 3))),
        b_0d=C(_fn, rn(S, ())),
    )
add_cases(
    "divide",
    same=C(fj.divide, cat(rn(S), nonzero(S))),
    b_3x1_1x4=C(fj.divide, cat(rn((3, 1)), nonzero((1, 4)))),
    b_2x3_3=C(fj.divide, cat(rn((2, 3)), nonzero((3,)))),
    operator=C(lambda x, y: x / y, cat(rn((3,)), nonzero((2, 3)))),
)
add_cases(
    "pow",
    same=C(fj.pow, cat(pos(S), rn(S))),
    b_3x1_1x4=C(fj.pow, cat(pos((3, 1)), rn((1, 4)))),
    b_2x3_3=C(fj.pow, cat(pos((2, 3)), rn((3,)))),
    scalar_exponent_negative_base=C(lambda x: fj.pow(x, 3.0), rn(S)),
    operator=C(lambda x, y: x ** y, cat(pos((2, 3)), rn((3,)))),
)
for _name, _fn in (("maximum", fj.maximum), ("minimum", fj.minimum)):
    add_cases(
        _name,
        same=C(_fn, distinct(S, S)),
        b_3x1_1x4=C(_fn, distinct(*B1)),
        b_2x3_3=C(_fn, distinct(*B2)),
        scalar=C(lambda x, _fn=_fn: _fn(x, 0.3), avoiding(S, [0.3])),
    )


def _mod_inputs(r):
    """x, y with x / y at least 0.1 away from an integer (floormod is continuous there)."""
    y = r.uniform(0.5, 1.5, (1, 4))
    k = r.integers(-3, 3, (3, 4))
    return [(k + r.uniform(0.1, 0.9, (3, 4))) * y, y]


add_cases(
    "floormod",
    b_3x4_1x4=C(fj.floormod, _mod_inputs, xfail=BUG_FLOORMOD, xfail_eager=BUG_FLOORMOD),
    operator_x_only=C(lambda x: x % 0.7,
                      lambda r: [(r.integers(-3, 3, (3, 4)) + r.uniform(0.1, 0.9, (3, 4))) * 0.7],
                      xfail=BUG_FLOORMOD, xfail_eager=BUG_FLOORMOD),
)
add_cases(
    "scalar_operand",
    radd=C(lambda x: 2.0 + x, rn(S)),
    rsub=C(lambda x: 2.0 - x, rn(S)),
    rmul=C(lambda x: 3.0 * x, rn(S)),
    rdiv=C(lambda x: 1.0 / x, nonzero(S)),
    rpow=C(lambda x: 2.0 ** x, rn(S)),
    same_tensor_twice=C(lambda x: x * x + x / (x * x + 1.0), rn(S)),
)

# --- where / clip_by_value -------------------------------------------------------------
_COND = np.array([[True, False, True, False], [False, False, True, True], [True, True, False, False]])
add_cases(
    "where",
    same=C(lambda c, x, y: fj.where(c, x, y), cat(const(_COND), rn(S, S))),
    b_cond_x_y=C(lambda c, x, y: fj.where(c, x, y),
                 cat(const(_COND[:, :1]), rn((1, 4), (3, 4)))),
    b_row_scalar=C(lambda c, x, y: fj.where(c, x, y), cat(const(_COND), rn((4,), ()))),
    computed_cond=C(lambda x, y: fj.where(x > y, fj.sin(x), y * y), distinct(S, S)),
)
add_cases(
    "clip_by_value",
    scalars=C(lambda x: fj.clip_by_value(x, -0.5, 0.7), avoiding(S, [-0.5, 0.7], lo=-2, hi=2)),
    tensor_bounds=C(lambda x, lo, hi: fj.clip_by_value(x, lo, hi), distinct(S, (1, 4), (3, 1))),
)

# --- shape ops ---------------------------------------------------------------------------
add_cases(
    "broadcast_to",
    col_to_3d=C(lambda x: fj.broadcast_to(x, (2, 3, 4)), rn((3, 1))),
    row=C(lambda x: fj.broadcast_to(x, (3, 4)), rn((4,))),
    scalar=C(lambda x: fj.broadcast_to(x, (2, 3)), rn(())),
)
add_cases(
    "reshape",
    plain=C(lambda x: fj.reshape(x, (3, 4)), rn((2, 6))),
    minus_one=C(lambda x: fj.reshape(x, (-1, 4)), rn((2, 3, 4))),
    to_scalar=C(lambda x: fj.reshape(x, ()), rn((1, 1))),
)
add_cases(
    "expand_dims",
    axis0=C(lambda x: fj.expand_dims(x, 0), rn(S)),
    axis_neg=C(lambda x: fj.expand_dims(x, -1), rn(S)),
    middle=C(lambda x: fj.expand_dims(x, 1) * fj.expand_dims(x, 0), rn((3,))),
)
add_cases(
    "squeeze",
    all=C(lambda x: fj.squeeze(x), rn((3, 1, 4, 1))),
    axis=C(lambda x: fj.squeeze(x, 1), rn((3, 1, 4))),
)
add_cases(
    "transpose",
    default=C(lambda x: fj.transpose(x), rn((3, 4))),
    perm=C(lambda x: fj.transpose(x, (2, 0, 1)), rn((2, 3, 4))),
    then_elementwise=C(lambda x, y: fj.transpose(x) * y, rn((4, 3), (3, 4))),
)
add_cases(
    "slice",
    step_and_reverse=C(lambda x: x[1:5:2, ::-1], rn((6, 4))),
    basic=C(lambda x: x[1:3], rn((4, 3))),
    negative_step_bounds=C(lambda x: x[4:0:-2, 1:], rn((6, 3))),
    negative_start=C(lambda x: x[-3:, :-1], rn((5, 3))),
    ellipsis_newaxis=C(lambda x: x[..., None, 1:3], rn((2, 4))),
    overlapping=C(lambda x: x[1:] * x[:-1], rn((5, 2))),
)
add_cases(
    "index",
    int=C(lambda x: x[2], rn((4, 3))),
    negative=C(lambda x: x[-1], rn((4, 3))),
    int_then_slice=C(lambda x: x[1, ::2], rn((3, 5))),
    second_axis=C(lambda x: x[:, 1], rn((3, 4))),
    two_ints_keep_dims=C(lambda x: x[1:2, 2:3] * x, rn((3, 4))),
    list=C(lambda x: x[[0, 2, 2]], rn((3, 4))),
)
add_cases(
    "concat",
    axis0=C(lambda x, y: fj.concat([x, y], 0), rn((2, 3), (1, 3))),
    axis_neg=C(lambda x, y: fj.concat([x, y], -1), rn((2, 3), (2, 2))),
    three_with_repeat=C(lambda x, y: fj.concat([x, y, x], 1), rn((2, 1), (2, 3))),
)
add_cases(
    "stack",
    axis0=C(lambda x, y, z: fj.stack([x, y, z]), rn((2, 3), (2, 3), (2, 3))),
    axis1=C(lambda x, y: fj.stack([x, y], axis=1), rn((2, 3), (2, 3))),
    axis_last=C(lambda x, y: fj.stack([x, y, x], axis=-1), rn((3,), (3,))),
)
add_cases(
    "split",
    equal=C(lambda x: fj.split(x, 2, axis=1), rn((2, 4))),
    sizes=C(lambda x: fj.split(x, [1, -1, 2], axis=0), rn((5, 2))),
    one_part_used=C(lambda x: fj.split(x, 3, axis=0)[1], rn((3, 2))),
)
add_cases(
    "tile",
    rows=C(lambda x: fj.tile(x, (2, 1)), rn((2, 3))),
    both=C(lambda x: fj.tile(x, (3, 2)), rn((1, 3))),
)
add_cases(
    "pad",
    two_dims=C(lambda x: fj.pad(x, [[1, 0], [2, 1]]), rn((2, 3))),
    with_value=C(lambda x: fj.pad(x, [[0, 2]], constant_values=1.5) * 2.0, rn((3,))),
)
add_cases(
    "gather",
    repeated_axis0=C(fj.gather, cat(rn((5, 3)), const(np.array([0, 2, 2, 4, 2], np.int32)))),
    axis1=C(lambda p, i: fj.gather(p, i, axis=1), cat(rn((3, 5)), const(np.array([1, 4, 1], np.int32)))),
    axis0_2d_indices=C(fj.gather, cat(rn((4, 2)), const(np.array([[3, 0], [3, 3]], np.int32)))),
    axis1_2d_indices=C(lambda p, i: fj.gather(p, i, axis=1),
                       cat(rn((3, 5)), const(np.array([[1, 1], [4, 0]], np.int32))),
                       xfail_eager=BUG_SCATTER_EAGER),
    int64_indices=C(fj.gather, cat(rn((4,)), const(np.array([3, 3, 3, 1], np.int64)))),
)
add_cases(
    "add_n",
    three=C(lambda x, y, z: fj.add_n([x, y, z]), rn(S, S, S)),
    repeated=C(lambda x, y: fj.add_n([x, y, x]), rn(S, S)),
)

# --- reductions --------------------------------------------------------------------------
RS = (2, 3, 4)
_RED = {"sum": (fj.reduce_sum, rn(RS)), "mean": (fj.reduce_mean, rn(RS)),
        "max": (fj.reduce_max, distinct(RS)), "min": (fj.reduce_min, distinct(RS)),
        "prod": (fj.reduce_prod, nonzero(RS, lo=0.5, hi=1.5))}
for _kind, (_fn, _gen) in _RED.items():
    for _axis in (None, 1, -1, (0, 2)):
        for _kd in ((False,) if _axis == -1 else (False, True)):
            _an = "all" if _axis is None else "_".join(map(str, np.atleast_1d(_axis)))
            add_cases("reduce_" + _kind, **{f"axis{_an}-keepdims{int(_kd)}": C(
                (lambda f, a, k: lambda x: f(x, axis=a, keepdims=k))(_fn, _axis, _kd), _gen)})

# --- matmul ------------------------------------------------------------------------------
for _ta in (False, True):
    for _tb in (False, True):
        _sa = (4, 3) if _ta else (3, 4)
        _sb = (2, 4) if _tb else (4, 2)
        add_cases("matmul", **{f"ta{int(_ta)}_tb{int(_tb)}": C(
            (lambda ta, tb: lambda a, b: fj.matmul(a, b, transpose_a=ta, transpose_b=tb))(_ta, _tb),
            rn(_sa, _sb))})
add_cases(
    "matmul",
    batched=C(fj.matmul, rn((2, 3, 4), (2, 4, 2))),
    batched_ta_tb=C(lambda a, b: fj.matmul(a, b, transpose_a=True, transpose_b=True),
                    rn((2, 4, 3), (2, 2, 4))),
    b3d_2d=C(fj.matmul, rn((2, 3, 4), (4, 2))),
    b3d_2d_tb=C(lambda a, b: fj.matmul(a, b, transpose_b=True), rn((2, 3, 4), (2, 4))),
    b2d_3d=C(fj.matmul, rn((3, 4), (2, 4, 2))),
    b2d_3d_ta_tb=C(lambda a, b: fj.matmul(a, b, transpose_a=True, transpose_b=True), rn((4, 3), (2, 2, 4))),
    batch_broadcast=C(fj.matmul, rn((1, 3, 4), (2, 4, 2))),
    batch_broadcast_4d=C(fj.matmul, rn((2, 1, 3, 4), (1, 2, 4, 2))),
    operator=C(lambda a, b: a @ b, rn((3, 4), (4, 2))),
    vector_like=C(lambda a, b: a @ b, rn((1, 4), (4, 1))),
    same_operand=C(lambda a: fj.matmul(a, a, transpose_b=True), rn((3, 4))),
)

# --- fj.nn ---------------------------------------------------------------------------------
nn = fj.nn
add_cases(
    "nn",
    relu=C(nn.relu, nonzero(S), via="grad"),
    relu6=C(nn.relu6, avoiding(S, [0.0, 6.0], lo=-3, hi=9), via="grad"),
    leaky_relu=C(nn.leaky_relu, nonzero(S), via="grad"),
    leaky_relu_alpha=C(lambda x: nn.leaky_relu(x, alpha=0.1), nonzero(S), via="grad"),
    elu=C(nn.elu, nonzero(S), via="grad"),
    softmax=C(nn.softmax, rn(S, scale=2.0), via="grad"),
    softmax_axis0=C(lambda x: nn.softmax(x, axis=0), rn(S, scale=2.0), via="grad"),
    log_softmax=C(nn.log_softmax, rn(S, scale=2.0), via="grad"),
    log_softmax_axis0=C(lambda x: nn.log_softmax(x, axis=0), rn(S, scale=2.0), via="grad"),
    softmax_xent=C(lambda lab, x: nn.softmax_cross_entropy_with_logits(labels=lab, logits=x),
                   cat(labels_probs(S), rn(S, scale=2.0)), via="grad"),
    softmax_xent_logits_only=C(lambda lab, x: nn.softmax_cross_entropy_with_logits(lab, x),
                               cat(labels_probs(S), rn(S, scale=2.0)), diff=[1]),
    sparse_softmax_xent=C(lambda lab, x: nn.sparse_softmax_cross_entropy_with_logits(labels=lab, logits=x),
                          cat(const(np.array([0, 3, 1], np.int32)), rn(S, scale=2.0)), via="grad"),
    sparse_softmax_xent_int64=C(lambda lab, x: nn.sparse_softmax_cross_entropy_with_logits(lab, x),
                                cat(const(np.array([2, 2], np.int64)), rn((2, 5)))),
    sigmoid_xent=C(lambda z, x: nn.sigmoid_cross_entropy_with_logits(labels=z, logits=x),
                   cat(pos(S, lo=0.0, hi=1.0), nonzero(S, hi=4.0)), via="grad"),
    l2_loss=C(nn.l2_loss, rn(S), via="grad"),
    bias_add=C(nn.bias_add, rn((2, 3, 4), (4,)), via="grad"),
    bias_add_2d=C(nn.bias_add, rn((3, 4), (4,))),
    bias_add_ncw=C(lambda x, b: nn.bias_add(x, b, data_format="NCW"), rn((2, 3, 2), (3,))),
)


# --- the machinery -------------------------------------------------------------------------
def _outputs(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _weighted(out, ws):
    total = None
    for o, w in zip(_outputs(out), ws):
        term = fj.reduce_sum(o * w)
        total = term if total is None else total + term
    return total


def _diff_of(case, arrays):
    if case.diff is not None:
        return list(case.diff)
    return [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]


def _grad_fn(case, diff):
    """(ws, xs) -> list of gradients of sum(w * f(xs)) w.r.t. xs[diff]; runs eagerly
    on Tensors and traced inside @fj.jit alike."""
    if case.via == "tape":
        def g(ws, xs):
            with fj.GradientTape() as tape:
                for i in diff:
                    tape.watch(xs[i])
                loss = _weighted(case.fn(*xs), ws)
            return tape.gradient(loss, [xs[i] for i in diff])
    else:
        def g(ws, xs):
            def loss(*args):
                return _weighted(case.fn(*args), ws)
            return list(fj.grad(loss, argnums=tuple(diff))(*xs))
    return g


Prepared = collections.namedtuple("Prepared", "case arrays ws diff grad_fn jitted")
_PREPARED = {}


def _prepare(name):
    """Inputs, weights and the eager + jitted gradient functions of one case (cached so
    the eager and jit tests of a case share the same jitted function object)."""
    if name not in _PREPARED:
        case = CASES[name]
        r = np.random.default_rng(zlib.crc32(name.encode()))
        arrays = [np.asarray(a) for a in case.inputs(r)]
        xs = [fj.constant(a) for a in arrays]
        outs = _outputs(case.fn(*xs))
        ws = [np.asarray(r.standard_normal(tuple(o.shape))) for o in outs]
        diff = _diff_of(case, arrays)
        g = _grad_fn(case, diff)
        _PREPARED[name] = Prepared(case, arrays, ws, diff, g, fj.jit(g))
    return _PREPARED[name]


def _loss_value(case, ws, arrays):
    return float(_weighted(case.fn(*[fj.constant(a) for a in arrays]), [fj.constant(w) for w in ws]))


def numeric_grad(case, ws, arrays, i):
    x = arrays[i]
    out = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        plus = [a.copy() for a in arrays]
        minus = [a.copy() for a in arrays]
        plus[i][idx] += EPS
        minus[i][idx] -= EPS
        out[idx] = (_loss_value(case, ws, plus) - _loss_value(case, ws, minus)) / (2 * EPS)
    return out


def eager_grads(name):
    p = _prepare(name)
    return p.grad_fn([fj.constant(w) for w in p.ws], [fj.constant(a) for a in p.arrays])


def _param(name, which):
    reason = getattr(CASES[name], which)
    if reason and not FIXED.get(reason):
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reason))
    return name


# every bug this file found has been fixed; a reason listed here runs as a normal test
FIXED = {b: True for b in (BUG_0D_INDEX, BUG_FLOORMOD, BUG_FUSION_CYCLE, BUG_SCATTER_EAGER,
                           BUG_PROD_ZERO, BUG_GRAD_THROUGH_JIT, BUG_WEAK_FLOAT, BUG_JIT_OF_GRAD_OF_JIT)}


@pytest.mark.parametrize("name", [_param(n, "xfail_eager") for n in CASES])
def test_gradient_matches_finite_differences(name):
    case, arrays, ws, diff = _prepare(name)[:4]
    grads = eager_grads(name)
    assert len(grads) == len(diff)
    for i, gr in zip(diff, grads):
        assert gr is not None, f"gradient w.r.t. input {i} is None"
        assert gr.dtype is fj.float64
        assert tuple(gr.shape) == arrays[i].shape
        num = numeric_grad(case, ws, arrays, i)
        atol = FD_RTOL * (1.0 + np.max(np.abs(num), initial=0.0))
        np.testing.assert_allclose(gr.numpy(), num, rtol=FD_RTOL, atol=atol,
                                   err_msg=f"{name}: d/d input {i}")


@pytest.mark.parametrize("name", [_param(n, "xfail") for n in CASES])
def test_jit_gradient_equals_eager(name):
    case, arrays, ws, diff, _, jg = _prepare(name)
    if case.xfail_eager and not FIXED.get(case.xfail_eager):   # eager broken: use finite differences
        expected = [fj.constant(numeric_grad(case, ws, arrays, i)) for i in diff]
        rtol, atol = FD_RTOL, FD_RTOL
    else:
        expected = eager_grads(name)
        rtol, atol = JIT_RTOL, JIT_ATOL
    got = jg(tuple(ws), tuple(arrays))
    assert len(got) == len(expected)
    for i, a, b in zip(diff, got, expected):
        assert a is not None and b is not None
        assert a.dtype is b.dtype
        assert_close(a, b.numpy(), rtol=rtol, atol=atol)
    again = jg(tuple(ws), tuple(arrays))           # the cached compiled path gives the same
    for a, b in zip(again, got):
        assert_close(a, b.numpy(), rtol=0, atol=0)


MODES = ["eager", "jit"]


def run(mode, fn, *args):
    """fn(*tensors) eagerly (on fj.constant inputs) or under a fresh @fj.jit."""
    if mode == "eager":
        return fn(*[fj.constant(a) if isinstance(a, np.ndarray) else a for a in args])
    return fj.jit(fn)(*args)


_F32_SKIP = {"gather-axis1_2d_indices", "floormod-b_3x4_1x4", "floormod-operator_x_only"}


@pytest.mark.parametrize("name", [n for n in CASES if n not in _F32_SKIP])
def test_float32_gradients_keep_their_dtype(name):
    """The same gradients in float32 (eager): every gradient is float32 (no rule may promote
    to float64) and agrees with the float64 one to float32 accuracy."""
    p = _prepare(name)
    to32 = lambda a: fj.constant(a.astype(np.float32) if a.dtype.kind == "f" else a)
    got = p.grad_fn([to32(w) for w in p.ws], [to32(a) for a in p.arrays])
    ref = eager_grads(name)
    for a, b in zip(got, ref):
        assert a is not None and a.dtype is fj.float32
        scale = 1.0 + np.max(np.abs(b.numpy()), initial=0.0)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5 * scale)


# --- cast -------------------------------------------------------------------------------------
def _cast_grads(x, w):
    """Gradients of sum(w * cast-chain(x)) for the cast chains checked below."""
    with fj.GradientTape(persistent=True) as tape:
        tape.watch(x)
        same = fj.cast(x, fj.float64 if x.dtype is fj.float64 else fj.float32)     # no-op
        y64 = fj.cast(x, fj.float64)
        through32 = fj.cast(fj.cast(x, fj.float32), fj.float64)
        through_int = fj.cast(fj.cast(x, fj.int32), fj.float64)
        losses = [fj.reduce_sum(fj.cast(same, fj.float64) * w), fj.reduce_sum(y64 * w),
                  fj.reduce_sum(through32 * w), fj.reduce_sum(through_int * w)]
    return [tape.gradient(loss, x) for loss in losses]


_cast_jit = fj.jit(_cast_grads)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_cast_gradients(dtype, mode, rng):
    x = rng.standard_normal((2, 3)).astype(dtype)
    w = rng.standard_normal((2, 3))
    if mode == "eager":
        g_same, g64, g32, g_int = _cast_grads(fj.constant(x), fj.constant(w))
    else:
        g_same, g64, g32, g_int = _cast_jit(x, w)
    w_in = w.astype(dtype)           # the cotangent cast back to the input's dtype
    for g in (g_same, g64, g32):
        assert g is not None and g.dtype.np == np.dtype(dtype)
    assert_close(g_same, w_in, rtol=0, atol=0)
    assert_close(g64, w_in, rtol=0, atol=0)
    assert_close(g32, w.astype(np.float32).astype(dtype), rtol=0, atol=0)
    assert g_int is None             # an integer cast cuts the gradient, as in TF


def test_cast_to_same_dtype_is_a_no_op():
    x = fj.constant(np.array([1.0, 2.0]))
    assert fj.cast(x, fj.float64) is x


# --- second and third derivatives ----------------------------------------------------------------
_A = np.array([[2.0, 0.5, -1.0, 0.0], [0.3, 1.0, 0.2, -0.4], [0.0, -0.7, 3.0, 0.1], [1.2, 0.0, 0.5, 1.5]])
_V = np.array([[0.5], [-1.0], [2.0], [0.25]])


def _quad(x, a):                               # x: (4, 1); x^T A x
    return fj.reduce_sum(fj.matmul(x, fj.matmul(a, x), transpose_a=True))


# name -> (f(x, a) scalar, input, analytic Hessian-vector product with v (x, a, v) -> array)
SECOND = {
    "tanh": (lambda x, a: fj.reduce_sum(fj.tanh(x)), lambda r: r.standard_normal((2, 3)),
             lambda x, a, v: v * -2 * np.tanh(x) * (1 - np.tanh(x) ** 2)),
    "sigmoid": (lambda x, a: fj.reduce_sum(fj.sigmoid(x)), lambda r: r.standard_normal((2, 3)) * 2,
                lambda x, a, v: v * (lambda s: s * (1 - s) * (1 - 2 * s))(1 / (1 + np.exp(-x)))),
    "exp_sin": (lambda x, a: fj.reduce_sum(fj.exp(x) * fj.sin(x)), lambda r: r.standard_normal((5,)),
                lambda x, a, v: v * 2 * np.exp(x) * np.cos(x)),
    "quadratic_form": (_quad, lambda r: r.standard_normal((4, 1)),
                       lambda x, a, v: (a + a.T) @ v),
}


def _v_for(name, x):
    return _V if name == "quadratic_form" else np.linspace(-1.0, 1.5, x.size).reshape(x.shape)


def _hvp_tapes(f, x, a, v):
    with fj.GradientTape() as outer:
        outer.watch(x)
        with fj.GradientTape() as inner:
            inner.watch(x)
            y = f(x, a)
        g = inner.gradient(y, x)
        gv = fj.reduce_sum(g * v)
    return outer.gradient(gv, x)


def _hvp_grad(f, x, a, v):
    return fj.grad(lambda x_: fj.reduce_sum(fj.grad(f)(x_, a) * v))(x)


_HVP_JIT = {}


@pytest.mark.parametrize("method", ["tapes", "grad_of_grad"])
@pytest.mark.parametrize("name", sorted(SECOND))
def test_second_derivative(name, method):
    f, make, hvp = SECOND[name]
    x = make(np.random.default_rng(7))
    v = _v_for(name, x)
    impl = _hvp_tapes if method == "tapes" else _hvp_grad
    expected = hvp(x, _A, v)
    eager = impl(f, fj.constant(x), fj.constant(_A), fj.constant(v))
    assert_close(eager, expected, rtol=1e-12, atol=1e-13)
    key = (name, method)
    if key not in _HVP_JIT:
        _HVP_JIT[key] = fj.jit(lambda x_, a_, v_: impl(f, x_, a_, v_))
    jitted = _HVP_JIT[key](x, _A, v)
    assert_close(jitted, eager.numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["tanh", "sigmoid", "exp_sin"])
def test_grad_of_grad_of_an_elementwise_function(name, mode):
    # the gradient of a non-scalar target is the gradient of its sum, so for an
    # elementwise f, grad(grad(sum f)) is the diagonal of the Hessian: f''(x)
    f, make, hvp = SECOND[name]
    x = make(np.random.default_rng(11))
    d2 = fj.grad(fj.grad(lambda t: f(t, None)))
    assert_close(run(mode, d2, x), hvp(x, None, np.ones_like(x)), rtol=1e-12, atol=1e-13)


def _third_tanh(x):
    d1 = fj.grad(lambda t: fj.reduce_sum(fj.tanh(t)))
    d2 = fj.grad(lambda t: fj.reduce_sum(d1(t)))
    return fj.grad(lambda t: fj.reduce_sum(d2(t)))(x)


def test_third_derivative_of_tanh():
    x = np.linspace(-1.5, 1.2, 6)
    t = np.tanh(x)
    expected = -2 * (1 - t ** 2) * (1 - 3 * t ** 2)
    eager = _third_tanh(fj.constant(x))
    assert_close(eager, expected, rtol=1e-12, atol=1e-13)
    assert_close(fj.jit(_third_tanh)(x), eager.numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)


# Hessian-vector products of more ops against central differences of the (eager) gradient.
HVP_FD = {
    "divide_log": (lambda x: fj.reduce_sum(fj.log(x) / (x * x + 1.0)), pos((2, 3))),
    "pow": (lambda x: fj.reduce_sum(fj.pow(x, fj.sqrt(x))), pos((5,))),
    "reduce_prod": (lambda x: fj.reduce_sum(fj.reduce_prod(x, axis=1)), nonzero((2, 3), lo=0.5, hi=1.5)),
    "softmax_xent": (lambda x: fj.reduce_sum(fj.nn.softmax_cross_entropy_with_logits(
        fj.constant(np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])), x)), rn((2, 3))),
    "mlp": (lambda x: fj.nn.l2_loss(fj.tanh(fj.reshape(x[:6], (2, 3)) @ fj.reshape(x[6:], (3, 2)))),
            rn((12,))),
    "rsqrt_maximum": (lambda x: fj.reduce_sum(fj.rsqrt(fj.maximum(x, 0.5)) * x),
                      distinct((3, 2), spacing=0.4)),
    "reduce_max": (lambda x: fj.reduce_sum(x * fj.reduce_max(x, axis=0)), distinct((3, 2), spacing=0.4)),
}
HVP_JIT_XFAIL = {"reduce_max": BUG_FUSION_CYCLE}


def _grad_of(f):
    return fj.grad(lambda x: f(x))


def _hvp_setup(name):
    f, gen = HVP_FD[name]
    r = np.random.default_rng(zlib.crc32(name.encode()))
    x = gen(r)[0]
    v = r.standard_normal(x.shape)

    def hvp(x_, v_):
        return fj.grad(lambda t: fj.reduce_sum(_grad_of(f)(t) * v_))(x_)
    return f, x, v, hvp


@pytest.mark.parametrize("name", sorted(HVP_FD))
def test_hessian_vector_product_matches_finite_differences(name):
    f, x, v, hvp = _hvp_setup(name)
    eager = hvp(fj.constant(x), fj.constant(v)).numpy()
    g = lambda z: _grad_of(f)(fj.constant(z)).numpy()
    num = (g(x + EPS * v) - g(x - EPS * v)) / (2 * EPS)
    np.testing.assert_allclose(eager, num, rtol=1e-6, atol=1e-6 * (1 + np.abs(num).max()))


@pytest.mark.parametrize("name", sorted(HVP_FD))
def test_jit_hessian_vector_product_equals_eager(name):
    f, x, v, hvp = _hvp_setup(name)
    eager = hvp(fj.constant(x), fj.constant(v)).numpy()
    assert_close(fj.jit(hvp)(x, v), eager, rtol=JIT_RTOL, atol=JIT_ATOL)


# --- semantics --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_gradient_of_an_integer_source_is_none(mode):
    def f(i, x):
        with fj.GradientTape() as tape:
            tape.watch([i, x])
            y = fj.reduce_sum(fj.cast(i, fj.float64) * x * x)
        return tape.gradient(y, [i, x])
    gi, gx = run(mode, f, np.array([1, 2, 3], np.int32), np.array([0.5, 1.0, -2.0]))
    assert gi is None
    assert_close(gx, 2 * np.array([1, 2, 3]) * np.array([0.5, 1.0, -2.0]))

    g = fj.grad(lambda i, x: fj.reduce_sum(fj.cast(i, fj.float64) * x), argnums=(0, 1))
    gi, gx = run(mode, g, np.array([1, 2], np.int64), np.array([3.0, 4.0]))
    assert gi is None
    assert_close(gx, np.array([1.0, 2.0]))


@pytest.mark.parametrize("mode", MODES)
def test_unconnected_sources(mode):
    def f(x, z):
        with fj.GradientTape(persistent=True) as tape:
            tape.watch([x, z])
            y = fj.reduce_sum(x * 3.0)
        return (tape.gradient(y, [x, z]),
                tape.gradient(y, [x, z], unconnected_gradients="zero"))
    (gx, gz), (gx0, gz0) = run(mode, f, np.ones((2, 2)), np.ones((3,), np.float32))
    assert gz is None
    assert_close(gx, np.full((2, 2), 3.0))
    assert_close(gx0, np.full((2, 2), 3.0))
    assert gz0 is not None and gz0.dtype is fj.float32
    assert_close(gz0, np.zeros(3, np.float32))


@pytest.mark.parametrize("mode", MODES)
def test_stop_gradient_blocks(mode):
    def f(x):
        with fj.GradientTape(persistent=True) as tape:
            tape.watch(x)
            half = fj.reduce_sum(x * fj.stop_gradient(x))          # d/dx = x, not 2x
            blocked = fj.reduce_sum(fj.stop_gradient(x * x))       # no path at all
            softmax = fj.reduce_sum(fj.nn.softmax(x) * fj.constant(np.array([1.0, 2.0, 3.0])))
        return (tape.gradient(half, x), tape.gradient(blocked, x),
                tape.gradient(blocked, x, unconnected_gradients="zero"), tape.gradient(softmax, x))
    x = np.array([0.5, -1.0, 2.0])
    g_half, g_blocked, g_zero, g_sm = run(mode, f, x)
    assert_close(g_half, x)
    assert g_blocked is None
    assert_close(g_zero, np.zeros(3))
    s = np.exp(x) / np.exp(x).sum()          # stop_gradient inside softmax does not change its gradient
    w = np.array([1.0, 2.0, 3.0])
    assert_close(g_sm, s * (w - (s * w).sum()), rtol=1e-12, atol=1e-14)


def test_non_persistent_tape_is_single_use():
    x = fj.constant(np.array([1.0, 2.0]))
    with fj.GradientTape() as tape:
        tape.watch(x)
        y = fj.reduce_sum(x * x)
    assert_close(tape.gradient(y, x), np.array([2.0, 4.0]))
    with pytest.raises(RuntimeError, match="persistent"):
        tape.gradient(y, x)

    @fj.jit
    def f(x):
        with fj.GradientTape() as tape:
            tape.watch(x)
            y = fj.reduce_sum(x * x)
        tape.gradient(y, x)
        return tape.gradient(y, x)
    with pytest.raises(RuntimeError, match="persistent"):
        f(np.array([1.0, 2.0]))


@pytest.mark.parametrize("mode", MODES)
def test_persistent_tape_allows_several_gradients(mode):
    def f(x):
        with fj.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = x * x
            z = fj.reduce_sum(y * y)
            s = fj.reduce_sum(fj.sin(x))
        return tape.gradient(z, x), tape.gradient(y, x), tape.gradient(s, x), tape.gradient(z, x)
    x = np.array([1.0, -2.0, 0.5])
    gz, gy, gs, gz2 = run(mode, f, x)
    assert_close(gz, 4 * x ** 3)
    assert_close(gy, 2 * x)            # a non-scalar target: the gradient of its sum
    assert_close(gs, np.cos(x), rtol=1e-15, atol=1e-15)
    assert_close(gz2, gz.numpy())


@pytest.mark.parametrize("mode", MODES)
def test_watch_is_needed_for_constants(mode):
    def f(x):
        with fj.GradientTape(persistent=True) as tape:
            c = fj.constant(np.array([1.0, 2.0]))      # created inside: not watched
            y = fj.reduce_sum(c * x)
        unwatched = (tape.gradient(y, c), tape.gradient(y, x))
        with fj.GradientTape() as tape2:
            c2 = fj.constant(np.array([1.0, 2.0]))
            tape2.watch(c2)
            y2 = fj.reduce_sum(c2 * c2 * x)
        return unwatched, tape2.gradient(y2, c2)
    (gc, gx), gc2 = run(mode, f, np.array([3.0, 4.0]))
    assert gc is None and gx is None
    assert_close(gc2, np.array([2.0 * 1 * 3, 2.0 * 2 * 4]))


@pytest.mark.parametrize("mode", MODES)
def test_gradient_with_respect_to_an_intermediate_tensor(mode):
    def f(x):
        with fj.GradientTape() as tape:
            tape.watch(x)
            h = fj.tanh(x)
            y = fj.reduce_sum(h * h * x)
        return tape.gradient(y, [h, x])
    x = np.array([0.3, -0.8])
    gh, gx = run(mode, f, x)
    h = np.tanh(x)
    assert_close(gh, 2 * h * x, rtol=1e-14, atol=1e-15)
    assert_close(gx, h * h + 2 * h * x * (1 - h * h), rtol=1e-14, atol=1e-15)


def test_gradient_of_a_watched_tensor_with_respect_to_itself():
    x = fj.constant(np.array([1.0, 2.0]))
    with fj.GradientTape() as tape:
        tape.watch(x)
    assert_close(tape.gradient(x, x), np.ones(2))


@pytest.mark.parametrize("mode", MODES)
def test_variables_are_watched_when_trainable(mode):
    v = fj.Variable(np.array([1.0, -2.0]), name="v")
    frozen = fj.Variable(np.array([3.0, 0.5]), name="frozen", trainable=False)

    def f(x):
        with fj.GradientTape(persistent=True) as tape:
            y = fj.reduce_sum(v * v * frozen * x)       # v is read twice
        auto = tape.gradient(y, [v, frozen])
        zero = tape.gradient(y, frozen, unconnected_gradients="zero")
        with fj.GradientTape() as tape2:
            tape2.watch(frozen)
            y2 = fj.reduce_sum(v * frozen * frozen)
        explicit = tape2.gradient(y2, [v, frozen])
        with fj.GradientTape(watch_accessed_variables=False) as tape3:
            y3 = fj.reduce_sum(v * x)
        return auto, zero, explicit, tape3.gradient(y3, v)
    x = np.array([2.0, 1.0])
    (gv, gf), gf0, (ev, ef), g3 = run(mode, f, x)
    vv, ff = np.array([1.0, -2.0]), np.array([3.0, 0.5])
    assert_close(gv, 2 * vv * ff * x)
    assert gf is None
    assert_close(gf0, np.zeros(2))
    assert_close(ev, ff * ff)                 # v is trainable: still watched automatically
    assert_close(ef, 2 * vv * ff)
    assert g3 is None
    assert_close(v, vv)                       # reading under a tape changes nothing
    assert_close(frozen, ff)


def test_watched_variables_lists_the_trainable_reads():
    v = fj.Variable(np.array([1.0]))
    frozen = fj.Variable(np.array([2.0]), trainable=False)
    with fj.GradientTape() as tape:
        fj.reduce_sum(v * frozen)
    assert len(tape.watched_variables()) == 1


@pytest.mark.parametrize("mode", MODES)
def test_value_and_grad_with_argnums(mode):
    def f(x, y, z):
        return fj.reduce_sum(fj.sin(x) * y) + fj.reduce_sum(z)
    vg = fj.value_and_grad(f, argnums=(0, 1))
    x, y, z = np.array([0.5, 1.0]), np.array([2.0, -1.0]), np.array([7.0])
    value, grads = run(mode, vg, x, y, z)
    assert isinstance(grads, tuple) and len(grads) == 2
    assert_close(value, np.sum(np.sin(x) * y) + 7.0, rtol=1e-15, atol=1e-15)
    assert_close(grads[0], np.cos(x) * y, rtol=1e-15, atol=1e-15)
    assert_close(grads[1], np.sin(x), rtol=1e-15, atol=1e-15)
    value1, g1 = run(mode, fj.value_and_grad(f, argnums=1), x, y, z)     # an int argnums: one gradient
    assert_close(value1, value.numpy())
    assert_close(g1, np.sin(x), rtol=1e-15, atol=1e-15)
    g2 = run(mode, fj.grad(f), x, y, z)                                    # default argnums=0
    assert_close(g2, np.cos(x) * y, rtol=1e-15, atol=1e-15)


def test_value_and_grad_of_a_python_scalar_argument():
    value, g = fj.value_and_grad(lambda a: a * a * 3.0)(2.0)
    assert_close(value, np.float32(12.0))
    assert_close(g, np.float32(12.0))


@pytest.mark.parametrize("mode", MODES)
def test_gradient_structures_targets_and_output_gradients(mode):
    def f(x, y):
        with fj.GradientTape(persistent=True) as tape:
            tape.watch({"a": x, "b": [y]})
            p = x * y
            q = fj.reduce_sum(fj.exp(x))
        d = tape.gradient([p, q], {"a": x, "b": [y]})          # several targets are summed
        og = tape.gradient(p, x, output_gradients=fj.constant(np.array([10.0, 20.0])))
        return d, og
    x, y = np.array([0.1, 0.2]), np.array([3.0, 4.0])
    d, og = run(mode, f, x, y)
    assert set(d) == {"a", "b"} and isinstance(d["b"], list)
    assert_close(d["a"], y + np.exp(x), rtol=1e-15, atol=1e-15)
    assert_close(d["b"][0], x)
    assert_close(og, np.array([10.0, 20.0]) * y)


def test_stop_recording():
    x = fj.constant(np.array([1.0, 2.0]))
    with fj.GradientTape() as tape:
        tape.watch(x)
        with tape.stop_recording():
            hidden = x * x
        y = fj.reduce_sum(hidden * x)
    assert_close(tape.gradient(y, x), np.array([1.0, 4.0]))


@pytest.mark.parametrize("mode", MODES)
def test_reduce_max_shares_the_gradient_among_ties(mode):
    # TF: the gradient of max/min is split equally among the tied extrema, and
    # maximum/minimum send it to x on ties.
    def f(x, y):
        with fj.GradientTape(persistent=True) as tape:
            tape.watch([x, y])
            m = fj.reduce_max(x, axis=1)
            n = fj.reduce_min(x)
            mx = fj.maximum(x, y)
        return (tape.gradient(m, x), tape.gradient(n, x)) + tuple(tape.gradient(mx, [x, y]))
    x = np.array([[1.0, 3.0, 3.0], [0.0, 0.0, -1.0]])
    y = np.array([[1.0, 0.0, 5.0]])
    gm, gn, gx, gy = run(mode, f, x, y)
    assert_close(gm, np.array([[0, 0.5, 0.5], [0.5, 0.5, 0]]))
    assert_close(gn, np.array([[0, 0, 0], [0, 0, 1.0]]))
    assert_close(gx, np.array([[1.0, 1, 0], [0, 1, 0]]))
    assert_close(gy, np.array([[1.0, 0, 2]]))


@pytest.mark.parametrize("mode", MODES)
def test_reduce_prod_gradient_with_a_zero(mode):
    def f(x):
        with fj.GradientTape() as tape:
            tape.watch(x)
            y = fj.reduce_prod(x, axis=-1)
        return tape.gradient(y, x)
    g = run(mode, f, np.array([[2.0, 0.0, 3.0], [1.0, 2.0, 4.0]]))
    assert_close(g, np.array([[0.0, 6.0, 0.0], [8.0, 4.0, 2.0]]))


@pytest.mark.parametrize("mode", MODES)
def test_loss_gradients_are_stable_for_huge_logits(mode):
    def f(logits, labels, sparse):
        losses = (lambda x: fj.nn.softmax_cross_entropy_with_logits(labels, x),
                  lambda x: fj.nn.sparse_softmax_cross_entropy_with_logits(sparse, x),
                  lambda x: fj.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=x))
        return [fj.grad(lambda x: fj.reduce_sum(loss(x)))(logits) for loss in losses]
    logits = np.array([[1000.0, -1000.0, 0.0], [-500.0, 20.0, 800.0]], np.float32)
    labels = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    sparse = np.array([1, 2], np.int32)
    g_soft, g_sparse, g_sig = run(mode, f, logits, labels, sparse)
    softmax = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    sigmoid = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 1.0]], np.float32)
    assert_close(g_soft, softmax - labels)
    assert_close(g_sparse, softmax - labels)
    assert_close(g_sig, sigmoid - labels)


# --- under jit: gradients and variables, sizes, and the forward/backward split ----------------


def test_gradient_through_a_jitted_call():
    jf = fj.jit(lambda a: fj.reduce_sum(fj.sin(a) * a))
    x = np.array([0.5, -1.0, 2.0])
    expected = np.sin(x) + x * np.cos(x)
    xt = fj.constant(x)
    with fj.GradientTape() as tape:
        tape.watch(xt)
        y = jf(xt)
    g = tape.gradient(y, xt)
    assert g is not None, "the tape did not see the jitted call"
    assert_close(g, expected, rtol=1e-14, atol=1e-14)
    assert_close(fj.grad(jf)(x), expected, rtol=1e-14, atol=1e-14)


def test_jit_of_grad_of_a_jitted_function():
    jf = fj.jit(lambda a: fj.reduce_sum(fj.sin(a) * a))
    x = np.array([0.5, -1.0, 2.0])
    expected = np.sin(x) + x * np.cos(x)
    assert_close(fj.jit(lambda a: fj.grad(jf)(a))(x), expected, rtol=1e-14, atol=1e-14)  # fine
    got = fj.jit(fj.grad(jf))(x)
    assert got.shape == (3,), f"got {got!r}, the value of jf instead of its gradient"
    assert_close(got, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_of_a_single_element(mode):
    def f(x):
        with fj.GradientTape() as tape:
            tape.watch(x)
            y = x[1, 2] * x[2:, 1:2]
        return tape.gradient(y, x)
    x = np.arange(12.0).reshape(3, 4)
    expected = np.zeros((3, 4))
    expected[1, 2] = x[2, 1]
    expected[2, 1] = x[1, 2]
    assert_close(run(mode, f, x), expected)


def test_gradient_of_a_python_float_has_the_same_dtype_under_jit():
    f = fj.grad(lambda a: a * a * 3.0)
    eager, jitted = f(2.0), fj.jit(f)(2.0)
    assert_close(eager, np.float32(12.0))
    assert jitted.dtype is eager.dtype


def test_jit_gradient_of_variables_matches_eager(rng):
    w = fj.Variable(rng.standard_normal((4, 3)), name="w")
    b = fj.Variable(np.zeros(3), name="b")

    def step(x, labels):
        with fj.GradientTape() as tape:
            logits = x @ w + b
            loss = fj.reduce_mean(fj.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return loss, tape.gradient(loss, [w, b])
    x = rng.standard_normal((5, 4))
    labels = np.array([0, 2, 1, 1, 0], np.int32)
    loss_e, (gw_e, gb_e) = step(fj.constant(x), fj.constant(labels))
    loss_j, (gw_j, gb_j) = fj.jit(step)(x, labels)
    assert_close(loss_j, loss_e.numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
    assert_close(gw_j, gw_e.numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
    assert_close(gb_j, gb_e.numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
    # and they are right: check d loss / d b against central differences
    def loss_at(bv):
        b.assign(bv)
        return float(step(fj.constant(x), fj.constant(labels))[0])
    b0 = b.numpy().copy()
    num = np.array([(loss_at(b0 + EPS * e) - loss_at(b0 - EPS * e)) / (2 * EPS) for e in np.eye(3)])
    b.assign(b0)
    np.testing.assert_allclose(gb_e.numpy(), num, rtol=1e-6, atol=1e-8)


def _sized_model(x, labels, w):
    with fj.GradientTape() as tape:
        tape.watch([x, w])
        h = fj.concat([x[1:], x[:1]], 0) * fj.pad(x, [[0, 0], [1, 0]])[:, 1:]
        h = h + fj.gather(x, [0, 0, 1])[:1] + fj.reduce_mean(x, axis=0)
        logits = fj.tanh(h @ w)
        loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(labels, logits)) + \
            fj.reduce_sum(fj.reduce_max(logits, axis=0))
    return loss, tape.gradient(loss, [x, w])


def test_jit_gradient_reuses_the_compiled_code_for_a_new_batch_size(rng, monkeypatch):
    monkeypatch.setattr(fj.config, "compile_entry_after", 10**9)   # keep the (slow) entry compile out
    f = fj.jit(_sized_model)
    w = rng.standard_normal((4, 3))
    traces = None
    for n in (6, 9, 4):
        x = rng.standard_normal((n, 4))
        labels = np.eye(3)[rng.integers(0, 3, n)]
        loss, (gx, gw) = f(x, labels, w)
        le, (gxe, gwe) = _sized_model(fj.constant(x), fj.constant(labels), fj.constant(w))
        assert gx.shape == (n, 4)
        assert_close(loss, le.numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
        assert_close(gx, gxe.numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
        assert_close(gw, gwe.numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
        if traces is None:
            traces = fj.stats()["traces"]
    assert fj.stats()["traces"] == traces, "a new batch size traced the gradient function again"


def test_inspect_shows_the_backward_function_and_the_residuals(rng):
    def loss_fn(x, w1, w2):
        return fj.reduce_mean(fj.square(fj.tanh(x @ w1) @ w2))

    @fj.jit
    def train(x, w1, w2):
        with fj.GradientTape() as tape:
            tape.watch([w1, w2])
            loss = loss_fn(x, w1, w2)
        return loss, tape.gradient(loss, [w1, w2])

    evaluate = fj.jit(loss_fn)
    with_grad = fj.jit(fj.value_and_grad(loss_fn, argnums=(1, 2)))
    x, w1, w2 = rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    for f in (train, with_grad):
        info = f.inspect(x, w1, w2)
        assert info.backward_source is not None and "def " in info.backward_source
        assert len(info.saved) > 0, "the forward saves no residuals for the backward"
        assert "backward function" in str(info)
        loss, (g1, g2) = f(x, w1, w2)
        le, (g1e, g2e) = train.fn(fj.constant(x), fj.constant(w1), fj.constant(w2))
        assert_close(loss, le.numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
        assert_close(g1, g1e.numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
        assert_close(g2, g2e.numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
    # later calls run the njit-compiled entries of both functions: same results
    first = train(x, w1, w2)
    for _ in range(fj.config.compile_entry_after + 1):
        loss, (g1, g2) = train(x, w1, w2)
        assert_close(loss, first[0].numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
        assert_close(g1, first[1][0].numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
        assert_close(g2, first[1][1].numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
    info = evaluate.inspect(x, w1, w2)
    assert info.backward_source is None
    assert info.saved == []
    assert_close(evaluate(x, w1, w2), train(x, w1, w2)[0].numpy(), rtol=JIT_RTOL, atol=JIT_ATOL)
