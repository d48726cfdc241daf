"""Cold start: a program's first process on a machine, against the same program warm.

Each row runs the program in a fresh process whose caches are all empty: flowjit's
generated kernels and its own helpers (FLOWJIT_CACHE_DIR), and Numba's
(NUMBA_CACHE_DIR). Then it fills the caches with a run that compiles in the process
(FLOWJIT_BACKGROUND_COMPILE=0: a short cold run may end before its background compile
does), and runs it once more (warm). The cold and warm runs compile in the background,
as for a user. Reported: the duration of the slowest of the first jitted calls (the
one that traced and compiled, or started tier 0: "first step"), the whole process's
wall time, the compile seconds flowjit counted, and the cold/warm wall ratio. --quick
runs the MLP step only (the examples take a minute or more cold).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from perf.common import Result, register

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (row name, child arguments, first-step target seconds or None)
PROGRAMS = [
    ("MLP 784-256-128-10 train step", ["mlp_step"], 1.0),
    ("examples/mlp_digits.py", ["examples/mlp_digits.py", "--no-progress"], None),
    ("examples/cnn_digits.py", ["examples/cnn_digits.py", "--no-progress"], 3.0),
    ("examples/tf1_softmax_digits.py", ["examples/tf1_softmax_digits.py", "--no-progress"], None),
]


def _run(argv, cache, background=True):
    env = dict(os.environ, FLOWJIT_CACHE_DIR=os.path.join(cache, "flowjit"),
               NUMBA_CACHE_DIR=os.path.join(cache, "numba"),
               FLOWJIT_BACKGROUND_COMPILE="1" if background else "0")
    env.pop("FLOWJIT_TIER", None)
    env.pop("FLOWJIT_CACHE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "perf.cold_child", *argv], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"cold_child {argv} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("COLD ")][-1]
    out = json.loads(line[5:])
    out["wall_s"] = wall
    return out


@register
def bench_cold_start(cfg):
    rows = []
    for name, argv, target in PROGRAMS[:1] if cfg.quick else PROGRAMS:
        cache = tempfile.mkdtemp(prefix="flowjit-cold-")
        try:
            cold = _run(argv, cache)
            _run(argv, cache, background=False)
            warm = _run(argv, cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        ratio = cold["wall_s"] / warm["wall_s"]
        cs, ws = cold["stats"], warm["stats"]
        ok_first = None if target is None else cold["first_step_call_s"] <= target
        rows.append(Result(
            f"cold start {name}: first step", cold["first_step_call_s"], warm["first_step_call_s"],
            compile_s=cs["compile_seconds"],
            target=f"<= {target:g} s" if target is not None else "", ok=ok_first,
            notes=f"baseline = warm; it returned {cold['first_step_done_s']:.2f} s after the process "
                  f"started cold, {warm['first_step_done_s']:.2f} s warm; compiles {cs['compiles']} "
                  f"cold, {ws['compiles']} warm; background compiles {cs.get('background_compiles', 0)}"))
        rows.append(Result(
            f"cold start {name}: whole run", cold["wall_s"], warm["wall_s"],
            compile_s=cs["compile_seconds"], target="cold <= 1.5x warm", ok=ratio <= 1.5,
            notes=f"baseline = warm; cold/warm {ratio:.2f}x; warm compile_seconds "
                  f"{ws['compile_seconds']:.2f}; calls in tier 0 / python / compiled tier "
                  f"{cs['calls_reference_tier']} / {cs['calls_python_tier']} / "
                  f"{cs['calls_compiled_tier']} cold, {ws['calls_reference_tier']} / "
                  f"{ws['calls_python_tier']} / {ws['calls_compiled_tier']} warm"))
    return rows
