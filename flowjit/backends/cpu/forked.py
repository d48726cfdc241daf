"""Forked children that compile into the disk cache for this process and leave: split
compile's kernel compilers (split_compile.py) and the packed products' compiler
(packed.py)."""
import os
import signal
import time

from ... import runtime_config as cfg


def fork_child(work):
    """Fork a child that runs work() and leaves at once (status 0 when it returned);
    the child's pid here, None where the fork failed. Numba's compiler lock is held
    across the fork, so no other thread of this process holds it (or LLVM) in a child."""
    from numba.core.compiler_lock import global_compiler_lock
    global_compiler_lock.acquire()
    try:
        pid = os.fork()
    except OSError:
        return None
    finally:
        global_compiler_lock.release()
    if pid == 0:
        code = 1
        try:
            cfg.forked_child()
            work()
            code = 0
        finally:
            cfg.leave_child()
            os._exit(code)
    return pid


def poll(pid):
    """None while child `pid` runs, else whether it left with status 0 (False where
    someone else reaped it)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    if not done:
        return None
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def wait(pids, timeout, every=0.005):
    """{pid: whether it left with status 0} once every child has left; those still
    running after `timeout` seconds are killed (False)."""
    deadline = time.monotonic() + timeout
    left, out = list(pids), {}
    while left:
        for pid in list(left):
            ok = poll(pid)
            if ok is not None:
                out[pid] = ok
                left.remove(pid)
        if left and time.monotonic() > deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (OSError, ChildProcessError):
                    pass
                out[pid] = False
            return out
        if left:
            time.sleep(every)
    return out
