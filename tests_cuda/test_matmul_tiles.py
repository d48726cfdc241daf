"""A product big enough to fill the GPU with big tiles runs the MM_BIG kernel on its own
launch (runtime.matmul); a device that refuses that kernel gets the standard tiling,
with one warning; a matmul whose known sizes are small is compiled without the choice.
Under the simulator the thresholds are small (runtime.BIG_MIN) and MM_BIG is a tile of
the same size with another register block, so both kernels run here."""
import warnings

import numpy as np
import pytest

import flowjit as fj
from flowjit.backends.cuda import runtime as RT

R = np.random.default_rng(11)


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


@pytest.fixture(autouse=True)
def simulator_thresholds(monkeypatch):
    """The simulator's thresholds on a real GPU too, so that these small products take
    the big tiles (on a GPU, a product fills it with them from 2 x multiprocessors x
    128 x 128 outputs: perf/bench_gpu.py's 4096^3 product does)."""
    if not RT.SIM:
        monkeypatch.setattr(RT, "BIG_MIN", (32, 32, 8))
        monkeypatch.setattr(RT, "_fills_with_big_tiles", lambda M, N, K: M >= 32 and N >= 32 and K >= 8)


@pytest.fixture
def launched(monkeypatch):
    """The kernels runtime.matmul launched, in order: 'big' or 'small'."""
    seen = []
    real = RT.matmul

    def spy(big, small, *args):
        return real(_Tagged(big, "big", seen), _Tagged(small, "small", seen), *args)
    monkeypatch.setattr(RT, "matmul", spy)
    return seen


class _Tagged:
    """A Counted kernel that records its launches under a tag."""

    def __init__(self, kernel, tag, calls):
        self.k, self.tag, self.calls = kernel, tag, calls

    @property
    def unusable(self):
        return self.k.unusable

    @unusable.setter
    def unusable(self, v):
        self.k.unusable = v

    def __getitem__(self, config):
        self.calls.append(self.tag)
        return self.k[config]


def _products(a, b, at, bt, c3, d3):
    return [a @ b, fj.matmul(a, bt, transpose_b=True), fj.matmul(at, b, transpose_a=True),
            fj.matmul(at, bt, transpose_a=True, transpose_b=True), c3 @ d3, fj.matmul(c3, b)]


def test_big_products_take_the_big_tiles_and_equal_numpy(launched):
    a, b = f32(40, 36), f32(36, 44)          # 40 x 44 outputs: ragged edges of 8-tiles too
    at, bt = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
    c3, d3 = f32(2, 40, 36), f32(2, 36, 44)
    with fj.device("/gpu:0"):
        f = fj.jit(_products)
        got = [t.numpy() for t in f(a, b, at, bt, c3, d3)]
        src = f.inspect(a, b, at, bt, c3, d3).forward_source
    want = [a @ b, a @ bt.T, at.T @ b, at.T @ bt.T, c3 @ d3, c3 @ b]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    assert src.count("RT.matmul(") == 6
    assert launched == ["big"] * 6


def test_a_product_too_small_for_big_tiles_takes_the_standard_ones(launched):
    a, b = f32(4, 36), f32(36, 44)           # M = 4 (symbolic, so the choice is compiled)
    with fj.device("/gpu:0"):
        f = fj.jit(lambda x, y: x @ y)
        got = f(a, b).numpy()
        assert "RT.matmul(" in f.inspect(a, b).forward_source
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4)
    assert launched == ["small"]


def test_known_small_sizes_compile_without_the_choice():
    w = f32(36, 10)                          # N = 10 is known at compile time
    x = f32(40, 36)
    with fj.device("/gpu:0"):
        v = fj.Variable(w)
        f = fj.jit(lambda x: x @ v)
        got = f(x).numpy()
        src = f.inspect(x).forward_source
    np.testing.assert_allclose(got, x @ w, rtol=1e-4, atol=1e-4)
    assert "RT.matmul(" not in src


def test_a_device_refusing_the_big_kernel_falls_back_once_with_a_warning(monkeypatch, launched):
    """The big kernel's launch fails as CUDA's "too many resources requested" does: the
    product is computed with the standard tiles, a warning says so once, and later
    calls do not try the big kernel again."""
    def refuse(self, config):
        if self.kernel.__name__ in refused:
            raise RT._LaunchError(701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")
        return real_getitem(self, config)
    real_getitem = RT.Counted.__getitem__
    a, b = f32(40, 36), f32(36, 44)
    with fj.device("/gpu:0"):
        f = fj.jit(lambda x, y: fj.nn.relu(x) @ y)
        src = f.inspect(a, b).forward_source
        refused = {ln.split("(", 1)[1].split(",")[0] for ln in src.splitlines() if "RT.matmul(" in ln}
        monkeypatch.setattr(RT.Counted, "__getitem__", refuse)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            first = f(a, b).numpy()
            second = f(a * 2, b).numpy()
    np.testing.assert_allclose(first, np.maximum(a, 0) @ b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(second, np.maximum(2 * a, 0) @ b, rtol=1e-4, atol=1e-4)
    msgs = [str(x.message) for x in w if "tile matmul kernel cannot launch" in str(x.message)]
    assert len(msgs) == 1, msgs
    assert launched == ["big", "small", "small"]


def test_big_tile_gradients_equal_the_cpu():
    a, b = f32(40, 36), f32(36, 44)

    def loss(x, y):
        with fj.GradientTape() as tape:
            tape.watch([x, y])
            out = fj.reduce_sum(fj.tanh(x @ y))
        return tape.gradient(out, [x, y])
    res = {}
    for dev in ("/cpu:0", "/gpu:0"):
        with fj.device(dev):
            res[dev] = [t.numpy() for t in fj.jit(loss)(a, b)]
    for g, c in zip(res["/gpu:0"], res["/cpu:0"]):
        np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-4)
