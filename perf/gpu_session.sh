#!/bin/bash
# The GPU checks of issue 22, as one call for a session lent a device (`run` with
# PYTHONPATH=.): the selftest, the GPU suite on the real device, then the benchmarks
# (fused launches against one launch per kernel, the small CNN step, matmul 4096^3).
# Each part has its own time limit so a hang cannot take the whole budget.
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=.
status=0
timeout 240 python -m flowjit.backends.cuda.selftest || status=1
timeout 300 python -m pytest -q -x tests_cuda || status=1
timeout 300 python perf/bench_gpu.py || status=1
exit $status
