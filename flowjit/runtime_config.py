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
