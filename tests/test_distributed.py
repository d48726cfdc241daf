"""fj.distributed: every call in a world of size 1 (in this process), and, when mpi4py
and mpiexec are installed, programs launched with `mpiexec -n 2` (tests/distributed_programs/)
checking the collectives, broadcast_variables, data-parallel training with
DistributedOptimizer (eager and jitted) and what happens when a rank fails."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import flowjit as fj
from conftest import assert_close

D = fj.distributed
HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = os.path.join(HERE, "distributed_programs")


# ---- a world of size 1 ---------------------------------------------------------------
def test_world_of_one():
    assert not D._comm.launched()
    D.init()
    D.init(timeout=5)                      # idempotent; updates the timeout
    assert D._comm.timeout() == 5.0
    D.init(timeout=60)
    assert D.rank() == 0 and D.world_size() == 1
    D.barrier()


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
def test_allreduce_returns_input(op):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = D.allreduce(x, op)
    assert isinstance(out, np.ndarray) and out is not x
    np.testing.assert_array_equal(out, x)
    t = D.allreduce(fj.constant(x), op)
    assert isinstance(t, fj.Tensor)
    np.testing.assert_array_equal(t.numpy(), x)
    np.testing.assert_array_equal(D.allreduce(fj.Variable(x), op).numpy(), x)


def test_broadcast_allgather_and_errors():
    x = np.arange(4, dtype=np.int64)
    np.testing.assert_array_equal(D.broadcast(x), x)
    np.testing.assert_array_equal(D.broadcast(fj.constant(x), root=0).numpy(), x)
    np.testing.assert_array_equal(D.allgather(x), x)
    np.testing.assert_array_equal(D.allgather(np.float64(3)), [3.0])
    with pytest.raises(ValueError, match="op must be one of"):
        D.allreduce(x, "prod")
    with pytest.raises(ValueError, match="root must be in"):
        D.broadcast(x, root=1)


def test_broadcast_variables_keeps_values():
    W = fj.Variable(np.ones((2, 2), np.float32))
    D.broadcast_variables([W])
    np.testing.assert_array_equal(W.numpy(), np.ones((2, 2)))


def _mlp_problem():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, 3)).astype(np.float32)
    Y = rng.standard_normal((6, 2)).astype(np.float32)
    init = [rng.standard_normal((3, 2)).astype(np.float32), np.zeros(2, np.float32)]
    return X, Y, init


@pytest.mark.parametrize("jit", [False, True])
def test_distributed_optimizer_world_of_one_matches_plain(jit):
    X, Y, init = _mlp_problem()
    results = []
    for wrap in (False, True):
        vs = [fj.Variable(a) for a in init]
        opt = fj.optimizers.Adam(0.1)
        if wrap:
            opt = D.DistributedOptimizer(opt)

        def step(x, y):
            with fj.GradientTape() as tape:
                loss = fj.reduce_mean(fj.square(fj.matmul(x, vs[0]) + vs[1] - y))
            opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
            return loss
        step = fj.jit(step) if jit else step
        for _ in range(3):
            step(X, Y)
        results.append([v.numpy() for v in vs])
        assert int(opt.iterations.numpy()) == 3      # attributes reach the wrapped optimizer
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_distributed_optimizer_minimize_and_attributes():
    v = fj.Variable(np.float32(3.0))
    opt = D.DistributedOptimizer(fj.optimizers.SGD(0.5))
    opt.minimize(lambda: v * v, [v])
    assert_close(v.numpy(), np.float32(0.0))
    opt.learning_rate = 0.25
    assert opt.optimizer.learning_rate == 0.25
    with pytest.raises(ValueError, match="mean' or 'sum"):
        D.DistributedOptimizer(fj.optimizers.SGD(0.1), op="max")


def test_collective_op_under_jit_and_gradient():
    x = np.arange(3, dtype=np.float32)
    v = fj.Variable(x)

    @fj.jit
    def f(y):
        with fj.GradientTape() as tape:
            s = fj.reduce_sum(D.allreduce(v * y, "sum"))
        return D.broadcast(s + 1.0), tape.gradient(s, v)
    s, g = f(np.float32(2.0))
    assert_close(s.numpy(), np.float32(7.0))
    assert_close(g.numpy(), np.full(3, 2.0, np.float32))

    @fj.jit
    def bad(y):
        return D.allgather(y)
    with pytest.raises(fj.errors.TracerError, match="allgather is not supported inside"):
        bad(x)


def test_reduce_gradients_keeps_none_and_host_callback_copies():
    g = [None, np.ones(2, np.float32)]
    assert D.reduce_gradients(g)[0] is None
    out = np.zeros(3)
    D._comm.host_collective(D._comm.CODES["mean"], 0, np.arange(3.0), out)
    np.testing.assert_array_equal(out, np.arange(3.0))


def test_shard():
    ds = fj.data.Dataset(np.arange(10).reshape(10, 1), np.arange(10))
    assert D.shard(ds).num_examples == 10                   # world of 1: everything
    part = D.shard(ds, num_shards=3, index=1)
    np.testing.assert_array_equal(part.labels, [1, 4, 7])
    np.testing.assert_array_equal(part.images[:, 0], [1, 4, 7])
    a, b = D.shard((np.arange(5), np.arange(5) * 2), 2, 1)
    np.testing.assert_array_equal(a, [1, 3])
    np.testing.assert_array_equal(b, [2, 6])
    assert sorted(D.shard({"x": np.arange(4)}, 2, 0)) == ["x"]
    np.testing.assert_array_equal(D.shard(fj.constant(np.arange(4)), 2, 1).numpy(), [1, 3])
    ds2 = fj.data.DatasetV2.from_tensor_slices(np.arange(6)) if hasattr(fj.data, "DatasetV2") else None
    if ds2 is not None and hasattr(ds2, "shard"):
        got = [int(np.asarray(e)) for e in D.shard(ds2, 3, 2)]
        assert got == [2, 5]
    with pytest.raises(ValueError, match="index < num_shards"):
        D.shard(ds, 2, 2)


# ---- two ranks under mpiexec ---------------------------------------------------------
def _have_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
    return exe


MPIEXEC = _have_mpi()
mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpi4py and mpiexec (pip install mpi4py mpich)")


def _launch(tmp_path, program, *args, timeout=240, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_"))}
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               FLOWJIT_BACKGROUND_COMPILE="0", FLOWJIT_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    t0 = time.monotonic()
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, os.path.join(PROGRAMS, program), *args],
                       env=env, capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path))
    return p, time.monotonic() - t0


def _ok(p):
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OK rank 0" in p.stdout and "OK rank 1" in p.stdout, p.stdout + p.stderr


@mpi
def test_mpi_collectives(tmp_path):
    p, _ = _launch(tmp_path, "collectives.py")
    _ok(p)


@mpi
@pytest.mark.parametrize("mode,opt", [("eager", "adam"), ("eager", "sgd"), ("jit", "adam")])
def test_mpi_data_parallel_training(tmp_path, mode, opt):
    p, _ = _launch(tmp_path, "training.py", mode, opt)
    _ok(p)


@mpi
def test_mpi_rank_that_raises_ends_the_job(tmp_path):
    p, took = _launch(tmp_path, "failure.py", "raise", "20", timeout=120)
    assert p.returncode != 0
    assert "rank 1 failed on purpose" in p.stderr
    assert "calling MPI_Abort" in p.stderr
    assert "UNREACHABLE" not in p.stdout
    assert took < 20 + 15                       # at once, not after the timeout


@mpi
def test_mpi_hung_rank_times_out_with_a_clear_error(tmp_path):
    p, took = _launch(tmp_path, "failure.py", "hang", "2", timeout=120)
    assert p.returncode != 0
    assert "CollectiveTimeoutError" in p.stderr
    assert "allreduce(op='sum', 3 x float64) timed out on rank 0 of 2 after 2 s" in p.stderr
    assert "UNREACHABLE" not in p.stdout
    assert took < 60                            # rank 1 would sleep 120 s
