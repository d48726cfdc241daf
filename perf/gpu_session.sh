#!/bin/bash
# The GPU checks, as one call for a session lent a device (`run`, from the repository
# root): the environment, the selftest, the GPU suite on the real device, then the
# benchmarks (elementwise chain, matmul 4096^3, MLP and small CNN steps, the LSTM step).
# Each part has its own time limit so that a hang cannot take the whole budget, and
# writes its log to $OUT (the folder `run` brings back) as well as to stdout.
# A folder .device_site (pytest, pytest-xdist and tqdm installed with `pip install
# --target`) is used where the device's Python lacks pytest.
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$(mktemp -d)}
export PYTHONPATH=.
if ! python -c "import pytest" 2>/dev/null && [ -d .device_site ]; then
    export PYTHONPATH=.:.device_site
fi
status=0
part() {          # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 40 "$OUT/$name.txt"
    echo "=== $name: rc $rc in $((SECONDS - t0)) s"
    [ $rc -eq 0 ] || status=1
}
part env 30 bash -c 'nvidia-smi; python -c "import sys, numpy, numba, llvmlite; print(sys.version); \
print(\"numpy\", numpy.__version__, \"numba\", numba.__version__, \"llvmlite\", llvmlite.__version__)"; \
python -c "import numba.cuda as c; print(c.is_available()); c.detect()"; \
python -c "import scipy, pytest; print(\"scipy\", scipy.__version__, \"pytest\", pytest.__version__)"; \
python -c "import torch; print(\"torch\", torch.__version__, torch.cuda.is_available())"; true'
part selftest 60 python -m flowjit.backends.cuda.selftest
# (its kernels compile on the CPU: four processes share the 16 cores where xdist is there)
xdist=$(python -c "import xdist" 2>/dev/null && echo "-n 4")
part tests_cuda 270 python -m pytest -v $xdist --tb=short -p no:cacheprovider -rf --durations=10 tests_cuda
part bench_gpu 200 python perf/bench_gpu.py
exit $status
