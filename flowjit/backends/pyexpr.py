"""Scalar expressions (ir/scalar.py) as Numba-Python source, for both Numba backends.

The operators read the same on the CPU and the GPU; what differs is the name of each
math function, which the backend passes in as `fn_name(call_node) -> str`."""
import math

from ..ir.scalar import BINARY

SCALAR_TYPE = {"float32": "np.float32", "float64": "np.float64", "int32": "np.int32",
               "int64": "np.int64", "bool": "np.bool_"}


def npt(dtype):
    """Scalar constructor of a dtype in generated code."""
    return SCALAR_TYPE[dtype.name]


def sfx(dtype):
    """The suffix of a scalar-library function computing in dtype (exp_f32, log_f64)."""
    return "f32" if dtype.name == "float32" else "f64"


def const_src(value, dtype):
    if dtype.is_bool:
        return "True" if value else "False"
    if isinstance(value, float) and not math.isfinite(value):
        lit = "np.nan" if value != value else ("np.inf" if value > 0 else "-np.inf")
        return f"{npt(dtype)}({lit})"
    return f"{npt(dtype)}({value!r})"


def render(e, fn_name):
    """Source of expression e."""
    r = _RENDER.get(e.op)
    if r is not None:
        return r(e, fn_name)
    a, b = (render(x, fn_name) for x in e.args)
    return f"({a} {BINARY[e.op]} {b})"


def _args(e, fn_name):
    return ", ".join(render(x, fn_name) for x in e.args)


def _cast(e, fn_name):
    x = render(e.args[0], fn_name)
    return f"({x} != 0)" if e.dtype.is_bool else f"{npt(e.dtype)}({x})"


def _select(e, fn_name):
    c, t, f = (render(x, fn_name) for x in e.args)
    return f"({t} if {c} else {f})"


def _extern(e, fn_name):
    kw = "".join(f", {k}={v!r}" for k, v in e.attrs)
    return f"{e.name}({_args(e, fn_name)}{kw})"


_RENDER = {
    "var": lambda e, f: e.name,
    "const": lambda e, f: const_src(e.value, e.dtype),
    "neg": lambda e, f: f"(-{render(e.args[0], f)})",
    "not": lambda e, f: f"(not {render(e.args[0], f)})",
    "select": _select,
    "cast": _cast,
    "call": lambda e, f: f"{f(e)}({_args(e, f)})",
    "extern": _extern,
}
