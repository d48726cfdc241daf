"""Child process of the compile-latency benchmark (perf.bench_core.bench_compile_latency).

    FLOWJIT_CACHE_DIR=<dir> python -m perf.compile_child cold|warm

cold: the cache dir is empty. Time the MLP forward's first call (trace + codegen +
      Numba compile, plus Numba's once-per-process start-up), then call `trivial`
      once so that the warm process finds it on disk too.
warm: same cache dir, new process. Time `trivial` first: its first call pays Numba's
      per-process start-up (type registries, ~0.5 s), which is not flowjit's cost.
      Then time the MLP's first call, which should be a pure disk-cache load.

Prints one JSON line on stdout.
"""
import json
import sys
import time

t_start = time.perf_counter()
import numpy as np  # noqa: E402

import flowjit as fj  # noqa: E402
from perf.models import init_mlp, mlp_forward, mlp_input  # noqa: E402

t_import = time.perf_counter() - t_start


@fj.jit
def trivial(a):
    return a + 1.0


def timed(fn):
    before = fj.stats()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    after = fj.stats()
    delta = {k: after[k] - before[k] for k in after}
    return dt, delta


def main(mode):
    x = mlp_input()
    params = init_mlp()
    a = np.ones(4, np.float32)
    out = {"mode": mode, "import_s": t_import}
    if mode == "cold":
        out["mlp_first_s"], out["mlp_stats"] = timed(lambda: mlp_forward(x, *params))
        out["trivial_first_s"], out["trivial_stats"] = timed(lambda: trivial(a))
    elif mode == "warm":
        out["trivial_first_s"], out["trivial_stats"] = timed(lambda: trivial(a))
        out["mlp_first_s"], out["mlp_stats"] = timed(lambda: mlp_forward(x, *params))
    else:
        raise SystemExit(f"unknown mode {mode!r} (cold|warm)")
    out["stats"] = fj.stats()
    out["process_s"] = time.perf_counter() - t_start
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
