"""Checkpoints are "safe to load from strangers": hostile files (paths out of the
directory, size bombs, malformed indexes, forged dataset state) each give one
CheckpointError naming the file and the field, with bounded allocation; and a save
killed at any file operation leaves the previous or the new checkpoint as the latest,
with no temp files left after the next save."""
import hashlib
import json
import os
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

import flowjit as fj
import flowjit.compat.v1 as tf
from flowjit import train as T

MiB = 1 << 20


def test_checkpoint_error_is_the_errors_module_class():
    assert T.CheckpointError is fj.errors.CheckpointError
    assert issubclass(fj.errors.CheckpointError, (fj.errors.FlowjitError, ValueError))


# -- helpers ------------------------------------------------------------------------------
def refused(fn, *names, peak_mib=4):
    """fn() raises exactly one CheckpointError (no chained exception) whose text holds
    every one of `names`, and allocates less than `peak_mib` MiB doing so."""
    tracemalloc.start()
    try:
        with pytest.raises(Exception) as info:
            fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    e = info.value
    assert type(e) is fj.errors.CheckpointError, repr(e)
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__), repr(e)
    for n in names:
        assert str(n) in str(e), (n, str(e))
    assert peak < peak_mib * MiB, f"peak allocation {peak / MiB:.1f} MiB refusing: {e}"
    return str(e)


def read_index(prefix):
    with open(prefix + ".index.json") as f:
        return json.load(f)


def write_index(prefix, index):
    with open(prefix + ".index.json", "w") as f:
        json.dump(index, f)


def npy_header(descr, shape, fortran=False):
    """A version 1.0 .npy header, as np.save writes it (padded to 64 bytes)."""
    d = repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
    d += " " * (-(len(d) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode("latin1")


def forge(tmp_path, members, arrays, compress=zipfile.ZIP_STORED, data_name="ck.data-0123456789ab.npz"):
    """A checkpoint 'ck' whose data file holds `members` (name -> bytes, or a callable
    writing into the open zip) and whose index declares `arrays` (name -> (key, shape,
    dtype)), with the true size and hash: a consistent, hostile pair."""
    data = tmp_path / data_name
    with zipfile.ZipFile(data, "w", compress) as z:
        for name, content in members.items():
            if callable(content):
                content(z, name)
            else:
                z.writestr(name, content)
    raw = data.read_bytes()
    prefix = str(tmp_path / "ck")
    write_index(prefix, {"format": "flowjit-checkpoint", "version": 1, "data_file": data_name,
                         "data_bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                         "arrays": {n: {"key": k, "shape": list(s), "dtype": d} for n, (k, s, d) in arrays.items()},
                         "metadata": {}})
    return prefix


def rehash(prefix, data_file):
    """Point the index of `prefix` at `data_file` with its true size and hash."""
    index = read_index(prefix)
    raw = open(os.path.join(os.path.dirname(prefix), data_file) if not os.path.isabs(data_file)
               else data_file, "rb").read()
    index.update(data_file=data_file, data_bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    write_index(prefix, index)


# -- 1. nothing outside the checkpoint's directory ---------------------------------------------
@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
def test_data_file_outside_the_directory_is_refused(tmp_path, how):
    (tmp_path / "inside").mkdir()
    outside = T.save_arrays(str(tmp_path / "secret"), {"w": np.arange(4.0)})
    secret = [f for f in os.listdir(tmp_path) if f.startswith("secret.data-")][0]
    prefix = T.save_arrays(str(tmp_path / "inside" / "ck"), {"w": np.zeros(4)})
    name = {"relative": f"../{secret}", "absolute": str(tmp_path / secret), "symlink": "link.npz"}[how]
    if how == "symlink":
        os.symlink(tmp_path / secret, tmp_path / "inside" / "link.npz")
    rehash(prefix, name)
    index_file = prefix + ".index.json"
    refused(lambda: T.load_arrays(prefix), index_file, "'data_file'")
    w = fj.Variable(np.zeros(4))
    refused(lambda: T.Checkpoint(model=[w]).restore(prefix), index_file, "'data_file'")
    np.testing.assert_array_equal(w.numpy(), 0.0)
    assert T.load_arrays(outside)["w"][3] == 3.0            # the target itself is fine


class OneVar:
    def __init__(self):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.v = tf.Variable(np.zeros(3, np.float32), name="v")
            self.init = tf.global_variables_initializer()
            self.saver = tf.train.Saver(max_to_keep=1)
        self.sess = tf.Session(graph=self.graph)
        self.sess.run(self.init)

    def save(self, directory, step):
        self.v.load(np.full(3, float(step), np.float32), self.sess)
        return self.saver.save(self.sess, os.path.join(directory, "m"), global_step=step)


@pytest.fixture(scope="module")
def onevar():
    return OneVar()


def test_saver_restore_refuses_paths_outside_the_directory(onevar, tmp_path):
    d, other = tmp_path / "run", tmp_path / "other"
    d.mkdir(), other.mkdir()
    onevar.saver.set_last_checkpoints([])
    far = onevar.save(str(other), 7)
    onevar.saver.set_last_checkpoints([])        # pruning must not delete `far`
    path = onevar.save(str(d), 1)
    far_data = [f for f in os.listdir(other) if f.startswith("m-7.data-")][0]
    for name in (f"../other/{far_data}", str(other / far_data)):
        rehash(path, name)
        refused(lambda: onevar.saver.restore(onevar.sess, path), path + ".index.json", "'data_file'")
    state = str(d / "checkpoint")
    for bad in ("../other/m-7", far, "sub/m-1", ".."):
        for key in ("model_checkpoint_path", "all_model_checkpoint_paths"):
            with open(state, "w") as f:
                f.write(f'model_checkpoint_path: "m-1"\n{key}: {json.dumps(bad)}\n')
            refused(lambda: tf.train.latest_checkpoint(str(d)), state, key, "outside")
            refused(lambda: tf.train.get_checkpoint_state(str(d)), state, key)
    with open(state, "w") as f:                   # an absolute path into the directory is fine
        f.write(f"model_checkpoint_path: {json.dumps(str(d / 'm-1'))}\n")
    assert tf.train.latest_checkpoint(str(d)) == str(d / "m-1")
    for text in ("model_checkpoint_path: [1]\n", "nonsense\n", "\xff\n", "all_model_checkpoint_paths: \"m-1\"\n"):
        with open(state, "w", encoding="latin1") as f:
            f.write(text)
        refused(lambda: tf.train.latest_checkpoint(str(d)), state)


# -- 2. bombs: sizes checked before allocating --------------------------------------------------
def test_small_npz_declaring_a_huge_array(tmp_path):
    body = npy_header("<f4", (1 << 28,)) + b"\0" * MiB           # 1 MiB claiming 1 GiB
    prefix = forge(tmp_path, {"a0.npy": body}, {"w": ("a0", [4], "<f4")})
    refused(lambda: T.load_arrays(prefix), "a0.npy", "ck.data-", "holds <f4[268435456]")
    prefix = forge(tmp_path, {"a0.npy": body}, {"w": ("a0", [1 << 28], "<f4")})
    refused(lambda: T.load_arrays(prefix), prefix + ".index.json", "'arrays'", "'data_bytes'")


def test_header_claiming_8_tib(tmp_path):
    body = npy_header("<f4", (1 << 41,)) + b"\0" * 16
    prefix = forge(tmp_path, {"a0.npy": body}, {"w": ("a0", [4], "<f4")})
    refused(lambda: T.load_arrays(prefix), "a0.npy", "<f4[2199023255552]")
    prefix = forge(tmp_path, {"a0.npy": body}, {"w": ("a0", [1 << 41], "<f4")})
    refused(lambda: T.load_arrays(prefix), prefix + ".index.json", "'arrays'")


def _deflated_zeros(n):
    def write(z, name):
        with z.open(name, "w", force_zip64=True) as m:
            m.write(npy_header("<f4", (n // 4,)))
            zeros = bytes(MiB)
            for _ in range(n // MiB):
                m.write(zeros)
    return write


def test_deflate_zip_bomb(tmp_path):
    bomb = _deflated_zeros(32 * MiB)                   # ~32 KiB on disk
    for shape in ([4], [8 * MiB]):
        prefix = forge(tmp_path, {"a0.npy": bomb}, {"w": ("a0", shape, "<f4")}, zipfile.ZIP_DEFLATED)
        assert os.path.getsize(tmp_path / read_index(prefix)["data_file"]) < MiB
        refused(lambda: T.load_arrays(prefix), "ck")
    # even a consistent, honest compressed member is refused: only stored members are read
    honest = npy_header("<f4", (4,)) + np.arange(4, dtype="<f4").tobytes()
    prefix = forge(tmp_path, {"a0.npy": honest}, {"w": ("a0", [4], "<f4")}, zipfile.ZIP_DEFLATED)
    refused(lambda: T.load_arrays(prefix), "a0.npy", "compressed")


def test_zip_member_sizes_that_lie(tmp_path):
    honest = npy_header("<f4", (4,)) + np.arange(4, dtype="<f4").tobytes()
    prefix = forge(tmp_path, {"a0.npy": honest}, {"w": ("a0", [4], "<f4")})
    np.testing.assert_array_equal(T.load_arrays(prefix)["w"], np.arange(4))
    data = tmp_path / read_index(prefix)["data_file"]
    raw = bytearray(data.read_bytes())
    cd = raw.index(b"PK\x01\x02")
    for off, value in ((20, 0x7FFFFFFF), (24, 0x7FFFFFFF), (20, len(honest) + 4)):
        bad = bytearray(raw)
        struct.pack_into("<L", bad, cd + off, value)     # central directory: compressed/file size
        data.write_bytes(bytes(bad))
        rehash(prefix, data.name)
        refused(lambda: T.load_arrays(prefix), "a0.npy")
    # a zip directory of thousands of entries for an index naming one array
    many = {f"x{i}.npy": b"" for i in range(3000)}
    prefix = forge(tmp_path, {"a0.npy": honest, **many}, {"w": ("a0", [4], "<f4")})
    refused(lambda: T.load_arrays(prefix), "zip directory of 3001 entries", peak_mib=2)


def test_object_and_mismatched_dtypes_are_never_read(tmp_path):
    body = npy_header("|O", (2,)) + b"\x80\x04N."          # a pickle would follow an |O header
    prefix = forge(tmp_path, {"a0.npy": body}, {"w": ("a0", [2], "<f8")})
    refused(lambda: T.load_arrays(prefix), "a0.npy", "|O")
    prefix = forge(tmp_path, {"a0.npy": body}, {"w": ("a0", [2], "|O")})
    refused(lambda: T.load_arrays(prefix), "'arrays'['w']['dtype']")
    for header in (b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 100, b"\x93NUMPY\x09\x00", b"PK not npy",
                   npy_header("<f4", (4,))[:-5] + b"(((\n"):
        prefix = forge(tmp_path, {"a0.npy": header + b"\0" * 16}, {"w": ("a0", [4], "<f4")})
        refused(lambda: T.load_arrays(prefix), "a0.npy")


def test_fortran_ordered_member_round_trips(tmp_path):
    a = np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))
    prefix = T.save_arrays(str(tmp_path / "f"), {"a": a, "s": np.float32(2.5), "e": np.zeros((0, 3), bool)})
    out = T.load_arrays(prefix)
    np.testing.assert_array_equal(out["a"], a)
    assert out["s"] == np.float32(2.5) and out["e"].shape == (0, 3) and out["e"].dtype == bool


def test_not_a_regular_file(tmp_path):
    prefix = T.save_arrays(str(tmp_path / "ck"), {"w": np.zeros(2)})
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    index = read_index(prefix)
    index["data_file"] = "fifo.npz"
    write_index(prefix, index)
    refused(lambda: T.load_arrays(prefix), "fifo.npz", "not a regular file")


# -- 3. malformed indexes -------------------------------------------------------------------
def _set(path, value):
    def edit(index):
        d = index
        for k in path[:-1]:
            d = d[k]
        if value is DELETE:
            del d[path[-1]]
        else:
            d[path[-1]] = value
    return edit


DELETE = object()
W = ("arrays", "w")
MALFORMED = [  # (edit of a valid index, field named in the error)
    *[(_set((k,), DELETE), f"'{k}'") for k in
      ("format", "version", "data_file", "data_bytes", "sha256", "arrays", "metadata")],
    *[(_set(W + (k,), DELETE), f"'arrays'['w']['{k}']") for k in ("key", "shape", "dtype")],
    (_set(("format",), "tensorflow"), "'format'"),
    (_set(("version",), "1"), "'version'"), (_set(("version",), True), "'version'"),
    (_set(("version",), 2), "'version'"),
    (_set(("data_file",), 5), "'data_file'"), (_set(("data_file",), ""), "'data_file'"),
    (_set(("data_file",), ".."), "'data_file'"), (_set(("data_file",), "a\0b"), "'data_file'"),
    (_set(("data_file",), "/etc/passwd"), "'data_file'"), (_set(("data_file",), "..\\x.npz"), "'data_file'"),
    (_set(("data_bytes",), "12"), "'data_bytes'"), (_set(("data_bytes",), -1), "'data_bytes'"),
    (_set(("data_bytes",), True), "'data_bytes'"), (_set(("data_bytes",), 1.5), "'data_bytes'"),
    (_set(("sha256",), 5), "'sha256'"), (_set(("sha256",), "zz"), "'sha256'"),
    (_set(("sha256",), "0" * 64), "'sha256'"),                       # well-formed, wrong hash
    (_set(("arrays",), []), "'arrays'"), (_set(W, 5), "'arrays'['w']"), (_set(W, {}), "'arrays'['w']['key']"),
    (_set(("metadata",), []), "'metadata'"),
    (_set(W + ("key",), 5), "'arrays'['w']['key']"), (_set(W + ("key",), "../a0"), "'arrays'['w']['key']"),
    (_set(W + ("key",), "a7"), "a7.npy"),                            # names a member that is not there
    (_set(W + ("shape",), "4"), "'arrays'['w']['shape']"), (_set(W + ("shape",), [-1]), "'arrays'['w']['shape']"),
    (_set(W + ("shape",), [4.0]), "'arrays'['w']['shape']"), (_set(W + ("shape",), [True]), "'arrays'['w']['shape']"),
    (_set(W + ("shape",), [[4]]), "'arrays'['w']['shape']"), (_set(W + ("shape",), [1] * 33), "'arrays'['w']['shape']"),
    (_set(W + ("shape",), None), "'arrays'['w']['shape']"), (_set(W + ("shape",), [2, 2]), "a0.npy"),
    (_set(W + ("shape",), [10 ** 30]), "'arrays'"),
    *[(_set(W + ("dtype",), d), "'arrays'['w']['dtype']") for d in
      (5, None, "|O", "float32", "<U4", "f4,f4", "(2,)<f4", "nonsense", "<M8[ns]", "V8", "x" * 500)],
    (_set(W + ("dtype",), "<f8"), "a0.npy"),                         # valid, but not what the member holds
]


@pytest.mark.parametrize("edit,field", MALFORMED)
def test_malformed_index_field(tmp_path, edit, field):
    prefix = T.save_arrays(str(tmp_path / "ck"), {"w": np.arange(4, dtype=np.float32), "n": np.int64(3)})
    index = read_index(prefix)
    edit(index)
    write_index(prefix, index)
    refused(lambda: T.load_arrays(prefix), "ck", field)
    v = [fj.Variable(np.zeros(4, np.float32)), fj.Variable(np.int64(0))]
    refused(lambda: T.Checkpoint(w=v[0], n=v[1]).restore(prefix), "ck", field)


def test_duplicate_member_key(tmp_path):
    prefix = T.save_arrays(str(tmp_path / "ck"), {"w": np.zeros(2), "v": np.zeros(2)})
    index = read_index(prefix)
    index["arrays"]["v"]["key"] = index["arrays"]["w"]["key"]
    write_index(prefix, index)
    refused(lambda: T.load_arrays(prefix), prefix + ".index.json", "['key']")


@pytest.mark.parametrize("text", [b"not json", b"\xff\xfe{}", b"[" * 100000, b'{"a": ' * 100000,
                                  b"1" * 5000, b"[]", b"null", b'"flowjit-checkpoint"', b""])
def test_index_that_is_not_an_index_object(tmp_path, text):
    prefix = T.save_arrays(str(tmp_path / "ck"), {"w": np.zeros(2)})
    with open(prefix + ".index.json", "wb") as f:
        f.write(text)
    index_file = prefix + ".index.json"
    refused(lambda: T.load_arrays(prefix), index_file)
    refused(lambda: T.list_arrays(prefix), index_file)


# -- 4. dataset state ---------------------------------------------------------------------
X = np.arange(10, dtype=np.float32).reshape(5, 2)
Y = np.arange(5, dtype=np.int64)
GOOD_RNG = np.frombuffer(json.dumps(np.random.default_rng(0).bit_generator.state).encode(), np.uint8)
BAD_STATES = [  # (field, forged value)
    ("order", np.array([4.0, 3.0, 2.0, 1.0, 0.0])),             # float order
    ("order", np.array([0, 0, 1, 2, 3])),                        # not a permutation
    ("order", np.array([0, 1, 2, 3, 9])),                        # out of range
    ("order", np.array([-1, 0, 1, 2, 3])),
    ("order", np.arange(5).reshape(1, 5)),
    ("order", np.array([True] * 5)),
    ("position", np.int64(6)), ("position", np.int64(-1)), ("position", np.float64(2.0)),
    ("position", np.arange(2)),
    ("epochs_completed", np.int64(-3)), ("epochs_completed", np.float32(1.0)),
    ("rng_state", np.frombuffer(b"\xff\xfe", np.uint8)),
    ("rng_state", np.frombuffer(b"[" * 50000, np.uint8)),
    ("rng_state", np.frombuffer(b"[1, 2]", np.uint8)),
    ("rng_state", np.frombuffer(b'{"bit_generator": "MT19937"}', np.uint8)),
    ("rng_state", np.frombuffer(b'{"bit_generator": "PCG64", "state": "x"}', np.uint8)),
    ("rng_state", GOOD_RNG.astype(np.int64)),
]


@pytest.mark.parametrize("field,value", BAD_STATES)
def test_forged_dataset_state(tmp_path, field, value):
    ds = fj.data.Dataset(X, Y, seed=1)
    ds.next_batch(3)
    prefix = T.Checkpoint(data=ds).save(str(tmp_path / "ck"))
    arrays = T.load_arrays(prefix)
    arrays[f"data/{field}"] = value
    T.save_arrays(prefix, arrays)
    fresh = fj.data.Dataset(X, Y, seed=2)
    before = fresh.get_state()
    refused(lambda: T.Checkpoint(data=fresh).restore(prefix), prefix + ".index.json", "'data'", f"'{field}'")
    after = fresh.get_state()
    for k in before:                          # all or nothing: the dataset is untouched
        np.testing.assert_array_equal(after[k], before[k])
    T.Checkpoint(data=fresh).restore(T.Checkpoint(data=ds).save(str(tmp_path / "ok")))
    np.testing.assert_array_equal(fresh.next_batch(2)[1], ds.next_batch(2)[1])


# -- 5, 6. saves killed at every file operation -----------------------------------------------
KILLED = 77


def killed_save(k, save):
    """Run `save()` in a forked child that dies (os._exit, like SIGKILL: no cleanup runs)
    just before its k-th file operation (fsync, rename, delete); True if it finished."""
    pid = os.fork()
    if pid == 0:
        try:
            count = [0]

            def dying(real):
                def op(*args, **kwargs):
                    count[0] += 1
                    if count[0] == k:
                        os._exit(KILLED)
                    return real(*args, **kwargs)
                return op
            for name in ("fsync", "replace", "rename", "remove", "unlink"):
                setattr(os, name, dying(getattr(os, name)))
            save()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)               # reaped: its pid is dead from here on
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, KILLED), f"the child saving failed (exit {code})"
    return code == 0


def temps(directory):
    return [f for f in os.listdir(directory) if ".tmp-" in f]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_saver_max_to_keep_1_killed_at_every_point(onevar, tmp_path):
    k, left_temps = 0, 0
    while True:
        k += 1
        d = str(tmp_path / f"k{k}")
        onevar.saver.set_last_checkpoints([])
        first = onevar.save(d, 1)
        finished = killed_save(k, lambda: onevar.save(d, 2))
        latest = tf.train.latest_checkpoint(d)
        assert latest in (first, os.path.join(d, "m-2")), (k, latest, os.listdir(d))
        step = 1 if latest == first else 2
        np.testing.assert_array_equal(T.load_arrays(latest)["v"], float(step))
        left_temps += bool(temps(d))
        third = onevar.save(d, 3)                # the next save: newest, and no temp files left
        assert tf.train.latest_checkpoint(d) == third and not temps(d), (k, os.listdir(d))
        np.testing.assert_array_equal(T.load_arrays(third)["v"], 3.0)
        if finished:
            break
    assert k >= 10 and left_temps >= 2, (k, left_temps)   # every fsync/rename/delete was a kill point
    sess = tf.Session(graph=onevar.graph)
    onevar.saver.restore(sess, tf.train.latest_checkpoint(d))
    np.testing.assert_array_equal(sess.run(onevar.v), 3.0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_checkpoint_killed_at_every_point(tmp_path):
    w = fj.Variable(np.zeros(3, np.float32))
    ds = fj.data.Dataset(X, Y, seed=3)
    k, left_temps = 0, 0
    while True:
        k += 1
        d = tmp_path / f"k{k}"
        prefix = str(d / "ck")
        w.assign(np.full(3, 1.0, np.float32))
        ckpt = T.Checkpoint(model=[w], data=ds)
        ckpt.save(prefix)

        def second():
            w.assign(np.full(3, 2.0, np.float32))
            ckpt.save(prefix)
        finished = killed_save(k, second)
        assert T.latest_checkpoint(str(d)) == prefix
        T.Checkpoint(model=[w], data=fj.data.Dataset(X, Y)).restore(prefix)   # complete and loadable
        assert float(w.numpy()[0]) in (1.0, 2.0)
        left_temps += bool(temps(d))
        w.assign(np.full(3, 3.0, np.float32))
        ckpt.save(prefix)
        assert not temps(d), (k, os.listdir(d))
        assert len(os.listdir(d)) == 2           # the index and the one data file it names
        T.Checkpoint(model=[w], data=ds).restore(prefix)
        assert float(w.numpy()[0]) == 3.0
        if finished:
            break
    assert k >= 6 and left_temps >= 2, (k, left_temps)


def test_only_dead_writers_temp_files_are_removed(tmp_path):
    prefix = str(tmp_path / "ck")
    T.save_arrays(prefix, {"w": np.zeros(2)})
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)                           # a pid that is surely dead now
    dead = [f"ck.index.json.tmp-{pid}-0123abcd", f"ck.data-0123456789ab.npz.tmp-{pid}-89abcdef"]
    kept = [f"ck.index.json.tmp-{os.getpid()}-0123abcd",        # a live writer (ourselves)
            f"other.index.json.tmp-{pid}-0123abcd",             # another prefix
            f"ck.index.json.tmp-{pid}-notours", "ck.index.json.tmp-x-0123abcd", "notes.txt"]
    for f in dead + kept:
        (tmp_path / f).write_bytes(b"partial")
    T.save_arrays(prefix, {"w": np.ones(2)})
    left = set(os.listdir(tmp_path))
    assert not left & set(dead) and set(kept) <= left
