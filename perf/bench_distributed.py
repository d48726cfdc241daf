"""Distributed rows: `fj.distributed` on 2 MPI ranks (MPICH's `mpiexec`, mpi4py).

The measurements run in perf/distributed_child.py, launched as
`mpiexec -n 2 <python> perf/distributed_child.py ...` (and once with `-n 1` for the
step-time baseline); rank 0 prints them as one JSON line. Rows:

1. allreduce of the MLP 784-256-128-10's gradient count (235,146 float32 values):
   `fj.distributed.allreduce(buf, "sum")` against a bare mpi4py
   `COMM_WORLD.Allreduce(MPI.IN_PLACE, buf2, op=MPI.SUM)` of a same-size buffer, the two
   taking turns in one run, a barrier before every timed call, timed on rank 0.
   Target: flowjit within 10% of bare mpi4py (ratio >= 0.9).
2. the gradient allreduce DistributedOptimizer runs eagerly:
   `fj.distributed.reduce_gradients(<the MLP's 6 gradient arrays>, "mean")` against the
   bare Allreduce of one already packed 235,146-float buffer plus the divide.
   Informational (no target): flowjit's time includes packing the 6 arrays into one
   buffer and cutting the result back, which the baseline does not do.
3. the jitted MLP training step (GradientTape, Adam, DistributedOptimizer; the global
   batch of 128 split over the ranks): flowjit column = 2 ranks x 64 rows, baseline
   column = the same program at 1 rank (128 rows). On a 2-core machine the two ranks
   share the cores with MPICH's busy-polling: reported, not a target.

Without mpi4py or an `mpiexec` (next to the interpreter or on PATH) the rows are
recorded as skipped. Each launch has a timeout (120 s quick, 300 s full); a launch that
runs past it is killed and its rows say so.

The child environment: the parent's minus any PMI_* / PMIX_* / OMPI_* variables (a
parent itself started by a launcher would otherwise confuse the new job), one thread
for OpenMP / OpenBLAS / Numba (two ranks on a small machine), compiles in the process
(FLOWJIT_BACKGROUND_COMPILE=0), the parent's FLOWJIT_CACHE_DIR, and the repo root on
PYTHONPATH.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys

from perf.common import Result, register

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(REPO_ROOT, "perf", "distributed_child.py")

N_GRAD = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10     # 235,146
ALLREDUCE_TARGET = 0.9            # flowjit's allreduce within 10% of bare mpi4py

ROW_ALLREDUCE = "distributed allreduce 235k f32 in place (2 ranks)"
ROW_ALLREDUCE_COPY = "distributed allreduce 235k f32, new array (2 ranks)"
ROW_GRADS = "distributed gradient allreduce (DistributedOptimizer buckets)"
ROW_STEP = "distributed MLP step 784-256-128-10 batch 128"
TARGET_ALLREDUCE = f"ratio >= {ALLREDUCE_TARGET:g}"


def find_mpiexec():
    """(mpiexec path, None), or (None, why not) when mpi4py or mpiexec is missing."""
    if importlib.util.find_spec("mpi4py") is None:
        return None, "mpi4py not installed (pip install mpi4py mpich)"
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
    if exe is None:
        return None, "no mpiexec next to the interpreter or on PATH (pip install mpich)"
    return exe, None


def child_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               FLOWJIT_BACKGROUND_COMPILE="0")
    # FLOWJIT_CACHE_DIR: the parent's (perf.run sets a fresh one per run), passed as is
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    return env


def launch(mpiexec, ranks, args, timeout):
    """The child's JSON from rank 0, or None when it ran past `timeout` seconds (the
    whole job is then killed). A failed child raises RuntimeError (a benchmark error)."""
    cmd = [mpiexec, "-n", str(ranks), sys.executable, CHILD, *args]
    # its own session: on a timeout, mpiexec, its proxy and the ranks go together
    p = subprocess.Popen(cmd, cwd=REPO_ROOT, env=child_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(p)
        return None
    lines = [ln for ln in out.splitlines() if ln.startswith("DIST ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"mpiexec -n {ranks} perf/distributed_child.py {' '.join(args)} failed "
                           f"(rc {p.returncode}):\n{(out + err)[-3000:]}")
    return json.loads(lines[-1][5:])


def _kill_group(p):
    for sig in (signal.SIGTERM, signal.SIGKILL):   # SIGTERM lets Hydra end its ranks
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            break
        try:
            p.communicate(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue
    p.wait()


def _rows_without_times(note, ok=None):
    """Rows with only a note; the target shows only when missed (ok=False: a timeout)."""
    return [Result(ROW_ALLREDUCE, target=TARGET_ALLREDUCE if ok is False else "", ok=ok, notes=note),
            Result(ROW_ALLREDUCE_COPY, notes=note),
            Result(ROW_GRADS, notes=note),
            Result(ROW_STEP, notes=note)]


def _us(s):
    return f"{s * 1e6:.0f} us"


@register
def bench_distributed(cfg):
    mpiexec, why = find_mpiexec()
    if mpiexec is None:
        cfg.skip("distributed rows", why)
        return _rows_without_times(f"skipped: {why}")

    timeout = 120 if cfg.quick else 300
    reps = 30 if cfg.quick else 200              # interleaved pairs per collective
    warmup = 5 if cfg.quick else 20              # untimed pairs (and MLP steps, see below)
    steps = max(cfg.steps, 20 if cfg.quick else 100)
    # the MLP step: >= fj.config.compile_entry_after + 2 untimed calls, so both tiers ran
    step_warmup = 5

    two = launch(mpiexec, 2, ["--reps", str(reps), "--warmup", str(warmup), "--steps", str(steps),
                              "--step-warmup", str(step_warmup)], timeout)
    if two is None:
        return _rows_without_times(f"TIMEOUT: mpiexec -n 2 perf/distributed_child.py ran past "
                                   f"{timeout} s and was killed (a hung collective?)", ok=False)
    one = launch(mpiexec, 1, ["--steps", str(steps), "--step-warmup", str(step_warmup)], timeout)

    rows = []
    mpi = two.get("mpi", "MPI")
    ar = two["allreduce"]
    fj_s, mpi_s = ar["flowjit_inplace"]["median"], ar["mpi4py"]["median"]
    nbytes = 4 * two["n_grad"]
    rows.append(Result(
        ROW_ALLREDUCE, fj_s, mpi_s, gbps=nbytes / fj_s / 1e9,
        target=TARGET_ALLREDUCE, ok=mpi_s / fj_s >= ALLREDUCE_TARGET,
        notes=f"allreduce(buf, 'sum', inplace=True): {two['n_grad']} float32, "
              f"{ar['mpi4py']['n']} calls each taking turns, barrier before each, timed on rank 0; "
              f"min {_us(ar['flowjit_inplace']['min'])} vs {_us(ar['mpi4py']['min'])}; baseline = "
              f"COMM_WORLD.Allreduce(IN_PLACE) of the same size buffer; GB/s = buffer bytes / time; {mpi}"))
    cp_s = ar["flowjit"]["median"]
    rows.append(Result(
        ROW_ALLREDUCE_COPY, cp_s, mpi_s, gbps=nbytes / cp_s / 1e9,
        notes=f"informational, no target: allreduce(buf, 'sum') leaves buf alone and returns a new "
              f"array (a copy in and a copy out, ~80 us here); min {_us(ar['flowjit']['min'])}"))

    gr = two["gradients"]
    rows.append(Result(
        ROW_GRADS, gr["flowjit"]["median"], gr["mpi4py"]["median"],
        notes=f"informational, no target: reduce_gradients(6 arrays, 'mean') packs them into one "
              f"buffer (buckets of {two['bucket_bytes'] >> 20} MiB) and cuts the result back; "
              f"baseline = Allreduce of an already packed buffer + divide; "
              f"{gr['flowjit']['n']} calls each taking turns; min {_us(gr['flowjit']['min'])} vs "
              f"{_us(gr['mpi4py']['min'])}"))

    s2 = two["step"]
    if one is None:
        rows.append(Result(
            ROW_STEP, s2["median"], compile_s=s2["first_s"],
            notes=f"2 cores: reported, not a target; 2 ranks x {s2['rows_per_rank']} rows, Adam; "
                  f"TIMEOUT: the 1-rank baseline (mpiexec -n 1) ran past {timeout} s and was killed"))
    else:
        s1 = one["step"]
        rows.append(Result(
            ROW_STEP, s2["median"], s1["median"], compile_s=s2["first_s"],
            notes=f"2 cores: reported, not a target; flowjit = 2 ranks x {s2['rows_per_rank']} rows, "
                  f"baseline = the same program at 1 rank x {s1['rows_per_rank']} rows; jitted "
                  f"GradientTape + Adam + DistributedOptimizer, {s2['n']} timed steps after "
                  f"{step_warmup}; means {s2['mean'] * 1e3:.2f} / {s1['mean'] * 1e3:.2f} ms; "
                  f"first step {s2['first_s']:.2f} s (2 ranks) / {s1['first_s']:.2f} s (1 rank)"))
    return rows
