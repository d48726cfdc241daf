"""SGD's update of a dense layer's weight, W - lr * (x^T @ dz), runs as one GEMM adding
x^T @ (-lr * dz) into W's buffer (passes/updates.py, then the CPU code generator):
the same values as NumPy's update, and the rewrite only where nothing else reads the
gradient."""
import re

import numpy as np
import pytest

import flowjit as fj
from flowjit.passes.updates import products_into_updates


def _layer(seed=0, n_in=24, n_out=16, batch=8):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, n_in)).astype(np.float32),
            rng.standard_normal((batch, n_out)).astype(np.float32),
            (rng.standard_normal((n_in, n_out)) * 0.3).astype(np.float32))


def _numpy_step(x, y, w, lr):
    """One SGD step of mean((tanh(x @ w) - y)^2) in float64: (loss, new w, gradient)."""
    x, y, w = (a.astype(np.float64) for a in (x, y, w))
    h = np.tanh(x @ w)
    dz = 2.0 * (h - y) / h.size * (1.0 - h * h)
    g = x.T @ dz
    return np.mean((h - y) ** 2), w - lr * g, g


def _three_steps_match_numpy(step, x, y, w, w0, lr):
    """Three calls of `step` against _numpy_step's: the losses, and `w` after each."""
    want = w0
    for _ in range(3):
        loss, want, _ = _numpy_step(x, y, want, lr)
        np.testing.assert_allclose(float(step(x, y)), loss, rtol=1e-5)
        np.testing.assert_allclose(w.numpy(), want, rtol=1e-5, atol=1e-6)


def _loss(x, y, w):
    return fj.reduce_mean(fj.square(fj.tanh(fj.matmul(x, w)) - y))


def _gemms_into(source, arg):
    """The GEMM calls of a generated function adding into argument `arg`."""
    return re.findall(rf"gemm\([^\n]*, {arg}, np\.bool_\((?:True|False)\), np\.bool_\((?:True|False)\), "
                      rf"np\.bool_\(True\)\)", source)


@pytest.mark.parametrize("how", ["optimizer", "assign_sub", "assign_add"])
def test_an_sgd_step_adds_the_product_into_the_weight(how):
    x, y, w0 = _layer()
    lr = 0.1
    w = fj.Variable(w0)
    opt = fj.optimizers.SGD(lr)

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            loss = _loss(x, y, w)
        g = tape.gradient(loss, w)
        if how == "optimizer":
            opt.apply_gradients([(g, w)])
        elif how == "assign_sub":
            w.assign_sub(lr * g)
        else:
            w.assign_add(g * -lr)
        return loss

    _three_steps_match_numpy(step, x, y, w, w0, lr)
    src = step.inspect(x, y).backward_source
    update = [line for line in src.splitlines() if "gemm(" in line and "np.bool_(True))" in line]
    assert len(update) == 1, src
    # the variable's buffer is the GEMM's output; no loop kernel writes the update
    arg = update[0].split(", ")[2]
    assert re.fullmatch(r"a\d+", arg), update
    assert not re.search(rf"k_\w+\([^\n]*\b{arg}\b", src), src


def test_a_product_big_enough_to_pack_adds_into_the_weight_from_the_packed_product():
    """A layer whose gradient is a packed product (codegen.PACK_MIN_MACS multiply-adds,
    the input read transposed, AVX-512's tiles): SGD's update is that product adding
    into the variable's buffer, with NumPy's values."""
    from flowjit.backends.cpu import codegen, packed
    x, y, w0 = _layer(2, n_in=256, n_out=2 * packed.PANEL, batch=260)
    assert x.shape[0] * w0.size >= codegen.PACK_MIN_MACS
    lr = 0.5
    w = fj.Variable(w0)

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            loss = _loss(x, y, w)
        w.assign_sub(lr * tape.gradient(loss, w))
        return loss

    _three_steps_match_numpy(step, x, y, w, w0, lr)
    src = step.inspect(x, y).backward_source
    into = re.findall(r"pack_pgemm\(\w+\.T, [^\n]*, (a\d+), \1, np\.zeros\(0, np\.float32\), np\.bool_\(True\)\)",
                      src)
    if packed.available() and packed.GEOMETRY.width == 16:
        assert len(into) == 1, src
        assert not re.search(rf"\bk_[0-9a-f]+\([^\n]*\b{into[0]}\b", src), src
    else:
        assert not into and len(_gemms_into(src, r"a\d+")) == 1, src


def test_a_gradient_read_elsewhere_is_left_alone():
    """The step returns the gradient too: the product is read twice, so it is computed
    once and the update stays an elementwise pass."""
    x, y, w0 = _layer(1)
    w = fj.Variable(w0)

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            loss = _loss(x, y, w)
        g = tape.gradient(loss, w)
        w.assign_sub(0.05 * g)
        return g

    _, want, g_want = _numpy_step(x, y, w0, 0.05)
    np.testing.assert_allclose(step(x, y).numpy(), g_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-5, atol=1e-6)
    assert not _gemms_into(step.inspect(x, y).backward_source, r"a\d+")


def test_the_factor_goes_onto_the_smaller_operand():
    """x^T @ dz with x of 64 x 8 and dz of 64 x 3: the factor scales dz (192 values), not
    x; x is the bigger one the other way round."""
    for n_in, n_out, scaled_is_dz in ((8, 3, True), (3, 8, False)):
        rng = np.random.default_rng(2)
        x = rng.standard_normal((64, n_in)).astype(np.float32)
        dz = rng.standard_normal((64, n_out)).astype(np.float32)
        w0 = rng.standard_normal((n_in, n_out)).astype(np.float32)
        w = fj.Variable(w0)

        @fj.jit
        def update(x, dz, lr):
            w.assign_sub(fj.matmul(x, dz, transpose_a=True) * lr)
            return lr

        lr = np.float32(0.5)
        update(x, dz, lr)
        np.testing.assert_allclose(w.numpy(), w0 - lr * (x.T.astype(np.float64) @ dz), rtol=1e-5, atol=1e-5)
        c = next(iter(update._cache.values()))[0]
        g = c.stages[0].program.graph
        scaled = [n for n in g.nodes if n.op == "multiply"]
        assert len(scaled) == 1
        assert tuple(scaled[0].shape) == ((64, n_out) if scaled_is_dz else (64, n_in))


def test_the_rewrite_keeps_a_graph_without_such_updates():
    x, y, w0 = _layer(3)

    @fj.jit
    def f(x, w):
        return fj.matmul(x, w) * 2.0

    f(x, w0)
    g = next(iter(f._cache.values()))[0].joint
    assert products_into_updates(g) is g


def test_a_step_that_can_fail_updates_through_a_copy_with_the_same_values():
    """An embedding table trained beside the dense weight: its gradient is a scatter-add
    (whose indices may be out of range), so the backward keeps every update out of the
    variables' buffers until it succeeds. The rewritten dense update is then an add
    kernel of its own, with the values of NumPy's step; a bad index changes nothing."""
    rng = np.random.default_rng(4)
    t0 = rng.standard_normal((10, 6)).astype(np.float32)
    w0 = (rng.standard_normal((6, 5)) * 0.3).astype(np.float32)
    y = rng.standard_normal((8, 5)).astype(np.float32)
    table, w = fj.Variable(t0), fj.Variable(w0)
    opt = fj.optimizers.SGD(0.1)

    @fj.jit
    def step(ids, y):
        with fj.GradientTape() as tape:
            loss = _loss(fj.gather(table, ids), y, w)
        opt.apply_gradients(zip(tape.gradient(loss, [table, w]), [table, w]))
        return loss

    ids = rng.integers(0, 10, 8)
    x = t0[ids].astype(np.float64)
    h = np.tanh(x @ w0)
    dz = 2.0 * (h - y) / h.size * (1.0 - h * h)
    d_table = np.zeros(t0.shape)
    np.add.at(d_table, ids, dz @ w0.T)
    np.testing.assert_allclose(float(step(ids, y)), np.mean((h - y) ** 2), rtol=1e-5)
    np.testing.assert_allclose(w.numpy(), w0 - 0.1 * (x.T @ dz), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table.numpy(), t0 - 0.1 * d_table, rtol=1e-5, atol=1e-6)
    src = step.inspect(ids, y).backward_source
    assert "scatter" in src and not _gemms_into(src, r"a\d+"), src
    before = w.numpy().copy(), table.numpy().copy()
    with pytest.raises(Exception, match="gather|scatter"):
        step(np.array([0, 1, 2, 3, 4, 5, 6, 99]), y)
    np.testing.assert_array_equal(w.numpy(), before[0])
    np.testing.assert_array_equal(table.numpy(), before[1])
