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
        # so compiling its entry would cost seconds and save nothing measurable).
        self.entry_overhead_share = float(os.environ.get("FLOWJIT_ENTRY_OVERHEAD_SHARE", "0.2"))
        self.log_device_placement = False
        # Threads for GEMMs and parallel loops: None keeps the BLAS pool's own count;
        # "auto" adapts to the machine (all the pool's threads while it is quiet, fewer
        # while other processes want the cores: backends/cpu/threads.py); a number
        # fixes the count.
        t = os.environ.get("FLOWJIT_THREADS", "").strip().lower()
        self.threads = None if not t else ("auto" if t == "auto" else int(t))


config = _Config()
