"""Compile a program's kernels, then its njit entry, in a child process while the
program runs on.

Numba's compiler holds the GIL, so a compile thread would stall the training loop; a
child process compiles instead, into Numba's disk cache, and the parent checks between
two calls whether it has finished. Two kinds of job:
- "kernels": on a cold cache, a program's first calls run in tier 0 (the NumPy
  references, backends/reference.py) while a child compiles its kernels by running the
  Python tier once on zero-filled arguments of the same shapes and dtypes (so it
  compiles exactly the variants the parent will call). Then the parent loads them from
  the disk cache and switches to the Python tier.
- "loops": an entry's loops over steps as functions (entry_loops.py), for the argument
  types a Python-tier call passed them; the Python tier then calls them compiled. Like
  an entry's, at nice 10: the Python tier runs on meanwhile.
- "entry": compiling the njit entry links and re-optimises every kernel it calls (for
  the digits MLP, 14.5 of the 27 cold-cache compile seconds), for a step the Python
  tier already runs within about 20% of the compiled speed; the Python tier runs on
  meanwhile (the child at nice 10; a kernels child at normal priority, as tier 0 is
  slower), then the parent loads the entry from the disk cache (milliseconds).
Either way the switch happens before a call, so no step is lost, repeated or run half
in one tier. One child runs at a time (a 2-core machine has one core to spare); the
others wait in a queue.

- Several processes wanting the same compile: each child takes an exclusive lock on a
  file of the entry's name first, so one compiles and the others then load its result.
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

_running = []          # jobs whose child may still run (started or queued)
_queue = []            # jobs waiting for the one child slot, first come first served


class Compile:
    """One child process compiling one executable's kernels ("kernels", for argument
    specs `args`: (shape, dtype, writeable) each), its entry ("entry", for Numba
    signature `sig`) or its loop functions ("loops": {name: signature})."""

    def __init__(self, what, exe, args=None, sig=None, loops=None):
        job = {"what": what, "cache_dir": cfg.cache_dir(), "sig": sig, "args": args, "loops": loops,
               "kernels": [(k, exe.kernel_srcs[k], k in exe.threaded) for k in exe.kernel_names],
               "entry": (exe.entry_name, exe.entry_src), "py_entry": exe.py_src}
        fd, self.job_path = tempfile.mkstemp(prefix="flowjit-job-", suffix=".pkl")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(job, f)
        except BaseException:          # a full /tmp: the caller compiles in the process
            os.unlink(self.job_path)
            raise
        self.what = what
        self.proc = None
        self.failure = None            # why the child failed, or could not start
        self.log = None
        _running.append(self)
        _queue.append(self)
        S.bump("background_compiles")
        _pump()

    def _start(self):
        # the child's messages go to a file: a pipe nobody reads could fill and stall it
        self.log = tempfile.TemporaryFile(prefix="flowjit-compile-")
        env = dict(os.environ, FLOWJIT_CACHE_DIR=cfg.cache_dir(), NUMBA_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", FLOWJIT_THREADS="1", FLOWJIT_BACKGROUND_COMPILE="0")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, self.job_path], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def poll(self):
        """None while the child waits or runs, then True (its functions are in the disk
        cache) or False (self.failure says why)."""
        _pump()
        if self.proc is None:
            if self.failure is not None:       # it could not start
                self._finish()
                return False
            return None
        rc = self.proc.poll()
        if rc is None:
            return None
        if rc != 0:
            self.log.seek(0)
            self.failure = self.log.read()[-2000:].decode(errors="replace")
        self._finish()
        return rc == 0

    def _finish(self):
        if self in _queue:
            _queue.remove(self)
        if self in _running:
            _running.remove(self)
            if self.proc is not None:
                S.bump("background_compile_seconds", time.perf_counter() - self.started)
            if self.log is not None:
                self.log.close()
            try:
                os.unlink(self.job_path)
            except OSError:
                pass

    def cancel(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._finish()


def _pump():
    """Start the next queued job once no child runs. A job whose child cannot start (no
    memory or processes left) is marked failed for its owner, and the next one tried."""
    if any(j.proc is not None and j.proc.poll() is None for j in _running):
        return
    while _queue:
        job = _queue.pop(0)
        try:
            job._start()
            return
        except OSError as e:
            job.failure = f"the compile process could not start: {e}"
            if job.log is not None:
                job.log.close()
                job.log = None


def arg_specs(args):
    """What a kernels job needs of the arguments, or None where a child could not
    rebuild them (it recreates C-contiguous arrays only)."""
    import numpy as np
    out = []
    for a in args:
        if type(a) is not np.ndarray or not a.flags.c_contiguous:
            return None
        out.append((a.shape, a.dtype.str, bool(a.flags.writeable)))
    return out


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
    """Compile the job's kernels or its entry into Numba's disk cache."""
    import fcntl
    from . import loader
    for name, src, threaded in job["kernels"]:
        loader.load(name, src, threads=threaded)
    name, src = job["entry"]
    mod = loader.load(name, src)
    # one compile per entry at a time across processes; a waiting child then loads
    # what the first one saved
    fd = os.open(os.path.join(loader.module_dir(), f"{name}.{job['what']}-lock"),
                 os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if job["what"] == "entry":
            getattr(mod, name).compile(job["sig"])
        elif job["what"] == "loops":
            for loop, sig in job["loops"].items():
                getattr(mod, loop).compile(sig)
        else:
            _run_python_tier(mod, name, job)
    finally:
        os.close(fd)


def _run_python_tier(mod, name, job):
    """One call of the entry's Python tier on zeros: every kernel compiles (or loads)
    for exactly the argument types the parent's calls will have."""
    import numpy as np
    from . import loader, pool, runtime_lib
    ns = dict(vars(mod))
    # as the parent's Python tier will: a pooled kernel's launcher and the GEMM helpers
    # compile later (CpuExecutable._stand_ins)
    ns.update({k: pool.python_launcher(loader._modules[k], k)
               for k, src, _ in job["kernels"] if pool.python_launchable(k, src)})
    ns.update(runtime_lib.PYTHON_TWINS)
    ns["alloc"] = lambda site, shape, dtype: np.empty(shape, dtype)
    exec(compile(job["py_entry"], f"<flowjit entry {name}>", "exec"), ns)
    args = []
    for shape, dtype, writeable in job["args"]:
        a = np.zeros(shape, dtype)
        a.flags.writeable = writeable
        args.append(a)
    ns[name](*args)


def main(path):
    signal.signal(signal.SIGTERM, _leave)
    _die_with_parent()
    with open(path, "rb") as f:
        job = pickle.load(f)
    try:
        os.unlink(path)        # read: nothing is left behind if the parent is killed
    except OSError:
        pass
    if job["what"] in ("entry", "loops"):
        try:
            os.nice(10)        # the Python tier is near full speed already: it comes first
        except OSError:
            pass
    compile_job(job)


if __name__ == "__main__":
    main(sys.argv[1])
