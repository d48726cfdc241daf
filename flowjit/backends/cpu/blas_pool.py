"""How long SciPy's OpenBLAS threads spin after a call: set once, before the library loads.

Numba's `np.dot` (every flowjit matmul and the im2col convolutions) calls the OpenBLAS
bundled with SciPy. After each multithreaded call its worker threads busy-wait for the
next one for 2**28 TSC cycles (~0.1 s) before they sleep. In a training step where a
Numba parallel loop follows a GEMM (a conv kernel next to a dense layer's matmul) the
spinning worker holds a core that one of Numba's threads needs, and a statically split
parallel loop waits for its slowest thread: on a 2-core machine a 0.6 ms parallel loop
took 1.0 ms right after a small GEMM, and 0.6 ms again with the spin cut short.

A shorter spin keeps the benefit of spinning (the next GEMM, or the next loop kernel,
which flowjit runs on these same threads (pool.py), finds the worker awake) without
holding a core through a long stretch of other work, such as a Numba prange loop of a
generic convolution. 2^22 cycles (~1.7 ms at 2.4 GHz) covered the gaps inside the
benchmark steps: in paired runs it did as well as 2^18 on the CNN step (1.40-1.68x vs
1.37-1.57x of torch) and better on the MLP and autoencoder steps.

OpenBLAS reads the limit (`OPENBLAS_THREAD_TIMEOUT`, log2 of cycles, 4..30) only when
it loads, and has no call to change it later, so `configure()` sets the variable while
it loads SciPy's BLAS and removes it right after: NumPy's own OpenBLAS (already loaded)
and other libraries keep their settings. Nothing is changed when the user set the
variable, or when SciPy's BLAS was loaded before flowjit was imported.
"""
import os
import sys

DEFAULT_LOG2_CYCLES = 22
ENV = "FLOWJIT_BLAS_IDLE_SPIN"          # log2 of cycles; "off" leaves OpenBLAS's default

state = {"log2_cycles": None, "why": "not configured"}


def configure():
    """Load SciPy's BLAS with flowjit's idle-spin limit (once per process)."""
    if state["why"] != "not configured":
        return
    if "scipy.linalg.cython_blas" in sys.modules:
        state["why"] = "SciPy's BLAS was loaded before flowjit: its default kept"
        return
    for var in ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT"):
        if var in os.environ:
            state["why"] = f"{var}={os.environ[var]} set by the user"
            return
    want = os.environ.get(ENV, str(DEFAULT_LOG2_CYCLES)).strip().lower()
    if want in ("off", "default", ""):
        state["why"] = f"{ENV}={want}: OpenBLAS's default kept"
        return
    try:
        log2 = min(max(int(want), 4), 30)
    except ValueError:
        raise ValueError(f"{ENV} must be an integer (log2 of cycles, 4..30) or 'off', got {want!r}") from None
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(log2)
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library: it reads the variable now)
    except ImportError:                    # no SciPy: Numba cannot call BLAS at all
        state["why"] = "SciPy not installed"
        return
    finally:
        del os.environ["OPENBLAS_THREAD_TIMEOUT"]
    state["log2_cycles"] = log2
    state["why"] = "set by flowjit"


def describe():
    """One line for benchmark headers."""
    if state["log2_cycles"] is not None:
        return f"scipy-openblas idle spin 2^{state['log2_cycles']} cycles"
    return f"scipy-openblas idle spin default ({state['why']})"
