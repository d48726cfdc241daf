"""Runtime settings (`fj.config`)."""
import os


class _Config:
    def __init__(self):
        # The entry function of a signature first runs as plain Python that calls the
        # compiled (shared, disk-cached) kernels; on this call number it is compiled
        # with numba.njit too, which removes the per-step Python overhead. Programs
        # called once or twice (tests, evaluation) never pay for an entry compile...
        self.compile_entry_after = int(os.environ.get("FLOWJIT_COMPILE_ENTRY_AFTER", "3"))
        # ... but only when the Python tier's estimated interpretation overhead is at least
        # this share of a call (a big training step is dominated by its kernels and BLAS,
        # so compiling its entry would cost seconds and save nothing measurable; a
        # compiled entry also allocates its buffers afresh every call, where the Python
        # tier reuses them). With its entry compiled, an MLP step (784-256-128-10, batch
        # 128; estimated 7-8%) ran 10% faster on one thread, an autoencoder step
        # (estimated 2%) 5% faster.
        self.entry_overhead_share = float(os.environ.get("FLOWJIT_ENTRY_OVERHEAD_SHARE", "0.05"))
        # Where that compile runs: True (the default) in a child process while the
        # Python tier goes on (backends/cpu/background.py); False in this process, at
        # once, so the tier a call runs in is deterministic (tests, benchmarks).
        self.background_compile = os.environ.get("FLOWJIT_BACKGROUND_COMPILE", "1").strip().lower() \
            not in ("0", "false", "no", "off")
        # Which tiers a CPU program may run in: "auto" (the default) runs a cold
        # program's first calls in tier 0, the NumPy references of its ops, while a
        # child process compiles its kernels (only when compiling in the background);
        # "compiled" never runs tier 0 (kernels compile before the first call
        # returns); "reference" runs tier 0 only and compiles nothing.
        self.tier = os.environ.get("FLOWJIT_TIER", "auto").strip().lower() or "auto"
        # Processes that compile a cold program's kernels together before its first
        # compiled call (backends/cpu/split_compile.py): "auto" (the default) uses the
        # cores no other process wants now, at most 4; 1 compiles in this process only.
        p = os.environ.get("FLOWJIT_COMPILE_PROCESSES", "").strip().lower()
        self.compile_processes = "auto" if p in ("", "auto") else int(p)
        self.log_device_placement = False
        # Threads for GEMMs and parallel loops (backends/cpu/threads.py): "auto" (the
        # default) uses the GEMMs' OpenBLAS count (NumPy's, else SciPy's:
        # OPENBLAS_NUM_THREADS, threadpoolctl), at
        # most the cores, and fewer while other processes want the cores; a number
        # fixes the count.
        # On a GPU, consecutive kernels of a compiled step run as the phases of one
        # cooperative launch (backends/cuda/fused_launch.py): a step costs one or a few
        # launches instead of dozens. Read when a program is compiled; False (or
        # FLOWJIT_CUDA_FUSE_LAUNCHES=0) launches every kernel on its own.
        self.cuda_fuse_launches = os.environ.get("FLOWJIT_CUDA_FUSE_LAUNCHES", "1").strip().lower() \
            not in ("0", "false", "no", "off")
        t = os.environ.get("FLOWJIT_THREADS", "").strip().lower()
        self.threads = "auto" if t in ("", "auto") else int(t)


config = _Config()
