"""Compile every CUDA kernel the GPU suite generates to PTX for a real GPU, without one.

The simulator executes kernels as Python, so it cannot catch code that real
`numba.cuda` fails to type or compile. This script runs the selftest cases under the
simulator, records each kernel launch (module file, kernel, argument types), then in
a second process (simulator off) compiles each with `numba.cuda.compile_ptx` for
compute capability 9.0. It needs NVVM (the CUDA toolkit's libnvvm), not a GPU or
driver.

    PYTHONPATH=. python tests_cuda/ptx_check.py
"""
import json
import os
import subprocess
import sys
import tempfile


def record(out_path):
    import numpy as np
    from numba.cuda.simulator import kernel as K
    seen = {}
    orig = K.FakeCUDAKernel.__getitem__

    def typ(a):
        if type(a).__name__ == "FakeCUDAArray":
            return f"{a._ary.dtype.name}[{', '.join([':'] * a._ary.ndim)}]"
        if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
            return "int64"
        return np.asarray(a).dtype.name

    def getitem(self, cfg):
        launch = orig(self, cfg)

        def call(*args):
            path = sys.modules[self.fn.__module__].__file__
            key = (path, self.fn.__name__, tuple(typ(a) for a in args))
            seen[key] = True
            return launch(*args)
        return call
    K.FakeCUDAKernel.__getitem__ = getitem
    from flowjit.backends.cuda import selftest
    selftest.main([])
    with open(out_path, "w") as f:
        json.dump([[p, n, list(t)] for p, n, t in seen], f)


def compile_all(in_path):
    import types
    import numba.cuda.dispatcher as DP
    from numba import cuda
    from flowjit.backends.cuda.scalar import NAMES

    class Hopper:                  # device functions ask the current device for its cc
        compute_capability = (9, 0)
    DP.get_current_device = lambda: Hopper()
    with open(in_path) as f:
        recs = json.load(f)
    mods, ok, bad = {}, 0, 0
    for path, name, argtys in recs:
        if not os.path.basename(path).startswith(("k_", "m_")):
            continue                       # runtime helpers, not generated code
        if path not in mods:
            lines = open(path).read().split("\n")
            # the module was written for the simulator: import the real device functions
            lines = [("from flowjit.backends.cuda.scalar import " + ", ".join(NAMES))
                     if ln.startswith("from flowjit.backends.cuda.scalar import")
                     else ln for ln in lines]
            mod = types.ModuleType("ptx_" + name)
            mod.CACHE = False
            exec(compile("\n".join(lines), path, "exec"), mod.__dict__)
            mods[path] = mod
        disp = getattr(mods[path], name)
        sig = "void(" + ", ".join(argtys) + ")"
        try:
            cuda.compile_ptx(disp.py_func, sig, cc=(9, 0))
            ok += 1
        except Exception as e:           # report every failure, then fail
            bad += 1
            print(f"FAIL {path} {sig}\n{e}")
    print(f"{ok} kernel signatures compiled to PTX, {bad} failed")
    return 1 if bad else 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--record":
        record(sys.argv[2])
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "--compile":
        return compile_all(sys.argv[2])
    with tempfile.TemporaryDirectory() as d:
        rec = os.path.join(d, "launches.json")
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", FLOWJIT_CACHE_DIR=os.path.join(d, "cache"))
        subprocess.run([sys.executable, __file__, "--record", rec], env=env, check=True)
        env.pop("NUMBA_ENABLE_CUDASIM")
        return subprocess.run([sys.executable, __file__, "--compile", rec], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
