"""Models shared by several benchmarks and by the compile-latency child process.

The child process must build exactly the same graph as the parent for the disk cache
comparison to mean anything, so the definitions live here, in one place.
"""
import numpy as np

import flowjit as fj

MLP_SIZES = (784, 256, 128, 10)
MLP_BATCH = 128


def init_mlp(seed=0, sizes=MLP_SIZES):
    """[w1, b1, w2, b2, w3, b3] as float32 numpy arrays (Glorot-ish scale)."""
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        params.append((rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32))
        params.append((rng.standard_normal(n_out) * 0.1).astype(np.float32))
    return params


def mlp_input(seed=1, batch=MLP_BATCH, n_in=MLP_SIZES[0]):
    return np.random.default_rng(seed).random((batch, n_in), dtype=np.float32)


@fj.jit
def mlp_forward(x, w1, b1, w2, b2, w3, b3):
    h = fj.sigmoid(fj.matmul(x, w1) + b1)
    h = fj.sigmoid(fj.matmul(h, w2) + b2)
    return fj.matmul(h, w3) + b3


def _np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def mlp_forward_numpy(x, w1, b1, w2, b2, w3, b3):
    h = _np_sigmoid(x @ w1 + b1)
    h = _np_sigmoid(h @ w2 + b2)
    return h @ w3 + b3
