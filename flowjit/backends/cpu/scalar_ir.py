"""The scalar math library (scalar.py) as Numba intrinsics that emit its LLVM IR
directly: a kernel's `sigmoid_f32(x)` is one call for Numba to type and lower.

inline_math.py writes each call out as the callee's statements, and Numba then typed,
lowered and cleaned up every one of them per call site: the LSTM cell (three sigmoids,
two tanhs) spent about 0.35 s of its 0.55 s compile there. Here the same straight-line
body (read from scalar.py's source by inline_math._definition, so nothing is written
twice) is walked at the call's lowering: each operation is typed by Numba's typing
context (memoised per operation and argument types) and lowered by Numba's own
implementation of it (`context.get_function`, `context.cast`), so the instructions are
those Numba emitted for the inlined statements, and the kernel's fast-math flags reach
them the same way (a rewrite of the whole module). tests/test_scalar_math.py compares the
two, bit for bit, for every function.

The Python subset: assignments (tuples too) and one `return`; + - * / >> << & |, unary
-, one comparison, `and`/`or` of booleans, `a if c else b` (both sides are pure, so a
select), calls of np.float32/float64/int32/int64, np.floor, abs, min and max of two,
scalar.py's intrinsics and its other straight-line functions; names of numbers, np.inf
and np.nan. A function using anything else is not lowered here (`lowerable`), and
inline_math expands it as before.
"""
import ast
import operator
from dataclasses import dataclass

import numpy as np
from numba import types
from numba.core import typing
from numba.np.numpy_support import from_dtype
from numba.extending import intrinsic

from . import scalar
from .inline_math import _definition, _inline_dispatcher

BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.RShift: operator.rshift, ast.LShift: operator.lshift, ast.BitAnd: operator.and_,
          ast.BitOr: operator.or_}
COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
           ast.Eq: operator.eq, ast.NotEq: operator.ne}
CASTS = {"float32", "float64", "int32", "int64"}
NP_CONSTANTS = {"inf": np.inf, "nan": np.nan}


class Unsupported(Exception):
    pass


@dataclass
class Val:
    """A typed value: a Python number known now (`const`), or an LLVM value (None while
    only typing)."""
    ty: object
    v: object = None
    const: object = None

    @property
    def is_const(self):
        return self.const is not None


def _const(x):
    if isinstance(x, (bool, np.bool_)):
        return Val(types.boolean, const=bool(x))
    if type(x) is int:
        return Val(types.literal(x), const=x)
    if isinstance(x, np.generic):
        return Val(from_dtype(x.dtype), const=x)
    if isinstance(x, float):
        return Val(types.float64, const=x)
    raise Unsupported(repr(x))


def _plain(ty):
    return ty.literal_type if isinstance(ty, types.Literal) else ty


_SIGS = {}


def _sig(typingctx, fn, argtys):
    """Numba's signature of operator `fn` on these types (memoised: typing an operator
    costs Numba a template search, a tenth of a millisecond)."""
    key = (id(typingctx), fn, argtys)
    if key not in _SIGS:
        sig = typingctx.resolve_function_type(fn, argtys, {})
        if sig is None:
            raise Unsupported(f"{fn} on {argtys}")
        _SIGS[key] = sig
    return _SIGS[key]


class _Walk:
    """Types (builder None) or lowers one call of a straight-line scalar function."""

    def __init__(self, typingctx, context=None, builder=None):
        self.tc, self.ctx, self.b = typingctx, context, builder

    # -- values ---------------------------------------------------------------------
    def value(self, val, ty):
        """val as an LLVM value of type ty."""
        if self.b is None:
            return None
        ty = _plain(ty)
        if val.is_const:
            c = val.const
            if isinstance(ty, types.Float):
                return self.ctx.get_constant(ty, np.dtype(str(ty)).type(c))
            return self.ctx.get_constant(ty, c)
        return self.ctx.cast(self.b, val.v, val.ty, ty)

    def apply(self, fn, args, impl_key=None):
        """Operator or function fn on Vals, typed and lowered by Numba."""
        sig = _sig(self.tc, fn, tuple(a.ty for a in args))
        if self.b is None:
            return Val(sig.return_type)
        ll = [self.value(a, t) for a, t in zip(args, sig.args)]
        impl = self.ctx.get_function(impl_key if impl_key is not None else fn, sig)
        return Val(sig.return_type, impl(self.b, ll))

    def unify(self, a, b):
        ty = self.tc.unify_types(_plain(a.ty), _plain(b.ty))
        if ty is None:
            raise Unsupported(f"cannot unify {a.ty} and {b.ty}")
        return ty

    # -- functions ------------------------------------------------------------------
    def call_function(self, fn, args):
        """The result of straight-line function fn (an inline dispatcher) on Vals."""
        d = _definition(fn)
        if d is None:
            raise Unsupported(fn.__name__)
        params, body, names = d
        if len(params) != len(args):
            raise Unsupported(f"{fn.__name__}: {len(args)} arguments")
        env = dict(zip(params, args))
        for st in body[:-1]:
            v = self.expr(st.value, env, names)
            tgt = st.targets[0]
            if isinstance(tgt, ast.Tuple):
                if not isinstance(v, tuple) or len(v) != len(tgt.elts):
                    raise Unsupported("tuple assignment")
                env.update({e.id: x for e, x in zip(tgt.elts, v)})
            else:
                env[tgt.id] = v
        return self.expr(body[-1].value, env, names)

    def expr(self, node, env, names):
        if isinstance(node, ast.Constant):
            return _const(node.value)
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            obj = names.get(node.id)
            if isinstance(obj, (int, float)) and not isinstance(obj, bool):
                return _const(obj)
            raise Unsupported(node.id)
        if isinstance(node, ast.Attribute):
            if self.is_np(node.value, names) and node.attr in NP_CONSTANTS:
                return _const(NP_CONSTANTS[node.attr])
            raise Unsupported(ast.unparse(node))
        if isinstance(node, ast.Tuple):
            return tuple(self.expr(e, env, names) for e in node.elts)
        if isinstance(node, ast.BinOp):
            return self.binop(node, env, names)
        if isinstance(node, ast.UnaryOp):
            x = self.expr(node.operand, env, names)
            if isinstance(node.op, ast.USub):
                if x.is_const:
                    return _const(-x.const)
                return self.apply(operator.neg, [x])
            raise Unsupported(ast.dump(node.op))
        if isinstance(node, ast.Compare):
            if len(node.ops) != 1 or type(node.ops[0]) not in COMPARE:
                raise Unsupported("comparison")
            a, b = self.expr(node.left, env, names), self.expr(node.comparators[0], env, names)
            return self.apply(COMPARE[type(node.ops[0])], [a, b])
        if isinstance(node, ast.BoolOp):
            vals = [self.expr(v, env, names) for v in node.values]
            if any(v.ty != types.boolean or v.is_const for v in vals):
                raise Unsupported("and/or of non-booleans")
            if self.b is None:
                return Val(types.boolean)
            op = self.b.and_ if isinstance(node.op, ast.And) else self.b.or_
            acc = vals[0].v
            for v in vals[1:]:
                acc = op(acc, v.v)
            return Val(types.boolean, acc)
        if isinstance(node, ast.IfExp):
            c = self.expr(node.test, env, names)
            a, b = self.expr(node.body, env, names), self.expr(node.orelse, env, names)
            if c.ty != types.boolean or c.is_const:
                raise Unsupported("condition")
            ty = self.unify(a, b)
            if self.b is None:
                return Val(ty)
            return Val(ty, self.b.select(c.v, self.value(a, ty), self.value(b, ty)))
        if isinstance(node, ast.Call):
            return self.call(node, env, names)
        raise Unsupported(type(node).__name__)

    def as_type(self, x, ty):
        """x cast to ty (a constant stays a constant of ty)."""
        if x.is_const:
            return Val(ty, const=x.const)
        if self.b is None:
            return Val(ty)
        return Val(ty, self.value(x, ty))

    def binop(self, node, env, names):
        a, b = self.expr(node.left, env, names), self.expr(node.right, env, names)
        op = type(node.op)
        if op not in BINOPS:
            raise Unsupported(ast.dump(node.op))
        if a.is_const and b.is_const and op in (ast.Add, ast.Sub, ast.Mult, ast.Div) \
                and all(type(x.const) in (int, float) for x in (a, b)):
            # what Numba's typing gives a constant expression (float64, or an int) and
            # what LLVM folds it to: one IEEE double operation
            return _const(BINOPS[op](a.const, b.const))
        return self.apply(BINOPS[op], [a, b])

    def call(self, node, env, names):
        if node.keywords:
            raise Unsupported("keywords")
        f = node.func
        args = [self.expr(a, env, names) for a in node.args]
        if isinstance(f, ast.Attribute) and self.is_np(f.value, names):
            if f.attr in CASTS and len(args) == 1:
                ty = getattr(types, f.attr)
                if args[0].is_const and type(args[0].const) in (int, float):
                    return _const(np.dtype(f.attr).type(args[0].const))     # NumPy rounds as LLVM folds
                return self.as_type(args[0], ty)
            if f.attr == "floor" and len(args) == 1 and isinstance(_plain(args[0].ty), types.Float):
                return self.float_intrinsic("llvm.floor", args[0])
            raise Unsupported(f"np.{f.attr}")
        if not isinstance(f, ast.Name) or f.id in env:
            raise Unsupported(ast.unparse(f))
        if f.id == "abs" and f.id not in names and len(args) == 1 and isinstance(_plain(args[0].ty), types.Float):
            return self.float_intrinsic("llvm.fabs", args[0])
        if f.id in ("min", "max") and f.id not in names and len(args) == 2:
            return self.minmax(f.id, *args)
        obj = names.get(f.id)
        if _inline_dispatcher(obj):
            return self.call_function(obj, args)
        if type(obj).__name__ == "_Intrinsic":
            return self.call_intrinsic(obj, args)
        raise Unsupported(f.id)

    def float_intrinsic(self, name, x):
        """llvm.floor / llvm.fabs: what Numba's np.floor and abs lower a float to."""
        ty = _plain(x.ty)
        if self.b is None:
            return Val(ty)
        v = self.value(x, ty)
        fn = self.b.module.declare_intrinsic(name, [v.type])
        return Val(ty, self.b.call(fn, [v]))

    def minmax(self, which, a, b):
        """Numba's min/max of two (builtins.do_minmax): both as their unified type, then
        `b if b > a else a` (`<` for min), so a NaN first argument is kept."""
        ty = self.unify(a, b)
        a, b = self.as_type(a, ty), self.as_type(b, ty)
        pred = self.apply(operator.gt if which == "max" else operator.lt, [b, a])
        if self.b is None:
            return Val(ty)
        return Val(ty, self.b.select(pred.v, self.value(b, ty), self.value(a, ty)))

    def call_intrinsic(self, obj, args):
        """One of scalar.py's own intrinsics (fma, the bit casts): its typer and codegen."""
        res = obj._defn(self.tc, *[_plain(a.ty) for a in args])
        if res is None:
            raise Unsupported(f"{obj._name} on {[a.ty for a in args]}")
        sig, codegen = res
        if self.b is None:
            return Val(sig.return_type)
        ll = [self.value(a, t) for a, t in zip(args, sig.args)]
        return Val(sig.return_type, codegen(self.ctx, self.b, sig, ll))

    @staticmethod
    def is_np(node, names):
        return isinstance(node, ast.Name) and names.get(node.id) is np


# ---- one intrinsic per function -------------------------------------------------
_TYPES = {}


def _result_type(typingctx, fn, argtys):
    key = (id(typingctx), fn, argtys)
    if key not in _TYPES:
        r = _Walk(typingctx).call_function(fn, [Val(t) for t in argtys])
        if not isinstance(r, Val):
            raise Unsupported(f"{fn.__name__} returns a tuple")
        _TYPES[key] = _plain(r.ty)
    return _TYPES[key]


def _lowered(fn):
    """A Numba intrinsic computing straight-line function fn (its typer takes fn's
    parameters by name: Numba folds a *args typer's arguments into a tuple)."""
    def define(typingctx, args):
        try:
            ret = _result_type(typingctx, fn, tuple(args))
        except Unsupported:
            return None
        sig = typing.signature(ret, *args)

        def codegen(context, builder, sig, llargs):
            walk = _Walk(context.typing_context, context, builder)
            r = walk.call_function(fn, [Val(t, v) for t, v in zip(sig.args, llargs)])
            return walk.value(r, sig.return_type)
        return sig, codegen
    params = ", ".join(_definition(fn)[0])
    ns = {"define": define}
    exec(f"def {fn.__name__}(typingctx, {params}):\n    return define(typingctx, ({params},))\n", ns)
    return intrinsic(ns[fn.__name__])


def _supported(fn, seen=()):
    """Whether fn's body only uses what _Walk handles (read from its syntax, so that
    deciding costs no typing)."""
    d = _definition(fn)
    if d is None:
        return False
    _, body, names = d
    for node in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute):
                ok = _Walk.is_np(f.value, names) and f.attr in CASTS | {"floor"}
            elif isinstance(f, ast.Name):
                obj = names.get(f.id)
                ok = (obj is None and f.id in ("abs", "min", "max")) or type(obj).__name__ == "_Intrinsic" \
                    or (_inline_dispatcher(obj) and obj not in seen and _supported(obj, seen + (fn,)))
            else:
                ok = False
            if not ok:
                return False
        elif isinstance(node, (ast.Subscript, ast.Lambda, ast.Starred, ast.Dict, ast.List, ast.Set,
                               ast.NamedExpr, ast.Await, ast.Yield, ast.JoinedStr)):
            return False
    return True


# the public functions of scalar.py's library that lower here: `_fjx.<name>` in kernels
LOWERED = {}
for _name in scalar.NAMES:
    _fn = getattr(scalar, _name)
    if not _name.startswith("_") and _inline_dispatcher(_fn) and _supported(_fn):
        LOWERED[_name] = globals()[_name] = _lowered(_fn)
del _name, _fn
