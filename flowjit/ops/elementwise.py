"""Elementwise ops: each with its shape/dtype rule, NumPy reference and scalar code.

The scalar code is an expression in flowjit's scalar language: Python arithmetic on
NumPy scalar types plus the functions `exp_f32`, `log_f64`, `tanh_f32`, ... that each
backend provides (backends/cpu/scalar.py for the CPU)."""
import numpy as np

from .. import dtypes as D
from ..ir.registry import register
from ..ir.shapes import is_one
from .rules import broadcast_shapes, same_dtype, require
from ..errors import InvalidArgumentError, ShapeError

FLOAT, INT, BOOL = ("float",), ("int",), ("bool",)
NUM = ("float", "int")
ANY = ("float", "int", "bool")


def npt(dtype):
    """Scalar constructor name of a dtype in generated code."""
    return {"float32": "np.float32", "float64": "np.float64", "int32": "np.int32",
            "int64": "np.int64", "bool": "np.bool_"}[dtype.name]


def sfx(dtype):
    return "f32" if dtype.name == "float32" else "f64"


# --- unary ----------------------------------------------------------------------
def _unary(name, ref, emit, kinds, out=None, cost=1, api=()):
    def infer(shapes, dts, attrs):
        require(dts[0], kinds, name)
        return shapes[0], (out or dts[0])
    register(name, "elementwise", infer, lambda a, at, s, d: ref(a[0]), emit=emit, cost=cost,
             transcendental=cost > 1, api=api)


def _sigmoid_ref(x):
    e = np.exp(-np.abs(x))
    s = 1 / (1 + e)
    return np.where(x >= 0, s, e * s).astype(x.dtype)


_unary("negative", np.negative, lambda a, at, i, d: f"(-{a[0]})", NUM)
_unary("abs", np.abs, lambda a, at, i, d: f"abs({a[0]})", NUM)
_unary("sign", np.sign, lambda a, at, i, d: (
    f"({a[0]} if {a[0]} != {a[0]} else {npt(d)}(1 if {a[0]} > 0 else (-1 if {a[0]} < 0 else 0)))"
    if d.is_floating else f"{npt(d)}(1 if {a[0]} > 0 else (-1 if {a[0]} < 0 else 0))"), NUM)
_unary("square", np.square, lambda a, at, i, d: f"({a[0]} * {a[0]})", NUM)
_unary("sqrt", np.sqrt, lambda a, at, i, d: f"np.sqrt({a[0]})", FLOAT)
_unary("rsqrt", lambda x: (1 / np.sqrt(x)).astype(x.dtype),
       lambda a, at, i, d: f"({npt(d)}(1.0) / np.sqrt({a[0]}))", FLOAT)
_unary("exp", np.exp, lambda a, at, i, d: f"exp_{sfx(d)}({a[0]})", FLOAT, cost=8)
_unary("log", np.log, lambda a, at, i, d: f"log_{sfx(d)}({a[0]})", FLOAT, cost=8)
_unary("expm1", np.expm1, lambda a, at, i, d: f"expm1_{sfx(d)}({a[0]})", FLOAT, cost=8)
_unary("log1p", np.log1p, lambda a, at, i, d: f"log1p_{sfx(d)}({a[0]})", FLOAT, cost=8)
_unary("tanh", np.tanh, lambda a, at, i, d: f"tanh_{sfx(d)}({a[0]})", FLOAT, cost=10)
_unary("sigmoid", _sigmoid_ref, lambda a, at, i, d: f"sigmoid_{sfx(d)}({a[0]})", FLOAT, cost=10)
_unary("softplus", lambda x: np.logaddexp(np.zeros((), x.dtype), x),    # log(1 + e^x), never overflows
       lambda a, at, i, d: f"(({a[0]} if {a[0]} > 0 else {npt(d)}(0)) + "
                           f"log1p_{sfx(d)}(exp_{sfx(d)}(-abs({a[0]}))))",
       FLOAT, cost=8, api=("softplus", "nn.softplus"))
_unary("sin", np.sin, lambda a, at, i, d: f"np.sin({a[0]})", FLOAT, cost=8)
_unary("cos", np.cos, lambda a, at, i, d: f"np.cos({a[0]})", FLOAT, cost=8)
_unary("floor", np.floor, lambda a, at, i, d: f"np.floor({a[0]})", FLOAT)
_unary("ceil", np.ceil, lambda a, at, i, d: f"np.ceil({a[0]})", FLOAT)
_unary("logical_not", np.logical_not, lambda a, at, i, d: f"(not {a[0]})", BOOL)
_unary("identity", lambda x: x.copy(), lambda a, at, i, d: a[0], ANY)


def _cast_infer(shapes, dts, attrs):
    return shapes[0], attrs["dtype"]


def _cast_emit(a, attrs, ins, d):
    if d.is_bool:
        return f"({a[0]} != 0)"
    return f"{npt(d)}({a[0]})"


register("cast", "elementwise", _cast_infer,
         lambda a, at, s, d: a[0].astype(d.np), emit=_cast_emit)


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
def _binary(name, ref, emit, kinds, out=None, cost=1):
    def infer(shapes, dts, attrs):
        dt = same_dtype(dts)
        require(dt, kinds, name)
        res = out(dt) if callable(out) else (out or dt)
        return broadcast_shapes(*shapes), res
    register(name, "elementwise", infer, lambda a, at, s, d: ref(a[0], a[1]), emit=emit, cost=cost,
             transcendental=cost > 1)


def _truediv_ref(x, y):
    if x.dtype.kind in "iu":
        return np.true_divide(x.astype(np.float64), y.astype(np.float64))
    return np.true_divide(x, y)


def _div_emit(a, at, ins, d):
    if ins[0].is_integer:
        return f"(np.float64({a[0]}) / np.float64({a[1]}))"
    return f"({a[0]} / {a[1]})"


def _floordiv_ref(x, y):
    return np.floor_divide(x, y)


def _pow_ref(x, y):
    # NumPy's own ValueError would not name the op; the frontend (api.pow) already
    # rejects an exponent known while tracing, this catches any other caller
    if x.dtype.kind in "iu" and np.any(y < 0):
        raise InvalidArgumentError(f"pow: Integers to negative integer powers are not allowed "
                                   f"(exponent {np.min(y)}, base {x.dtype}{x.shape})")
    return np.power(x, y)


def _pow_emit(a, at, ins, d):
    return f"{npt(d)}({a[0]} ** {a[1]})"


_binary("add", np.add, lambda a, at, i, d: f"({a[0]} + {a[1]})", NUM)
_binary("subtract", np.subtract, lambda a, at, i, d: f"({a[0]} - {a[1]})", NUM)
_binary("multiply", np.multiply, lambda a, at, i, d: f"({a[0]} * {a[1]})", NUM)
_binary("divide", _truediv_ref, _div_emit, NUM, out=lambda dt: D.float64 if dt.is_integer else dt)
_binary("floordiv", _floordiv_ref, lambda a, at, i, d: f"({a[0]} // {a[1]})", NUM)
_binary("floormod", np.mod, lambda a, at, i, d: f"({a[0]} % {a[1]})", NUM)
_binary("pow", _pow_ref, _pow_emit, NUM, cost=8)
_binary("maximum", np.maximum, lambda a, at, i, d: (
    f"({a[0]} if ({a[0]} > {a[1]} or {a[0]} != {a[0]}) else {a[1]})" if d.is_floating
    else f"({a[0]} if {a[0]} > {a[1]} else {a[1]})"), NUM)
_binary("minimum", np.minimum, lambda a, at, i, d: (
    f"({a[0]} if ({a[0]} < {a[1]} or {a[0]} != {a[0]}) else {a[1]})" if d.is_floating
    else f"({a[0]} if {a[0]} < {a[1]} else {a[1]})"), NUM)
for _n, _f, _s in (("equal", np.equal, "=="), ("not_equal", np.not_equal, "!="),
                   ("less", np.less, "<"), ("less_equal", np.less_equal, "<="),
                   ("greater", np.greater, ">"), ("greater_equal", np.greater_equal, ">=")):
    _binary(_n, _f, (lambda s: lambda a, at, i, d: f"({a[0]} {s} {a[1]})")(_s),
            ANY if _n in ("equal", "not_equal") else NUM, out=D.bool_)
_binary("logical_and", np.logical_and, lambda a, at, i, d: f"({a[0]} & {a[1]})", BOOL)
_binary("logical_or", np.logical_or, lambda a, at, i, d: f"({a[0]} | {a[1]})", BOOL)
_binary("logical_xor", np.logical_xor, lambda a, at, i, d: f"({a[0]} ^ {a[1]})", BOOL)


# --- ternary --------------------------------------------------------------------
def _where_infer(shapes, dts, attrs):
    if not dts[0].is_bool:
        from ..errors import DTypeError
        raise DTypeError(f"where: condition must be bool, got {dts[0].name}")
    dt = same_dtype(dts[1:])
    return broadcast_shapes(*shapes), dt


register("where", "elementwise", _where_infer, lambda a, at, s, d: np.where(a[0], a[1], a[2]),
         emit=lambda a, at, i, d: f"({a[1]} if {a[0]} else {a[2]})")


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
         emit=lambda a, at, i, d: f"{npt(d)}({a[0]})")

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
         emit=lambda a, at, i, d: f"({npt(d)}(0) if {a[0]} < 0 else {a[0]})")
_grads()
