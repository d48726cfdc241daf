"""fj.distributed's collectives on every rank of the world this suite runs in (one
process, or `mpiexec -n N`): eager, on NumPy arrays, tensors and Variables; inside
`@fj.jit` as graph nodes, with their gradients; broadcast_variables and shard."""
import numpy as np
import pytest

import flowjit as fj

D = fj.distributed
R, N = D.rank(), D.world_size()
BASE = np.arange(6, dtype=np.float32).reshape(2, 3)
X = BASE + 10 * R                        # rank r: BASE + 10 r
TRI = 10 * N * (N - 1) / 2               # sum over ranks of 10 r


def test_world():
    D.init(timeout=5)                    # idempotent; updates the timeout
    assert D._comm.timeout() == 5.0
    D.init(timeout=60)
    assert 0 <= R < N
    if N > 1:
        assert D._comm.launched()
    D.barrier()


@pytest.mark.parametrize("op,want", [("sum", N * BASE + TRI), ("mean", BASE + TRI / N),
                                     ("max", BASE + 10 * (N - 1)), ("min", BASE)])
def test_allreduce(op, want):
    out = D.allreduce(X, op)
    assert isinstance(out, np.ndarray) and out is not X
    np.testing.assert_allclose(out, want)
    t = D.allreduce(fj.constant(X), op)
    assert isinstance(t, fj.Tensor)
    np.testing.assert_allclose(t.numpy(), want)
    np.testing.assert_allclose(D.allreduce(fj.Variable(X), op).numpy(), want)


def test_allreduce_integers_and_errors():
    np.testing.assert_array_equal(D.allreduce(np.array([R + 1, 7], np.int64), "sum"),
                                  [N * (N + 1) // 2, 7 * N])
    with pytest.raises(ValueError, match="op must be one of"):
        D.allreduce(X, "prod")
    with pytest.raises(ValueError, match="root must be in"):
        D.broadcast(X, root=N)


def test_broadcast_and_allgather():
    np.testing.assert_allclose(D.broadcast(X, root=0), BASE)
    last = N - 1
    np.testing.assert_allclose(D.broadcast(fj.constant(X), root=last).numpy(), BASE + 10 * last)
    g = D.allgather(np.full((R + 1, 2), R, np.int32))        # rank r: r + 1 rows of r
    np.testing.assert_array_equal(g, np.concatenate([np.full((k + 1, 2), k) for k in range(N)]))
    np.testing.assert_array_equal(D.allgather(np.float64(R)), np.arange(N, dtype=np.float64))


def test_broadcast_variables():
    last = N - 1
    W = fj.Variable(np.full((2, 2), R, np.float32))
    b = fj.Variable(np.full((3,), 10 * R, np.float64))
    k = fj.Variable(np.int32(R))
    D.broadcast_variables([W, b, k], root=last)
    np.testing.assert_array_equal(W.numpy(), np.full((2, 2), last))
    np.testing.assert_array_equal(b.numpy(), np.full(3, 10.0 * last))
    assert int(k.numpy()) == last
    assert W.dtype == fj.float32 and b.dtype == fj.float64


def test_collectives_under_jit():
    last = N - 1

    @fj.jit
    def f(x):
        s = D.allreduce(x * 2.0, "sum")
        m = D.allreduce(x, "max")
        return s + 1.0, m, D.broadcast(x, root=last)

    for _ in range(3):
        s, m, bc = f(X)
        np.testing.assert_allclose(s.numpy(), 2 * (N * BASE + TRI) + 1)
        np.testing.assert_allclose(m.numpy(), BASE + 10 * last)
        np.testing.assert_allclose(bc.numpy(), BASE + 10 * last)

    @fj.jit
    def bad(y):
        return D.allgather(y)
    with pytest.raises(fj.errors.TracerError, match="allgather is not supported inside"):
        bad(X)


@pytest.mark.parametrize("op", ["sum", "mean"])
def test_gradient_of_a_jitted_allreduce(op):
    v = fj.Variable(X)

    @fj.jit
    def grad_step():
        with fj.GradientTape() as tape:
            loss = fj.reduce_sum(D.allreduce(v * v, op) * (R + 1.0))
        return tape.gradient(loss, v)

    # loss_j = (j + 1) * red_s(v_s^2); d(sum_j loss_j)/dv_r = 2 v_r * sum_j (j + 1) [/ N for mean]
    want = 2 * X * (N * (N + 1) / 2) / (N if op == "mean" else 1)
    np.testing.assert_allclose(grad_step().numpy(), want, rtol=1e-6)


def test_reduce_gradients_keeps_none():
    g = D.reduce_gradients([None, np.full(2, R, np.float32)])
    assert g[0] is None
    np.testing.assert_allclose(g[1], np.full(2, (N - 1) / 2))


def test_host_callback_outside_the_mpi_process_copies(monkeypatch):
    out = np.zeros(3)
    monkeypatch.setattr(D._comm.S, "pid", -1)        # as a background-compile child
    D._comm.host_collective(D._comm.CODES["sum"], 0, 0, np.arange(3.0), out)
    np.testing.assert_array_equal(out, np.arange(3.0))


def test_shard():
    ds = fj.data.Dataset(np.arange(10).reshape(10, 1), np.arange(10))
    sh = D.shard(ds)                                  # every N-th example from this rank
    np.testing.assert_array_equal(sh.labels, np.arange(R, 10, N))
    np.testing.assert_array_equal(sh.images[:, 0], np.arange(R, 10, N))
    a, b = D.shard((np.arange(6), np.arange(6) * 2))
    np.testing.assert_array_equal(a, np.arange(R, 6, N))
    np.testing.assert_array_equal(b, np.arange(R, 6, N) * 2)
    part = D.shard(ds, num_shards=3, index=1)
    np.testing.assert_array_equal(part.labels, [1, 4, 7])
    assert sorted(D.shard({"x": np.arange(4)}, 2, 0)) == ["x"]
    np.testing.assert_array_equal(D.shard(fj.constant(np.arange(4)), 2, 1).numpy(), [1, 3])
    ds2 = fj.data.DatasetV2.from_tensor_slices(np.arange(6))
    assert [int(np.asarray(e)) for e in D.shard(ds2, 3, 2)] == [2, 5]
    with pytest.raises(ValueError, match="index < num_shards"):
        D.shard(ds, 2, 2)


def test_split_allreduce_starts_early_and_completes_late():
    """A jitted step's gradient allreduce is two nodes: mpi_start, run as soon as its
    inputs are computed, and mpi_wait, where the result is used; the compiled code runs
    the work in between (here a matmul) while the bucket is reduced."""
    from flowjit.distributed import ops as dist_ops

    @fj.jit
    def f(a, b):
        g1 = fj.sin(a) * 2.0
        g2 = fj.matmul(b, b)                     # recorded before the start, run after it
        wait = dist_ops.start_and_wait([g1, a], "sum")
        red = wait()
        return red, fj.reduce_sum(g2)

    a = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    b = np.eye(3, dtype=np.float32) * (R + 1)
    for _ in range(3):
        red, s = f(a, b)
        want = N * np.concatenate([(np.sin(a) * 2).reshape(-1), a.reshape(-1)])
        np.testing.assert_allclose(red.numpy(), want, rtol=1e-6)
        np.testing.assert_allclose(s.numpy(), 3.0 * (R + 1) ** 2)
    groups = str(f.inspect(a, b))
    groups = groups[groups.index("== fusion groups =="):groups.index("== specialisations ==")]
    steps = [ln for ln in groups.splitlines() if ln.startswith("step")]
    start = next(k for k, ln in enumerate(steps) if "mpi_start" in ln)
    mm = next(k for k, ln in enumerate(steps) if "matmul" in ln)
    wait = next(k for k, ln in enumerate(steps) if "mpi_wait" in ln)
    assert start < mm < wait, steps
