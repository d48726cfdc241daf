"""Elementwise ops: each with its shape/dtype rule, NumPy reference and scalar code.

The scalar code is a structured expression (ir/scalar.py, imported as S): `emit`
receives the operands as expressions and builds the result with Python operators and
S's functions (S.call("exp", dtype, x) is e^x computed in dtype); each backend renders
it in its own language."""
import numpy as np

from .. import dtypes as D
from ..ir import scalar as S
from ..ir.registry import register
from ..ir.shapes import is_one
from .rules import broadcast_shapes, same_dtype, require
from ..errors import InvalidArgumentError, ShapeError

FLOAT, INT, BOOL = ("float",), ("int",), ("bool",)
NUM = ("float", "int")
ANY = ("float", "int", "bool")


# --- unary ----------------------------------------------------------------------
def _unary(name, ref, scalar, kinds, out=None, cost=1, api=()):
    """scalar(x, dtype) -> the output element's expression."""
    def infer(shapes, dts, attrs):
        require(dts[0], kinds, name)
        return shapes[0], (out or dts[0])
    register(name, "elementwise", infer, lambda a, at, s, d: ref(a[0]),
             emit=lambda a, at, i, d: scalar(a[0], d), cost=cost, api=api)


def _sigmoid_ref(x):
    e = np.exp(-np.abs(x))
    s = 1 / (1 + e)
    return np.where(x >= 0, s, e * s).astype(x.dtype)


def _sign(x, d):
    zero = S.const(0, d)
    s = S.select(S.gt(x, zero), S.const(1, d), S.select(S.lt(x, zero), S.const(-1, d), zero))
    return S.select(S.is_nan(x), x, s) if d.is_floating else s


def _math(fn):
    return lambda x, d: S.call(fn, d, x)


def _softplus(x, d):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): never overflows
    pos = S.select(S.gt(x, S.const(0, d)), x, S.const(0, d))
    return pos + S.call("log1p", d, S.call("exp", d, -S.call("abs", d, x)))


_unary("negative", np.negative, lambda x, d: -x, NUM)
_unary("abs", np.abs, _math("abs"), NUM)
_unary("sign", np.sign, _sign, NUM)
_unary("square", np.square, lambda x, d: x * x, NUM)
_unary("sqrt", np.sqrt, _math("sqrt"), FLOAT)
_unary("rsqrt", lambda x: (1 / np.sqrt(x)).astype(x.dtype),
       lambda x, d: S.const(1.0, d) / S.call("sqrt", d, x), FLOAT)
_unary("exp", np.exp, _math("exp"), FLOAT, cost=8)
_unary("log", np.log, _math("log"), FLOAT, cost=8)
_unary("expm1", np.expm1, _math("expm1"), FLOAT, cost=8)
_unary("log1p", np.log1p, _math("log1p"), FLOAT, cost=8)
_unary("tanh", np.tanh, _math("tanh"), FLOAT, cost=10)
_unary("sigmoid", _sigmoid_ref, _math("sigmoid"), FLOAT, cost=10)
_unary("softplus", lambda x: np.logaddexp(np.zeros((), x.dtype), x), _softplus,
       FLOAT, cost=8, api=("softplus", "nn.softplus"))
_unary("sin", np.sin, _math("sin"), FLOAT, cost=8)
_unary("cos", np.cos, _math("cos"), FLOAT, cost=8)
_unary("floor", np.floor, _math("floor"), FLOAT)
_unary("ceil", np.ceil, _math("ceil"), FLOAT)
_unary("logical_not", np.logical_not, lambda x, d: S.logical_not(x), BOOL)
_unary("identity", lambda x: x.copy(), lambda x, d: x, ANY)


def _cast_infer(shapes, dts, attrs):
    return shapes[0], attrs["dtype"]


register("cast", "elementwise", _cast_infer,
         lambda a, at, s, d: a[0].astype(d.np), emit=lambda a, at, i, d: S.cast(a[0], d))


def _bcast_infer(shapes, dts, attrs):
    target = tuple(attrs["shape"])
    try:
        out = broadcast_shapes(shapes[0], target)
    except ShapeError:
        raise ShapeError(f"cannot broadcast shape {tuple(shapes[0])} to {target}")
    if len(out) != len(target) or any(is_one(t) and not is_one(o) for o, t in zip(out, target)):
        raise ShapeError(f"cannot broadcast shape {tuple(shapes[0])} to {target}")
    return out, dts[0]


register("broadcast_to", "elementwise", _bcast_infer,
         lambda a, at, s, d: np.broadcast_to(a[0], tuple(s)).copy(),
         emit=lambda a, at, i, d: a[0])


# --- binary ---------------------------------------------------------------------
def _binary(name, ref, scalar, kinds, out=None, cost=1):
    """scalar(x, y, dtype of the output, dtype of the inputs) -> the output element."""
    def infer(shapes, dts, attrs):
        dt = same_dtype(dts)
        require(dt, kinds, name)
        res = out(dt) if callable(out) else (out or dt)
        return broadcast_shapes(*shapes), res
    register(name, "elementwise", infer, lambda a, at, s, d: ref(a[0], a[1]),
             emit=lambda a, at, i, d: scalar(a[0], a[1], d, i[0]), cost=cost)


def _truediv_ref(x, y):
    if x.dtype.kind in "iu":
        return np.true_divide(x.astype(np.float64), y.astype(np.float64))
    return np.true_divide(x, y)


def _divide(x, y, d, dt_in):
    if dt_in.is_integer:
        return S.cast(x, D.float64) / S.cast(y, D.float64)
    return x / y


def _floordiv_ref(x, y):
    return np.floor_divide(x, y)


def _pow_ref(x, y):
    # NumPy's own ValueError would not name the op; the frontend (api.pow) already
    # rejects an exponent known while tracing, this catches any other caller
    if x.dtype.kind in "iu" and np.any(y < 0):
        raise InvalidArgumentError(f"pow: Integers to negative integer powers are not allowed "
                                   f"(exponent {np.min(y)}, base {x.dtype}{x.shape})")
    return np.power(x, y)


def _extremum(cmp):
    """maximum/minimum: NaN in x or y gives NaN, as np.maximum and tf.maximum do."""
    def scalar(x, y, d, dt_in):
        take_x = cmp(x, y)
        if d.is_floating:
            take_x = S.either(take_x, S.is_nan(x))
        return S.select(take_x, x, y)
    return scalar


_binary("add", np.add, lambda x, y, d, i: x + y, NUM)
_binary("subtract", np.subtract, lambda x, y, d, i: x - y, NUM)
_binary("multiply", np.multiply, lambda x, y, d, i: x * y, NUM)
_binary("divide", _truediv_ref, _divide, NUM, out=lambda dt: D.float64 if dt.is_integer else dt)
_binary("floordiv", _floordiv_ref, lambda x, y, d, i: x // y, NUM)
_binary("floormod", np.mod, lambda x, y, d, i: x % y, NUM)
_binary("pow", _pow_ref, lambda x, y, d, i: S.cast(x ** y, d), NUM, cost=8)
_binary("maximum", np.maximum, _extremum(S.gt), NUM)
_binary("minimum", np.minimum, _extremum(S.lt), NUM)
for _n, _f, _cmp in (("equal", np.equal, S.eq), ("not_equal", np.not_equal, S.ne),
                     ("less", np.less, S.lt), ("less_equal", np.less_equal, S.le),
                     ("greater", np.greater, S.gt), ("greater_equal", np.greater_equal, S.ge)):
    _binary(_n, _f, (lambda c: lambda x, y, d, i: c(x, y))(_cmp),
            ANY if _n in ("equal", "not_equal") else NUM, out=D.bool_)
_binary("logical_and", np.logical_and, lambda x, y, d, i: x & y, BOOL)
_binary("logical_or", np.logical_or, lambda x, y, d, i: x | y, BOOL)
_binary("logical_xor", np.logical_xor, lambda x, y, d, i: x ^ y, BOOL)


# --- ternary --------------------------------------------------------------------
def _where_infer(shapes, dts, attrs):
    if not dts[0].is_bool:
        from ..errors import DTypeError
        raise DTypeError(f"where: condition must be bool, got {dts[0].name}")
    dt = same_dtype(dts[1:])
    return broadcast_shapes(*shapes), dt


register("where", "elementwise", _where_infer, lambda a, at, s, d: np.where(a[0], a[1], a[2]),
         emit=lambda a, at, i, d: S.select(a[0], a[1], a[2]))


# --- sources computed from the loop index ---------------------------------------
def _iota_infer(shapes, dts, attrs):
    return tuple(attrs["shape"]), attrs["dtype"]


def _iota_ref(a, attrs, shape, dtype):
    shape = tuple(int(s) for s in shape)
    ax = attrs["axis"]
    r = np.arange(shape[ax], dtype=dtype.np).reshape([-1 if i == ax else 1 for i in range(len(shape))])
    return np.broadcast_to(r, shape).copy()


# `iota` has no inputs: its value at each element is the loop index along `axis`;
# the fusion pass gives it the index variable (emit receives it as a[0]).
register("iota", "elementwise", _iota_infer, _iota_ref,
         emit=lambda a, at, i, d: S.cast(a[0], d))

register("stop_gradient", "elementwise", lambda s, d, a: (s[0], d[0]), lambda a, at, s, d: a[0],
         emit=lambda a, at, i, d: a[0])


# --- a size known only at run time, as a scalar tensor ---------------------------
register("sym_scalar", "source", lambda s, d, a: ((), a["dtype"]),
         lambda a, at, s, d: np.asarray(int(at["expr"]), d.np))


# --- gradient rules (side by side with the ops above, registered here) -----------
def _grads():
    from .grads import api, defgrad, unbroadcast

    def u(fn):
        return lambda ins, out, g, at: [fn(api(), ins[0], out, g)]

    defgrad("negative", u(lambda F, x, z, g: -g))
    defgrad("abs", u(lambda F, x, z, g: g * F.sign(x)))
    defgrad("sign", lambda ins, out, g, at: [None])
    defgrad("square", u(lambda F, x, z, g: g * (x * 2.0)))
    defgrad("sqrt", u(lambda F, x, z, g: g * 0.5 / z))
    defgrad("rsqrt", u(lambda F, x, z, g: g * -0.5 * z * z * z))
    defgrad("exp", u(lambda F, x, z, g: g * z))
    defgrad("expm1", u(lambda F, x, z, g: g * (z + 1.0)))
    defgrad("log", u(lambda F, x, z, g: g / x))
    defgrad("log1p", u(lambda F, x, z, g: g / (x + 1.0)))
    defgrad("tanh", u(lambda F, x, z, g: g * (1.0 - z * z)))
    defgrad("sigmoid", u(lambda F, x, z, g: g * z * (1.0 - z)))
    defgrad("softplus", u(lambda F, x, z, g: g * F.sigmoid(x)))
    defgrad("sin", u(lambda F, x, z, g: g * F.cos(x)))
    defgrad("cos", u(lambda F, x, z, g: -g * F.sin(x)))
    for name in ("floor", "ceil", "logical_not", "stop_gradient", "iota", "sym_scalar",
                 "equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
                 "logical_and", "logical_or", "logical_xor", "floordiv"):
        defgrad(name, lambda ins, out, g, at: [None] * len(ins))
    defgrad("identity", lambda ins, out, g, at: [g])
    defgrad("broadcast_to", lambda ins, out, g, at: [unbroadcast(g, ins[0].shape)])

    def cast_grad(ins, out, g, at):
        if ins[0].dtype.is_floating and out.dtype.is_floating:
            return [api().cast(g, ins[0].dtype)]
        return [None]
    defgrad("cast", cast_grad)

    def b(fx, fy):
        def rule(ins, out, g, at):
            F = api()
            x, y = ins
            return [unbroadcast(fx(F, x, y, out, g), x.shape) if fx else None,
                    unbroadcast(fy(F, x, y, out, g), y.shape) if fy else None]
        return rule

    defgrad("add", b(lambda F, x, y, z, g: g, lambda F, x, y, z, g: g))
    defgrad("floormod", b(lambda F, x, y, z, g: g, lambda F, x, y, z, g: -g * F.floor(x / y)))
    defgrad("subtract", b(lambda F, x, y, z, g: g, lambda F, x, y, z, g: -g))
    defgrad("multiply", b(lambda F, x, y, z, g: g * y, lambda F, x, y, z, g: g * x))
    defgrad("divide", b(lambda F, x, y, z, g: g / y, lambda F, x, y, z, g: -g * x / (y * y)))
    defgrad("pow", b(lambda F, x, y, z, g: g * y * F.pow(x, y - 1.0),
                     lambda F, x, y, z, g: g * z * F.where(x > 0.0, F.log(F.where(x > 0.0, x, F.ones_like(x))),
                                                           F.zeros_like(x))))
    # TF: maximum sends the gradient to x where x >= y, minimum where x <= y
    defgrad("maximum", b(lambda F, x, y, z, g: F.where(x >= y, g, F.zeros_like(g)),
                         lambda F, x, y, z, g: F.where(x >= y, F.zeros_like(g), g)))
    defgrad("minimum", b(lambda F, x, y, z, g: F.where(x <= y, g, F.zeros_like(g)),
                         lambda F, x, y, z, g: F.where(x <= y, F.zeros_like(g), g)))

    def where_grad(ins, out, g, at):
        F = api()
        c, x, y = ins
        zero = F.zeros_like(g)
        return [None, unbroadcast(F.where(c, g, zero), x.shape), unbroadcast(F.where(c, zero, g), y.shape)]
    defgrad("where", where_grad)

    def relu_grad(ins, out, g, at):
        F = api()
        return [F.where(out > 0.0, g, F.zeros_like(g))]
    defgrad("relu", relu_grad)


register("relu", "elementwise", lambda s, d, a: (require(d[0], NUM, "relu") or (s[0], d[0])),
         lambda a, at, s, d: np.maximum(a[0], 0).astype(a[0].dtype),
         # `0 if x < 0 else x`: NaN passes through as in np.maximum(x, 0) and tf.nn.relu (a
         # test `x > 0` would turn it into 0); LLVM still makes it one vector max
         emit=lambda a, at, i, d: S.select(S.lt(a[0], S.const(0, d)), S.const(0, d), a[0]))
_grads()
