"""`fj.train`: checkpoints of Variables and optimizer state, safe to load from strangers.

A checkpoint at prefix `P` is two files:

- `P.data-<token>.npz`: the arrays (plain `np.savez`, read back with `allow_pickle=False`);
- `P.index.json`: the commit point: format version, the data file's name, size and
  SHA-256, and per saved name its key in the npz, shape and dtype.

Saving writes the new data file under a fresh token (temp file, fsync, `os.replace`),
then replaces the index the same way, then deletes the data file the old index named.
Until the new index is in place the old index still names the old, untouched data file,
so a crash at any point leaves the previous checkpoint loadable.

`save_arrays` / `load_arrays` are that format for a plain dict name -> ndarray: a TF1
`Saver().save(sess, path, global_step=n)` maps onto `save_arrays(f"{path}-{n}",
{variable name: value})`, `restore` onto `load_arrays` (+ `list_arrays` to check names
and shapes first), `tf.train.latest_checkpoint` onto `latest_checkpoint`; `Checkpoint` names the state of Variables and optimizers
(iterations, learning rate, slot variables) and restores it, creating an optimizer's
slot variables that do not exist yet so a fresh optimizer resumes exactly.
"""
import glob
import hashlib
import json
import os
import uuid

import numpy as np

from .data import Dataset
from .frontend.optimizers import Optimizer
from .frontend.tensor import current_trace
from .frontend.variables import Variable

FORMAT = "flowjit-checkpoint"
VERSION = 1
_INDEX_SUFFIX = ".index.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the objects restored into."""


def _prefix(path):
    path = os.fspath(path)
    return path[:-len(_INDEX_SUFFIX)] if path.endswith(_INDEX_SUFFIX) else path


def _atomic_write(filename, write):
    """Call `write(fileobj)` on a temp file next to `filename`, fsync it and rename it
    over `filename` (atomic on POSIX and Windows); the temp file is removed on failure."""
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


def _write_npz(f, arrays):
    np.savez(f, **arrays)


def _sha256(filename):
    h = hashlib.sha256()
    with open(filename, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_index(prefix):
    index_file = prefix + _INDEX_SUFFIX
    try:
        with open(index_file, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {prefix!r} ({index_file} does not exist)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index_file}: not a valid checkpoint index ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(f"{index_file}: not a flowjit checkpoint index")
    if index.get("version") != VERSION:
        raise CheckpointError(f"{index_file}: format version {index.get('version')}, this flowjit "
                              f"reads version {VERSION}")
    return index


def save_arrays(path, arrays, metadata=None):
    """Save a dict name -> ndarray as the checkpoint `path` (atomically: see the module
    docstring). `metadata` is any JSON-serialisable dict kept in the index. Returns the
    prefix."""
    prefix = _prefix(path)
    d = os.path.dirname(prefix)
    if d:
        os.makedirs(d, exist_ok=True)
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


def load_arrays(path, with_metadata=False):
    """The dict name -> ndarray saved at checkpoint `path` (no pickle: `allow_pickle=False`),
    after checking the data file's size, hash, and every array's shape and dtype against
    the index. With `with_metadata=True` returns `(arrays, metadata)`."""
    prefix = _prefix(path)
    index = _read_index(prefix)
    data_file = os.path.join(os.path.dirname(prefix), index["data_file"])
    if not os.path.isfile(data_file):
        raise CheckpointError(f"checkpoint {prefix!r}: data file {data_file} is missing")
    if os.path.getsize(data_file) != index["data_bytes"] or _sha256(data_file) != index["sha256"]:
        raise CheckpointError(f"checkpoint {prefix!r}: data file {data_file} is corrupt "
                              f"(size or SHA-256 differs from the index)")
    out = {}
    with np.load(data_file, allow_pickle=False) as z:
        for name, e in index["arrays"].items():
            a = z[e["key"]]
            if list(a.shape) != e["shape"] or a.dtype.str != e["dtype"]:
                raise CheckpointError(f"checkpoint {prefix!r}: {name!r} is {a.dtype}{list(a.shape)} in "
                                      f"the data file but {e['dtype']}{e['shape']} in the index")
            out[name] = a
    return (out, index["metadata"]) if with_metadata else out


def list_arrays(path):
    """name -> (shape, dtype) of the arrays in checkpoint `path`, from the index alone."""
    index = _read_index(_prefix(path))
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
            elif isinstance(obj, dict):
                for k in obj:
                    visit(f"{path}/{k}", obj[k])
            elif isinstance(obj, (list, tuple)):
                for i, x in enumerate(obj):
                    visit(f"{path}/{i}", x)
            elif obj is not None:
                raise TypeError(f"Checkpoint: {path} is a {type(obj).__name__}; a checkpoint tracks "
                                f"fj.Variable, fj.optimizers.*, fj.data.Dataset and lists/tuples/dicts "
                                f"of them")

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
                if vpath is None:
                    raise CheckpointError(
                        f"Checkpoint: optimizer {opath!r} has a slot {slot_name!r} for variable {var.name} "
                        f"that this checkpoint does not track; pass that variable too "
                        f"(e.g. Checkpoint(model=[...], {opath}=opt))")
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
                ds.check_state(state)
            except (ValueError, KeyError, UnicodeDecodeError) as e:
                raise CheckpointError(f"restore {dpath!r} (Dataset): {e}") from None
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
