import os
import subprocess
import sys

import numpy as np
import pytest

# entries compile in this process, so the tier a call runs in is deterministic; the
# background compile has its own tests (test_background_compile.py)
os.environ["FLOWJIT_BACKGROUND_COMPILE"] = "0"

import flowjit as fj  # noqa: E402,F401


def assert_close(actual, expected, dtype=None, rtol=None, atol=None):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    dt = np.dtype(dtype) if dtype is not None else expected.dtype
    if dt.kind in "biu":
        np.testing.assert_array_equal(actual, expected)
        return
    if rtol is None:
        rtol = 2e-6 if dt == np.float32 else 1e-13
    if atol is None:
        atol = 1e-6 if dt == np.float32 else 1e-13
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


def finite_differences(f, arrays, i, eps=1e-6):
    """d f(*arrays) / d arrays[i] by central differences (float64 arrays, scalar f)."""
    x = arrays[i]
    out = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        plus = [a.copy() for a in arrays]
        minus = [a.copy() for a in arrays]
        plus[i][idx] += eps
        minus[i][idx] -= eps
        out[idx] = (f(*plus) - f(*minus)) / (2 * eps)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=["compiled", "reference"])
def tier(request):
    """Run a test with each CPU tier forced (fj.config.tier): compiled kernels, or tier 0,
    the ops' NumPy references."""
    old = fj.config.tier
    fj.config.tier = request.param
    yield request.param
    fj.config.tier = old


def run_in_the_other_geometry(test_file, deselect, cwd):
    """Run test_file's tests but those matching `deselect` (a -k expression) in a process
    made to use the packed products' vectors this CPU does not pick (AVX2's where it has
    AVX-512, AVX-512's otherwise: LLVM splits its 16-float vectors on an AVX2 CPU)."""
    from flowjit.backends.cpu import packed
    other = 8 if packed.GEOMETRY.width == 16 else 16
    env = dict(os.environ, FLOWJIT_PACKED_WIDTH=str(other))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                        test_file, "-k", f"not ({deselect})"],
                       env=env, capture_output=True, text=True, cwd=cwd, timeout=600)
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def on_every_thread_setting(compute):
    """compute()'s results on one pool thread, on two (the worker helping, then paused so
    the caller runs every block) and on four: for the tests that the bits do not depend
    on the threads."""
    from flowjit.backends.cpu import scheduler
    saved = (scheduler.size(), scheduler.helpers())
    outs = []
    try:
        for size, helping, paused in ((1, 0, False), (2, 1, False), (2, 1, True), (4, 3, False)):
            scheduler.configure(size, helping)
            scheduler.set_test_hooks(paused=paused)
            outs.append(compute())
    finally:
        scheduler.set_test_hooks(paused=False)
        scheduler.configure(*saved)
    return outs
