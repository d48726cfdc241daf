"""Disk cache safety: a cache that cannot be written is given up with one warning (the
program goes on); files or directories others could have written are never loaded;
a data file holding another function's code is rebuilt. Every case runs the program in
a fresh process (module-level state), most on a copy of one populated cache."""
import errno
import glob
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

from test_cache import PROGRAM, ROOT

WARNING = "flowjit: not using the disk cache"

POOL_PROGRAM = textwrap.dedent("""
    import json, numpy as np, flowjit as fj
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    f = fj.jit(lambda x, b: fj.sigmoid(x + b) * 3.0 - fj.tanh(x))
    out = [f(x, b).numpy() for _ in range(4)]
    assert np.allclose(out[-1], 3.0 / (1.0 + np.exp(-(x + b))) - np.tanh(x), rtol=1e-5, atol=1e-6)
    print(json.dumps(fj.stats()))
""")

# Fault injection, run before the program: FAULT=erofs fails creating files and
# directories under FAULT_UNDER; enospc lets files be created there, then fails their
# writes (the disk filled up mid-way); enospc-numba does that to Numba's files only.
FAULTS = textwrap.dedent("""
    import builtins, errno, os
    _under, _kind = os.path.abspath(os.environ["FAULT_UNDER"]) + os.sep, os.environ["FAULT"]
    _code = errno.EROFS if _kind == "erofs" else errno.ENOSPC

    def _hit(path):
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        p = os.path.abspath(os.fsdecode(path))
        return p.startswith(_under) and (_kind != "enospc-numba" or "__pycache__" in p)

    def _fail(path=None):
        raise OSError(_code, os.strerror(_code), path)

    class _Full:
        def __init__(self, f):
            self._f = f
        def write(self, data):
            _fail()
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self._f.close()
        def __getattr__(self, k):
            return getattr(self._f, k)

    if _kind == "erofs":
        _mkdir, _open = os.mkdir, os.open
        def _mkdir_ro(path, *a, **k):
            return _fail(path) if _hit(path) else _mkdir(path, *a, **k)
        def _open_ro(path, flags, *a, **k):
            if _hit(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                _fail(path)
            return _open(path, flags, *a, **k)
        os.mkdir, os.open = _mkdir_ro, _open_ro
    else:
        _fdopen, _bopen = os.fdopen, builtins.open
        def _fdopen_full(fd, *a, **k):
            f = _fdopen(fd, *a, **k)
            return _Full(f) if _hit(os.readlink(f"/proc/self/fd/{fd}")) else f
        def _open_full(file, mode="r", *a, **k):
            f = _bopen(file, mode, *a, **k)
            return _Full(f) if any(c in mode for c in "wax+") and _hit(file) else f
        os.fdopen, builtins.open = _fdopen_full, _open_full
""")


def run(cache_dir, program=PROGRAM, env=None, fault=None, umask=None):
    """Run `program` in a fresh process; returns (its stats, its stderr)."""
    full = dict(os.environ, FLOWJIT_CACHE_DIR=str(cache_dir),
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full.pop("NUMBA_CACHE_DIR", None)
    full.update(env or {})
    if fault:
        full.update(FAULT=fault, FAULT_UNDER=str(cache_dir))
        program = FAULTS + program
    p = subprocess.run([sys.executable, "-W", "default", "-c", program], env=full, capture_output=True,
                       text=True, timeout=300, preexec_fn=None if umask is None else lambda: os.umask(umask))
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def warned_once(err, *words):
    assert err.count(WARNING) == 1, err[-3000:]
    for w in words:
        assert str(w) in err, (w, err[-3000:])
    return True


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """Caches filled by one run of each program, to copy from."""
    base = tmp_path_factory.mktemp("populated")
    run(base / "plain")
    run(base / "pool", POOL_PROGRAM, {"FLOWJIT_POOL_MIN": "1"})
    return base


def copy_of(populated, tmp_path, which="plain"):
    shutil.copytree(populated / which, tmp_path / "c")
    return tmp_path / "c"


def files(d, pattern):
    got = sorted(glob.glob(os.path.join(str(d), pattern)))
    assert got, pattern
    return got


# --- 1. an unusable cache is given up: one warning, right results ---------------------

def test_uncreatable_cache_dir(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    d = tmp_path / "file" / "sub"
    stats, err = run(d)
    assert warned_once(err, d) and stats["compiles"] > 0
    assert not os.path.exists(d)


@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.parametrize("fault", ["erofs", "enospc", "enospc-numba"])
def test_unwritable_cache_dir(tmp_path, fault, processes):
    # with 2 processes a forked child compiles half the kernels into the cache, meets
    # the same fault, and gives up quietly: still one warning for the program
    d = tmp_path / "c"
    os.makedirs(d / "cpu" / "__pycache__", mode=0o700)      # exists, but writes fail
    stats, err = run(d, fault=fault, env={"FLOWJIT_COMPILE_PROCESSES": processes})
    assert warned_once(err, d, os.strerror(errno.EROFS if fault == "erofs" else errno.ENOSPC))
    assert stats["compiles"] > 0
    assert not glob.glob(str(d / "**" / "*.tmp*"), recursive=True)    # no half-written files
    if fault == "enospc-numba":       # the modules were written before the disk filled up
        assert files(d / "cpu", "*.py")
    stats, err = run(d)                                     # and the cache still works after
    assert WARNING not in err and run(d)[0]["compiles"] == 0


def test_read_only_cache_dir_that_does_not_exist(tmp_path):
    stats, err = run(tmp_path / "c", fault="erofs")
    assert warned_once(err, tmp_path / "c", "Read-only file system") and stats["compiles"] > 0


# --- 2. nothing others could have written is loaded ----------------------------------

class _Plant:
    """A pickle that creates `marker` when loaded (stands for any code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_indexes(d, marker, mode=None):
    for f in files(d, "*.nbi"):
        with open(f, "wb") as fh:
            pickle.dump(_Plant(str(marker)), fh)
        if mode is not None:
            os.chmod(f, mode)


@pytest.mark.parametrize("level", [".", "cpu", "cpu/__pycache__"])
def test_world_writable_cache_dir_is_not_used(populated, tmp_path, level):
    d = copy_of(populated, tmp_path)
    marker = tmp_path / "marker"
    plant_indexes(d / "cpu" / "__pycache__", marker)
    os.chmod(d / level, 0o777)
    stats, err = run(d)
    assert not marker.exists()
    assert warned_once(err, d, "writable by group or others") and stats["compiles"] > 0


def test_new_cache_dirs_are_private(tmp_path):
    d = tmp_path / "a" / "c"                  # the parent is created too
    run(d, umask=0)
    for sub in (".", "cpu", "cpu/__pycache__"):
        assert stat.S_IMODE(os.stat(d / sub).st_mode) == 0o700, sub
    for f in glob.glob(str(d / "cpu" / "**" / "*"), recursive=True):
        assert not os.stat(f).st_mode & 0o022, f
    stats, err = run(d, umask=0)              # files saved under umask 0 were tightened
    assert stats["compiles"] == 0 and WARNING not in err


def test_group_writable_numba_entries_are_rebuilt(populated, tmp_path):
    d = copy_of(populated, tmp_path)
    marker = tmp_path / "marker"
    plant_indexes(d / "cpu" / "__pycache__", marker, mode=0o664)
    stats, err = run(d)
    assert not marker.exists() and WARNING not in err and stats["compiles"] > 0
    for f in files(d / "cpu" / "__pycache__", "*.nbi"):      # rebuilt, ours only
        assert not os.stat(f).st_mode & 0o022
    assert run(d)[0]["compiles"] == 0


def test_group_writable_module_is_not_imported(populated, tmp_path):
    d = copy_of(populated, tmp_path)
    marker = tmp_path / "marker"
    for f in files(d / "cpu", "*.py"):
        os.chmod(f, 0o664)
    entry = files(d / "cpu", "e_*.py")[0]
    with open(entry, "a") as fh:
        fh.write(f"open({str(marker)!r}, 'w')\n")
    stats, err = run(d)
    assert not marker.exists() and WARNING not in err
    for f in files(d / "cpu", "*.py"):                      # written again, by us, 0600
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    assert "marker" not in open(entry).read()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
@pytest.mark.parametrize("what", ["*.nbi", "*.py"])
def test_another_users_files_are_not_loaded(populated, tmp_path, what):
    d = copy_of(populated, tmp_path)
    marker = tmp_path / "marker"
    if what == "*.nbi":
        plant_indexes(d / "cpu" / "__pycache__", marker)
        targets = files(d / "cpu" / "__pycache__", what)
    else:
        targets = files(d / "cpu", what)
        for f in targets:
            with open(f, "a") as fh:
                fh.write(f"open({str(marker)!r}, 'w')\n")
    for f in targets:
        os.chown(f, 4242, 4242)
    stats, err = run(d)
    assert not marker.exists()
    assert warned_once(err, d, "owned by uid 4242") and stats["compiles"] > 0


def test_numba_cache_dir_is_checked_too(populated, tmp_path):
    d, nd = copy_of(populated, tmp_path), tmp_path / "numba"
    env = {"NUMBA_CACHE_DIR": str(nd)}
    run(d, env=env)
    stats, err = run(d, env=env)
    assert stats["compiles"] == 0 and WARNING not in err
    from numba.core.caching import _CacheLocator
    sub = nd / _CacheLocator.get_suitable_cache_subpath(str(d / "cpu" / "m.py"))
    assert stat.S_IMODE(os.stat(sub).st_mode) == 0o700
    marker = tmp_path / "marker"
    plant_indexes(sub, marker)
    os.chmod(sub, 0o777)
    stats, err = run(d, env=env)
    assert not marker.exists() and warned_once(err, "writable by group or others")


# --- 3. a data file holding another function's code is rebuilt ------------------------

@pytest.mark.parametrize("which", ["plain", "pool"])
def test_data_files_swapped_between_functions_are_rebuilt(populated, tmp_path, which):
    # each function's .nbc gets the next one's content (entry, kernel, rows function,
    # pool task): loading them used to raise TypeError (or worse, run the other code)
    d = copy_of(populated, tmp_path, which)
    program, env = (PROGRAM, None) if which == "plain" else (POOL_PROGRAM, {"FLOWJIT_POOL_MIN": "1"})
    nbc = files(d / "cpu" / "__pycache__", "*.nbc")
    assert len(nbc) >= 2
    data = [open(f, "rb").read() for f in nbc]
    for f, other in zip(nbc, data[1:] + data[:1]):
        with open(f, "wb") as fh:
            fh.write(other)
    stats, err = run(d, program, env)          # the program checks its results
    assert WARNING not in err
    assert run(d, program, env)[0]["compiles"] == 0
