"""One row per op: what tests/test_op_table.py (eager vs NumPy, jit vs eager, gradient vs
float64 finite differences) and tests_cuda/test_op_table_cuda.py (GPU vs CPU) check.
A new op adds its row here.

name: (the flowjit function, the NumPy reference, input domain, differentiable)
domain: None (any real), "pos" (> 0.1)
"""
import numpy as np

import flowjit as fj

OPS = {
    "exp": (lambda: fj.exp, np.exp, None, True),
    "tanh": (lambda: fj.tanh, np.tanh, None, True),
    "sigmoid": (lambda: fj.sigmoid, lambda x: 1 / (1 + np.exp(-x)), None, True),
    "log": (lambda: fj.log, np.log, "pos", True),
    "softplus": (lambda: fj.nn.softplus, lambda x: np.logaddexp(0, x), None, True),
}


def sample(shape, dtype, domain, seed=0):
    x = np.asarray(np.random.default_rng(seed).standard_normal(shape) * 3).astype(dtype)
    if domain == "pos":
        x = np.abs(x) + np.asarray(0.1, dtype)
    return x
