"""fj.scan / fj.fori_loop: values against NumPy loops, gradients against float64 finite
differences, eager against jit (both CPU tiers), and the loop compiled as a loop: a new
sequence length neither retraces nor grows the generated code."""
import re

import numpy as np
import pytest

import flowjit as fj
from flowjit.errors import TracerError

from conftest import assert_close, finite_differences as _fd



def np_rnn(h0, xs, W, U, b, reverse=False):
    """The tanh RNN the tests scan, as a NumPy loop: (final h, every h, per-step sums)."""
    h = h0
    hs, sums = [None] * len(xs), [None] * len(xs)
    for t in (range(len(xs) - 1, -1, -1) if reverse else range(len(xs))):
        h = np.tanh(xs[t] @ W + h @ U + b)
        hs[t], sums[t] = h, (h * h).sum()
    return h, np.stack(hs), np.array(sums)


def make(rng, dtype=np.float32, T=5, B=2, I=3, H=4):
    xs = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (rng.standard_normal((B, H)) * 0.5).astype(dtype)
    W = (rng.standard_normal((I, H)) * 0.5).astype(dtype)
    U = (rng.standard_normal((H, H)) * 0.5).astype(dtype)
    b = (rng.standard_normal(H) * 0.1).astype(dtype)
    return h0, xs, W, U, b


def fj_rnn(h0, xs, W, U, b, reverse=False):
    def cell(h, x):
        h = fj.tanh(fj.matmul(x, W) + fj.matmul(h, U) + b)
        return h, (h, fj.reduce_sum(h * h))
    h, (hs, sums) = fj.scan(cell, h0, xs, reverse=reverse)
    return h, hs, sums


@pytest.mark.parametrize("reverse", [False, True])
def test_carries_the_gradient_reads_live_in_their_stack(rng, tier, reverse):
    # the gradient reads every step's entering carries: each lives in its stack (a row
    # more than the steps), a kernel writes the new carry into the next row, and a
    # carry that is another carry's old value (d, e swapped) is copied there; values and
    # float64 gradients against NumPy and finite differences
    T, B, H = 4, 2, 3
    xs = rng.standard_normal((T, B, H))
    init = [rng.standard_normal((B, H)) * 0.5 for _ in range(4)]

    def run(a0, b0, d0, e0, xs):
        def step(carry, x):
            a, b, d, e = carry
            return (b * x + d, fj.tanh(a) + x * e, e, d), a * b
        (a, b, d, e), ys = fj.scan(step, (a0, b0, d0, e0), xs, reverse=reverse)
        return fj.reduce_sum(ys) + fj.reduce_sum(a * b)

    def np_run(a, b, d, e, xs):
        total = 0.0
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            total += (a * b).sum()
            a, b, d, e = b * xs[t] + d, np.tanh(a) + xs[t] * e, e, d
        return total + (a * b).sum()

    def grads(*args):
        with fj.GradientTape() as tape:
            ts = list(args)
            for v in ts:
                tape.watch(v)
            loss = run(*ts)
        return [loss] + tape.gradient(loss, ts)
    args = init + [xs]
    got = fj.jit(grads)(*args)
    assert_close(got[0].numpy(), np_run(*args), rtol=1e-10, atol=1e-10)
    eps = 1e-6
    for i, arg in enumerate(args):
        num = np.zeros_like(arg)
        for idx in np.ndindex(arg.shape):
            up = [a.copy() for a in args]
            down = [a.copy() for a in args]
            up[i][idx] += eps
            down[i][idx] -= eps
            num[idx] = (np_run(*up) - np_run(*down)) / (2 * eps)
        assert_close(got[1 + i].numpy(), num, rtol=1e-5, atol=1e-6)
    src = fj.jit(grads).inspect(*args).forward_source
    # (the gradient reads the entering a, b and e: d only adds)
    assert len(re.findall(r"l\d+_hb\d = alloc\(", src)) == 3, src
    assert not re.search(r"assign\(l\d+_h\d\.reshape", src), src        # no copy of an entering carry
    assert len(re.findall(r"assign\(l\d+_hb\d\.reshape", src)) == 1, src  # e, d's old value


@pytest.mark.parametrize("reverse", [False, True])
def test_stacked_results_nothing_reads_are_not_stacked(rng, tier, reverse):
    # only the final h and the per-step sums are used: the h of every step (a y of the
    # scan) gets no stacked array; with a gradient the backward reads the sums' stack
    args = make(rng)
    h_want, _, sums_want = np_rnn(*args, reverse=reverse)

    def run(*a):
        h, _, sums = fj_rnn(*a, reverse=reverse)
        return h, sums
    f = fj.jit(run)
    for got, want in zip(f(*args), (h_want, sums_want)):
        assert_close(got.numpy(), want, rtol=1e-5, atol=1e-6)
    src = f.inspect(*args).forward_source
    stacks = re.findall(r"(l\d+_y\d+) = alloc\(", src)
    assert len(stacks) == 1, src            # the sums'


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_numpy_loop(rng, tier, reverse):
    args = make(rng)
    want = np_rnn(*args, reverse=reverse)
    eager = fj_rnn(*[fj.convert_to_tensor(a) for a in args], reverse=reverse)
    jitted = fj.jit(lambda *a: fj_rnn(*a, reverse=reverse))(*args)
    for e, j, w in zip(eager, jitted, want):
        assert_close(e.numpy(), w, rtol=1e-5, atol=1e-6)
        assert_close(j.numpy(), w, rtol=1e-5, atol=1e-6)


def test_scan_weights_from_variables_and_pytree_carry(rng, tier):
    h0, xs, W, U, b = make(rng)
    Wv, Uv = fj.Variable(W), fj.Variable(U)
    steps0 = np.int32(0)

    def run(h0, xs):
        def cell(carry, x):
            h = fj.tanh(fj.matmul(x, Wv) + fj.matmul(carry["h"], Uv) + b)
            return {"h": h, "n": carry["n"] + 1}, None
        out, ys = fj.scan(cell, {"h": h0, "n": fj.convert_to_tensor(steps0)}, xs)
        assert ys is None
        return out["h"], out["n"]
    want = np_rnn(h0, xs, W, U, b)[0]
    for h, n in (run(fj.convert_to_tensor(h0), fj.convert_to_tensor(xs)), fj.jit(run)(h0, xs)):
        assert_close(h.numpy(), want, rtol=1e-5, atol=1e-6)
        assert int(n.numpy()) == len(xs)


def _np_loss(h0, xs, W, U, b):
    h, hs, sums = np_rnn(h0, xs, W, U, b)
    return (h * h).sum() + 0.5 * (hs * np.cos(np.arange(hs.size)).reshape(hs.shape)).sum() + sums.sum()


def _fj_loss(h0, xs, W, U, b):
    h, hs, sums = fj_rnn(h0, xs, W, U, b)
    wts = np.cos(np.arange(int(np.prod([int(d) for d in hs.shape])))).reshape([int(d) for d in hs.shape])
    return fj.reduce_sum(h * h) + 0.5 * fj.reduce_sum(hs * wts) + fj.reduce_sum(sums)


def _grads(h0, xs, W, U, b):
    args = [fj.convert_to_tensor(a) if not isinstance(a, fj.Tensor) else a for a in (h0, xs, W, U, b)]
    with fj.GradientTape() as tape:
        tape.watch(args)
        loss = _fj_loss(*args)
    return [loss] + tape.gradient(loss, args)


def test_scan_gradients_match_finite_differences(rng, tier):
    args = make(rng, np.float64, T=4, B=2, I=2, H=3)
    eager = _grads(*args)
    jitted = fj.jit(_grads)(*args)
    assert_close(jitted[0].numpy(), _np_loss(*args), rtol=1e-12)
    for i in range(5):
        want = _fd(_np_loss, list(args), i)
        assert_close(eager[i + 1].numpy(), want, rtol=1e-6, atol=1e-8)
        assert_close(jitted[i + 1].numpy(), want, rtol=1e-6, atol=1e-8)


def test_scan_reverse_gradient_and_integer_inputs(rng, tier):
    """reverse=True, an int32 sequence (no gradient) beside a float one."""
    xs = rng.standard_normal((5, 3))
    ids = np.array([2, 0, 1, 2, 1], np.int32)
    table = rng.standard_normal((3, 3))

    def loss(c0, xs, table):
        def cell(c, x):
            x_t, i = x
            c = c * 0.7 + fj.sin(x_t) * fj.gather(table, i)
            return c, c * c
        c, ys = fj.scan(cell, c0, (xs, ids), reverse=True)
        return fj.reduce_sum(ys) + fj.reduce_sum(c)

    def np_loss(c0, xs, table):
        c, total = c0, 0.0
        for t in range(4, -1, -1):
            c = c * 0.7 + np.sin(xs[t]) * table[ids[t]]
            total += (c * c).sum()
        return total + c.sum()

    def grads(c0, xs, table):
        c0, xs, table = fj.convert_to_tensor(c0), fj.convert_to_tensor(xs), fj.convert_to_tensor(table)
        with fj.GradientTape() as tape:
            tape.watch([c0, xs, table])
            val = loss(c0, xs, table)
        return tape.gradient(val, [c0, xs, table])
    args = [rng.standard_normal(3), xs, table]
    for got in (grads(*args), fj.jit(grads)(*args)):
        for i in range(3):
            assert_close(got[i].numpy(), _fd(np_loss, args, i), rtol=1e-6, atol=1e-8)


def test_nested_scans_and_their_gradient(rng, tier):
    m = rng.standard_normal((4, 3, 2))

    def loss(m, a):
        def outer(c, row):
            def inner(d, v):
                return d * a + fj.tanh(v), None
            d, _ = fj.scan(inner, c, row)
            return d, fj.reduce_sum(d)
        c, ys = fj.scan(outer, fj.zeros((2,), "float64"), m)
        return fj.reduce_sum(ys) + fj.reduce_sum(c * c)

    def np_loss(m, a):
        c, total = np.zeros(2), 0.0
        for row in m:
            d = c
            for v in row:
                d = d * a + np.tanh(v)
            c = d
            total += d.sum()
        return total + (c * c).sum()

    def grads(m, a):
        m, a = fj.convert_to_tensor(m), fj.convert_to_tensor(a)
        with fj.GradientTape() as tape:
            tape.watch([m, a])
            val = loss(m, a)
        return [val] + tape.gradient(val, [m, a])
    args = [m, np.array(0.8)]
    for got in (grads(*args), fj.jit(grads)(*args)):
        assert_close(got[0].numpy(), np_loss(*args), rtol=1e-12)
        for i in range(2):
            assert_close(got[i + 1].numpy(), _fd(np_loss, args, i), rtol=1e-6, atol=1e-8)


def test_gradient_of_gradient_through_scan(rng, tier):
    """d/dw of (dL/dc0)^2: the backward loop is itself differentiated."""
    xs = rng.standard_normal((4, 2))

    def inner_grad(c0, w):
        with fj.GradientTape() as t1:
            t1.watch(c0)
            c, ys = fj.scan(lambda c, x: (fj.sin(c * w + x), c * c), c0, xs)
            val = fj.reduce_sum(ys) + fj.reduce_sum(c)
        return t1.gradient(val, c0)

    def np_inner_grad(c0, w):
        return _fd(lambda c: _np_inner(c, w), [c0], 0)

    def _np_inner(c0, w):
        c, total = c0, 0.0
        for x in xs:
            total += (c * c).sum()
            c = np.sin(c * w + x)
        return total + c.sum()

    def outer(c0, w):
        c0, w = fj.convert_to_tensor(c0), fj.convert_to_tensor(w)
        with fj.GradientTape() as t2:
            t2.watch(w)
            g = inner_grad(c0, w)
            val = fj.reduce_sum(g * g)
        return val, t2.gradient(val, w)
    c0, w = rng.standard_normal(2), np.array(0.9)
    g_np = np_inner_grad(c0, w)
    for val, dw in (outer(c0, w), fj.jit(outer)(c0, w)):
        assert_close(val.numpy(), (g_np * g_np).sum(), rtol=1e-6)
        fd = (np.sum(np_inner_grad(c0, w + 1e-4) ** 2) - np.sum(np_inner_grad(c0, w - 1e-4) ** 2)) / 2e-4
        assert_close(dw.numpy(), fd, rtol=1e-4, atol=1e-6)


def test_gradient_of_gradient_flows_through_the_residuals_the_backward_reads(rng, tier):
    """The step saves its tanh for the backward (a residual the forward stacks); the
    first-order backward reads it, so the second-order gradient flows back through it
    (it was dropped: d/dw was off by 10-50%)."""
    T, B, H = 3, 2, 3
    h0 = rng.standard_normal((B, H)) * 0.5
    xs = rng.standard_normal((T, B, H)) * 0.5
    w = rng.standard_normal((H, H)) * 0.5

    def loss(w, h0, xs):
        def body(h, x):
            h2 = fj.tanh(fj.matmul(h, w) + x)
            return h2, h2 * h
        hT, ys = fj.scan(body, h0, xs)
        return fj.reduce_sum(ys * ys) + fj.reduce_sum(hT * hT)
    grad = fj.grad(loss)

    def outer(w, h0, xs):
        return fj.reduce_sum(fj.square(grad(w, h0, xs)))
    want = _fd(lambda w_: float(np.asarray(outer(w_, h0, xs))), [w], 0)
    for got in (fj.grad(outer)(w, h0, xs), fj.jit(fj.grad(outer))(w, h0, xs)):
        assert_close(np.asarray(got), want, rtol=1e-5, atol=1e-7)


def test_loop_inside_tape_inside_loop(rng, tier):
    """Each outer step takes a gradient through an inner loop (a tape inside a scan
    body), and an outer tape differentiates the whole."""
    xs = rng.standard_normal((3, 2))

    def run(c0, w):
        def step(c, x):
            with fj.GradientTape() as t:
                t.watch(c)
                d, _ = fj.scan(lambda d, v: (d * w + v, None), c, fj.stack([x, x * 2.0]))
                e = fj.reduce_sum(d * d)
            g = t.gradient(e, c)
            return c - 0.1 * g, e
        c, es = fj.scan(step, c0, xs)
        return fj.reduce_sum(es) + fj.reduce_sum(c)

    def np_run(c0, w):
        c, total = c0, 0.0
        for x in xs:
            d = (c * w + x) * w + 2 * x
            total += (d * d).sum()
            c = c - 0.1 * (2 * d * w * w)
        return total + c.sum()

    def grads(c0, w):
        c0, w = fj.convert_to_tensor(c0), fj.convert_to_tensor(w)
        with fj.GradientTape() as tape:
            tape.watch([c0, w])
            val = run(c0, w)
        return [val] + tape.gradient(val, [c0, w])
    args = [rng.standard_normal(2), np.array(0.7)]
    for got in (grads(*args), fj.jit(grads)(*args)):
        assert_close(got[0].numpy(), np_run(*args), rtol=1e-12)
        for i in range(2):
            assert_close(got[i + 1].numpy(), _fd(np_run, args, i), rtol=1e-6, atol=1e-8)


def test_new_sequence_length_does_not_retrace_and_code_does_not_grow(rng):
    h0, xs, W, U, b = make(rng, T=40)
    Wv = fj.Variable(W)
    opt = fj.optimizers.SGD(0.1)

    @fj.jit
    def step(h0, xs):
        with fj.GradientTape() as tape:
            h, hs, sums = fj_rnn(h0, xs, Wv, U, b)
            loss = fj.reduce_mean(sums)
        opt.apply_gradients([(tape.gradient(loss, Wv), Wv)])
        return loss
    fj.reset_stats()
    losses = [float(step(h0, xs[:T])) for T in (4, 40, 7)]
    assert fj.stats()["traces"] == 1
    assert all(np.isfinite(losses))
    short, long = step.inspect(h0, xs[:4]), step.inspect(h0, xs)
    assert short.forward_source == long.forward_source
    assert short.backward_source == long.backward_source
    assert len(re.findall(r"for l\d+_t in", short.forward_source)) == 1   # one loop, not unrolled


@pytest.mark.parametrize("T", [0, 1, 6])
@pytest.mark.parametrize("reverse", [False, True])
def test_summed_products_of_stacked_slices_run_as_one_gemm_after_the_loop(rng, tier, T, reverse):
    # acc + x_t^T @ y_t, where x_t is a step of xs and y_t a y the loop stacks anyway:
    # the CPU backend computes the sum as one GEMM of the stacked arrays after the loop
    # (an LSTM's weight gradient); acc2 reads its carry in the step, so it stays a
    # per-step GEMM
    xs = rng.standard_normal((T, 5, 3)).astype(np.float32)
    W = rng.standard_normal((3, 4)).astype(np.float32)
    acc0 = rng.standard_normal((3, 4)).astype(np.float32)

    def run(xs, W, acc0):
        def step(carry, x):
            acc, acc2 = carry
            y = fj.tanh(fj.matmul(x, W))
            acc = acc + fj.matmul(x, y, transpose_a=True)
            acc2 = acc2 * 0.5 + fj.matmul(x, y + 1.0, transpose_a=True)
            return (acc, acc2), y
        return fj.scan(step, (acc0, acc0), xs, reverse=reverse)
    acc, acc2 = acc0.astype(np.float64), acc0.astype(np.float64)
    ys = np.tanh(xs.astype(np.float64) @ W)
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        acc = acc + xs[t].T @ ys[t]
        acc2 = acc2 * 0.5 + xs[t].T @ (ys[t] + 1.0)
    f = fj.jit(run)
    for (a, a2), y in (run(*[fj.convert_to_tensor(v) for v in (xs, W, acc0)]), f(xs, W, acc0)):
        assert_close(a.numpy(), acc, rtol=1e-5, atol=1e-5)
        assert_close(a2.numpy(), acc2, rtol=1e-5, atol=1e-5)
        assert_close(y.numpy(), ys, rtol=1e-5, atol=1e-6)
    src = f.inspect(xs, W, acc0).forward_source
    after = src[src.index("for l"):].split("\n")
    # (gemm, or ngemm for these 4-column float32 products: narrow_ir.py)
    after = [ln.replace("ngemm(", "gemm(") for ln in after]
    after_loop = [ln for ln in after if ln.startswith("    gemm(") and "_T * " in ln]
    in_loop = [ln for ln in after if ln.startswith("        gemm(")]
    packed = [ln for ln in after if ln.startswith("        pgemm(")]     # x_t @ W, W packed once
    assert len(after_loop) == 1 and len(in_loop) == 1 and len(packed) == 1, src


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T", [0, 4])
def test_a_weight_read_transposed_in_a_loop_is_transposed_once_before_it(rng, tier, T, dtype):
    # h @ W^T with W from outside the loop: a float32 loop multiplies by W^T packed once
    # before it (packed_ir.py), a float64 one by a contiguous copy of W^T made before it
    # (OpenBLAS packs a transposed operand more slowly every step); (W * 2)^T is
    # computed outside the loop too and treated the same way
    xs = rng.standard_normal((T, 3, 4)).astype(dtype)
    W = (rng.standard_normal((4, 4)) * 0.5).astype(dtype)
    h0 = rng.standard_normal((3, 4)).astype(dtype)

    def run(h0, xs, W):
        W2 = W * 2.0

        def step(h, x):
            h = fj.tanh(fj.matmul(h, W, transpose_b=True) + fj.matmul(x, W2, transpose_b=True))
            return h, h
        return fj.scan(step, h0, xs)
    h, hs = h0.astype(np.float64), []
    for t in range(T):
        h = np.tanh(h @ W.T + xs[t] @ (2 * W).T)
        hs.append(h)
    f = fj.jit(run)
    for got_h, got_hs in (run(*[fj.convert_to_tensor(v) for v in (h0, xs, W)]), f(h0, xs, W)):
        assert_close(got_h.numpy(), h, rtol=1e-5, atol=1e-6)
        assert_close(got_hs.numpy(), np.array(hs).reshape(T, 3, 4), rtol=1e-5, atol=1e-6)
    src = f.inspect(h0, xs, W).forward_source
    # the loop is a function of its own, defined before the entry that calls it
    before = src[src.rindex("def e_"):].split("_loop0(", 1)[0]
    loop = src[src.index("    for l"):src.rindex("def e_")]
    if dtype == np.float32:
        assert len(re.findall(r"= pack_weight\(\w+, np\.bool_\(True\)\)", before)) == 2, src
        assert len(re.findall(r"\bpgemm\(", loop)) == 2 and not re.search(r"\bgemm\(", loop), src
    else:
        assert len(re.findall(r"= np\.ascontiguousarray\(\w+\.T\)", before)) == 2, src
        assert "np.bool_(True)" not in loop, src


@pytest.mark.parametrize("reads", ["ys", "final carry"])
def test_a_sequence_the_backward_step_does_not_read_is_not_passed_to_it(rng, tier, reads):
    # h = tanh(p_t + h @ U) with p = x @ W computed before the loop (an LSTM's input
    # projection): the backward step reads h (saved) but not p_t, so the backward loop
    # does not take p, and the forward need not keep it. A loss of the final carry alone
    # leaves the ys' cotangent zero: the step makes those zeros itself
    h0, xs, W, U, b = make(rng, np.float64)

    def loss(h0, xs, W, U):
        p = fj.matmul(fj.reshape(xs, (-1, 3)), W)
        p = fj.reshape(p, (xs.shape[0], xs.shape[1], 4))
        h, hs = fj.scan(lambda h, p_t: (lambda h2: (h2, h2))(fj.tanh(p_t + fj.matmul(h, U))), h0, p)
        return fj.reduce_sum(hs * hs) if reads == "ys" else fj.reduce_sum(h * h * h)

    def np_loss(h0, xs, W, U):
        h, total = h0, 0.0
        for t in range(len(xs)):
            h = np.tanh(xs[t] @ W + h @ U)
            total += (h * h).sum()
        return total if reads == "ys" else (h ** 3).sum()

    def grads(*a):
        ts = [fj.convert_to_tensor(v) for v in a]
        with fj.GradientTape() as tape:
            tape.watch(ts)
            val = loss(*ts)
        return [val] + tape.gradient(val, ts)
    args = [h0, xs, W, U]
    f = fj.jit(grads)
    for got in (grads(*args), f(*args)):
        assert_close(got[0].numpy(), np_loss(*args), rtol=1e-12)
        for i in range(len(args)):
            assert_close(got[i + 1].numpy(), _fd(np_loss, args, i), rtol=1e-6, atol=1e-8)
    g = f.inspect(*args).optimized_graph_ir
    fwd, bwd = sorted((n for n in g.nodes if n.op == "scan"), key=lambda n: n.attrs["reverse"])
    p = fwd.inputs[fwd.attrs["n_carry"]]           # the forward's sequence
    assert p not in bwd.inputs
    assert not any(g.nodes[i].op in ("broadcast_to", "const") and len(g.nodes[i].shape) == 3
                   for i in bwd.inputs)                                    # no stacked zeros


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T", [0, 5])
def test_a_product_added_to_a_sequence_adds_its_slice_as_it_is_stored(rng, tier, T, dtype):
    # gates z = p_t + h @ U, read as two slices (an LSTM's gates), with p = x @ W + b
    # computed before the loop: in float32 the packed product adds p's slice as it
    # stores into a buffer of the loop's own, with no add kernel, and the same for a
    # sequence the caller passed in (q); it adds b too, p's slice being read from x @ W
    # (no pass adding b to all of it before the loop); in float64 BLAS adds the product into p's slice
    # in place (beta = 1), p being the loop's to write, and q's add is a kernel. q is
    # never written
    h0, xs, _, _, _ = make(rng, T=T)
    h0, xs = h0.astype(dtype), xs.astype(dtype)
    W = (rng.standard_normal((3, 8)) * 0.5).astype(dtype)
    U = (rng.standard_normal((4, 8)) * 0.5).astype(dtype)
    b = (rng.standard_normal(8) * 0.1).astype(dtype)
    q = rng.standard_normal((T, 2, 8)).astype(dtype)

    def cell(z):
        return fj.tanh(z[:, :4]) * fj.sigmoid(z[:, 4:])

    def run(h0, xs, W, U, b, q):
        p = fj.reshape(fj.matmul(fj.reshape(xs, (-1, 3)), W) + b, (xs.shape[0], xs.shape[1], 8))

        def step(h, pq):
            p_t, q_t = pq
            h = cell(p_t + fj.matmul(h, U))
            return h, cell(q_t + fj.matmul(h, U))
        return fj.scan(step, h0, (p, q))

    def np_cell(z):
        return np.tanh(z[:, :4]) / (1 + np.exp(-z[:, 4:]))
    q0 = q.copy()
    h, ys = h0.astype(np.float64), []
    for t in range(T):
        h = np_cell(xs[t] @ W + b + h @ U)
        ys.append(np_cell(q[t] + h @ U))
    f = fj.jit(run)
    for got_h, got_ys in (run(*[fj.convert_to_tensor(v) for v in (h0, xs, W, U, b, q)]), f(h0, xs, W, U, b, q)):
        assert_close(got_h.numpy(), h, rtol=1e-5, atol=1e-6)
        assert_close(got_ys.numpy(), np.array(ys).reshape(T, 2, 4), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(q, q0)
    src = f.inspect(h0, xs, W, U, b, q).forward_source
    loop = src.split("    for l", 1)[1]
    if dtype == np.float32:
        adds = re.findall(r"pgemm\(\w+, \w+, (\w+), (l\d+_x[01]), (.*), np\.bool_\(True\)\)", loop)
        assert sorted(x[-2:] for _, x, _ in adds) == ["x0", "x1"] and all(o != x for o, x, _ in adds), loop
        # p's bias is added by the product too: the loop reads x @ W's slices, and no
        # kernel adds the bias to all of x @ W before the loop
        # (no bias: the loop's empty array, typed like a bias row: one compiled pgemm)
        assert sorted(re.sub(r"^a\d+\.reshape\(.*\)$", "b", re.sub(r"^l\d+_nb$", "none", bias))
                      for _, _, bias in adds) == ["b", "none"], loop
        entry = src[src.index("(a0, "):]
        assert not re.search(r"\bk_\w+\(", entry.split("_loop0(", 1)[0]), src
        assert not re.search(r"gemm\(\w+, \w+, l\d+_x[01], ", loop), loop
    else:
        assert len(re.findall(r"\bgemm\(\w+, \w+, l\d+_x0, .*np\.bool_\(True\)\)", loop)) == 1, loop
        assert not re.search(r"gemm\(\w+, \w+, l\d+_x1, ", loop), loop


def test_scan_with_zero_steps(rng, tier):
    h0, xs, W, U, b = make(rng, T=0)
    for h, hs, sums in (fj_rnn(*[fj.convert_to_tensor(a) for a in (h0, xs, W, U, b)]), fj.jit(fj_rnn)(h0, xs, W, U, b)):
        assert_close(h.numpy(), h0)
        assert hs.shape == (0,) + h0.shape and sums.shape == (0,)


def test_fori_loop(rng, tier):
    x = rng.standard_normal(3).astype(np.float32)

    def f(x):
        return fj.fori_loop(2, 6, lambda i, v: v * 0.5 + fj.cast(i, "float32"), x)
    want = x.copy()
    for i in range(2, 6):
        want = want * 0.5 + i
    assert_close(f(fj.convert_to_tensor(x)).numpy(), want)
    assert_close(fj.jit(f)(x).numpy(), want)


def test_scan_errors_name_the_problem(rng):
    h0, xs = np.zeros((2, 3), np.float32), np.ones((4, 2, 3), np.float32)

    def grows(h, x):
        return fj.concat([h, x], axis=1), None
    with pytest.raises(TypeError, match=r"carry 0 enters the body as float32\(2, 3\).*float32\(2, 6\)"):
        fj.jit(lambda h, x: fj.scan(grows, h, x))(h0, xs)
    with pytest.raises(TypeError, match=r"carry 0 enters"):
        fj.scan(grows, fj.convert_to_tensor(h0), xs)
    with pytest.raises(TracerError, match="random ops inside an fj.scan body"):
        fj.jit(lambda h, x: fj.scan(lambda h, x: (h + fj.random.uniform((2, 3)), None), h, x))(h0, xs)
    v = fj.Variable(np.zeros((2, 3), np.float32))

    def assigns(h, x):
        v.assign(h)
        return h + x, None
    with pytest.raises(TracerError, match="assigned inside an fj.scan body"):
        fj.jit(lambda h, x: fj.scan(assigns, h, x))(h0, xs)
    with pytest.raises(ValueError, match="different leading dims"):
        fj.scan(lambda c, x: (c, None), fj.convert_to_tensor(h0), (xs, xs[:2]))
    with pytest.raises(TypeError, match="pair"):
        fj.scan(lambda c, x: c, fj.convert_to_tensor(h0), xs)


# --- cond ----------------------------------------------------------------------
def test_cond_values_and_gradients(rng, tier):
    x = rng.standard_normal(3)
    w, v = np.array(1.3), np.array(-0.4)

    def f(x, w, v, p):
        return fj.cond(p > 0, lambda a: a * a * w, lambda a: fj.sin(a) + v, x)

    def grads(x, w, v, p):
        x, w, v = (fj.convert_to_tensor(a) for a in (x, w, v))
        with fj.GradientTape() as tape:
            tape.watch([x, w, v])
            val = fj.reduce_sum(f(x, w, v, p) * np.array([1.0, 2.0, 3.0]))
        # (eagerly the untaken branch's capture is unconnected; compiled, its gradient is 0)
        return [val] + tape.gradient(val, [x, w, v], unconnected_gradients="zero")

    for p in (1.0, -1.0):
        def np_val(x, w, v, p=p):
            y = x * x * w if p > 0 else np.sin(x) + v
            return (y * np.array([1.0, 2.0, 3.0])).sum()
        args = [x, w, v]
        for got in (grads(*args, np.array(p)), fj.jit(grads)(*args, np.array(p))):
            assert_close(got[0].numpy(), np_val(*args), rtol=1e-12)
            for i in range(3):
                assert_close(got[i + 1].numpy(), _fd(np_val, args, i), rtol=1e-6, atol=1e-8)


def test_cond_runs_only_the_taken_branch(tier):
    """The untaken branch would read out of range (and raise): it must not run."""
    table = np.arange(4.0, dtype=np.float32)

    @fj.jit
    def lookup(i):
        return fj.cond(i < 4, lambda: fj.gather(table, i), lambda: fj.constant(-1.0))
    assert float(lookup(np.int32(2))) == 2.0
    assert float(lookup(np.int32(9))) == -1.0
    with pytest.raises(fj.errors.OutOfRangeError):
        fj.jit(lambda i: fj.cond(i >= 0, lambda: fj.gather(table, i), lambda: fj.constant(-1.0)))(np.int32(9))


def test_cond_inside_scan_with_gradient(rng, tier):
    xs = rng.standard_normal((6, 2))

    def run(c0, w):
        def step(c, x):
            c = fj.cond(fj.reduce_sum(x) > 0, lambda: c * w + x, lambda: c - x * w)
            return c, None
        return fj.reduce_sum(fj.scan(step, c0, xs)[0] ** 2)

    def np_run(c0, w):
        c = c0
        for x in xs:
            c = c * w + x if x.sum() > 0 else c - x * w
        return (c ** 2).sum()

    def grads(c0, w):
        c0, w = fj.convert_to_tensor(c0), fj.convert_to_tensor(w)
        with fj.GradientTape() as tape:
            tape.watch([c0, w])
            val = run(c0, w)
        return [val] + tape.gradient(val, [c0, w])
    args = [rng.standard_normal(2), np.array(0.8)]
    for got in (grads(*args), fj.jit(grads)(*args)):
        assert_close(got[0].numpy(), np_run(*args), rtol=1e-12)
        for i in range(2):
            assert_close(got[i + 1].numpy(), _fd(np_run, args, i), rtol=1e-6, atol=1e-8)


def test_cond_errors():
    with pytest.raises(TypeError, match=r"result 0 is float32\(3,\) .*in the true branch and float32\(2,\) in the false"):
        fj.jit(lambda p, x: fj.cond(p > 0, lambda: x, lambda: x[:2]))(np.float32(1), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="pred must be a scalar"):
        fj.cond(np.array([True, False]), lambda: 1.0, lambda: 2.0)


# --- while_loop ------------------------------------------------------------------
def test_while_loop_data_dependent_trip_count(tier):
    def collatz(n):
        def body(n, steps):
            n = fj.where(n % 2 == 0, n // 2, 3 * n + 1)
            return n, steps + 1
        return fj.while_loop(lambda n, steps: n != 1, body, (n, fj.constant(0)))[1]

    def np_collatz(n):
        steps = 0
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            steps += 1
        return steps
    jitted = fj.jit(collatz)
    fj.reset_stats()
    for n in (1, 6, 27, 97):
        assert int(collatz(fj.constant(n)).numpy()) == np_collatz(n)
        assert int(jitted(np.int32(n)).numpy()) == np_collatz(n)
    assert fj.stats()["traces"] == 1


def test_while_loop_tensor_vars_and_maximum_iterations(rng, tier):
    x = rng.standard_normal((2, 3)).astype(np.float32)

    def f(x):
        return fj.while_loop(lambda v: fj.reduce_max(fj.abs(v)) < 100.0, lambda v: v * 2.0 + 1.0, x,
                             maximum_iterations=4)
    want = x.copy()
    for _ in range(4):
        if np.abs(want).max() >= 100:
            break
        want = want * 2 + 1
    assert_close(f(fj.convert_to_tensor(x)).numpy(), want)
    assert_close(fj.jit(f)(x).numpy(), want)


def test_while_loop_gradient_says_what_to_use():
    def f(x):
        with fj.GradientTape() as tape:
            tape.watch(x)
            y = fj.reduce_sum(fj.while_loop(lambda v: fj.reduce_sum(v) < 10.0, lambda v: v * 2.0, x))
        return tape.gradient(y, x)
    with pytest.raises(TracerError, match="only with maximum_iterations"):
        fj.jit(f)(np.ones(2, np.float32))


def test_while_loop_with_maximum_iterations_is_differentiable(tier):
    """Under a tape, a bounded while runs as a scan whose steps stop changing the vars once
    the condition fails; its gradient matches finite differences of the plain loop."""
    def f(x, w):
        with fj.GradientTape() as t:
            t.watch([x, w])
            y = fj.while_loop(lambda v: fj.reduce_sum(v) < 10.0, lambda v: v * w + 1.0, x, maximum_iterations=20)
            val = fj.reduce_sum(y * y)
        return [val] + t.gradient(val, [x, w])

    def np_f(x, w):
        v = x.copy()
        while v.sum() < 10:
            v = v * w + 1
        return (v * v).sum()
    args = [np.array([0.5, 0.2]), np.array(1.5)]
    for got in (f(*[fj.convert_to_tensor(a) for a in args]), fj.jit(f)(*args)):
        assert_close(got[0].numpy(), np_f(*args), rtol=1e-12)
        for i in range(2):
            assert_close(got[i + 1].numpy(), _fd(np_f, args, i), rtol=1e-6, atol=1e-8)


def test_checkpointed_scan_saves_every_kth_carry_and_gives_the_same_gradients(rng, tier):
    xs = rng.standard_normal((12, 2, 3))
    W = rng.standard_normal((3, 3)) * 0.5

    def f(h0, xs, every):
        with fj.GradientTape() as t:
            t.watch([h0, xs])
            h, ys = fj.scan(lambda c, x: (fj.tanh(fj.matmul(c, W) + x), fj.reduce_sum(c * c)), h0, xs,
                            checkpoint=every)
            val = fj.reduce_sum(ys * np.arange(12.0)) + fj.reduce_sum(h * h)
        return [val] + t.gradient(val, [h0, xs])
    h0 = rng.standard_normal((2, 3))
    plain = fj.jit(lambda h, x: f(h, x, None))
    checked = fj.jit(lambda h, x: f(h, x, 4))
    for a, b in zip(plain(h0, xs), checked(h0, xs)):
        assert_close(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-12)
    # saved for the backward: the carry entering each of the 3 stretches, not every step's
    saved = checked.inspect(h0, xs).saved
    assert any("(3, " in s for s in saved) and not any("(12, " in s for s in saved), saved
    assert any("(12, " in s for s in plain.inspect(h0, xs).saved)
    with pytest.raises(ValueError, match="checkpoint=5 must divide the trip count 12"):
        fj.jit(lambda h, x: f(h, x, 5))(h0, xs)


def test_scan_backward_reads_the_steps_transcendentals_back(rng):
    """A loop step's backward reads the forward's sigmoid and tanh from stacked residuals
    instead of computing them again (passes/partition.py's recompute cost, lowered for
    loop steps), and its gradients still match finite differences."""
    h0, xs, W, U, b = make(rng, dtype=np.float64)

    def loss(h0, xs):
        def cell(h, x):
            a = fj.matmul(x, W) + fj.matmul(h, U) + b
            h = fj.sigmoid(a) * fj.tanh(a + 1.0)
            return h, fj.reduce_sum(h * h)
        return fj.reduce_sum(fj.scan(cell, h0, xs)[1])

    @fj.jit
    def grads(h0, xs):
        with fj.GradientTape() as t:
            t.watch([h0, xs])
            val = loss(h0, xs)
        return t.gradient(val, [h0, xs])
    info = grads.inspect(h0, xs)
    assert "sigmoid" in info.forward_source and "tanh" in info.forward_source
    assert "sigmoid" not in info.backward_source and "tanh" not in info.backward_source

    def f(h0, xs):
        return float(loss(fj.convert_to_tensor(h0), fj.convert_to_tensor(xs)))
    g_h0, g_xs = grads(h0, xs)
    assert_close(g_h0.numpy(), _fd(f, [h0, xs], 0), rtol=1e-6, atol=1e-7)
    assert_close(g_xs.numpy(), _fd(f, [h0, xs], 1), rtol=1e-6, atol=1e-7)


def test_scan_step_writes_its_outputs_into_the_stacked_results(rng, tier):
    """A step's output a loop kernel computes is written straight into its slice of the
    stacked result (no per-step copy); a 0-d one (the per-step sum) is still copied in.
    Values match the NumPy loop forwards and in reverse."""
    args = make(rng, T=6)
    for reverse in (False, True):
        f = fj.jit(lambda *a: fj_rnn(*a, reverse=reverse))
        for got, want in zip(f(*args), np_rnn(*args, reverse=reverse)):
            assert_close(got.numpy(), want, rtol=1e-5, atol=1e-6)
        src = f.inspect(*args).forward_source
        assert re.search(r"l\d+_v\d+ = l\d+_y\d+\[l\d+_t\]\n", src), src
        assert len(re.findall(r"assign\(l\d+_\w+\.reshape\(\(l\d+_T, [^)]*\)\)\[l\d+_t\], ", src)) == 1, src  # the sums only
