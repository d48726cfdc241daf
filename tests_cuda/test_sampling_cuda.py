"""argsort, the candidate samplers and the integer power's exponent check run CUDA
kernels (backends/cuda/sampling_kernels.py, kernels.py): the word2vec losses
(fj.nn.nce_loss, sampled_softmax_loss) and fj.random.shuffle train on the GPU with no
host fallback and the CPU's numbers; a negative exponent found on the device raises
the CPU's error."""
import numpy as np
import pytest

import flowjit as fj
from flowjit.backends.cuda import selftest as ST

from test_conv_cuda import gpu_equals_cpu, on_gpu


def test_sampling_ops_run_on_the_gpu_with_the_cpus_results(capsys):
    _, log = gpu_equals_cpu(capsys, ST._sampling, *ST._sampling_inputs())
    on_gpu(log, "argsort", "candidate_sampler")


def test_word2vec_nce_training_on_the_gpu_matches_the_cpu():
    rng = np.random.default_rng(1)
    vocab, dim, batch = 20, 4, 8
    emb0 = rng.uniform(-1, 1, (vocab, dim)).astype(np.float32)
    w0 = (rng.standard_normal((vocab, dim)) * 0.1).astype(np.float32)
    centers = rng.integers(0, vocab, batch).astype(np.int64)
    contexts = rng.integers(0, vocab, (batch, 1)).astype(np.int64)

    def train(device):
        with fj.device(device):
            emb, w, b = fj.Variable(emb0), fj.Variable(w0), fj.Variable(np.zeros(vocab, np.float32))
            opt = fj.optimizers.SGD(0.5)

            @fj.jit
            def step(c, ctx):
                with fj.GradientTape() as tape:
                    h = fj.gather(emb, c)
                    loss = fj.reduce_mean(fj.nn.nce_loss(w, b, ctx, h, 6, vocab, seed=11))
                opt.apply_gradients(zip(tape.gradient(loss, [emb, w, b]), [emb, w, b]))
                return loss
            losses = [float(step(centers, contexts).numpy()) for _ in range(4)]
        return losses, [v.numpy() for v in (emb, w, b)]
    lg, vg = train("/gpu:0")
    lc, vc = train("/cpu:0")
    np.testing.assert_allclose(lg, lc, rtol=1e-5)
    for a, b in zip(vg, vc):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert np.abs(vg[1] - w0).max() > 1e-3           # the steps trained the output weights


def test_a_negative_integer_exponent_found_on_the_gpu_raises_the_cpus_error():
    f = fj.jit(lambda i, e: i ** e)
    base = np.arange(6, dtype=np.int64).reshape(2, 3)
    with fj.device("/gpu:0"):
        np.testing.assert_array_equal(f(base, np.full((2, 3), 2, np.int64)).numpy(), base ** 2)
        with pytest.raises(fj.errors.InvalidArgumentError, match=r"negative integer powers.*exponent -2"):
            f(base, np.array([[1, 2, 0], [3, -2, 1]], np.int64))
        # the device's error word is cleared: the next good call runs
        np.testing.assert_array_equal(f(base, np.ones((2, 3), np.int64)).numpy(), base)
