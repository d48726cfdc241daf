"""Scalar expressions: what an elementwise op computes at one element, as data.

An elementwise op's `emit(args, attrs, in_dtypes, dtype)` receives its operands as
`Expr`s and returns an `Expr` built with Python's arithmetic operators and the functions
below. Each backend renders it in its own language (backends/pyexpr.py for the Numba
backends, which map the math functions to their own scalar libraries), and the
compiler reads it: `uses_transcendental` says whether a loop must keep IEEE order.

Nodes are small and immutable; `eq=False` keeps `==` free (use `eq(a, b)` for the
comparison) and makes nodes hashable by identity."""
from dataclasses import dataclass

# The math functions an expression may call. `True`: range-reduced transcendental
# (a loop holding one in float64 must not be reassociated, see the CPU codegen).
MATH = {"exp": True, "log": True, "expm1": True, "log1p": True, "tanh": True,
        "sigmoid": True, "sin": True, "cos": True,
        "sqrt": False, "floor": False, "ceil": False, "abs": False,
        # counter-based random draws: (key, linear element index)
        "rand_uniform": False, "rand_normal": False, "rand_truncated_normal": False}

BINARY = {"lor": "or", "add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%",
          "pow": "**", "and": "&", "or": "|", "xor": "^",
          "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


@dataclass(frozen=True, eq=False)
class Expr:
    """op: 'var' (name), 'const' (value, dtype), 'neg', 'not', a BINARY key, 'select'
    (cond, if_true, if_false), 'cast' (dtype), 'call' (name in MATH, dtype of the
    result), 'extern' (name: a kernel symbol; attrs: keyword literals)."""
    op: str
    args: tuple = ()
    name: str = None
    dtype: object = None
    value: object = None
    attrs: tuple = ()

    def __add__(self, o):
        return Expr("add", (self, o))

    def __sub__(self, o):
        return Expr("sub", (self, o))

    def __mul__(self, o):
        return Expr("mul", (self, o))

    def __truediv__(self, o):
        return Expr("div", (self, o))

    def __floordiv__(self, o):
        return Expr("floordiv", (self, o))

    def __mod__(self, o):
        return Expr("mod", (self, o))

    def __pow__(self, o):
        return Expr("pow", (self, o))

    def __and__(self, o):
        return Expr("and", (self, o))

    def __or__(self, o):
        return Expr("or", (self, o))

    def __xor__(self, o):
        return Expr("xor", (self, o))

    def __neg__(self):
        return Expr("neg", (self,))


def var(name):
    return Expr("var", name=name)


def const(value, dtype):
    return Expr("const", value=value, dtype=dtype)


def lt(a, b):
    return Expr("lt", (a, b))


def le(a, b):
    return Expr("le", (a, b))


def gt(a, b):
    return Expr("gt", (a, b))


def ge(a, b):
    return Expr("ge", (a, b))


def eq(a, b):
    return Expr("eq", (a, b))


def ne(a, b):
    return Expr("ne", (a, b))


def either(a, b):
    """a or b, as a short-circuit test (a | b is the bitwise op on bools)."""
    return Expr("lor", (a, b))


def logical_not(a):
    return Expr("not", (a,))


def select(cond, if_true, if_false):
    return Expr("select", (cond, if_true, if_false))


def cast(x, dtype):
    return Expr("cast", (x,), dtype=dtype)


def call(fn, dtype, *args):
    """Math function `fn` (a MATH key) of args, computed in (and returning) `dtype`."""
    if fn not in MATH:
        raise ValueError(f"unknown scalar function {fn!r} (known: {', '.join(sorted(MATH))})")
    return Expr("call", tuple(args), name=fn, dtype=dtype)


def extern(symbol, args, attrs=None):
    """A call of a kernel the backend provides under `symbol` (a custom op's), with
    attributes as keyword literals."""
    return Expr("extern", tuple(args), name=symbol, attrs=tuple(sorted((attrs or {}).items())))


def is_nan(x):
    """x != x: true only for NaN."""
    return ne(x, x)


def walk(e):
    """Every node of e, each once."""
    seen, stack = set(), [e]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        stack.extend(n.args)


def uses_transcendental(e, dtype_name=None):
    """Whether e calls a range-reduced function (of dtype `dtype_name` if given) or a
    user kernel (whose body flowjit cannot see)."""
    for n in walk(e):
        if n.op == "extern":
            return True
        if n.op == "call" and MATH[n.name] and (dtype_name is None or n.dtype.name == dtype_name):
            return True
    return False
