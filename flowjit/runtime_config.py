"""Where the disk cache lives and whether it is on (SPEC: FLOWJIT_CACHE_DIR, FLOWJIT_CACHE=0)."""
import atexit
import os
import shutil
import tempfile

_private = None


def disk_cache_enabled():
    return os.environ.get("FLOWJIT_CACHE", "1") not in ("0", "false", "False", "no")


def cache_dir():
    global _private
    if not disk_cache_enabled():
        if _private is None:
            _private = tempfile.mkdtemp(prefix="flowjit-nocache-")
            atexit.register(shutil.rmtree, _private, True)
        return _private
    return os.environ.get("FLOWJIT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "flowjit")


_malloc_tuned = False


def tune_malloc():
    """Keep freed large blocks in the process (glibc only; FLOWJIT_MALLOC_TUNING=0 opts out).

    Every step allocates its outputs; glibc hands large freed blocks back to the OS, so
    the next step's first writes page-fault on fresh memory (a 4M-element gradient step
    spent half its time there). Raising the mmap and trim thresholds keeps the memory
    mapped, as the caching allocators of other frameworks do. Done once, on import (it
    helps most before the process has mapped large blocks)."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    if os.environ.get("FLOWJIT_MALLOC_TUNING", "1") in ("0", "false", "no"):
        return
    try:
        import ctypes
        import platform
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass
