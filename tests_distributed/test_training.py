"""Data-parallel training with fj.distributed.DistributedOptimizer: N ranks, each on its
1/N of every batch, end with the parameters one process gets on the whole batches (to
1e-6 in float64, over 10 SGD-with-momentum and 10 Adam steps, eager and jitted), and
every rank ends with the same parameters, bit for bit (compared by checksum). With one
process the wrapper changes nothing at all."""
import hashlib

import numpy as np
import pytest

import flowjit as fj

D = fj.distributed
R, N = D.rank(), D.world_size()
BATCH, STEPS = 8, 10


def _problem():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((BATCH * STEPS, 5))
    Y = np.tanh(X @ rng.standard_normal((5, 3)))
    init = [rng.standard_normal((5, 7)) * 0.5, np.zeros(7), rng.standard_normal((7, 3)) * 0.5,
            np.zeros(3)]
    return X, Y, init


def _optimizer(name):
    return fj.optimizers.Adam(0.05) if name == "adam" else fj.optimizers.SGD(0.1, momentum=0.9)


def _loss(vs, x, y):
    W1, b1, W2, b2 = vs
    h = fj.tanh(fj.matmul(x, W1) + b1)
    return fj.reduce_mean(fj.square(fj.matmul(h, W2) + b2 - y))


def _trainer(vs, opt, jit):
    def step(x, y):
        with fj.GradientTape() as tape:
            loss = _loss(vs, x, y)
        opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
        return loss
    return fj.jit(step) if jit else step


def _checksum(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return int(np.frombuffer(h.digest()[:8], np.int64)[0])


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_ranks_on_shards_match_one_process_on_whole_batches(mode, opt_name):
    X, Y, init = _problem()
    # every rank starts from different weights: broadcast_variables makes them rank 0's
    vs = [fj.Variable(a + R) for a in init]
    D.broadcast_variables(vs, root=0)
    for v, a in zip(vs, init):
        np.testing.assert_array_equal(v.numpy(), a)
    opt = D.DistributedOptimizer(_optimizer(opt_name))
    step = _trainer(vs, opt, mode == "jit")
    for i in range(STEPS):
        rows = slice(i * BATCH, (i + 1) * BATCH)
        xs, ys = D.shard((X[rows], Y[rows]))           # this rank's BATCH / N rows
        step(xs, ys)
    assert int(opt.iterations.numpy()) == STEPS

    ref = [fj.Variable(a) for a in init]                # one process, the whole batches
    ref_step = _trainer(ref, _optimizer(opt_name), False)
    for i in range(STEPS):
        rows = slice(i * BATCH, (i + 1) * BATCH)
        ref_step(X[rows], Y[rows])

    got = [v.numpy() for v in vs]
    for g, w, a in zip(got, ref, init):
        assert g.dtype == np.float64
        assert np.max(np.abs(g - w.numpy())) <= 1e-6
        assert not np.allclose(g, a)                    # it trained
    sums = D.allgather(np.array([_checksum(got)], np.int64))
    assert len(set(sums.tolist())) == 1, f"the ranks' parameters differ: checksums {sums}"


@pytest.mark.parametrize("jit", [False, True])
def test_wrapper_changes_nothing_in_a_world_of_one(jit):
    if N > 1:
        pytest.skip("a world of one process only")
    X, Y, init = _problem()
    results = []
    for wrap in (False, True):
        vs = [fj.Variable(a) for a in init]
        opt = _optimizer("adam")
        if wrap:
            opt = D.DistributedOptimizer(opt)
        step = _trainer(vs, opt, jit)
        for i in range(3):
            step(X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH])
        results.append([v.numpy() for v in vs])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_minimize_and_attributes_reach_the_wrapped_optimizer():
    v = fj.Variable(np.float64(3.0 + R))
    D.broadcast_variables([v])
    opt = D.DistributedOptimizer(fj.optimizers.SGD(0.5))
    opt.minimize(lambda: v * v, [v])
    np.testing.assert_allclose(v.numpy(), 0.0)
    opt.learning_rate = 0.25
    assert opt.optimizer.learning_rate == 0.25
    with pytest.raises(ValueError, match="mean' or 'sum"):
        D.DistributedOptimizer(fj.optimizers.SGD(0.1), op="max")
