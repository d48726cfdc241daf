"""SciPy's OpenBLAS: loaded by flowjit with a short idle spin, its environment left as
it was, and the user's own setting respected."""
import os
import subprocess
import sys

PROBE = r"""
import os, sys
import flowjit
from flowjit.backends.cpu import blas_pool
print(repr((blas_pool.state["log2_cycles"], blas_pool.state["why"],
            "scipy.linalg.cython_blas" in sys.modules,
            os.environ.get("OPENBLAS_THREAD_TIMEOUT"))))
"""


def _probe(**env_changes):
    env = dict(os.environ)
    for k in ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT", "FLOWJIT_BLAS_IDLE_SPIN"):
        env.pop(k, None)
    env.update(env_changes)
    p = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return eval(p.stdout.strip().splitlines()[-1])


def test_default_spin_set_only_while_scipy_blas_loads():
    from flowjit.backends.cpu import blas_pool
    log2, why, loaded, leaked = _probe()
    assert (log2, why, loaded, leaked) == (blas_pool.DEFAULT_LOG2_CYCLES, "set by flowjit", True, None)


def test_flowjit_variable_picks_the_spin_and_is_clamped():
    assert _probe(FLOWJIT_BLAS_IDLE_SPIN="21")[:2] == (21, "set by flowjit")
    assert _probe(FLOWJIT_BLAS_IDLE_SPIN="99")[0] == 30
    log2, why, _, _ = _probe(FLOWJIT_BLAS_IDLE_SPIN="off")
    assert log2 is None and "default kept" in why


def test_user_openblas_setting_wins():
    log2, why, _, leaked = _probe(OPENBLAS_THREAD_TIMEOUT="6")
    assert log2 is None and "set by the user" in why and leaked == "6"


def test_bad_flowjit_variable_is_a_clear_error():
    env = dict(os.environ, FLOWJIT_BLAS_IDLE_SPIN="soon")
    env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    p = subprocess.run([sys.executable, "-c", "import flowjit"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0 and "FLOWJIT_BLAS_IDLE_SPIN must be an integer" in p.stderr
