"""Child program of the distributed benchmark (perf.bench_distributed), run by MPICH's
launcher:

    mpiexec -n 2 python perf/distributed_child.py --reps 200 --warmup 20 --steps 100
    mpiexec -n 1 python perf/distributed_child.py --steps 100

With 2 (or more) ranks it measures, in this order:
1. allreduce: `fj.distributed.allreduce(buf, "sum")` (a new array) and
   `allreduce(buf, "sum", inplace=True)` on a float32 NumPy array of the
   MLP 784-256-128-10's gradient count (235,146 values) against a bare mpi4py
   `COMM_WORLD.Allreduce(MPI.IN_PLACE, buf2, op=MPI.SUM)` of a same-size buffer;
2. gradients: `fj.distributed.reduce_gradients(<6 arrays of the MLP's gradient
   shapes>, "mean")` (what DistributedOptimizer calls eagerly) against the bare
   Allreduce of one packed 235,146-float buffer plus the divide by the world size.
In both, the two implementations alternate (ABAB...) `--reps` times after `--warmup`
untimed rounds; a barrier (bare `COMM_WORLD.Barrier`) before every timed call, and each
call timed on rank 0. The results are checked (sums / means of known values).

With any number of ranks (1 included) it then measures the jitted MLP training step
(GradientTape, Adam, DistributedOptimizer, sigmoid hidden layers, softmax cross
entropy): the global batch of 128 random float32 rows split over the ranks with
`fj.distributed.shard`, `--step-warmup` untimed steps (the first traces and compiles), then
`--steps` timed steps on rank 0. With several ranks the weights must agree at the end.

Rank 0 prints, last, one line `DIST {json}`.
"""
import argparse
import json
import os
import statistics
import sys
import time

if __package__ in (None, ""):
    # `python perf/distributed_child.py`: make `import perf` work (PYTHONPATH is set by
    # the parent too; this is for running it by hand)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import flowjit as fj  # noqa: E402
from perf.models import MLP_BATCH, MLP_SIZES, init_mlp  # noqa: E402

D = fj.distributed


def grad_shapes(sizes=MLP_SIZES):
    """[(784, 256), (256,), (256, 128), (128,), (128, 10), (10,)]"""
    out = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        out += [(n_in, n_out), (n_out,)]
    return out


N_GRAD = sum(int(np.prod(s)) for s in grad_shapes())      # 235,146


def _summary(ts):
    ts = sorted(ts)
    return {"median": statistics.median(ts), "min": ts[0], "mean": statistics.fmean(ts),
            "p90": ts[int(0.9 * (len(ts) - 1))], "n": len(ts)}


def interleaved(calls, reps, warmup, barrier, before=None):
    """{name: [seconds]} for (name, fn) pairs taking turns (ABAB...), `reps` timed
    rounds after `warmup` untimed ones. Before each call: before[name]() if given
    (untimed set-up, e.g. refilling an in-place buffer), then barrier()."""
    before = before or {}
    times = {name: [] for name, _ in calls}
    now = time.perf_counter
    for i in range(warmup + reps):
        for name, fn in calls:
            if name in before:
                before[name]()
            barrier()
            t0 = now()
            fn()
            t = now() - t0
            if i >= warmup:
                times[name].append(t)
    return times


def _rank_values(seed, r, shapes):
    rng = np.random.default_rng(seed + r)
    return [rng.random(s, dtype=np.float32) for s in shapes]


def bench_allreduce(MPI, comm, reps, warmup):
    """fj.distributed.allreduce(src, "sum") against a bare in-place Allreduce."""
    r, n = comm.Get_rank(), comm.Get_size()
    (src,) = _rank_values(100, r, [(N_GRAD,)])
    buf2 = np.empty_like(src)
    buf3 = np.empty_like(src)
    out = {}

    def fj_call():
        out["fj"] = D.allreduce(src, "sum")          # a new array; src is unchanged

    def fj_inplace_call():
        D.allreduce(buf3, "sum", inplace=True)

    def bare_call():
        comm.Allreduce(MPI.IN_PLACE, buf2, op=MPI.SUM)

    times = interleaved([("flowjit", fj_call), ("flowjit_inplace", fj_inplace_call),
                         ("mpi4py", bare_call)], reps, warmup, comm.Barrier,
                        before={"mpi4py": lambda: np.copyto(buf2, src),
                                "flowjit_inplace": lambda: np.copyto(buf3, src)})
    want = sum(_rank_values(100, s, [(N_GRAD,)])[0] for s in range(n))
    np.testing.assert_allclose(out["fj"], want, rtol=1e-5)
    np.testing.assert_allclose(buf2, want, rtol=1e-5)
    np.testing.assert_allclose(buf3, want, rtol=1e-5)
    return times


def bench_gradients(MPI, comm, reps, warmup):
    """fj.distributed.reduce_gradients(<6 arrays>, "mean") against a bare in-place
    Allreduce of one packed buffer plus the divide."""
    r, n = comm.Get_rank(), comm.Get_size()
    shapes = grad_shapes()
    grads = _rank_values(200, r, shapes)
    packed_src = np.concatenate([g.reshape(-1) for g in grads])
    packed = np.empty_like(packed_src)
    out = {}

    def fj_call():
        out["fj"] = D.reduce_gradients(grads, "mean")

    def bare_call():
        comm.Allreduce(MPI.IN_PLACE, packed, op=MPI.SUM)
        np.divide(packed, np.float32(n), out=packed)

    times = interleaved([("flowjit", fj_call), ("mpi4py", bare_call)], reps, warmup, comm.Barrier,
                        before={"mpi4py": lambda: np.copyto(packed, packed_src)})
    per_rank = [_rank_values(200, s, shapes) for s in range(n)]
    want = [sum(vals[i] for vals in per_rank) / np.float32(n) for i in range(len(shapes))]
    for got, w in zip(out["fj"], want):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(packed, np.concatenate([w.reshape(-1) for w in want]),
                               rtol=1e-5, atol=1e-6)
    return times


def bench_mlp_step(steps, warmup):
    """Seconds of each timed step (rank 0), the first call's seconds, the last loss."""
    n = D.world_size()
    params = [fj.Variable(p, name=f"dist_mlp_p{i}") for i, p in enumerate(init_mlp(seed=0))]
    D.broadcast_variables(params, root=0)
    opt = D.DistributedOptimizer(fj.optimizers.Adam(1e-3))
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(2):
        x = rng.random((MLP_BATCH, MLP_SIZES[0]), dtype=np.float32)
        y = np.eye(MLP_SIZES[-1], dtype=np.float32)[rng.integers(0, MLP_SIZES[-1], MLP_BATCH)]
        batches.append(D.shard((x, y)))          # this rank's MLP_BATCH / n rows
    n_layers = len(MLP_SIZES) - 1

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            h = x
            for i in range(n_layers):
                h = fj.matmul(h, params[2 * i]) + params[2 * i + 1]
                if i < n_layers - 1:
                    h = fj.sigmoid(h)
            loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, h))
        opt.apply_gradients(zip(tape.gradient(loss, params), params))
        return loss

    now = time.perf_counter
    t0 = now()
    loss = float(step(*batches[0]))
    first_s = now() - t0
    for i in range(1, warmup):
        loss = float(step(*batches[i % 2]))
    D.barrier()
    ts = []
    for i in range(steps):
        t0 = now()
        loss = float(step(*batches[i % 2]))
        ts.append(now() - t0)
    if n > 1:
        both = D.allgather(np.concatenate([p.numpy().reshape(-1) for p in params])[None])
        for k in range(1, n):
            np.testing.assert_array_equal(both[0], both[k])     # the ranks agree exactly
    return ts, first_s, loss, MLP_BATCH // n


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200, help="timed calls per collective")
    ap.add_argument("--steps", type=int, default=50, help="timed MLP steps")
    ap.add_argument("--warmup", type=int, default=20, help="untimed calls per collective")
    ap.add_argument("--step-warmup", type=int, default=5,
                    help="untimed MLP steps (the first traces and compiles)")
    args = ap.parse_args(argv)

    D.init()
    r, n = D.rank(), D.world_size()
    res = {"world_size": n, "n_grad": N_GRAD}
    if n > 1:
        from mpi4py import MPI

        from flowjit.distributed._comm import BUCKET_BYTES
        comm = MPI.COMM_WORLD                    # the communicator fj.distributed uses
        res["mpi"] = " ".join(MPI.Get_library_version().split("\n")[0].split())
        res["bucket_bytes"] = BUCKET_BYTES
        t = bench_allreduce(MPI, comm, args.reps, args.warmup)
        res["allreduce"] = {k: _summary(v) for k, v in t.items()}
        t = bench_gradients(MPI, comm, args.reps, args.warmup)
        res["gradients"] = {k: _summary(v) for k, v in t.items()}
    st0 = fj.stats()
    ts, first_s, loss, per_rank = bench_mlp_step(args.steps, args.step_warmup)
    st = fj.stats()
    res["step"] = dict(_summary(ts), first_s=first_s, loss=loss, rows_per_rank=per_rank,
                       compile_seconds=st["compile_seconds"] - st0["compile_seconds"])
    if r == 0:
        print("DIST " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
