"""Where the disk cache lives and whether it is on (SPEC: FLOWJIT_CACHE_DIR, FLOWJIT_CACHE=0).

The disk cache holds code this process imports and pickles Numba unpickles, so a
directory someone else can write to would run their code in ours: every directory of
the cache is created 0700 and checked (ours, writable by no one else) before use. A
cache that cannot be used (unsafe, read-only, full, uncreatable) is given up, with one
warning, for the rest of the process: code is then generated into a private temporary
directory and compiled without Numba's disk cache.
"""
import atexit
import errno
import os
import shutil
import stat
import tempfile
import warnings

_private = None
_given_up = None       # (directory, reason) once the disk cache is given up
_quiet = False         # a forked compile child: give up without a warning of its own
_UID = os.geteuid() if hasattr(os, "geteuid") else None   # None: no POSIX owners


class UnsafeCache(Exception):
    """A cache file or directory someone else could have written."""


def disk_cache_enabled():
    return _given_up is None and os.environ.get("FLOWJIT_CACHE", "1") not in ("0", "false", "False", "no")


def cache_dir():
    if not disk_cache_enabled():
        return private_dir()
    d = os.environ.get("FLOWJIT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "flowjit")
    return os.path.abspath(d)     # Numba keys its cache by the module's path: keep it stable


def private_dir():
    """A temporary directory of this process (0700, removed at exit)."""
    global _private
    if _private is None:
        _private = tempfile.mkdtemp(prefix="flowjit-nocache-")
        atexit.register(shutil.rmtree, _private, True)
    return _private


def forked_child():
    """Called first in a forked child that compiles into the cache for its parent
    (split_compile): the parent, which meets the same fault, warns once for the whole
    program, so the child gives up without a warning; and the parent's private
    directory is not the child's to use or remove."""
    global _quiet, _private
    _quiet, _private = True, None


def leave_child():
    """Remove a forked child's private directory (it leaves with os._exit: no atexit)."""
    if _private is not None:
        shutil.rmtree(_private, True)


def give_up(path, reason):
    """Stop using the disk cache for the rest of the process; warn the first time."""
    global _given_up
    if _given_up is None:
        _given_up = (path, str(reason))
        if _quiet:
            return
        hint = " (FLOWJIT_CACHE_DIR must be a directory only you can write)" \
            if isinstance(reason, UnsafeCache) else ""
        warnings.warn(f"flowjit: not using the disk cache {path}: {reason}{hint}; compiling "
                      f"without it for the rest of this process", RuntimeWarning, stacklevel=2)


def secure_dir(path):
    """Create `path` (mode 0700) unless it exists; raise OSError or UnsafeCache unless it
    is a directory of ours that no one else can write and we can."""
    try:
        os.makedirs(path, mode=0o700)
        os.chmod(path, 0o700)         # the umask may have taken bits off
    except FileExistsError:
        pass
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    check_owner(path, st)
    if not os.access(path, os.W_OK | os.X_OK):    # a read-only file system, for one
        raise OSError(f"{path} is not writable")


def check_owner(path, st):
    """Raise UnsafeCache unless `st` (of `path`) is ours and not group/other-writable."""
    if foreign(st):
        raise UnsafeCache(f"{path} is owned by uid {st.st_uid}, not by this user")
    if others_can_write(st):
        raise UnsafeCache(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def foreign(st):
    return _UID is not None and st.st_uid != _UID


def others_can_write(st):
    return _UID is not None and bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
