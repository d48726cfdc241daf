"""Run by tests/test_distributed.py under `mpiexec -n 2`: every collective, checked on
each rank; prints "OK rank <r>" at the end."""
import numpy as np

import flowjit as fj

d = fj.distributed
d.init()
r, n = d.rank(), d.world_size()
assert n == 2, n
base = np.arange(6, dtype=np.float32).reshape(2, 3)
x = base + 10 * r                       # rank 0: base, rank 1: base + 10

np.testing.assert_allclose(d.allreduce(x, "sum"), 2 * base + 10)
np.testing.assert_allclose(d.allreduce(x, "mean"), base + 5)
np.testing.assert_allclose(d.allreduce(x, "max"), base + 10)
np.testing.assert_allclose(d.allreduce(x, "min"), base)
t = d.allreduce(fj.constant(x), "sum")
assert isinstance(t, fj.Tensor)
np.testing.assert_allclose(t.numpy(), 2 * base + 10)
np.testing.assert_array_equal(d.allreduce(np.array([r + 1, 7], np.int64), "sum"), [3, 14])
np.testing.assert_allclose(d.allreduce(fj.Variable(x), "mean").numpy(), base + 5)

np.testing.assert_allclose(d.broadcast(x, root=0), base)
np.testing.assert_allclose(d.broadcast(fj.constant(x), root=1).numpy(), base + 10)

g = d.allgather(np.full((r + 1, 2), r, np.int32))      # rank 0: 1 row, rank 1: 2 rows
np.testing.assert_array_equal(g, [[0, 0], [1, 1], [1, 1]])
np.testing.assert_array_equal(d.allgather(np.float64(r)), [0.0, 1.0])
d.barrier()

# broadcast_variables: root 1's values everywhere
W = fj.Variable(np.full((2, 2), r, np.float32))
b = fj.Variable(np.full((3,), 10 * r, np.float64))
k = fj.Variable(np.int32(r))
d.broadcast_variables([W, b, k], root=1)
np.testing.assert_array_equal(W.numpy(), np.ones((2, 2)))
np.testing.assert_array_equal(b.numpy(), np.full(3, 10.0))
assert int(k.numpy()) == 1

# inside @fj.jit: the collectives are graph nodes run by the compiled function


@fj.jit
def f(x):
    s = d.allreduce(x * 2.0, "sum")
    m = d.allreduce(x, "max")
    return s + 1.0, m, d.broadcast(x, root=1)


for _ in range(3):
    s, m, bc = f(x)
    np.testing.assert_allclose(s.numpy(), 2 * (2 * base + 10) + 1)
    np.testing.assert_allclose(m.numpy(), base + 10)
    np.testing.assert_allclose(bc.numpy(), base + 10)

# the gradient of a jitted allreduce-sum is the allreduce-sum of the cotangent
v = fj.Variable(x)


@fj.jit
def grad_step():
    with fj.GradientTape() as tape:
        loss = fj.reduce_sum(d.allreduce(v * v, "sum") * (r + 1.0))
    return tape.gradient(loss, v)


gv = grad_step().numpy()
# d/dv_r sum_j (r_j+1) * sum_s v_s^2 = 2 v_r * sum_j (j + 1) = 2 v_r * 3
np.testing.assert_allclose(gv, 6 * x, rtol=1e-6)

# shard: every 2nd example from this rank's index
ds = fj.data.Dataset(np.arange(10).reshape(10, 1), np.arange(10))
sh = d.shard(ds)
np.testing.assert_array_equal(sh.labels, np.arange(r, 10, 2))
a, bb = d.shard((np.arange(6), np.arange(6) * 2))
np.testing.assert_array_equal(a, np.arange(r, 6, 2))
print(f"OK rank {r}", flush=True)
