"""Differential fuzzing of the compiler: random small programs run three ways.

Hypothesis (derandomized: the same programs on every run) draws a seed and a length;
`random_program` turns them into a program: a few float64 inputs of small
broadcastable shapes (ranks 0-3, size-1 dims included) and up to 6 instructions over
them: elementwise ops, scalar operands, where/compare, broadcasts, reductions over
random axes (keepdims or not), softmax/log_softmax, transpose, reshape, slices and
matmul, operands often reused, with one to three outputs that may share
subexpressions. Each program is run

- jitted (`fj.jit`: tracing, simplification, fusion, generated Numba kernels),
- eagerly (the ops' NumPy references),
- by a plain NumPy interpreter of the same program,

and the three must agree. Its gradient (`fj.value_and_grad` of a weighted sum of the
outputs, under jit and eagerly) must agree with float64 central finite differences of
the NumPy interpreter, unless a non-differentiable point (relu/abs at 0, a max/min or
compare tie) lies within the finite-difference step.

Why a seed rather than Hypothesis drawing each choice: Hypothesis favours the simplest
option of each choice and spends many examples on small mutations of a few programs
(in a trial, 30% one-instruction programs and not one of 200 examples hitting the
fusion bugs below); from a seed, the programs are as varied as the weights below say,
and about 1.5 in 100 hit those bugs (measured against the unfixed fusion pass). A
failure prints the `random_program(seed, length)` call that rebuilds its program.

Cost: every new kernel structure is compiled by Numba (~0.1-0.5 s each), so the
programs are tiny and the value and gradient checks share one jitted `value_and_grad`
(forward and backward programs); the plain forward (`fj.jit(f)`, no residuals) adds
~10%. With a cold kernel cache the 200 programs take about a minute on two cores
(~950 kernels; FLOWJIT_FUZZ_EXAMPLES changes the count).
"""
import os
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import flowjit as fj

N_EXAMPLES = int(os.environ.get("FLOWJIT_FUZZ_EXAMPLES", "200"))

UNARY = ("exp", "negative", "log1", "tanh", "sigmoid", "relu", "square", "abs")
BINARY = ("add", "subtract", "multiply", "divide", "maximum", "minimum")
REDUCE = ("sum", "mean", "max", "min")
# instruction kinds and their weights: reductions and softmax (fusion's hard cases) often
KINDS = {"reduce": 5, "softmax": 3, "binary": 5, "unary": 2, "where": 1, "scalar": 1, "transpose": 1,
         "reshape": 1, "broadcast": 1, "slice": 1, "matmul": 1}


@dataclass
class Prog:
    """Inputs' shapes, instructions (each appends one value; values 0..len(shapes)-1
    are the inputs), the values returned, and the seed of the input values."""
    shapes: list
    instrs: list
    outputs: list
    seed: int = 0

    def inputs(self):
        rng = np.random.default_rng([self.seed, 1])
        return [np.asarray(rng.standard_normal(s) * 1.5) for s in self.shapes]


# --------------------------------------------------------------------------------
# one program, two libraries
# --------------------------------------------------------------------------------
def _np_softmax(x, axis, log):
    z = x - np.max(x, axis=axis, keepdims=True)
    if log:
        return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


class NP:
    """The NumPy meaning of each instruction. `margin` records how close the inputs
    came to a point where the program is not differentiable."""

    def __init__(self):
        self.margin = np.inf

    def _near(self, d):
        d = np.abs(np.asarray(d, np.float64))
        d = d[d != 0]            # exact ties are structural (x - x, max(x, x)): they move together
        if d.size:
            self.margin = min(self.margin, float(d.min()))

    def unary(self, name, a):
        if name in ("relu", "abs", "log1"):
            self._near(a)
        return {"negative": np.negative, "exp": np.exp, "tanh": np.tanh, "square": np.square,
                "abs": np.abs, "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
                "relu": lambda x: np.maximum(x, 0.0), "log1": lambda x: np.log(np.abs(x) + 1.0)}[name](a)

    def binary(self, name, a, b):
        if name in ("maximum", "minimum"):
            self._near(a - b)
        if name == "divide":
            return a / (np.square(b) + 0.5)
        return getattr(np, name)(a, b)

    def scalar(self, name, a, c):
        if name in ("maximum", "minimum"):
            self._near(a - c)
        return getattr(np, name)(a, c)

    def where(self, a, b, c):
        self._near(a - b)
        return np.where(a < b, c, a)

    def reduce(self, kind, a, axes, keepdims):
        if kind in ("max", "min"):
            ext = (np.max if kind == "max" else np.min)(a, axis=axes, keepdims=True)
            self._near(a - ext)
        return {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}[kind](
            a, axis=axes, keepdims=keepdims)

    def softmax(self, a, axis, log):
        return _np_softmax(a, axis, log)

    def transpose(self, a, perm):
        return np.transpose(a, perm)

    def flatten(self, a):
        return np.reshape(a, (-1,))

    def expand_dims(self, a, axis):
        return np.expand_dims(a, axis)

    def broadcast(self, a, shape):
        return np.broadcast_to(a, shape)

    def slice(self, a, key):
        return a[key]

    def matmul(self, a, b, ta, tb):
        return np.matmul(np.swapaxes(a, -1, -2) if ta else a, np.swapaxes(b, -1, -2) if tb else b)


class FJ:
    """The same instructions as flowjit ops (eager, or traced under jit)."""

    def unary(self, name, a):
        if name == "log1":
            return fj.log(fj.abs(a) + 1.0)
        if name == "relu":
            return fj.nn.relu(a)
        return getattr(fj, name)(a)

    def binary(self, name, a, b):
        if name == "divide":
            return fj.divide(a, fj.square(b) + 0.5)
        return getattr(fj, name)(a, b)

    def scalar(self, name, a, c):
        return getattr(fj, name)(a, c)

    def where(self, a, b, c):
        return fj.where(fj.less(a, b), c, a)

    def reduce(self, kind, a, axes, keepdims):
        return getattr(fj, "reduce_" + kind)(a, axis=axes, keepdims=keepdims)

    def softmax(self, a, axis, log):
        return (fj.nn.log_softmax if log else fj.nn.softmax)(a, axis=axis)

    def transpose(self, a, perm):
        return fj.transpose(a, perm)

    def flatten(self, a):
        return fj.reshape(a, [-1])

    def expand_dims(self, a, axis):
        return fj.expand_dims(a, axis)

    def broadcast(self, a, shape):
        return fj.broadcast_to(a, shape)

    def slice(self, a, key):
        return a[key]

    def matmul(self, a, b, ta, tb):
        return fj.matmul(a, b, transpose_a=ta, transpose_b=tb)


def run(prog, lib, args):
    vals = list(args)
    for ins in prog.instrs:
        op, rest = ins[0], ins[1:]
        if op in ("unary", "binary", "reduce", "softmax"):
            # (op, name, value indices..., static params...)
            if op == "unary":
                vals.append(lib.unary(rest[0], vals[rest[1]]))
            elif op == "binary":
                vals.append(lib.binary(rest[0], vals[rest[1]], vals[rest[2]]))
            elif op == "reduce":
                vals.append(lib.reduce(rest[0], vals[rest[1]], rest[2], rest[3]))
            else:
                vals.append(lib.softmax(vals[rest[0]], rest[1], rest[2]))
        elif op == "scalar":         # a Python float operand: weakly typed
            name, a, c = rest
            vals.append(lib.scalar(name, vals[a], c))
        elif op == "where":
            vals.append(lib.where(vals[rest[0]], vals[rest[1]], vals[rest[2]]))
        elif op == "matmul":
            vals.append(lib.matmul(vals[rest[0]], vals[rest[1]], rest[2], rest[3]))
        else:
            vals.append(getattr(lib, op)(vals[rest[0]], *rest[1:]))
    return [vals[i] for i in prog.outputs]


# --------------------------------------------------------------------------------
# the program generator
# --------------------------------------------------------------------------------
# Shapes while generating: a dim that a slice made 1 from a larger input dim is -1
# (symbolic under jit, e.g. d - 1; such a dim broadcasts by specialising it to 1, which
# test_sliced_size_one_dim_broadcasts covers; the generator keeps to plain broadcasts)
def _real(s):
    return tuple(1 if d == -1 else d for d in s)


def _compatible(s, t):
    for a, b in zip(reversed(s), reversed(t)):
        if (a == -1 and b not in (1, -1)) or (b == -1 and a not in (1, -1)):
            return False
        if a != b and 1 not in (a, b) and -1 not in (a, b):
            return False
    return True


def _bshape(*shapes):
    rank = max(len(s) for s in shapes)
    out = []
    for k in range(rank):
        ds = [s[k - rank + len(s)] for s in shapes if k - rank + len(s) >= 0]
        big = [d for d in ds if d not in (1, -1)]
        out.append(big[0] if big else (-1 if -1 in ds else 1))
    return tuple(out)


def _applicable(kind, s):
    r = len(s)
    return {"reduce": r > 0, "softmax": r > 0, "transpose": r > 1,
            "broadcast": r < 3 and -1 not in s, "slice": any(d > 1 for d in s),
            "matmul": r in (2, 3) and -1 not in s}.get(kind, True)


class _Chooser:
    """Random choices for one program, from a NumPy generator seeded by Hypothesis."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def pick(self, seq, p=None):
        seq = list(seq)
        if p is not None:
            p = np.asarray(p, np.float64)[:len(seq)]
            p = p / p.sum()
        return seq[int(self.rng.choice(len(seq), p=p))]

    def coin(self, p=0.5):
        return bool(self.rng.random() < p)


def random_program(seed, n_instrs):
    """A program of n_instrs instructions (see Prog), every choice drawn from `seed`:
    a 'universe' shape of rank 0-3 whose suffixes (with some dims 1) are the inputs'
    shapes, so most values broadcast against each other."""
    ch = _Chooser(seed)
    rank = ch.pick((0, 1, 2, 3), p=(1, 2, 4, 3))
    universe = tuple(ch.pick((2, 3)) for _ in range(rank))
    shapes = []
    for _ in range(ch.pick((1, 2, 3), p=(3, 4, 2))):
        r = ch.pick(range(rank + 1), p=[1] * rank + [3])
        shapes.append(tuple(d if ch.coin(0.75) else 1 for d in universe[rank - r:]))
    shapes.sort(key=len, reverse=True)
    sh = list(shapes)                       # the shape of every value
    instrs = []
    used = []          # operands so far: picked again often (shared subexpressions)

    def operand(pred=lambda s: True):
        again = [k for k in used if pred(sh[k])]
        if again and ch.coin(0.5):
            k = ch.pick(again)
        else:
            k = ch.pick([k for k in range(len(sh)) if pred(sh[k])])
        if k not in used:
            used.append(k)
        return k

    for _ in range(n_instrs):
        a = operand()
        s = sh[a]
        r = len(s)
        kinds = [k for k in KINDS if _applicable(k, s)]
        kind = ch.pick(kinds, p=[KINDS[k] for k in kinds])
        if kind in ("binary", "where"):
            b = operand(lambda t: _compatible(s, t))
            out = _bshape(s, sh[b])
            if kind == "where":
                c = operand(lambda t: _compatible(out, t))
                instrs.append(("where", a, b, c))
                out = _bshape(out, sh[c])
            else:
                instrs.append(("binary", ch.pick(BINARY), a, b))
        elif kind == "scalar":
            instrs.append(("scalar", ch.pick(("add", "multiply", "maximum", "minimum", "divide")),
                           a, ch.pick((0.5, -1.25, 2.0))))
            out = s
        elif kind == "reduce":
            axes = tuple(k for k in range(r) if ch.coin())
            axes = axes or (ch.pick(range(r)),)
            keep = ch.coin()
            instrs.append(("reduce", ch.pick(REDUCE), a, axes, keep))
            out = tuple(1 if i in axes else d for i, d in enumerate(s)) if keep else \
                tuple(d for i, d in enumerate(s) if i not in axes)
        elif kind == "softmax":
            instrs.append(("softmax", a, ch.pick((-1,) + tuple(range(r - 1))), ch.coin()))
            out = s
        elif kind == "transpose":
            perm = tuple(int(p) for p in ch.rng.permutation(r))
            instrs.append(("transpose", a, perm))
            out = tuple(s[p] for p in perm)
        elif kind == "reshape" and r > 0 and ch.coin(0.4):
            instrs.append(("flatten", a))
            out = (int(np.prod(_real(s))),)
        elif kind == "reshape" and r < 3:
            ax = ch.pick(range(r + 1))
            instrs.append(("expand_dims", a, ax))
            out = s[:ax] + (1,) + s[ax:]
        elif kind == "broadcast":
            out = tuple(ch.pick((2, 3)) if d == 1 else d for d in s)
            if ch.coin():
                out = (2,) + out
            instrs.append(("broadcast", a, out))
        elif kind == "slice":
            ax = ch.pick([k for k in range(r) if s[k] > 1])
            sl = ch.pick((slice(1, None), slice(None, None, 2), slice(None, -1), slice(-1, None), 0, -1))
            key = (slice(None),) * ax + (sl,)
            instrs.append(("slice", a, key))
            out = np.empty(_real(s))[key].shape
            if isinstance(sl, slice) and out[ax] == 1:
                out = out[:ax] + (-1,) + out[ax + 1:]
        elif kind == "matmul":
            # b: (k, n) or (n, k) (transpose_b), or batched like a
            b = operand(lambda t: len(t) in (2, r) and -1 not in t and s[-1] in t[-2:] and
                        _compatible(s[:-2], t[:-2]))
            tb = sh[b][-2] != s[-1] or (sh[b][-1] == s[-1] and ch.coin())
            instrs.append(("matmul", a, b, False, tb))
            out = _bshape(s[:-2], sh[b][:-2]) + (s[-2], sh[b][-2] if tb else sh[b][-1])
        else:
            instrs.append(("unary", ch.pick(UNARY), a))
            out = s
        sh.append(tuple(int(d) for d in out))
    with np.errstate(all="ignore"):
        got = [np.shape(v) for v in run(Prog(shapes, instrs, list(range(len(sh)))), NP(),
                                         [np.zeros(x) for x in shapes])]
    assert got == [_real(x) for x in sh], (instrs, got, sh)
    last = len(sh) - 1
    outs = {last}
    for _ in range(ch.pick((0, 1, 2), p=(2, 2, 1))):
        outs.add(ch.pick(range(len(shapes), last + 1)))
    return Prog(shapes, instrs, sorted(outs, reverse=True), seed)


def programs(max_instrs=6):
    # (Hypothesis favours the first of sampled_from: mostly programs of full length)
    return st.builds(random_program, st.integers(0, 2 ** 32 - 1), st.sampled_from(range(max_instrs, 0, -1)))


# --------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------
def _close(actual, expected, what, rtol=1e-9):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    finite = expected[np.isfinite(expected)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True,
                               err_msg=what)


def _as_np(t):
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t, np.float64)


def _weights(prog, refs):
    rng = np.random.default_rng([prog.seed, 2])
    return [rng.standard_normal(np.shape(r)) for r in refs]


def _loss_np(prog, xs, ws):
    outs = run(prog, NP(), xs)
    return sum(float(np.sum(o * w)) for o, w in zip(outs, ws))


def check(prog):
    xs = prog.inputs()
    lib = NP()
    with np.errstate(all="ignore"):
        refs = run(prog, lib, xs)
    n = len(xs)
    ws = _weights(prog, refs)

    def f(*args):
        return run(prog, FJ(), args)

    def loss(*args):
        outs = run(prog, FJ(), args)
        total = None
        for o, w in zip(outs, ws):
            term = fj.reduce_sum(o * w)
            total = term if total is None else total + term
        return total, outs

    # eager
    tensors = [fj.convert_to_tensor(x) for x in xs]
    for k, (o, r) in enumerate(zip(f(*tensors), refs)):
        _close(_as_np(o), r, f"eager output {k}")
    # jit: the plain forward, and value_and_grad (forward + backward programs)
    for k, (o, r) in enumerate(zip(fj.jit(f)(*xs), refs)):
        _close(_as_np(o), r, f"jit output {k}")
    vg = fj.value_and_grad(loss, argnums=tuple(range(n)))
    (_, outs), grads = fj.jit(vg)(*xs)
    for k, (o, r) in enumerate(zip(outs, refs)):
        _close(_as_np(o), r, f"jit output {k} (value_and_grad)")

    # gradients: only where the program is smooth around the inputs
    finite = all(np.all(np.isfinite(r)) and np.all(np.abs(r) < 1e6) for r in refs)
    if not finite or lib.margin < 1e-3:
        _log(prog, "values")
        return
    (_, _), egrads = vg(*tensors)
    h = 1e-6
    for k, x in enumerate(xs):
        fd = np.zeros(x.shape)
        for idx in np.ndindex(x.shape):
            xp = [v.copy() for v in xs]
            xm = [v.copy() for v in xs]
            step = h * max(1.0, abs(float(x[idx])))
            xp[k][idx] += step
            xm[k][idx] -= step
            fd[idx] = (_loss_np(prog, xp, ws) - _loss_np(prog, xm, ws)) / (2 * step)
        gj = np.zeros(x.shape) if grads[k] is None else _as_np(grads[k])
        ge = np.zeros(x.shape) if egrads[k] is None else _as_np(egrads[k])
        _close(gj, ge, f"jit vs eager gradient of input {k}")
        _close(gj, fd, f"jit gradient vs finite differences, input {k}", rtol=1e-5)
    _log(prog, "values+grads")


def _log(prog, what):
    path = os.environ.get("FLOWJIT_FUZZ_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{what}\t{prog!r}\n")


@settings(derandomize=True, max_examples=N_EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(programs())
# fusion bugs (fixed): the reported programs, then two the fuzzer found (a full and a row
# reduction of one producer; a reduction's consumer in the loop body: KeyError, or a
# cycle between steps)
@example(Prog(shapes=[(2, 4)], instrs=[("scalar", "add", 0, 2.0), ("reduce", "sum", 1, (0, 1), False),
                                        ("softmax", 1, -1, False)], outputs=[3, 2]))
@example(Prog(shapes=[(2, 4)], instrs=[("scalar", "add", 0, 2.0), ("reduce", "sum", 1, (0, 1), False),
                                        ("softmax", 1, -1, True)], outputs=[3, 2]))
@example(Prog(shapes=[(2, 5), (1, 5)], instrs=[("softmax", 0, -1, False), ("binary", "multiply", 2, 1),
                                                ("reduce", "sum", 3, (0, 1), False)], outputs=[4]))
@example(Prog(shapes=[(1, 3, 2)], instrs=[("binary", "add", 0, 0), ("binary", "divide", 0, 0),
                                          ("binary", "divide", 2, 2), ("reduce", "max", 1, (1,), False),
                                          ("scalar", "add", 4, 2.0), ("binary", "divide", 1, 5)],
              outputs=[6, 5], seed=879022))
@example(Prog(shapes=[(3, 2, 3), (2, 3)],
              instrs=[("binary", "subtract", 1, 0), ("transpose", 2, (1, 0, 2)),
                      ("reduce", "max", 0, (0, 1), False), ("softmax", 2, 1, False),
                      ("slice", 0, (-1,)), ("reduce", "min", 2, (1, 2), False)],
              outputs=[7, 5], seed=1092835))
def test_jit_eager_numpy_and_gradients_agree(prog):
    check(prog)


# --------------------------------------------------------------------------------
# the bugs above as plain programs
# --------------------------------------------------------------------------------
def test_full_and_row_reduction_of_one_producer_with_softmax():
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 4
    for sm in (fj.nn.softmax, fj.nn.log_softmax):
        s, y = fj.jit(lambda x: [fj.reduce_sum(x + 1.0), sm(x + 1.0)])(x)
        np.testing.assert_allclose(s.numpy(), np.sum(x + 1), rtol=1e-6)
        np.testing.assert_allclose(y.numpy(), sm(x + 1.0).numpy(), rtol=1e-6)


def test_gradient_through_broadcast_operand_of_softmax_product():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5)).astype(np.float32)
    y = rng.standard_normal((1, 5)).astype(np.float32)

    def f(x, y):
        return fj.reduce_sum(fj.nn.softmax(x) * y)
    g = fj.grad(f, argnums=(0, 1))
    for a, b in zip(fj.jit(g)(x, y), g(fj.constant(x), fj.constant(y))):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_sliced_size_one_dim_broadcasts():
    x = np.array([1.0, 2.0])
    np.testing.assert_array_equal(fj.jit(lambda x: x[1:] + x)(x).numpy(), [3.0, 4.0])


def test_sliced_size_one_dim_retraces_for_other_sizes():
    f = fj.jit(lambda x: x[1:] + x[:1])
    np.testing.assert_array_equal(f(np.array([1.0, 2.0])).numpy(), [3.0])
    np.testing.assert_array_equal(f(np.array([1.0, 2.0, 4.0])).numpy(), [3.0, 5.0])
    np.testing.assert_array_equal(f(np.array([1.0, 5.0])).numpy(), [6.0])
