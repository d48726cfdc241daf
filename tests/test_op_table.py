"""Every row of op_table.OPS: eager against NumPy, jit against eager, and the gradient
(eager and jitted) against float64 central finite differences; jitted in each CPU tier
(the `tier` fixture: compiled kernels, and tier 0's NumPy references)."""
import numpy as np
import pytest

import flowjit as fj
from op_table import OPS, sample

SHAPES = [(), (7,), (3, 5)]


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values(name, dtype, tier):
    get, ref, domain, _ = OPS[name]
    f = get()
    jf = fj.jit(lambda x: f(x))
    tol = 2e-6 if dtype == np.float32 else 1e-13
    for shape in SHAPES:
        x = sample(shape, dtype, domain)
        eager = f(x)
        assert eager.dtype.np == np.dtype(dtype) and eager.shape == x.shape
        np.testing.assert_allclose(eager.numpy(), ref(x.astype(np.float64)), rtol=tol, atol=tol)
        np.testing.assert_allclose(jf(x).numpy(), eager.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(n for n, row in OPS.items() if row[3]))
def test_gradient_matches_finite_differences(name, tier):
    get, _, domain, _ = OPS[name]
    f = get()
    x = sample((2, 3), np.float64, domain, seed=1)
    w = sample((2, 3), np.float64, None, seed=2)
    loss = lambda x: fj.reduce_sum(f(x) * w)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        numeric[i] = (float(loss(x + d)) - float(loss(x - d))) / (2 * eps)
    for g in (fj.grad(loss), fj.jit(fj.grad(loss))):
        np.testing.assert_allclose(g(x).numpy(), numeric, rtol=1e-6, atol=1e-7)
