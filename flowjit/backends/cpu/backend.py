"""The CPU backend: compile a fused Program into one Numba entry function."""
import ctypes
import functools
import hashlib
import mmap
import re
import sys
import time
import warnings

import numba
import numpy as np
from numba.core import event as numba_event

from ...config import config
from ...errors import CompileError
from ...runtime import stats as S
from . import background, loader, pool, runtime_lib, split_compile, threads
from ..reference import ReferenceProgram
from .codegen import gen_entry


PY_STEP_SECONDS = 1.5e-6      # what one interpreted entry line costs (allocate, call, view)
REUSE_MIN_BYTES = 1 << 18     # below this, malloc recycles memory by itself
HUGE_ADVICE_BYTES = 1 << 22   # NumPy asks for transparent huge pages from this size
MADV_NOHUGEPAGE = 15          # Linux
TIERS = ("auto", "compiled", "reference")     # fj.config.tier


class BufferCache:
    """Buffers of the Python tier's allocation sites, reused across calls.

    A big `np.empty` comes from a fresh mmap, and its first write page-faults every
    page: for a 4M-element gradient that costs as much as the kernel computing it. So
    each allocation site keeps its last two big arrays and hands one out again when
    nobody else holds it any more (its reference count is ours alone): intermediates
    are free at the end of the call, and returned outputs once the caller dropped them
    (two per site, so the usual `out = step(...)` loop, which still holds the previous
    output during the call, alternates between them). Kernels write every element of
    their outputs, so a reused buffer behaves exactly like `np.empty`. Like the error
    word, this makes a compiled program non-reentrant (one call at a time)."""

    def __init__(self, n_sites):
        self.slots = [[] for _ in range(n_sites)]

    def alloc(self, site, shape, dtype):
        slot = self.slots[site]
        for a in slot:
            # references: the slot list, `a`, getrefcount's argument
            if sys.getrefcount(a) == 3 and a.shape == shape and a.dtype == dtype:
                return a
        a = np.empty(shape, dtype)
        if a.nbytes >= HUGE_ADVICE_BYTES:
            _without_huge_pages(a)
        if a.nbytes >= REUSE_MIN_BYTES:
            if len(slot) == 2:
                slot.pop(0)
            slot.append(a)
        return a


def _without_huge_pages(a):
    """Take back NumPy's request for transparent huge pages on a fresh big buffer, before
    anything touches it. Where the kernel compacts memory to find a huge page at the
    first write (THP defrag "madvise", the usual setting), a first touch stalled: 52 MB
    took 29-102 ms against 23 ms in 4 KB pages, and an LSTM step at T=200 spent 0.25 s
    more on its first run. A cached buffer is written again every call, so only that
    first call saw any difference (none measured in the step time)."""
    if not sys.platform.startswith("linux"):
        return
    start = -(-a.ctypes.data // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (a.ctypes.data + a.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start:
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_NOHUGEPAGE)


@functools.cache
def _libc():
    libc = ctypes.CDLL(None)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


class CpuExecutable:
    """A compiled program. `__call__(*args)` runs it.

    Tiers (`fj.config.tier`): on a cold cache with background compiling on, the first
    calls run tier 0, the graph evaluated with the ops' NumPy references
    (backends/reference.py), while a child process compiles the kernels; then the entry
    source runs as plain Python calling the compiled kernels (only kernels are compiled,
    and they are shared by structure); after `config.compile_entry_after` calls, or at
    once when the disk cache already holds it, the entry itself runs as one
    `numba.njit` function. Every switch happens between two calls.
    """

    def __init__(self, prog, entry_name, kernel_names, entry_src, kernel_srcs, err_codes,
                 inplace=(), py_src=None, n_sites=0, threaded=()):
        self.program = prog
        self.entry_name = entry_name
        self.kernel_names = kernel_names
        self.entry_src = entry_src
        self.kernel_srcs = kernel_srcs
        self.py_src = py_src
        self.threaded = set(threaded)     # kernels that may run Numba's parallel loops
        self.parallel = False     # work on several threads: adapt their count (threads.py)
        self.err_codes = err_codes
        self.inplace = list(inplace)   # effect indices written straight into variable buffers
        self.entry = None          # the njit dispatcher
        self.py_entry = None       # the same source run by Python (loaded with the kernels)
        self.reference = None      # tier 0 (reference.py), made on first use
        self.calls = 0             # calls of the Python tier
        self.python_share = 1.0    # estimated share of a Python-tier call spent interpreting
        self.pending = None        # a background compile (background.py)
        # programs the same call runs next (a training step's backward): (executable, a
        # function from this program's arguments and outputs to theirs); their kernels
        # compile ahead together with this one's (split_compile.py)
        self.runs_next = []
        self.buffers = BufferCache(n_sites)
        self.loop_names = []       # the entry's loops as functions (entry_loops.py)
        self.stand_ins = []        # names the Python tier runs from Python for now (_load_python_tier)
        self._compiled_later = {}  # what the later compile brings: {name: signature}
        self._py_ns = None         # the Python tier's globals (its loop functions)
        self.run = self._run_first

    def _load(self):
        for k in self.kernel_names:
            loader.load(k, self.kernel_srcs[k], threads=k in self.threaded)
        self._module = loader.load(self.entry_name, self.entry_src)
        self.entry = getattr(self._module, self.entry_name)

    def _load_python_tier(self):
        """Import the kernel and entry modules (a pool task, a cfunc, compiles or loads
        from disk on import) and make the Python tier's entry."""
        t0 = time.perf_counter()
        self._load()
        ns = dict(vars(self._module))
        ns["alloc"] = self.buffers.alloc          # the same source, buffers reused per site
        ns.update(self._stand_ins())
        exec(compile(self.py_src, f"<flowjit entry {self.entry_name}>", "exec"), ns)
        self.py_entry = ns[self.entry_name]
        self._py_ns = ns
        S.bump("compile_seconds", time.perf_counter() - t0)

    def _stand_ins(self):
        """{name: a Python stand-in} for what the Python tier runs from Python until the
        later compile (_compile_loops) brings the compiled function: a pooled kernel's
        launcher (pool.python_launcher) and the GEMM helpers (runtime_lib.PYTHON_TWINS),
        where not compiled yet. On a cold cache each would cost about half a kernel's
        compile, for a few calls."""
        out = {k: pool.python_launcher(loader._modules[k], k) for k in self.kernel_names
               if pool.python_launchable(k, self.kernel_srcs[k]) and not loader.kernel(k).overloads
               and not loader.has_disk_cache(k)}
        out.update({h: twin for h, twin in runtime_lib.PYTHON_TWINS.items()
                    if re.search(rf"\b{h}\(", self.py_src) and not runtime_lib.compiled_at_hand(h)})
        self.stand_ins = list(out)
        return out

    def _run_first(self, args):
        """The first call decides where calls start: tier 0 while a child compiles the
        kernels (cold cache, background compiling on), else the Python tier."""
        tier = config.tier
        if tier not in TIERS:
            raise ValueError(f"fj.config.tier must be one of {', '.join(map(repr, TIERS))}, not {tier!r}")
        if tier == "reference":
            self.run = self._run_reference
            return self._run_reference(args)
        if tier == "auto" and self._compile_kernels_in_background(args):
            self.run = self._run_reference_pending
            return self._run_reference_pending(args)
        self.run = self._enter_python_tier
        return self._enter_python_tier(args)

    def _enter_python_tier(self, args):
        """Load the kernels (from disk, or compiling them here) and run the Python tier;
        until that succeeds, every call tries again."""
        split_compile.compile_ahead(self, args, self.runs_next)      # on idle cores, where it can
        self._load_python_tier()
        self.run = self._run_python
        return self._run_python(args)

    def _compile_kernels_in_background(self, args):
        if not config.background_compile or not background.possible(self):
            return False
        if loader.has_disk_cache(self.entry_name) or \
                all(loader.kernel_cached(k, self.kernel_srcs[k]) for k in self.kernel_names):
            return False                   # loads in milliseconds: no tier 0 needed
        specs = background.arg_specs(args)
        if specs is None:
            return False
        try:
            self.pending = background.Compile("kernels", self, args=specs)
        except OSError:             # no room for the job file: compile here instead
            return False
        return True

    def _run_reference(self, args):
        S.bump("calls_reference_tier")
        if self.reference is None:
            self.reference = ReferenceProgram(self.program.graph, self.inplace)
        return self.reference.run(args)

    def _run_reference_pending(self, args):
        """Tier 0 while a child compiles the kernels; the Python tier once it is done."""
        done = self.pending.poll()
        if done is None:
            with threads.beside_a_compile():
                return self._run_reference(args)
        job, self.pending = self.pending, None
        if not done:
            warnings.warn(f"flowjit: compiling the kernels of {self.entry_name} in the background "
                          f"failed; compiling them here. {job.failure or ''}", RuntimeWarning, stacklevel=2)
        self.run = self._enter_python_tier
        return self._enter_python_tier(args)

    def _run_python(self, args):
        self.calls += 1
        if self.calls == 1:
            if loader.has_disk_cache(self.entry_name):
                self.compile_for(args)
                self.run = self._run_njit
                return self._run_njit(args)
            S.bump("calls_python_tier")
            return self._parallel(lambda *a: self._counted(self.py_entry, a), args)
        if self.calls >= config.compile_entry_after:
            # compile the entry only where the Python tier's overhead is worth removing;
            # decided from the traced sizes, so every process decides the same way
            if self.python_share >= config.entry_overhead_share:
                if config.background_compile and background.possible(self):
                    # in a child process; this tier runs until it has finished
                    try:
                        self.pending = background.Compile("entry", self,
                                                          sig=tuple(numba.typeof(a) for a in args))
                    except OSError:       # no room for the job file: this tier goes on
                        self.run = self._run_python_only
                        return self._run_python_only(args)
                    self.run = self._run_python_pending
                    return self._run_python_only(args)
                self.compile_for(args)
                self.run = self._run_njit
                return self._run_njit(args)
            self.run = self._run_python_only
            if self.loop_names or self.stand_ins:
                return self._compile_loops(args)
        return self._run_python_only(args)

    def _compile_loops(self, args):
        """This call runs the Python tier noting the types its loop functions and its
        stand-ins get; those functions, and the compiled versions of the stand-ins, then
        compile, in a child where background compiles are on (this tier runs on
        meanwhile), else here on their next call."""
        ns, sigs = self._py_ns, {}
        python = {name: ns[name] for name in self.loop_names + self.stand_ins}

        def noting(name):
            def loop(*a):
                sigs.setdefault(name, tuple(numba.typeof(x) for x in a))
                return python[name](*a)
            return loop
        ns.update({name: noting(name) for name in python})
        try:
            out = self._run_python_only(args)
        except BaseException:
            self.run = self._run_python          # (the next call tries again)
            raise
        finally:
            ns.update(python)
        if not sigs:            # no loop ran (inside a branch not taken): keep interpreting
            return out
        self._compiled_later = sigs
        cached = all(self._cached(name) for name in sigs)
        if not cached and config.background_compile and background.possible(self):
            try:
                self.pending = background.Compile("loops", self, loops=sigs)
                self.run = self._run_loops_pending
                return out
            except OSError:       # no room for the job file: compile them here
                pass
        self._bind_compiled_loops()
        self.run = self._run_loops_first
        return out

    def _cached(self, name):
        if name in runtime_lib.PYTHON_TWINS:
            return runtime_lib.compiled_at_hand(name)
        if name in self.kernel_srcs:
            return loader.has_disk_cache(name)
        return loader.has_disk_cache(self.entry_name, name)

    def _bind_compiled_loops(self):
        """The Python tier calls the compiled loop functions and stand-ins' compiled
        versions (a stand-in the noting call did not call stays)."""
        self._py_ns.update({name: getattr(self._module, name) for name in self._compiled_later})
        self.stand_ins = [k for k in self.stand_ins if k not in self._compiled_later]

    def _run_loops_pending(self, args):
        """The Python tier while a child compiles the loop functions."""
        done = self.pending.poll()
        if done is None:
            return self._run_python_only(args)
        job, self.pending = self.pending, None
        self.run = self._run_python_only
        if not done:
            warnings.warn(f"flowjit: compiling the loops of {self.entry_name} in the background "
                          f"failed; they go on uncompiled. {job.failure or ''}", RuntimeWarning, stacklevel=2)
            return self._run_python_only(args)
        self._bind_compiled_loops()
        return self._run_loops_first(args)

    def _run_loops_first(self, args):
        """The first call with the compiled loops: they load from the disk cache (or
        compile) on the way, counted. On a cold cache they are first shared out on idle
        cores, with those of the programs this call runs next (a training step's
        backward) that are at the same point."""
        if self.pending is None:
            stages = [self] + [e for e, _ in self.runs_next if e.run == e._run_loops_first]
            split_compile.compile_later([(e, name, sig) for e in stages
                                         for name, sig in e._compiled_later.items() if not e._cached(name)])
        self.run = self._run_python_only
        return self._counted(self._run_python_only, (args,))

    def _run_python_pending(self, args):
        """The Python tier while a child compiles the entry; switches between two calls."""
        done = self.pending.poll()
        if done is None:
            return self._run_python_only(args)
        job, self.pending = self.pending, None
        self.run = self._run_python_only       # also if loading the entry below fails
        if not done:
            warnings.warn(f"flowjit: compiling {self.entry_name} in the background failed; the "
                          f"step goes on uncompiled. {job.failure or ''}", RuntimeWarning, stacklevel=2)
            return self._run_python_only(args)
        self.compile_for(args)          # loads what the child saved in Numba's disk cache
        self.run = self._run_njit
        return self._run_njit(args)

    def _run_python_only(self, args):
        S.bump("calls_python_tier")
        return self._parallel(self.py_entry, args)

    def _run_njit(self, args):
        S.bump("calls_compiled_tier")
        return self._parallel(self.entry, args)

    def thread_group(self):
        """(begin, end) to call around this program and those that run next in the same
        call (a training step's backward, runs_next), where any has parallel work: one
        setup of the threads for all of them (their own begin/end then only count);
        None where none has."""
        if self.parallel or any(e.parallel for e, _ in self.runs_next):
            return threads.begin, threads.end
        return None

    def _parallel(self, fn, args):
        """fn(*args); with parallel work, on as many threads as the machine has free now
        and with OpenBLAS single-threaded meanwhile (threads.py)."""
        if not self.parallel or threads.held():
            return fn(*args)
        try:
            threads.begin()
            return fn(*args)
        finally:
            threads.end()

    def _counted(self, fn, args):
        """Call fn; kernels compiled (or loaded from disk) on the way are counted, with
        the time Numba held its compiler lock for them: not the call's own run (an LSTM
        step's first call at 200 steps took 0.2-0.35 s longer than at 50 steps, for the
        same compile)."""
        before = [(len(d.overloads), sum(d.stats.cache_hits.values())) for d in self._dispatchers()]
        held = []
        with numba_event.install_timer("numba:compiler_lock", held.append):
            out = fn(*args)
        self._count(before, sum(held))
        return out

    def _count(self, before, seconds):
        after = [(len(d.overloads), sum(d.stats.cache_hits.values())) for d in self._dispatchers()]
        new = sum(a[0] - b[0] for a, b in zip(after, before))
        hits = sum(a[1] - b[1] for a, b in zip(after, before))
        S.bump("compiles", max(new - hits, 0))
        S.bump("disk_cache_hits", hits)
        S.bump("compile_seconds", seconds)

    def _dispatchers(self):
        ds = [self.entry] + [getattr(self._module, name) for name in self.loop_names]
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
        self._count(before, time.perf_counter() - t0)

    def source(self):
        parts = [self.entry_src] + [self.kernel_srcs[k] for k in self.kernel_names]
        return "\n".join(parts)


def estimate_python_share(prog, n_lines):
    """Share of a Python-tier call spent interpreting the entry, from the traced sizes:
    interpretation ~1.5 us a line; loops ~1 ns an element; BLAS ~100 GFLOP/s (one core
    of a 2020s x86 runs OpenBLAS's sgemm at 130-190, two at 180-300: at the 20 GFLOP/s
    this once assumed, an MLP step's share came out at 2% where it measured 10%)."""
    overhead = n_lines * PY_STEP_SECONDS
    return overhead / (overhead + _work_seconds(prog))


def _work_seconds(prog):
    """The estimated run time of a program's kernels, products and opaque ops; a scan's
    body counts once per step (its traced length), a cond's or a while's bodies once."""
    from ...ir.shapes import hint

    def size(shape):
        n = 1
        for d in shape:
            n *= max(hint(d), 1)
        return n
    work = 0.0
    g = prog.graph
    for s in prog.steps:
        if s.kind == "loop":
            work += size(s.group.shape) * 1e-9
        elif s.kind == "matmul":
            node = g.nodes[s.node]
            a = g.nodes[node.inputs[0]]
            k = a.shape[-2] if node.attrs["transpose_a"] else a.shape[-1]
            work += 2 * max(hint(k), 1) * size(node.shape) * 1e-11
        elif s.kind == "opaque":
            node = g.nodes[s.node]
            bodies = s.body or []
            if node.op == "scan":
                work += max(hint(node.attrs["length"]), 1) * sum(_work_seconds(b) for b in bodies)
            elif bodies:
                work += sum(_work_seconds(b) for b in bodies)
            else:
                work += size(node.shape) * 2e-9
    return work


def compile_program(prog):
    code = gen_entry(prog)
    names = sorted(code.kernels)
    # the name is a hash of the entry written with a placeholder name, and its kernels
    key = hashlib.sha1((code.source("ENTRY") + "".join(names)).encode()).hexdigest()[:16]
    ename = f"e_{key}"
    src = "".join(f"{k} = kernel({k!r})\n" for k in names) + "\n" + \
        code.source(ename, "@njit(cache=CACHE, error_model='numpy')\n")
    exe = CpuExecutable(prog, ename, names, src, code.kernels, code.err_codes, code.inplace,
                        code.source(ename), code.n_sites, code.threaded)
    exe.loop_names = code.loop_names(ename)
    # (a loop over steps is a function of its own, compiled whichever tier runs the
    # entry: its lines are not what compiling the entry would save)
    exe.python_share = estimate_python_share(prog, len(code.lines))
    exe.parallel = code.parallel
    return exe
