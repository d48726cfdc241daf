"""Symbolic dimensions.

Under `@fj.jit` every input dim that is not 1 is a runtime size: a symbol. Shapes
inside a trace are tuples whose entries are Python ints (static) or `Sym`
(a polynomial over the input-dim symbols with integer coefficients, e.g. `d0_0*d0_1`
or `d1_0 - 1`). Each symbol carries a *hint* (its size in the call being traced).

Whenever tracing needs a fact about a symbol (two symbols must be equal to broadcast,
a Python `if` or `int()` on a size, a static index inside a symbolic dim), the fact is
recorded as a *guard*: a Python expression over the input shapes. A later call whose
shapes satisfy every guard reuses the compiled code; otherwise the function is traced
again (and a real shape error is then raised at trace time with the new sizes).
"""
import operator
import threading

_display = threading.local()


class concrete_sizes:
    """Within this block a symbolic size prints as its size in the call being traced
    (`(3, 4)`, not `(d0_0, d0_1)`), so error messages show the user's real shapes."""

    def __enter__(self):
        _display.depth = getattr(_display, "depth", 0) + 1

    def __exit__(self, *exc):
        _display.depth -= 1


class ShapeEnv:
    """Symbols, their hints, unifications, specialisations and guards of one trace."""

    def __init__(self):
        self.hints = {}        # symbol id -> size in the traced call
        self.sources = {}      # symbol id -> (arg index, dim index)
        self.parent = {}       # union-find over symbols known to be equal
        self.fixed = {}        # symbol id -> int it was specialised to
        self.guards = []       # Python expressions over `s` (tuple of input shapes)
        self.notes = []        # human-readable reasons for specialisations
        self._guard_set = set()

    # -- symbols ---------------------------------------------------------------
    def new_symbol(self, hint, arg_index, dim_index):
        sid = len(self.hints)
        self.hints[sid] = int(hint)
        self.sources[sid] = (arg_index, dim_index)
        self.parent[sid] = sid
        return Sym(self, ((( sid,), 1),))

    def find(self, sid):
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def src_expr(self, sid):
        a, d = self.sources[sid]
        return f"s[{a}][{d}]"

    def add_guard(self, expr, note=None):
        if expr not in self._guard_set:
            self._guard_set.add(expr)
            self.guards.append(expr)
            if note:
                self.notes.append(note)

    def unify(self, a, b):
        """Record that atomic symbols a and b are equal (their hints already agree)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.add_guard(f"{self.src_expr(ra)} == {self.src_expr(rb)}")
        self.parent[max(ra, rb)] = min(ra, rb)

    def specialise(self, sym, why):
        """Fix every symbol of `sym` to its hint (the compiled code is then size-specific)."""
        for mono, _ in sym.terms:
            for sid in mono:
                r = self.find(sid)
                if r not in self.fixed:
                    self.fixed[r] = self.hints[r]
                    self.add_guard(f"{self.src_expr(r)} == {self.hints[r]}",
                                   f"input {self.sources[r][0]} dim {self.sources[r][1]} "
                                   f"specialised to {self.hints[r]}: {why}")
        return sym.hint

    # -- normalisation ---------------------------------------------------------
    def normalise(self, terms):
        acc = {}
        for mono, coef in terms:
            c = coef
            syms = []
            for sid in mono:
                r = self.find(sid)
                if r in self.fixed:
                    c *= self.fixed[r]
                else:
                    syms.append(r)
            key = tuple(sorted(syms))
            acc[key] = acc.get(key, 0) + c
        items = tuple(sorted((m, c) for m, c in acc.items() if c != 0))
        if not items:
            return 0
        if len(items) == 1 and items[0][0] == ():
            return items[0][1]
        return Sym(self, items, normalised=True)


def _terms_of(x, env):
    if isinstance(x, Sym):
        return x.terms
    return (((), int(x)),)


class Sym:
    """A symbolic size: a polynomial over input-dim symbols (see module docstring)."""

    __slots__ = ("env", "terms")

    def __init__(self, env, terms, normalised=False):
        self.env = env
        self.terms = terms

    # value in the traced call
    @property
    def hint(self):
        total = 0
        for mono, coef in self.terms:
            v = coef
            for sid in mono:
                v *= self.env.hints[sid]
            total += v
        return total

    @property
    def atom(self):
        """The symbol id if this is a single symbol with coefficient 1, else None."""
        t = self.env.normalise(self.terms)
        if isinstance(t, Sym) and len(t.terms) == 1:
            mono, coef = t.terms[0]
            if coef == 1 and len(mono) == 1:
                return mono[0]
        return None

    def norm(self):
        return self.env.normalise(self.terms)

    # arithmetic builds new polynomials
    def _combine(self, other, sign):
        return self.env.normalise(self.terms + tuple((m, sign * c) for m, c in _terms_of(other, self.env)))

    def __add__(self, other):
        return self._combine(other, 1)

    __radd__ = __add__

    def __sub__(self, other):
        return self._combine(other, -1)

    def __rsub__(self, other):
        return self.env.normalise(tuple((m, -c) for m, c in self.terms) + _terms_of(other, self.env))

    def __mul__(self, other):
        out = []
        for m1, c1 in self.terms:
            for m2, c2 in _terms_of(other, self.env):
                out.append((tuple(sorted(m1 + m2)), c1 * c2))
        return self.env.normalise(tuple(out))

    __rmul__ = __mul__

    def __neg__(self):
        return self.env.normalise(tuple((m, -c) for m, c in self.terms))

    # comparisons and conversions specialise or guard (the user asked a size question)
    def _ask(self, op, other, opname):
        diff = self - other
        if not isinstance(diff, Sym):       # e.g. `d - 1 < d`: true for every size, no guard
            return op(diff, 0)
        lhs = self.hint
        rhs = other.hint if isinstance(other, Sym) else other
        result = op(lhs, rhs)
        env = self.env
        rhs_src = render(other, env.src_expr) if isinstance(other, Sym) else repr(other)
        expr = f"({render(self, env.src_expr)}) {opname} ({rhs_src})"
        env.add_guard(expr if result else f"not ({expr})",
                      f"size comparison `{symbolic(self)} {opname} {symbolic(other)}` evaluated "
                      f"while tracing")
        return result

    def __eq__(self, other):
        if not isinstance(other, (int, Sym)):
            return NotImplemented
        if isinstance(other, Sym) and same(self, other):
            return True
        return self._ask(operator.eq, other, "==")

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    def __lt__(self, other):
        return self._ask(operator.lt, other, "<")

    def __le__(self, other):
        return self._ask(operator.le, other, "<=")

    def __gt__(self, other):
        return self._ask(operator.gt, other, ">")

    def __ge__(self, other):
        return self._ask(operator.ge, other, ">=")

    def __hash__(self):
        n = self.norm()
        return hash(n.terms) if isinstance(n, Sym) else hash(n)

    def __int__(self):
        return self.env.specialise(self, "its value was used as a Python int")

    __index__ = __int__

    def __bool__(self):
        return bool(self.__int__())

    def __floordiv__(self, other):
        q = exact_div(self, other)
        if q is None:
            return self.env.specialise(self, "size divided inexactly") // int(other)
        return q

    def __mod__(self, other):
        if exact_div(self, other) is not None:
            return 0
        return self.env.specialise(self, "size taken modulo") % int(other)

    def __repr__(self):
        if getattr(_display, "depth", 0):
            return str(self.hint)
        return symbolic(self)


def symbolic(d):
    """A dim as text with its symbol names (`d0_1` is input 0's dim 1)."""
    if not isinstance(d, Sym):
        return str(d)
    text = render(d, lambda sid: f"d{d.env.sources[sid][0]}_{d.env.sources[sid][1]}")
    return text[1:-1] if " " not in text else text      # `d0_1`, `(d0_1 - 1)`


def render(d, name_of):
    """Python source for a dim: int literal or polynomial over `name_of(symbol)`."""
    if not isinstance(d, Sym):
        return str(int(d))
    n = d.norm()
    if not isinstance(n, Sym):
        return str(n)
    parts = []
    for mono, coef in n.terms:
        factors = [name_of(s) for s in mono]
        if coef != 1 or not factors:
            factors.insert(0, str(coef))
        parts.append("*".join(factors))
    return "(" + " + ".join(parts).replace("+ -", "- ") + ")"


def same(a, b):
    """Structural equality of two dims (no guard, no specialisation)."""
    if isinstance(a, Sym):
        a = a.norm()
    if isinstance(b, Sym):
        b = b.norm()
    if isinstance(a, Sym) and isinstance(b, Sym):
        return a.terms == b.terms
    if isinstance(a, Sym) or isinstance(b, Sym):
        return False
    return int(a) == int(b)


def hint(d):
    return d.hint if isinstance(d, Sym) else int(d)


def evaluate(d, sizes):
    """A dim's value in one call: `sizes` maps every representative symbol (as
    `d.norm()` writes it) to its size in that call's inputs."""
    if not isinstance(d, Sym):
        return int(d)
    n = d.norm()
    if not isinstance(n, Sym):
        return int(n)
    total = 0
    for mono, coef in n.terms:
        v = coef
        for sid in mono:
            v *= sizes[sid]
        total += v
    return total


def is_one(d):
    return not isinstance(d, Sym) and int(d) == 1


def exact_div(a, b):
    """a / b as a dim when b divides a term by term, else None."""
    if not isinstance(a, Sym) and not isinstance(b, Sym):
        return int(a) // int(b) if int(b) != 0 and int(a) % int(b) == 0 else None
    env = a.env if isinstance(a, Sym) else b.env
    na = a.norm() if isinstance(a, Sym) else a
    nb = b.norm() if isinstance(b, Sym) else b
    bt = _terms_of(nb, env)
    if len(bt) != 1:
        return None
    bm, bc = bt[0]
    out = []
    for m, c in _terms_of(na, env):
        rest = list(m)
        for s in bm:
            if s not in rest:
                return None
            rest.remove(s)
        if bc == 0 or c % bc:
            return None
        out.append((tuple(rest), c // bc))
    return env.normalise(tuple(out))


def unify_dims(a, b):
    """Two dims that must be equal (hints already checked equal). Returns the merged dim."""
    if same(a, b):
        return a
    if isinstance(a, Sym) and isinstance(b, Sym) and a.atom is not None and b.atom is not None:
        a.env.unify(a.atom, b.atom)
        return a.norm()
    for d, other in ((a, b), (b, a)):
        if isinstance(d, Sym):
            d.env.specialise(d, f"must equal {symbolic(other)}")
    return hint(a)


def prod(dims):
    out = 1
    for d in dims:
        out = out * d
    return out
