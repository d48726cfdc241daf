"""`fj.train`: checkpoints of Variables and optimizer state, safe to load from strangers.

A checkpoint at prefix `P` is two files:

- `P.data-<token>.npz`: the arrays (plain `np.savez`: uncompressed `.npy` members);
- `P.index.json`: the commit point: format version, the data file's name, size and
  SHA-256, and per saved name its key in the npz, shape and dtype.

Saving writes the new data file under a fresh token (temp file, fsync, `os.replace`),
then replaces the index the same way, then deletes the data file the old index named.
Until the new index is in place the old index still names the old, untouched data file,
so a crash at any point leaves the previous checkpoint loadable. Temp files a killed
save left behind (`<file>.tmp-<pid>-<random>`, writer process dead) are removed by the
next save of the prefix.

Loading trusts nothing in the files: every index field is type- and range-checked, the
data file must be a plain file in the index's own directory (no `../`, absolute path or
symlink out of it), its size and hash must match, and each `.npy` member's header (shape,
dtype, byte order, size) must match the index before anything is allocated; only
uncompressed bool/int/float members are read (no pickle, no zip bombs), so a restore
allocates at most the data file's size. Anything else is one `CheckpointError` naming
the file and the field.

`save_arrays` / `load_arrays` are that format for a plain dict name -> ndarray: a TF1
`Saver().save(sess, path, global_step=n)` maps onto `save_arrays(f"{path}-{n}",
{variable name: value})`, `restore` onto `load_arrays` (+ `list_arrays` to check names
and shapes first), `tf.train.latest_checkpoint` onto `latest_checkpoint`; `Checkpoint` names the state of Variables and optimizers
(iterations, learning rate, slot variables) and restores it, creating an optimizer's
slot variables that do not exist yet so a fresh optimizer resumes exactly.
"""
import glob
import hashlib
import io
import json
import math
import os
import re
import stat
import struct
import uuid
import zipfile

import numpy as np

from .data import Dataset
from .errors import CheckpointError
from .frontend.module import Module
from .frontend.optimizers import Optimizer
from .frontend.tensor import current_trace
from .frontend.variables import Variable
from .runtime import process

FORMAT = "flowjit-checkpoint"
VERSION = 1
_INDEX_SUFFIX = ".index.json"
# names of a prefix's files after its base name, and the temp-file suffix _atomic_write adds
_FILE_RE = r"\.(?:index\.json|data-[0-9a-f]{12}\.npz)"
_TMP_RE = r"\.tmp-(\d+)-[0-9a-f]{8}"

_MAX_INDEX_BYTES = 64 << 20     # json.loads allocates a multiple of this; real indexes are KiBs
_MAX_NDIM = 32                  # numpy 1.x's limit
_MAX_NPY_HEADER = 10000         # numpy's own default max_header_size
_MAX_DIR_ENTRY = 256            # zip central-directory bytes per member (46 + name + zip64 extra)
_KEY_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")

def _prefix(path):
    path = os.fspath(path)
    return path[:-len(_INDEX_SUFFIX)] if path.endswith(_INDEX_SUFFIX) else path


# -- writing -----------------------------------------------------------------------------
def _atomic_write(filename, write):
    """Call `write(fileobj)` on a temp file next to `filename`, fsync it and rename it
    over `filename` (atomic on POSIX and Windows); the temp file is removed on failure
    (a killed process leaves it: `_remove_stale_temps` clears it later). In a
    multi-rank job only the writing rank writes (runtime/process.py)."""
    if not process.writes_files():
        return
    tmp = f"{filename}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:                         # make the rename itself durable (POSIX; no-op elsewhere)
        fd = os.open(os.path.dirname(filename) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _pid_alive(pid):
    """Whether process `pid` may still be writing its temp file."""
    if os.name == "nt":          # os.kill(pid, 0) would terminate it there: never guess
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):   # not a pid at all
        return False
    except OSError:              # EPERM: it exists, owned by someone else
        return True
    return True


def _remove_stale_temps(directory, name_re):
    """Remove `_atomic_write` temp files in `directory` whose target name fully matches
    `name_re` and whose writer process is dead: a killed save leaves one behind and no
    later save would otherwise look at it. A live writer's (ours included) is kept."""
    if not process.writes_files():
        return
    pattern = re.compile(name_re + _TMP_RE)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m and not _pid_alive(int(m.group(m.lastindex))):
            try:
                os.remove(os.path.join(directory, name))
            except OSError:
                pass


def _write_npz(f, arrays):
    np.savez(f, **arrays)        # ZIP_STORED members: the only kind load_arrays reads


def _hash_file(f):
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def _sha256(filename):
    with open(filename, "rb") as f:
        return _hash_file(f)


def save_arrays(path, arrays, metadata=None):
    """Save a dict name -> ndarray as the checkpoint `path` (atomically: see the module
    docstring). `metadata` is any JSON-serialisable dict kept in the index. Returns the
    prefix. In a multi-rank job, a rank that does not write files (runtime/process.py)
    returns the prefix and writes nothing."""
    prefix = _prefix(path)
    if not process.writes_files():
        return prefix
    d = os.path.dirname(prefix)
    if d:
        os.makedirs(d, exist_ok=True)
    _remove_stale_temps(d, re.escape(os.path.basename(prefix)) + _FILE_RE)
    entries, payload = {}, {}
    for i, (name, value) in enumerate(arrays.items()):
        if not isinstance(name, str):
            raise TypeError(f"save_arrays: names must be strings, got {name!r}")
        a = np.asarray(value)
        if a.dtype.hasobject or a.dtype.kind not in "biuf":
            raise TypeError(f"save_arrays: {name!r} has dtype {a.dtype}; only bool/int/float arrays "
                            f"are saved (no pickles)")
        key = f"a{i}"
        payload[key] = a
        entries[name] = {"key": key, "shape": list(a.shape), "dtype": a.dtype.str}
    data_name = f"{os.path.basename(prefix)}.data-{uuid.uuid4().hex[:12]}.npz"
    data_file = os.path.join(d, data_name)
    _atomic_write(data_file, lambda f: _write_npz(f, payload))
    index = {"format": FORMAT, "version": VERSION, "data_file": data_name,
             "data_bytes": os.path.getsize(data_file), "sha256": _sha256(data_file),
             "arrays": entries, "metadata": metadata or {}}
    text = json.dumps(index, indent=1, sort_keys=True).encode("utf-8")
    try:
        _atomic_write(prefix + _INDEX_SUFFIX, lambda f: f.write(text))
    except BaseException:
        os.remove(data_file)          # never committed: the old index still names the old data
        raise
    # committed: data files of this prefix that the index no longer names are garbage
    # (the previous one, and any left by a save that crashed before its commit)
    for stale in glob.glob(glob.escape(prefix) + ".data-*.npz"):
        if os.path.basename(stale) != data_name:
            try:
                os.remove(stale)
            except OSError:
                pass
    return prefix


# -- reading: every byte below comes from a possibly hostile file ----------------------
def _short(x, n=60):
    r = repr(x)
    return r if len(r) <= n else r[:n] + "..."


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _plain_name(name):
    """A file name with no directory part: it can only name a file next to the index."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and name not in (".", "..")
            and "\0" not in name and "/" not in name and "\\" not in name
            and not os.path.splitdrive(name)[0] and not os.path.isabs(name))


def _open_regular(filename):
    """`filename` opened for binary reading, refusing anything but a regular file (a
    FIFO or device in a stranger's checkpoint would block or never end; O_NONBLOCK so
    opening a FIFO does not wait for a writer)."""
    fd = os.open(filename, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{filename}: not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_small(f, limit, filename):
    """The whole of file `f`, refused beyond `limit` bytes (read(limit) would allocate
    `limit` bytes up front whatever the file's size)."""
    size = os.fstat(f.fileno()).st_size
    raw = f.read(min(size, limit) + 1)
    if len(raw) > limit:
        raise CheckpointError(f"{filename}: more than {limit} bytes; not a checkpoint file")
    return raw


def _check_dtype(s, bad):
    """The numpy dtype of index dtype string `s`: bool/int/float only, in numpy's own
    spelling (`'<f4'`), so nothing with objects, fields or subarrays can be allocated."""
    if not isinstance(s, str) or not 0 < len(s) <= 8:
        raise bad(f"{_short(s)} is not a dtype string like '<f4'")
    try:
        dt = np.dtype(s)
    except (TypeError, ValueError, SyntaxError) as e:
        raise bad(f"{_short(s)} is not a numpy dtype ({e})") from None
    if dt.kind not in "biuf" or dt.str != s:
        raise bad(f"{_short(s)} is not a bool/int/float dtype in numpy's spelling (e.g. '<f4')")
    return dt


def _check_index(index_file, index):
    """Type- and range-check every field of a parsed index, so nothing later can raise
    KeyError/TypeError on it; returns the total bytes of array data it declares."""
    def bad(field):
        return lambda why: CheckpointError(f"{index_file}: field {field}: {why}")
    if not isinstance(index, dict):
        raise CheckpointError(f"{index_file}: not a flowjit checkpoint index (a JSON "
                              f"{type(index).__name__}, not an object)")
    for k in ("format", "version", "data_file", "data_bytes", "sha256", "arrays", "metadata"):
        if k not in index:
            raise bad(repr(k))("missing")
    if index["format"] != FORMAT:
        raise bad("'format'")(f"{_short(index['format'])}: not a flowjit checkpoint index")
    if not _is_int(index["version"]) or index["version"] != VERSION:
        raise bad("'version'")(f"format version {_short(index['version'])}, this flowjit reads "
                               f"version {VERSION}")
    if not _plain_name(index["data_file"]):
        raise bad("'data_file'")(f"{_short(index['data_file'])} is not a file name in the "
                                 f"checkpoint's own directory")
    size = index["data_bytes"]
    if not _is_int(size) or size < 0:
        raise bad("'data_bytes'")(f"{_short(size)} is not a byte count")
    if not isinstance(index["sha256"], str) or not _SHA_RE.fullmatch(index["sha256"]):
        raise bad("'sha256'")(f"{_short(index['sha256'])} is not 64 lowercase hex digits")
    if not isinstance(index["metadata"], dict):
        raise bad("'metadata'")(f"a JSON {type(index['metadata']).__name__}, not an object")
    arrays = index["arrays"]
    if not isinstance(arrays, dict):
        raise bad("'arrays'")(f"a JSON {type(arrays).__name__}, not an object")
    keys, total = set(), 0
    for name, e in arrays.items():
        where = f"'arrays'[{_short(name)}]"
        if not isinstance(e, dict):
            raise bad(where)(f"a JSON {type(e).__name__}, not an object")
        for k in ("key", "shape", "dtype"):
            if k not in e:
                raise bad(f"{where}[{k!r}]")("missing")
        key, shape = e["key"], e["shape"]
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or key in keys:
            raise bad(f"{where}['key']")(f"{_short(key)} is not a fresh member name (1-64 of "
                                         f"A-Z a-z 0-9 _)")
        keys.add(key)
        if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
                or not all(_is_int(n) and n >= 0 for n in shape)):
            raise bad(f"{where}['shape']")(f"{_short(shape)} is not a list of at most {_MAX_NDIM} "
                                           f"non-negative ints")
        dt = _check_dtype(e["dtype"], bad(f"{where}['dtype']"))
        total += math.prod(shape) * dt.itemsize
    # every array is a stored member of the data file: together they cannot exceed it
    if total > size:
        raise bad("'arrays'")(f"declares {total} bytes of array data, more than the "
                              f"{size}-byte data file ('data_bytes') can hold")
    return total


def _read_index(prefix):
    """(index file name, checked index) of the checkpoint at `prefix`."""
    index_file = prefix + _INDEX_SUFFIX
    try:
        f = _open_regular(index_file)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {prefix!r} ({index_file} does not exist)") from None
    with f:
        raw = _read_small(f, _MAX_INDEX_BYTES, index_file)
    try:
        index = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:     # bad UTF-8 or JSON, huge ints, deep nesting
        raise CheckpointError(f"{index_file}: not a valid checkpoint index (not JSON: "
                              f"{_short(str(e), 120)})") from None
    _check_index(index_file, index)
    return index_file, index


def _data_path(prefix, index_file, name):
    """The data file `name` next to the index, refusing a symlink that leads out of that
    directory (the name itself is already a plain file name)."""
    directory = os.path.dirname(prefix)
    path = os.path.join(directory, name)
    real = os.path.realpath(path)
    if os.path.dirname(real) != os.path.realpath(directory or "."):
        raise CheckpointError(f"{index_file}: field 'data_file': {path} resolves to {real}, outside "
                              f"the checkpoint's directory")
    return path


def _check_zip_directory(f, size, count, where):
    """zipfile builds an object per central-directory entry before any can be checked:
    refuse a directory larger than `count` members need, read from the end records the
    way zipfile reads them (np.savez writes no zip comment)."""
    if size < 22:
        raise CheckpointError(f"{where}: {size} bytes, too short for a zip file")
    f.seek(size - 22)
    sig, _, _, _, entries, cd_size, _, comment = struct.unpack("<4s4H2LH", f.read(22))
    if sig != b"PK\x05\x06" or comment:
        raise CheckpointError(f"{where}: no zip end record at the end of the file")
    if size >= 22 + 20 + 56:
        f.seek(size - 22 - 20)
        if f.read(4) == b"PK\x06\x07":               # zip64: zipfile uses that record instead
            f.seek(size - 22 - 20 - 56)
            rec = struct.unpack("<4sQ2H2L4Q", f.read(56))
            if rec[0] != b"PK\x06\x06":
                raise CheckpointError(f"{where}: corrupt zip64 end record")
            entries, cd_size = rec[7], rec[8]
    if entries != count or cd_size > _MAX_DIR_ENTRY * count:
        raise CheckpointError(f"{where}: zip directory of {entries} entries, {cd_size} bytes; the "
                              f"index names {count} arrays")


def _read_exact(m, n, where):
    out = m.read(n)
    if len(out) != n:
        raise CheckpointError(f"{where}: truncated")
    return out


def _read_npy_header(m, where):
    """(shape, fortran_order, dtype, header bytes) of a `.npy` stream, reading at most
    `_MAX_NPY_HEADER` bytes (numpy's parser: a literal dict, no eval)."""
    magic = _read_exact(m, 8, where)
    if magic[:6] != b"\x93NUMPY" or magic[6:] not in (b"\x01\x00", b"\x02\x00"):
        raise CheckpointError(f"{where}: not a version 1 or 2 .npy header")
    width = 2 if magic[6] == 1 else 4
    raw_len = _read_exact(m, width, where)
    hlen = int.from_bytes(raw_len, "little")
    if hlen > _MAX_NPY_HEADER:
        raise CheckpointError(f"{where}: .npy header of {hlen} bytes (at most {_MAX_NPY_HEADER})")
    header = raw_len + _read_exact(m, hlen, where)
    read = np.lib.format.read_array_header_1_0 if width == 2 else np.lib.format.read_array_header_2_0
    try:
        shape, fortran, dtype = read(io.BytesIO(header), max_header_size=_MAX_NPY_HEADER)
    except Exception as e:     # numpy's parser (ast, tokenize, dtype) on <= 10 kB of text: any failure
        raise CheckpointError(f"{where}: bad .npy header ({_short(str(e), 120)})") from None
    return shape, fortran, dtype, 8 + len(header)


def _read_member(z, key, e, size, where):
    """Array `key` of the open zip, checked against index entry `e` before allocating."""
    where = f"{where}: member {key}.npy"
    try:
        info = z.getinfo(key + ".npy")
    except KeyError:
        raise CheckpointError(f"{where}: missing (named by the index)") from None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise CheckpointError(f"{where}: compressed or encrypted; flowjit writes and reads only "
                              f"stored members (a compressed one could be a zip bomb)")
    if info.compress_size != info.file_size or info.header_offset + info.compress_size > size:
        raise CheckpointError(f"{where}: declares {info.file_size} bytes, more than it or the "
                              f"{size}-byte file holds")
    shape, dtype = tuple(e["shape"]), np.dtype(e["dtype"])
    nbytes = math.prod(shape) * dtype.itemsize
    with z.open(info) as m:
        h_shape, fortran, h_dtype, hbytes = _read_npy_header(m, where)
        if h_shape != shape or h_dtype.str != e["dtype"]:
            raise CheckpointError(f"{where}: holds {h_dtype.str}{list(h_shape)}, the index "
                                  f"declares {e['dtype']}{list(shape)}")
        if info.file_size != hbytes + nbytes:
            raise CheckpointError(f"{where}: {info.file_size} bytes, a {e['dtype']}{list(shape)} "
                                  f".npy is {hbytes + nbytes}")
        # Fortran order: fill the C-ordered transpose, hand back its (F-ordered) .T
        a = np.empty(shape[::-1] if fortran else shape, dtype)
        buf = a.reshape(-1).view(np.uint8)
        for pos in range(0, nbytes, 1 << 20):     # bounded reads straight into the array
            chunk = _read_exact(m, min(1 << 20, nbytes - pos), where)
            buf[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
        m.read(1)                                 # at the end: zipfile checks the CRC
    return a.T if fortran else a


def load_arrays(path, with_metadata=False):
    """The dict name -> ndarray saved at checkpoint `path`, after checking the index, the
    data file's place, size and hash, and each member's header against the index (see
    the module docstring: nothing is allocated beyond the data file's size, no pickle).
    With `with_metadata=True` returns `(arrays, metadata)`."""
    prefix = _prefix(path)
    index_file, index = _read_index(prefix)
    data_file = _data_path(prefix, index_file, index["data_file"])
    where = f"checkpoint data file {data_file} (named by {index_file})"
    try:
        f = _open_regular(data_file)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {prefix!r}: data file {data_file} is missing") from None
    out = {}
    with f:
        size = os.fstat(f.fileno()).st_size
        if size != index["data_bytes"] or _hash_file(f) != index["sha256"]:
            raise CheckpointError(f"{where} is corrupt (fields 'data_bytes'/'sha256': its size or "
                                  f"SHA-256 differs from the index)")
        entries = index["arrays"]
        _check_zip_directory(f, size, len(entries), where)
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as z:
                for name, e in entries.items():
                    out[name] = _read_member(z, e["key"], e, size, where)
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
                NotImplementedError, RuntimeError, struct.error) as e:
            raise CheckpointError(f"{where}: not a valid .npz ({_short(str(e), 120)})") from None
    return (out, index["metadata"]) if with_metadata else out


def list_arrays(path):
    """name -> (shape, dtype) of the arrays in checkpoint `path`, from the (checked) index alone."""
    _, index = _read_index(_prefix(path))
    return {n: (tuple(e["shape"]), np.dtype(e["dtype"])) for n, e in index["arrays"].items()}


def latest_checkpoint(directory):
    """The prefix of the most recently saved checkpoint in `directory` (by the index
    file's modification time), or None: what `tf.train.latest_checkpoint` answers."""
    found = [(os.path.getmtime(f), f) for f in glob.glob(os.path.join(glob.escape(os.fspath(directory)),
                                                                       "*" + _INDEX_SUFFIX))]
    return _prefix(max(found)[1]) if found else None


class Checkpoint:
    """`Checkpoint(model=[w, b], optimizer=opt, data=ds.train).save(path)` saves every
    Variable (found in nested lists/tuples/dicts), each optimizer's iterations, learning
    rate and slot variables, and each `fj.data.Dataset`'s batch order and shuffling RNG,
    under names built from the keyword and the position (`model/0`,
    `optimizer/slots/model/0/m`, `data/order`); `.restore(path)` puts them back.

    Restoring checks everything before assigning anything: a missing name, an unexpected
    one, or a shape/dtype mismatch is a `CheckpointError` naming the variable. Slot
    variables an optimizer has not created yet (it creates them on its first
    `apply_gradients`) are created by the restore, so a fresh optimizer continues exactly
    where the saved one stopped."""

    def __init__(self, **objects):
        if not objects:
            raise ValueError("Checkpoint needs at least one keyword: Checkpoint(model=[...], optimizer=opt)")
        self._objects = objects

    # -- what is tracked ---------------------------------------------------------------
    def _walk(self):
        """(path, Variable) and (path, Optimizer) pairs in a fixed order."""
        variables, optimizers, datasets = [], [], []

        def visit(path, obj):
            if isinstance(obj, Variable):
                variables.append((path, obj))
            elif isinstance(obj, Optimizer):
                optimizers.append((path, obj))
            elif isinstance(obj, Dataset):
                datasets.append((path, obj))
            elif hasattr(obj, "_own_weights"):          # a Keras layer or model: its weights
                visit(path, obj.weights)
            elif isinstance(obj, Module):                # fj.Module: the variables it holds
                visit(path, list(obj.variables))
            elif isinstance(obj, dict):
                for k in obj:
                    visit(f"{path}/{k}", obj[k])
            elif isinstance(obj, (list, tuple)):
                for i, x in enumerate(obj):
                    visit(f"{path}/{i}", x)
            elif obj is not None:
                raise TypeError(f"Checkpoint: {path} is a {type(obj).__name__}; a checkpoint tracks "
                                f"fj.Variable, fj.optimizers.*, fj.data.Dataset, fj.Module, Keras models "
                                f"and lists/tuples/dicts of them")

        for k, v in self._objects.items():
            visit(k, v)
        return variables, optimizers, datasets

    def _state(self):
        """name -> Variable for everything that exists now, plus, per optimizer, the
        slots it could still create: (optimizer, tracked variable, slot name) by name."""
        variables, optimizers, _ = self._walk()
        by_id = {}
        named = {}
        for path, v in variables:
            by_id.setdefault(id(v), path)
            named[path] = v
        slots = []
        for opath, opt in optimizers:
            named[f"{opath}/iterations"] = opt.iterations
            if opt._lr_var is not None:
                named[f"{opath}/learning_rate"] = opt._lr_var
            for (_, slot_name), (var, slot) in opt._slots.items():
                vpath = by_id.get(id(var))
                if vpath is None:       # as TF2: a slot is saved with its variable, or not at all
                    continue
                named[f"{opath}/slots/{vpath}/{slot_name}"] = slot
            slots.append((opath, opt))
        return named, slots, by_id, dict(variables)

    # -- save / restore ----------------------------------------------------------------
    def save(self, path):
        """Write the checkpoint atomically at prefix `path`; returns the prefix."""
        if current_trace() is not None:
            raise TypeError("Checkpoint.save inside @fj.jit; save between steps")
        named, _, _, _ = self._state()
        arrays = {n: v.numpy() for n, v in named.items()}
        for dpath, ds in self._walk()[2]:
            arrays.update({f"{dpath}/{k}": a for k, a in ds.get_state().items()})
        return save_arrays(path, arrays, metadata={"kind": "Checkpoint"})

    def restore(self, path):
        """Assign every tracked Variable and optimizer state from checkpoint `path`
        (all or nothing). Returns self."""
        if current_trace() is not None:
            raise TypeError("Checkpoint.restore inside @fj.jit; restore before the first step")
        arrays = load_arrays(path)
        named, optimizers, _, tracked = self._state()
        plan = []            # (name, existing Variable or a slot to create, array)
        missing = [n for n in named if n not in arrays and not n.endswith("/learning_rate")]
        if missing:
            raise CheckpointError(f"checkpoint {_prefix(path)!r} has no value for {', '.join(missing)} "
                                  f"(it holds {', '.join(sorted(arrays)) or 'nothing'})")
        consumed = set()
        data_states = []
        for dpath, ds in self._walk()[2]:
            keys = {k: f"{dpath}/{k}" for k in ds.get_state()}
            lost = [n for n in keys.values() if n not in arrays]
            if lost:
                raise CheckpointError(f"checkpoint {_prefix(path)!r} has no value for {', '.join(lost)}")
            data_states.append((dpath, ds, {k: arrays[n] for k, n in keys.items()}))
            consumed.update(keys.values())
        for name, var in named.items():
            if name in arrays:
                plan.append((name, var, arrays[name]))
                consumed.add(name)
        for opath, opt in optimizers:
            head = f"{opath}/slots/"
            for name in arrays:
                if name in consumed or not name.startswith(head):
                    continue
                vpath, _, slot_name = name[len(head):].rpartition("/")
                var = tracked.get(vpath)
                if var is None:
                    raise CheckpointError(f"checkpoint {_prefix(path)!r}: slot {name!r} belongs to "
                                          f"{vpath!r}, which this Checkpoint does not track")
                plan.append((name, (opt, var, slot_name), arrays[name]))
                consumed.add(name)
        extra = [n for n in arrays if n not in consumed and not n.endswith("/learning_rate")]
        if extra:
            raise CheckpointError(f"checkpoint {_prefix(path)!r} holds {', '.join(extra)}, which this "
                                  f"Checkpoint does not track (tracked: {', '.join(named) or 'nothing'})")
        for name, target, a in plan:
            ref = target if isinstance(target, Variable) else target[1]   # a slot has its variable's shape
            if tuple(a.shape) != tuple(ref.shape) or a.dtype != ref.dtype.np:
                what = f"variable {ref.name}" if isinstance(target, Variable) else \
                    f"slot {target[2]!r} of variable {ref.name}"
                raise CheckpointError(f"restore {name!r} ({what}): the checkpoint holds "
                                      f"{a.dtype}{tuple(a.shape)}, the {what} is "
                                      f"{ref.dtype.np}{tuple(ref.shape)}")
        for dpath, ds, state in data_states:
            try:
                ds.check_state(state)       # dtype, shape and range of every field
            except ValueError as e:
                raise CheckpointError(f"checkpoint {_prefix(path) + _INDEX_SUFFIX}: restore {dpath!r} "
                                      f"(Dataset): {e}") from None
        for dpath, ds, state in data_states:
            ds.set_state(state)
        for name, target, a in plan:
            if not isinstance(target, Variable):
                opt, var, slot_name = target
                target = opt.add_slot(var, slot_name)
            target.assign(a)
        return self

    def variables(self):
        """name -> Variable of what `save` would write now."""
        return self._state()[0]
