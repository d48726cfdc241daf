"""The CPU backend: compile a fused Program into one Numba entry function."""
import hashlib
import time

import numba
import numpy as np

from ...errors import CompileError
from ...runtime import stats as S
from . import loader
from .codegen import gen_entry


class CpuExecutable:
    """A compiled program: call `run(args)` with the entry's arguments."""

    def __init__(self, entry_name, kernel_names, entry_src, kernel_srcs, err_codes):
        self.entry_name = entry_name
        self.kernel_names = kernel_names
        self.entry_src = entry_src
        self.kernel_srcs = kernel_srcs
        self.err_codes = err_codes
        self.entry = None
        self._load()

    def _load(self):
        for k in self.kernel_names:
            loader.load(k, self.kernel_srcs[k])
        mod = loader.load(self.entry_name, self.entry_src)
        self.entry = getattr(mod, self.entry_name)

    def _dispatchers(self):
        ds = [self.entry]
        for k in self.kernel_names:
            ds.append(loader.kernel(k))
        return ds

    def compile_for(self, args):
        """Compile (or load from disk) for these argument types; update the counters."""
        sig = tuple(numba.typeof(a) for a in args)
        t0 = time.perf_counter()
        for attempt in (0, 1):
            before = [(len(d.overloads), sum(d.stats.cache_hits.values())) for d in self._dispatchers()]
            try:
                self.entry.compile(sig)
                break
            except Exception as e:        # a corrupted cache entry: delete it and rebuild
                if attempt:
                    raise CompileError(f"Numba failed to compile generated code "
                                       f"({loader.module_dir()}/{self.entry_name}.py): {e}") from e
                loader.forget([self.entry_name] + list(self.kernel_names))
                self._load()
        after = [(len(d.overloads), sum(d.stats.cache_hits.values())) for d in self._dispatchers()]
        new = sum(a[0] - b[0] for a, b in zip(after, before))
        hits = sum(a[1] - b[1] for a, b in zip(after, before))
        S.bump("compiles", max(new - hits, 0))
        S.bump("disk_cache_hits", hits)
        S.bump("compile_seconds", time.perf_counter() - t0)

    def source(self):
        parts = [self.entry_src] + [self.kernel_srcs[k] for k in self.kernel_names]
        return "\n".join(parts)


def compile_program(prog):
    body, kernels, err_codes = gen_entry(prog, None)
    names = sorted(kernels)
    key = hashlib.sha1((body + "".join(names)).encode()).hexdigest()[:16]
    ename = f"e_{key}"
    src = "".join(f"{k} = kernel({k!r})\n" for k in names) + \
        "\n@njit(cache=CACHE, error_model='numpy')\n" + body.replace("ENTRY", ename, 1)
    return CpuExecutable(ename, names, src, kernels, err_codes)
