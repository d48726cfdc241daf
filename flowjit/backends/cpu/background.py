"""Compile a program's njit entry in a child process while its Python tier runs.

Compiling an entry links and re-optimises every kernel it calls: for the digits MLP the
two entries took 14.5 of the 27 cold-cache compile seconds, for a step that the Python
tier (kernels called from plain Python) already runs within about 20% of the compiled
speed. Numba's compiler holds the GIL, so a compile thread would stall the training
loop; a child process compiles instead, into Numba's disk cache, at a low priority, and
the parent checks between two calls whether it has finished. When it has, the parent
loads the entry from the disk cache (milliseconds) and switches tiers before the next
call, so no step is lost, repeated or run half in one tier.

- Several processes wanting the same entry: each child takes an exclusive lock on the
  entry's file first, so one compiles and the others then load its result.
- The parent exits first: its children get SIGTERM (atexit, and the kernel's parent-death
  signal if the parent is killed); a child leaves on SIGTERM through SystemExit, which
  removes Numba's half-written temporary file. Numba writes cache files by rename, so no
  entry is ever half written.
- Programs calling custom ops compile in the parent: a child cannot rebuild the user's
  kernels. So do processes whose disk cache is off, and any run with
  `fj.config.background_compile = False` (FLOWJIT_BACKGROUND_COMPILE=0), which tests and
  benchmarks use for deterministic tiers.
"""
import atexit
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time

from ... import runtime_config as cfg
from ...runtime import stats as S

_running = []          # EntryCompile jobs whose child may still run


class EntryCompile:
    """One child process compiling one entry for one signature."""

    def __init__(self, exe, sig):
        job = {"cache_dir": cfg.cache_dir(), "sig": sig,
               "kernels": [(k, exe.kernel_srcs[k], k in exe.threaded) for k in exe.kernel_names],
               "entry": (exe.entry_name, exe.entry_src)}
        fd, self.job_path = tempfile.mkstemp(prefix="flowjit-job-", suffix=".pkl")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(job, f)
        # the child's messages go to a file: a pipe nobody reads could fill and stall it
        self.log = tempfile.TemporaryFile(prefix="flowjit-compile-")
        env = dict(os.environ, FLOWJIT_CACHE_DIR=job["cache_dir"], NUMBA_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", FLOWJIT_BACKGROUND_COMPILE="0")
        self.started = time.perf_counter()
        self.failure = None
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, self.job_path], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        _running.append(self)
        S.bump("background_compiles")

    def poll(self):
        """None while the child runs, then True (the entry is in the disk cache) or False."""
        rc = self.proc.poll()
        if rc is None:
            return None
        if rc != 0:
            self.log.seek(0)
            self.failure = self.log.read()[-2000:].decode(errors="replace")
        self._finish()
        return rc == 0

    def _finish(self):
        if self in _running:
            _running.remove(self)
            S.bump("background_compile_seconds", time.perf_counter() - self.started)
            self.log.close()
            try:
                os.unlink(self.job_path)
            except OSError:
                pass

    def cancel(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._finish()


def possible(exe):
    """Whether a child process can compile this executable's entry."""
    from .custom import kernel_globals
    if os.name != "posix" or not cfg.disk_cache_enabled():     # the child locks with fcntl
        return False
    return not any(kernel_globals(src) for src in list(exe.kernel_srcs.values()) + [exe.entry_src])


@atexit.register
def _stop_children():
    for job in list(_running):
        job.cancel()


# ---- the child -------------------------------------------------------------------
def _die_with_parent():
    """Linux: SIGTERM this process when its parent dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _leave(signum, frame):
    raise SystemExit(128 + signum)


def compile_job(job):
    """Compile the job's entry into Numba's disk cache (its kernels load from it)."""
    import fcntl
    from . import loader
    for name, src, threaded in job["kernels"]:
        loader.load(name, src, threads=threaded)
    name, src = job["entry"]
    mod = loader.load(name, src)
    # one compile per entry at a time across processes; a waiting child then loads
    # the entry the first one saved
    fd = os.open(os.path.join(loader.module_dir(), name + ".compile-lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        getattr(mod, name).compile(job["sig"])
    finally:
        os.close(fd)


def main(path):
    signal.signal(signal.SIGTERM, _leave)
    _die_with_parent()
    try:
        os.nice(10)            # the training loop in the parent comes first
    except OSError:
        pass
    with open(path, "rb") as f:
        job = pickle.load(f)
    compile_job(job)


if __name__ == "__main__":
    main(sys.argv[1])
