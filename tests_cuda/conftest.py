"""The GPU suite: run as `NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests_cuda` (no GPU
needed: Numba's CUDA simulator) or plainly on a machine with a CUDA GPU."""
import pytest

import flowjit as fj


def pytest_collection_modifyitems(config, items):
    if not any(d.kind == "GPU" for d in fj.list_devices()):
        skip = pytest.mark.skip(reason="no CUDA GPU (set NUMBA_ENABLE_CUDASIM=1 for the simulator)")
        for item in items:
            item.add_marker(skip)


def pytest_configure(config):
    # The simulator runs each CUDA thread as a Python thread and its launcher polls them;
    # a short GIL switch interval makes simulated kernels (barriers) ~6x faster.
    from flowjit.backends.cuda.runtime import SIM
    if SIM:
        import sys
        sys.setswitchinterval(1e-5)
