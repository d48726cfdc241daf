"""The scalar math library (scalar.py) written into a kernel's source, call by call.

scalar.py's exp, log, tanh, sigmoid... are `inline="always"` Numba functions, so every
kernel gets its own copy compiled with its own flags. Numba does that inlining on its IR,
and for every call site it copies and re-runs the untyped passes on the callee: a third
of the compile time of a kernel with five sigmoid/tanh calls (the LSTM cell). Here the
same functions are expanded in the kernel's text instead, before Numba sees it: each
call becomes the callee's assignments with renamed locals, and a name for its result.
The text is scalar.py's own functions, read from their source, so nothing is written
twice, and the expansion computes what the inlined call computed, operation for
operation (tests/test_scalar_math.py compares the two bit for bit).

Only straight-line functions are expanded (assignments, then one `return`: the whole
library is branch-free); a call of anything else is left for Numba to inline. The
expanded bodies' constant conversions (`np.float32(1.0 / 6)`) become module globals.
"""
import ast
import builtins
import functools
import inspect
import textwrap

import numpy as np

from . import scalar

MODULE_ALIAS = "_fjm"        # how an expanded body refers to scalar.py's globals
LOWERED_ALIAS = "_fjx"       # how a kernel refers to scalar_ir.py's intrinsics


@functools.lru_cache(maxsize=None)
def _definition(fn):
    """(parameter names, statements, names: {global or closure name: object}) of the
    inline function behind dispatcher `fn`, or None where it is not straight-line."""
    py = fn.py_func
    tree = ast.parse(textwrap.dedent(inspect.getsource(py)))
    fdef = tree.body[0]
    body = list(fdef.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]                                   # the docstring
    a = fdef.args
    if a.vararg or a.kwarg or a.kwonlyargs or a.defaults or a.posonlyargs or not body:
        return None
    if not isinstance(body[-1], ast.Return) or body[-1].value is None:
        return None
    for st in body[:-1]:
        if not (isinstance(st, ast.Assign) and len(st.targets) == 1 and _plain_target(st.targets[0])):
            return None
    names = dict(py.__globals__)
    names.update(inspect.getclosurevars(py).nonlocals)
    return tuple(p.arg for p in a.args), body, names


def _plain_target(t):
    return isinstance(t, ast.Name) or (isinstance(t, ast.Tuple) and all(isinstance(e, ast.Name) for e in t.elts))


def _inline_dispatcher(obj):
    opts = getattr(obj, "targetoptions", None)
    return isinstance(opts, dict) and opts.get("inline") == "always" and _definition(obj) is not None


def _module_name(obj):
    """scalar.py's global name for `obj` (a closure variable may hold one of them)."""
    for k, v in vars(scalar).items():
        if v is obj:
            return k
    return None


class _Expander:
    """Expands the inline calls of statements into assignments (`pre`)."""

    def __init__(self):
        self.count = 0
        self.pre = []

    def fresh(self, name):
        self.count += 1
        return f"_s{self.count}_{name}"

    def expr(self, node, resolve):
        """`node` with its inline calls expanded; resolve(name node) -> the node to use
        for a name, or a dispatcher to expand where it is called."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            target = resolve(node.func)
            args = [self.expr(a, resolve) for a in node.args]
            if not isinstance(target, ast.AST):            # an inline function: expand it
                return self.call(target, args)
            return ast.Call(func=target, args=args, keywords=[self.keyword(k, resolve) for k in node.keywords])
        if isinstance(node, ast.Name):
            target = resolve(node)
            if not isinstance(target, ast.AST):
                raise _NotExpandable(node.id)              # an inline function not called
            return target
        if isinstance(node, ast.IfExp):
            # both branches are pure: evaluating an expanded branch first changes no result
            return ast.IfExp(test=self.expr(node.test, resolve), body=self.expr(node.body, resolve),
                             orelse=self.expr(node.orelse, resolve))
        new = type(node)()
        for field, value in ast.iter_fields(node):
            if isinstance(value, list):
                value = [self.expr(v, resolve) if isinstance(v, ast.expr) else v for v in value]
            elif isinstance(value, ast.expr):
                value = self.expr(value, resolve)
            setattr(new, field, value)
        return new

    def keyword(self, k, resolve):
        return ast.keyword(arg=k.arg, value=self.expr(k.value, resolve))

    def call(self, fn, args):
        params, body, names = _definition(fn)
        if len(args) != len(params):
            raise _NotExpandable(fn.__name__)
        local = {}
        for p, a in zip(params, args):
            if isinstance(a, (ast.Name, ast.Constant)):
                local[p] = a
            else:                                           # evaluated once, as a call would
                t = self.fresh(p)
                self.pre.append(ast.Assign(targets=[ast.Name(t, ast.Store())], value=a, lineno=0))
                local[p] = ast.Name(t, ast.Load())

        def resolve(n):
            if n.id in local:
                return local[n.id]
            if n.id not in names:
                if hasattr(builtins, n.id):
                    return ast.Name(n.id, ast.Load())
                raise _NotExpandable(n.id)
            obj = names[n.id]
            if _inline_dispatcher(obj):
                return obj
            if obj is np:
                return ast.Name("np", ast.Load())
            g = _module_name(obj)
            if g is None:
                raise _NotExpandable(n.id)
            return ast.Attribute(value=ast.Name(MODULE_ALIAS, ast.Load()), attr=g, ctx=ast.Load())

        for st in body[:-1]:
            value = self.expr(st.value, resolve)
            tgt = st.targets[0]
            for name in (tgt.elts if isinstance(tgt, ast.Tuple) else [tgt]):
                local[name.id] = ast.Name(self.fresh(name.id), ast.Load())
            store = (ast.Tuple([ast.Name(local[e.id].id, ast.Store()) for e in tgt.elts], ast.Store())
                     if isinstance(tgt, ast.Tuple) else ast.Name(local[tgt.id].id, ast.Store()))
            self.pre.append(ast.Assign(targets=[store], value=value, lineno=0))
        result = self.expr(body[-1].value, resolve)
        if isinstance(result, (ast.Name, ast.Constant)):
            return result
        t = self.fresh("r")
        self.pre.append(ast.Assign(targets=[ast.Name(t, ast.Store())], value=result, lineno=0))
        return ast.Name(t, ast.Load())


class _NotExpandable(Exception):
    pass


def _kernel_resolver(module_names, lowered):
    """A name in the kernel's own text: a function scalar_ir lowers becomes its
    intrinsic (`_fjx.<name>`, one call), another inline function is expanded."""
    def resolve(n):
        obj = module_names.get(n.id)
        if obj is not None and _inline_dispatcher(obj):
            if n.id in lowered:
                return ast.Attribute(value=ast.Name(LOWERED_ALIAS, ast.Load()), attr=n.id, ctx=ast.Load())
            return obj
        return ast.Name(n.id, ast.Load())
    return resolve


def _has_inline_call(node, module_names):
    return any(isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
               and _inline_dispatcher(module_names.get(c.func.id)) for c in ast.walk(node))


def _constant(node):
    """Whether `node` is a number known before the kernel runs: a literal, one of
    scalar.py's numeric constants (`_fjm.X`), or + - * / of those."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.USub, ast.UAdd)) and _constant(node.operand)
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)) \
            and _constant(node.left) and _constant(node.right)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == MODULE_ALIAS:
        v = getattr(scalar, node.attr, None)
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return False


class _Constants(ast.NodeTransformer):
    """`np.float32(<constant>)` in an expanded body -> a module global holding the same
    value (`_fjc<i>`): Numba types a global as a constant, where each such call cost it
    a call's typing and lowering (a tenth of the LSTM cell kernel's compile). NumPy
    rounds the float64 value to float32 as the compiled call did."""

    def __init__(self):
        self.names = {}

    def visit_Call(self, node):
        self.generic_visit(node)
        f = node.func
        if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "np"
                and f.attr in ("float32", "float64") and len(node.args) == 1 and not node.keywords
                and _constant(node.args[0])):
            name = self.names.setdefault(ast.unparse(node), f"_fjc{len(self.names)}")
            return ast.Name(name, ast.Load())
        return node

    def lines(self):
        return (["import numpy as np"] if self.names else []) + \
            [f"{name} = {text}" for text, name in self.names.items()]


def expand(source, lower=True):
    """`source` (a generated kernel module importing scalar.py's names with `*`) with the
    inline scalar calls in its assignments expanded, or, for the functions scalar_ir
    lowers (unless lower=False), calling its intrinsics; the lines without one are kept
    as they are, comments included."""
    from .scalar_ir import LOWERED          # (it reads the definitions from here)
    lowered = LOWERED if lower else {}
    module_names = {k: getattr(scalar, k) for k in dir(scalar) if not k.startswith("_")}
    tree = ast.parse(source)
    lines = source.split("\n")
    edits = []
    ex = _Expander()
    constants = _Constants()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Assign, ast.AugAssign)) or not _has_inline_call(node.value, module_names):
            continue
        ex.pre = []
        try:
            value = ex.expr(node.value, _kernel_resolver(module_names, lowered))
        except _NotExpandable:
            continue                                       # Numba inlines this one
        new = ast.Assign(targets=node.targets, value=value, lineno=0) if isinstance(node, ast.Assign) \
            else ast.AugAssign(target=node.target, op=node.op, value=value, lineno=0)
        indent = lines[node.lineno - 1][:node.col_offset]
        if indent.strip():
            continue                                       # not alone on its line
        # the call as written stays as a comment, for whoever reads the kernel (inspect)
        original = " ".join(x.strip() for x in lines[node.lineno - 1:node.end_lineno])
        edits.append((node.lineno, node.end_lineno,
                      [f"{indent}# {original}"]
                      + [indent + ast.unparse(constants.visit(s)) for s in ex.pre + [new]]))
    if not edits:
        return source
    for first, last, new_lines in sorted(edits, reverse=True):
        lines[first - 1:last] = new_lines
    header = [f"import flowjit.backends.cpu.scalar as {MODULE_ALIAS}"]
    if lowered and any(f"{LOWERED_ALIAS}." in "\n".join(e[2]) for e in edits):
        header.append(f"import flowjit.backends.cpu.scalar_ir as {LOWERED_ALIAS}")
    return "\n".join(header + constants.lines() + lines)
