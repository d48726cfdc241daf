"""Run by tests/test_distributed.py under `mpiexec -n 2 ... training.py eager|jit`:
data-parallel training of a small MLP with DistributedOptimizer. Checks that both ranks
end with the same weights, and the same weights (up to float tolerance) as one process
training on the concatenated batches; prints "OK rank <r>"."""
import sys

import numpy as np

import flowjit as fj

mode = sys.argv[1]
opt_name = sys.argv[2] if len(sys.argv) > 2 else "adam"
d = fj.distributed
d.init()
r, n = d.rank(), d.world_size()
assert n == 2

rng = np.random.default_rng(0)
X = rng.standard_normal((16, 4)).astype(np.float32)
Y = (X @ rng.standard_normal((4, 2))).astype(np.float32)
init = [rng.standard_normal((4, 8)).astype(np.float32) * 0.5, np.zeros(8, np.float32),
        rng.standard_normal((8, 2)).astype(np.float32) * 0.5, np.zeros(2, np.float64)]


def make_opt():
    return fj.optimizers.Adam(0.05) if opt_name == "adam" else fj.optimizers.SGD(0.1, momentum=0.9)


def loss_fn(vs, x, y):
    W1, b1, W2, b2 = vs
    h = fj.nn.relu(fj.matmul(x, W1) + b1)
    out = fj.matmul(h, W2) + fj.cast(b2, fj.float32)
    return fj.reduce_mean(fj.square(out - y))


def trainer(vs, opt, jit):
    def step(x, y):
        with fj.GradientTape() as tape:
            loss = loss_fn(vs, x, y)
        opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
        return loss
    return fj.jit(step) if jit else step


# every rank starts from different weights: broadcast_variables makes them rank 0's
vs = [fj.Variable(a + r) for a in init]
d.broadcast_variables(vs, root=0)
for v, a in zip(vs, init):
    np.testing.assert_array_equal(v.numpy(), a)

opt = d.DistributedOptimizer(make_opt())
step = trainer(vs, opt, mode == "jit")
Xs, Ys = d.shard((X, Y))                 # rows r, r+2, ...: 8 per rank
B = 4
for i in range(4):                        # 4 steps of a global batch of 8 (4 per rank)
    step(Xs[i % 2 * B:(i % 2 + 1) * B], Ys[i % 2 * B:(i % 2 + 1) * B])

# one process, plain optimizer, the concatenated batches
ref = [fj.Variable(a) for a in init]
ref_step = trainer(ref, make_opt(), False)     # eager: a compile less
for i in range(4):
    rows = np.concatenate([np.arange(k, 16, 2)[i % 2 * B:(i % 2 + 1) * B] for k in range(n)])
    ref_step(X[rows], Y[rows])

for v, w in zip(vs, ref):
    got = v.numpy()
    both = d.allgather(got[None])
    np.testing.assert_array_equal(both[0], both[1])          # the ranks agree exactly
    np.testing.assert_allclose(got, w.numpy(), rtol=2e-5, atol=2e-6)
    assert not np.allclose(got, init[vs.index(v)])          # it trained
assert int(opt.iterations.numpy()) == 4
print(f"OK rank {r}", flush=True)
