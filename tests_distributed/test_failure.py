"""A rank that fails ends the whole job with a clear error on every rank, never a hang:
jobs of 2 ranks started with `mpiexec` (tests_distributed/programs/failure.py). Under
MPI, rank 0 starts them (one launcher at a time) and the other ranks skip."""
import os
import shutil
import subprocess
import sys
import time

import pytest

import flowjit as fj

D = fj.distributed
HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = os.path.join(HERE, "programs")


def mpiexec():
    """MPICH's launcher next to this Python (the mpich wheel) or on PATH, with mpi4py."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                        + os.environ.get("PATH", ""))


def launch(tmp_path, program, *args, n=2, timeout=240, env_extra=None):
    """Run `mpiexec -n n python programs/<program> args` as a job of its own (the
    launcher variables of a job this test may itself run in are dropped)."""
    exe = mpiexec()
    if exe is None:
        pytest.skip("needs mpi4py and mpiexec (pip install 'flowjit[distributed]')")
    if D.world_size() > 1 and D.rank() != 0:
        pytest.skip("rank 0 starts the job")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_",
                                                                      "MPIR_", "MPI_"))}
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               FLOWJIT_BACKGROUND_COMPILE="0",
               PYTHONPATH=os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    t0 = time.monotonic()
    p = subprocess.run([exe, "-n", str(n), sys.executable, os.path.join(PROGRAMS, program), *args],
                       env=env, capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path))
    return p, time.monotonic() - t0


def test_a_rank_that_raises_ends_the_job(tmp_path):
    p, took = launch(tmp_path, "failure.py", "raise", "20", timeout=120)
    assert p.returncode != 0
    assert "rank 1 failed on purpose" in p.stderr
    assert "calling MPI_Abort" in p.stderr
    assert "UNREACHABLE" not in p.stdout
    assert took < 20 + 15                       # at once, not after the timeout


def test_a_hung_rank_times_out_with_a_clear_error(tmp_path):
    p, took = launch(tmp_path, "failure.py", "hang", "2", timeout=120)
    assert p.returncode != 0
    assert "CollectiveTimeoutError" in p.stderr
    assert "allreduce(op='sum', 3 x float64) timed out on rank 0 of 2 after 2 s" in p.stderr
    assert "UNREACHABLE" not in p.stdout
    assert took < 60                            # rank 1 would sleep 120 s
