"""Child process of the cold-start benchmark (perf.bench_cold).

    FLOWJIT_CACHE_DIR=<dir> NUMBA_CACHE_DIR=<dir> python -m perf.cold_child mlp_step
    ... python -m perf.cold_child examples/mlp_digits.py [args...]

Runs one program as a user would (for an example: the script itself, as __main__), and
records when every `fj.jit` call started and returned. Prints, last, one line
`COLD {json}`: the seconds from process start to the end of the slowest of the first
calls (the one that paid for tracing and compiling: "first step"), that call's own
duration, the whole run's seconds in Python, and fj.stats().
"""
import json
import os
import runpy
import sys
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402

import flowjit as fj  # noqa: E402
from flowjit.frontend import jit as _jit  # noqa: E402

FIRST_CALLS = 10          # the compile-paying call is among a program's first calls
calls = []                # (start, end) seconds since T0
_orig_call = _jit.JitFunction.__call__


def _timed_call(self, *args, **kwargs):
    t = time.perf_counter()
    try:
        return _orig_call(self, *args, **kwargs)
    finally:
        if len(calls) < FIRST_CALLS:
            calls.append((t - T0, time.perf_counter() - T0))


def mlp_step():
    """The MLP 784-256-128-10 sigmoid training step of the training benchmarks, 20 steps."""
    from perf.models import init_mlp, mlp_input
    params = [fj.Variable(p) for p in init_mlp()]
    x = mlp_input()
    y = np.eye(10, dtype=np.float32)[np.arange(x.shape[0]) % 10]
    opt = fj.optimizers.SGD(0.1)

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            h = x
            for i in range(3):
                h = fj.matmul(h, params[2 * i]) + params[2 * i + 1]
                if i < 2:
                    h = fj.sigmoid(h)
            loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, h))
        opt.apply_gradients(zip(tape.gradient(loss, params), params))
        return loss

    for _ in range(20):
        float(step(x, y))


def main(argv):
    _jit.JitFunction.__call__ = _timed_call
    if argv[0] == "mlp_step":
        mlp_step()
    else:
        path = os.path.abspath(argv[0])
        sys.argv = [path] + argv[1:]
        sys.path.insert(0, os.path.dirname(path))
        runpy.run_path(path, run_name="__main__")
    slowest = max(calls, key=lambda c: c[1] - c[0]) if calls else (0.0, 0.0)
    print("COLD " + json.dumps({"first_step_done_s": slowest[1], "first_step_call_s": slowest[1] - slowest[0],
                                "python_s": time.perf_counter() - T0, "stats": fj.stats()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
