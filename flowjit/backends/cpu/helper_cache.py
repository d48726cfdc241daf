"""Where Numba caches flowjit's own compiled helpers (the GEMM wrappers, the scalar math
library, the shared convolution kernels: the `cache=True` functions in flowjit's
source files).

Numba's default puts them beside the source, in `flowjit/**/__pycache__`, and falls
back to a user-wide directory when the package is installed read-only. Here they go
under the flowjit cache directory instead, keyed by flowjit's and Numba's versions and
a hash of the backend sources, so an installed package never writes into
site-packages, a fresh `FLOWJIT_CACHE_DIR` really is a cold start, and deleting that
directory deletes everything flowjit compiled. Numba still checks each entry against a
hash of its source file.

`install()` puts the locator first in Numba's list before any of those functions is
decorated (backends/cpu/__init__.py). Where the directory cannot be used safely
(runtime_config.secure_dir), or the disk cache is off, Numba's own locators apply.
"""
import hashlib
import os

from numba.core import caching

from ... import __version__
from ... import runtime_config as cfg

_PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _backends_hash():
    """A short hash of every backend source file. Numba checks a cached function against
    its own file only, not against the helpers it calls and compiled in (a cached `gemm`
    kept an edited helper it called), so any change there starts a new directory."""
    h = hashlib.sha1()
    root = os.path.join(_PACKAGE, "backends")
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".py"):
                with open(os.path.join(folder, f), "rb") as fh:
                    h.update(f.encode() + b"\0" + fh.read())
    return h.hexdigest()[:10]


_HASH = _backends_hash()


def helper_dir(py_file):
    """The cache directory of the helpers defined in `py_file` (a flowjit source file)."""
    import numba
    rel = os.path.relpath(os.path.dirname(os.path.abspath(py_file)), _PACKAGE)
    return os.path.join(cfg.cache_dir(), "helpers",
                        f"flowjit-{__version__}-numba-{numba.__version__}-{_HASH}", rel)


class FlowjitHelperLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = helper_dir(py_file)

    def get_cache_path(self):
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file):
        path = os.path.abspath(py_file)
        if not path.startswith(_PACKAGE + os.sep) or not cfg.disk_cache_enabled():
            return None
        d = helper_dir(path)
        try:
            parts = os.path.relpath(d, cfg.cache_dir()).split(os.sep)
            p = cfg.cache_dir()
            cfg.secure_dir(p)
            for part in parts:          # every level 0700 and ours, as the rest of the cache
                p = os.path.join(p, part)
                cfg.secure_dir(p)
        except (OSError, cfg.UnsafeCache):
            return None
        return super().from_function(py_func, py_file)


def install():
    classes = caching.CacheImpl._locator_classes
    if FlowjitHelperLocator not in classes:
        classes.insert(0, FlowjitHelperLocator)
