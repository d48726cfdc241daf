"""Every row of tests/op_table.OPS jitted on the GPU against the CPU: values and gradients."""
import os
import sys

import numpy as np
import pytest

import flowjit as fj

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from op_table import OPS, sample  # noqa: E402


def _on(device, fn, x):
    with fj.device(device):
        return np.asarray(fj.jit(fn)(x).numpy())


@pytest.mark.parametrize("name", sorted(OPS))
def test_gpu_equals_cpu(name):
    get, _, domain, differentiable = OPS[name]
    f = get()
    x = sample((3, 4), np.float32, domain)
    np.testing.assert_allclose(_on("/gpu:0", f, x), _on("/cpu:0", f, x), rtol=2e-6, atol=1e-6)
    if differentiable:
        g = fj.grad(lambda x: fj.reduce_sum(f(x) * x))
        np.testing.assert_allclose(_on("/gpu:0", g, x), _on("/cpu:0", g, x), rtol=2e-6, atol=1e-6)
