"""Loop groups that only move data (a copy through transposes and slices, a broadcast,
a fill with one value) run as one array assignment in the CPU entry, with no kernel
(codegen._move_lines): values against NumPy in the Python tier and in the compiled
entry, which kernels remain, and the groups that must keep theirs."""
import re

import numpy as np
import pytest

import flowjit as fj
from conftest import assert_close


def tiers(fn, *args, compiled=True):
    """fn jitted, called until its entry is compiled: (first call's outputs, the compiled
    entry's outputs, the forward executable). compiled=False: a program big enough to
    stay in the Python tier (backend.estimate_python_share)."""
    f = fj.jit(fn)
    first = [np.asarray(o) for o in _listed(f(*args))]
    for _ in range(fj.config.compile_entry_after):
        last = [np.asarray(o) for o in _listed(f(*args))]
    c, _ = f._lookup(args, {})
    exe = c.stages[0].exe
    assert (exe.run == exe._run_njit) == compiled
    return first, last, exe


def _listed(out):
    return [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]


def check(fn, expected, *args, kernels=0, compiled=True):
    first, last, exe = tiers(fn, *args, compiled=compiled)
    for got in (first, last):
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape and g.dtype == e.dtype
            np.testing.assert_array_equal(g, e)
    assert len(exe.kernel_names) == kernels, exe.source()
    return exe


def x3(seed=0, shape=(4, 5, 6), dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_transpose_is_an_assignment():
    x = x3()
    exe = check(lambda x: fj.transpose(x, (1, 0, 2)), [x.transpose(1, 0, 2)], x)
    # assign's loop nest in the compiled entry, not Numba's transpose (3 s to compile)
    assert ", a0, (1, 0, 2, ))" in exe.source() and ".transpose(" not in exe.source()


def test_slices_with_starts_and_steps():
    x = x3(1, (9, 7))
    check(lambda x: (x[2:8:3, 1:], x[1:4], x[:, ::2]), [x[2:8:3, 1:], x[1:4], x[:, ::2]], x)


def test_slice_and_transpose_together():
    x = x3(2, (6, 5, 4))
    check(lambda x: fj.transpose(x[1:5, :, 1::2], (2, 0, 1)), [x[1:5, :, 1::2].transpose(2, 0, 1)], x)


def test_broadcast_along_leading_dims_and_an_index():
    x = x3(3, (3, 4))
    check(lambda x: (fj.broadcast_to(x[1], (5, 4)), fj.broadcast_to(x[2:3, 1:], (2, 6, 3))),
          [np.broadcast_to(x[1], (5, 4)).copy(), np.broadcast_to(x[2:3, 1:], (2, 6, 3)).copy()], x)


def test_fill_with_a_value_computed_from_scalars():
    x = x3(4, (3, 4))
    a = np.array([1.5], np.float32)

    def f(x, a):
        s = fj.reduce_sum(x)                         # a kernel of its own
        return fj.broadcast_to(-(a * 2.0) + 1.0, (4, 3)), fj.broadcast_to(-s, (2, 5))
    s = np.float32(np.sum(x.astype(np.float64)))
    first, last, exe = tiers(f, x, a)
    for got in (first, last):
        np.testing.assert_array_equal(got[0], np.full((4, 3), np.float32(-(a[0] * 2) + 1)))
        assert got[1].shape == (2, 5) and np.all(got[1] == got[1][0, 0])
        assert_close(got[1][0, 0], -s)
    assert len(exe.kernel_names) == 1            # the sum


def test_integer_and_bool_moves():
    i = np.arange(24, dtype=np.int32).reshape(4, 6)
    b = (i % 3 == 0)
    check(lambda i, b: (fj.transpose(i), b[:, 1:4]), [i.T.copy(), b[:, 1:4]], i, b)


def test_a_broadcast_in_the_middle_keeps_its_kernel():
    x = x3(5, (4, 3))
    check(lambda x: fj.broadcast_to(fj.reshape(x, (4, 1, 3)), (4, 5, 3)),
          [np.broadcast_to(x[:, None, :], (4, 5, 3)).copy()], x, kernels=1)


def test_a_move_with_arithmetic_or_padding_keeps_its_kernel():
    x = x3(6, (4, 3))
    check(lambda x: fj.transpose(x) * 2.0, [x.T * np.float32(2.0)], x, kernels=1)
    check(lambda x: fj.pad(x, [[1, 0], [0, 2]]), [np.pad(x, [[1, 0], [0, 2]])], x, kernels=1)


def test_new_sizes_reuse_the_trace():
    f = fj.jit(lambda x: fj.transpose(x[1:], (1, 0)))
    for n in (5, 9, 3):
        x = x3(n, (n, 4))
        np.testing.assert_array_equal(f(x).numpy(), x[1:].T)


def test_moves_in_a_scan_body_and_their_gradient():
    xs = x3(7, (5, 3, 2)).astype(np.float64)
    h0 = x3(8, (2, 3)).astype(np.float64)

    def f(h0, xs):
        def body(h, x):
            hn = fj.tanh(fj.transpose(h) + x)        # (3, 2)
            return fj.transpose(hn), fj.transpose(hn)[1:]
        h, ys = fj.scan(body, h0, xs)
        return fj.reduce_sum(h * h) + fj.reduce_sum(ys)

    def ref(h0, xs):
        h, total = h0, 0.0
        for x in xs:
            hn = np.tanh(h.T + x)
            h = hn.T
            total += hn.T[1:].sum()
        return (h * h).sum() + total
    g = fj.jit(fj.value_and_grad(f))
    v, gr = g(h0, xs)
    assert_close(v.numpy(), ref(h0, xs), rtol=1e-12)
    eps = 1e-6
    num = np.zeros_like(h0)
    for k in np.ndindex(*h0.shape):
        d = np.zeros_like(h0)
        d[k] = eps
        num[k] = (ref(h0 + d, xs) - ref(h0 - d, xs)) / (2 * eps)
    assert_close(gr.numpy(), num, rtol=1e-6, atol=1e-8)


def test_a_big_move_keeps_its_kernel():
    x = np.arange(1 << 20, dtype=np.float32).reshape(2, -1)      # MOVE_POOL_MIN elements
    check(lambda x: fj.transpose(x), [x.T.copy()], x, kernels=1, compiled=False)


def test_assign_compiled_matches_numpy():
    """runtime_lib.assign compiled (a loop nest per rank and permutation) against NumPy's
    assignment: copies, transposes of 2-4 dims, broadcasts along leading dims, fills,
    strided sources; shapes that differ raise instead of reading out of bounds."""
    import pytest
    from numba import njit
    from flowjit.backends.cpu.runtime_lib import assign

    @njit
    def plain(d, s):
        assign(d, s)

    @njit
    def t102(d, s):
        assign(d, s, (1, 0, 2, ))

    @njit
    def t201(d, s):
        assign(d, s, (2, 0, 1, ))

    @njit
    def t10(d, s):
        assign(d, s, (1, 0, ))

    @njit
    def t3012(d, s):
        assign(d, s, (3, 0, 1, 2, ))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 5, 6)).astype(np.float32)
    cases = [(plain, x, None), (plain, x[1:3, ::2, 1:], None), (plain, x[0], None),
             (plain, x[0, 1], None), (plain, x[0, :, 2], None),
             (t102, x, (1, 0, 2)), (t201, x[:, 1:4, ::3], (2, 0, 1)), (t10, x[2], (1, 0)),
             (t3012, rng.standard_normal((2, 3, 4, 5)), (3, 0, 1, 2))]
    for fn, src, perm in cases:
        want = src if perm is None else src.transpose(perm)
        got = np.full(want.shape, np.nan, src.dtype)
        fn(got, src)
        np.testing.assert_array_equal(got, want)
    b = np.zeros((3, 5, 6), np.float32)          # broadcast along the leading dim
    plain(b, x[0])
    np.testing.assert_array_equal(b, np.broadcast_to(x[0], b.shape))
    f = np.zeros((3, 4), np.int64)
    plain(f, np.int64(7))
    assert (f == 7).all()
    with pytest.raises(ValueError, match="assign"):
        plain(np.zeros((3, 5, 7), np.float32), x[0])
    with pytest.raises(ValueError, match="assign"):
        t102(np.zeros((4, 5, 6), np.float32), x)


def test_the_gradient_of_a_split_is_stored_into_its_slices(monkeypatch, tmp_path):
    """The gradient of a split is its pieces' gradients, each zero-padded to the whole
    and summed: with pieces tiling the axis, the kernel computing the pieces stores each
    straight into its slice (codegen._placements), with no copy and no kernel for the
    sum, in both tiers; pieces that overlap still sum in a kernel."""
    x = np.random.default_rng(3).standard_normal((5, 12))

    def grad(x, overlap=False):
        with fj.GradientTape() as tape:
            tape.watch(x)
            a, b, c = fj.split(x, 3, axis=1)
            if overlap:
                a = x[:, 2:6]
            loss = fj.reduce_sum(fj.sin(a) + 2.0 * fj.cos(b) + c * c)
        return tape.gradient(loss, x)
    a, b, c = np.split(x, 3, axis=1)
    want = np.concatenate([np.cos(a), -2.0 * np.sin(b), 2.0 * c], axis=1)
    old = fj.config.entry_overhead_share
    for share in (old, 1.5):       # a compiled entry; one left in the Python tier
        fj.config.entry_overhead_share = share
        # (an empty disk cache: the entry compiled first would load from the first call)
        monkeypatch.setenv("FLOWJIT_CACHE_DIR", str(tmp_path / str(share)))
        try:
            f = fj.jit(grad)
            outs = [f(x).numpy() for _ in range(fj.config.compile_entry_after + 1)]
        finally:
            fj.config.entry_overhead_share = old
        c, _ = f._lookup((x,), {})
        exe = c.stages[-1].exe           # the backward computes the gradient
        assert (exe.run == exe._run_njit) == (share == old)
        for got in outs:
            assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert "assign(" not in exe.entry_src and len(exe.kernel_names) == 1, exe.source()
        assert "Q2" in exe.source()
    f = fj.jit(lambda x: grad(x, overlap=True))
    want = np.zeros_like(x)
    want[:, 2:6] += np.cos(x[:, 2:6])
    want[:, 4:8] -= 2.0 * np.sin(x[:, 4:8])
    want[:, 8:] += 2.0 * x[:, 8:]
    assert_close(f(x).numpy(), want, rtol=1e-12, atol=1e-12)
    assert "assign(" not in f.inspect(x).backward_source


def _split_grad(axis, wide=None):
    """fn(x, w) -> d loss / dx for x split along `axis` into three pieces; the last
    piece's gradient comes from a product (no loop kernel) when `wide` is set, and the
    first piece's is also returned when `wide` is "kept" (a value something else reads)."""
    def fn(x, w):
        with fj.GradientTape() as tape:
            tape.watch(x)
            pieces = fj.split(x, 3, axis=axis)
            if wide == "kept":
                tape.watch(pieces[0])
            loss = fj.reduce_sum(fj.sin(pieces[0])) + fj.reduce_sum(2.0 * fj.cos(pieces[1]))
            last = pieces[-1]
            if wide:
                loss = loss + fj.reduce_sum(fj.matmul(fj.reshape(last, (-1, last.shape[-1])), w))
            else:
                loss = loss + fj.reduce_sum(last * last)
        if wide == "kept":
            return tape.gradient(loss, [x, pieces[0]])
        return tape.gradient(loss, x)
    return fn


def _split_grad_numpy(x, w, axis, wide=None):
    a, b, c = np.split(x, 3, axis=axis)
    dc = np.broadcast_to(w.sum(axis=1), c.shape) if wide else 2.0 * c
    return np.concatenate([np.cos(a), -2.0 * np.sin(b), dc], axis=axis)


@pytest.mark.parametrize("shape,axis,wide", [
    ((5, 12), 1, None),
    ((9, 4), 0, None),              # along the first axis
    ((3, 9, 4), 1, None),           # along a middle axis
    ((2, 3, 4, 6), 3, "matmul"),    # one piece from a product: copied
    ((5, 12), 1, "kept"),           # and one read elsewhere: copied too
    ((384, 8, 64), 0, None),        # row blocks on the pool, the axis first
    ((16, 128, 96), 2, None),       # the same, along the last axis
])
def test_split_gradients_stored_in_place_match_numpy(shape, axis, wide):
    """Pieces stored straight into their slices, along any axis, big enough for the
    pool's row blocks or not, and beside pieces that are copied (one computed by a
    product, one that is also a result): values against NumPy, eager against jit, and
    how many pieces are copied."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((shape[-1] // 3 if axis == len(shape) - 1 else shape[-1], 3))
    fn = _split_grad(axis, wide)
    want = _split_grad_numpy(x, w, axis, wide)
    eager = fn(fj.constant(x), fj.constant(w))
    f = fj.jit(fn)
    for _ in range(fj.config.compile_entry_after + 1):
        got = f(x, w)
    if wide == "kept":
        assert_close(got[1].numpy(), want[:, :shape[1] // 3], rtol=1e-12, atol=1e-12)
        eager, got = eager[0], got[0]
    assert_close(eager.numpy(), want, rtol=1e-12, atol=1e-12)
    assert_close(got.numpy(), want, rtol=1e-12, atol=1e-12)
    c, _ = f._lookup((x, w), {})
    exe = c.stages[-1].exe
    assert exe.run == exe._run_njit or x.size > 10000    # (big steps stay in the Python tier)
    copies = re.findall(r"assign\([^[\n]*\[[:, ]*\d+:\d+\], ", exe.entry_src)    # a piece into its slice
    assert len(copies) == {None: 0, "matmul": 1, "kept": 2}[wide], exe.source()
    assert ("_task(" in exe.source()) == (x.size > 10000)


def test_split_gradient_pieces_that_their_kernel_also_sums_are_stored_in_place():
    """A piece's gradient that the kernel computing it also sums (the gradient of a bias
    added to the piece) is still stored straight into its slice: the sum reads it in a
    register."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 12))
    bs = [rng.standard_normal(4) for _ in range(3)]

    def fn(x, b0, b1, b2):
        with fj.GradientTape() as tape:
            tape.watch(x)
            for b in (b0, b1, b2):
                tape.watch(b)
            p0, p1, p2 = fj.split(x, 3, axis=1)
            loss = fj.reduce_sum(fj.sin(p0 + b0)) + fj.reduce_sum(2.0 * fj.cos(p1 + b1)) \
                + fj.reduce_sum((p2 + b2) * (p2 + b2))
        return tape.gradient(loss, [x, b0, b1, b2])
    a, b, c = (p + q for p, q in zip(np.split(x, 3, axis=1), bs))
    pieces = [np.cos(a), -2.0 * np.sin(b), 2.0 * c]
    want = [np.concatenate(pieces, axis=1)] + [p.sum(axis=0) for p in pieces]
    f = fj.jit(fn)
    for _ in range(fj.config.compile_entry_after + 1):
        got = f(x, *bs)
    for g, w in zip(got, want):
        assert_close(g.numpy(), w, rtol=1e-12, atol=1e-12)
    c, _ = f._lookup((x, *bs), {})
    exe = c.stages[-1].exe
    assert not re.findall(r"assign\([^[\n]*\[[:, ]*\d+:\d+\], ", exe.entry_src), exe.source()
    assert "Q2" in exe.source()
