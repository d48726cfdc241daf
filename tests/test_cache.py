"""Disk cache: a second process compiles nothing; corrupt entries are survived."""
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = textwrap.dedent("""
    import json, numpy as np, flowjit as fj
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    @fj.jit
    def f(x, w):
        return fj.reduce_sum(fj.sigmoid(x @ w + 1.0) * 3.0, axis=1)
    out = [f(x, w).numpy().tolist() for _ in range(4)]
    ref = (3.0 / (1.0 + np.exp(-(x @ w + 1.0)))).sum(axis=1)
    assert np.allclose(out[-1], ref, rtol=1e-5), (out[-1], ref)
    print(json.dumps(fj.stats()))
""")


def run(cache_dir, extra_env=None):
    env = dict(os.environ, FLOWJIT_CACHE_DIR=str(cache_dir),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBA_CACHE_DIR", None)
    env.update(extra_env or {})
    p = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_second_process_compiles_nothing(tmp_path):
    first = run(tmp_path)
    assert first["compiles"] > 0
    second = run(tmp_path)
    assert second["compiles"] == 0
    assert second["disk_cache_hits"] >= 1
    assert second["traces"] == 1


HELPERS = textwrap.dedent("""
    import json, os, numpy as np, flowjit as fj
    from flowjit.backends.cpu import runtime_lib
    f = fj.jit(lambda a, b: fj.matmul(a, b))
    assert np.allclose(f(np.ones((3, 4), np.float32), np.ones((4, 2), np.float32)).numpy(), 4.0)
    # (a cold Python tier's first calls run its Python twin: the compiled helper itself)
    g = runtime_lib.gemm
    out = np.empty((3, 2), np.float32)
    g(np.ones((3, 4), np.float32), np.ones((4, 2), np.float32), out, np.bool_(False), np.bool_(False),
      np.bool_(False))
    assert np.allclose(out, 4.0)
    print(json.dumps({"path": g._cache._cache_path, "hits": sum(g.stats.cache_hits.values()),
                      "misses": sum(g.stats.cache_misses.values())}))
""")


def test_flowjits_own_helpers_are_cached_under_its_cache_directory(tmp_path):
    """The cache=True helpers in flowjit's source files (here the GEMM wrapper) go to
    the flowjit cache directory, keyed by the versions and the backend sources, not into
    the package, and a second process loads them from there."""
    env = dict(os.environ, FLOWJIT_CACHE_DIR=str(tmp_path),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBA_CACHE_DIR", None)
    out = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", HELPERS], env=env, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
    import flowjit
    from numba import __version__ as numba_version
    from flowjit.backends.cpu.helper_cache import _HASH
    want = os.path.join(str(tmp_path), "helpers",
                        f"flowjit-{flowjit.__version__}-numba-{numba_version}-{_HASH}", "backends", "cpu")
    assert out[0]["path"] == want
    assert glob.glob(os.path.join(want, "runtime_lib.gemm-*.nbi"))
    assert out[0]["misses"] >= 1 and out[1]["misses"] == 0 and out[1]["hits"] >= 1
    assert oct(os.stat(want).st_mode & 0o777) == oct(0o700)


def test_corrupted_cache_is_survived(tmp_path):
    run(tmp_path)
    cpu = tmp_path / "cpu"
    nbc = glob.glob(str(cpu / "__pycache__" / "*.nbc"))
    nbi = glob.glob(str(cpu / "__pycache__" / "*.nbi"))
    assert nbc and nbi
    for f in nbc[: len(nbc) // 2 + 1]:
        with open(f, "wb") as fh:
            fh.write(b"\x00garbage")
    for f in nbi[:1]:
        with open(f, "r+b") as fh:           # half-written index
            data = fh.read()
            fh.seek(0)
            fh.truncate()
            fh.write(data[: len(data) // 2])
    src = sorted(glob.glob(str(cpu / "*.py")))
    with open(src[0], "w") as fh:            # truncated generated module
        fh.write("import numpy as np\ndef broken(:\n")
    stats = run(tmp_path)
    assert stats["traces"] == 1
    again = run(tmp_path)                    # and the rebuilt entries are good again
    assert again["compiles"] == 0


def test_cache_can_be_disabled(tmp_path):
    stats = run(tmp_path, {"FLOWJIT_CACHE": "0"})
    assert stats["compiles"] > 0
    assert not (tmp_path / "cpu").exists()


CONV_PROGRAM = textwrap.dedent("""
    import json, numpy as np, flowjit as fj
    from flowjit.backends.cpu import conv_cpu
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 28, 28, 16)).astype(np.float32)
    w = rng.standard_normal((5, 5, 16, 8)).astype(np.float32)
    assert conv_cpu.par_rows.py_func(8 * 28 * 28, 400, 8) > 0     # the prange path
    f = fj.jit(lambda x, w: fj.nn.conv2d(x, w, 1, "SAME"))
    y = f(x, w).numpy()
    xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    ref = sum(xp[:, i:i + 28, j:j + 28] @ w[i, j] for i in range(5) for j in range(5))
    assert np.allclose(y, ref, rtol=1e-4, atol=1e-3)
    print(json.dumps(fj.stats()))
""")


def test_second_process_runs_cached_parallel_conv(tmp_path):
    # a cached conv driver holds a parallel loop of backends/cpu/conv_cpu.py; loading it from the
    # disk cache must start Numba's thread pool first (it used to segfault here)
    env = dict(os.environ, FLOWJIT_CACHE_DIR=str(tmp_path),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in range(2):
        p = subprocess.run([sys.executable, "-c", CONV_PROGRAM], env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, (k, p.returncode, p.stderr[-3000:])
        if k == 1:
            assert json.loads(p.stdout.strip().splitlines()[-1])["compiles"] == 0
