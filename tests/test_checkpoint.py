"""fj.train: checkpoint round trips resume training bit-identically; saves are atomic."""
import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import flowjit as fj
from flowjit import train as T

X = np.random.default_rng(0).standard_normal((16, 5)).astype(np.float32)
Y = np.eye(3, dtype=np.float32)[np.arange(16) % 3]


def make(seed):
    rng = np.random.default_rng(seed)
    params = [fj.Variable(rng.standard_normal((5, 8)).astype(np.float32) * 0.3, name="w1"),
              fj.Variable(np.zeros(8, np.float32), name="b1"),
              fj.Variable(rng.standard_normal((8, 3)).astype(np.float32) * 0.3, name="w2")]
    opt = fj.optimizers.Adam(0.05)

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            logits = fj.nn.relu(x @ params[0] + params[1]) @ params[2]
            loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits))
        opt.apply_gradients(zip(tape.gradient(loss, params), params))
        return loss
    return params, opt, step


def run(step, ds, k):
    return [float(step(*ds.next_batch(6))) for _ in range(k)]


def test_resume_is_bit_identical(tmp_path):
    """Train 4 steps, save, train 4 more; a fresh model, optimizer (no slots yet) and
    dataset restored from the checkpoint train the same 4 steps bit for bit (the batches
    straddle epochs, so the data order and shuffling RNG are restored too)."""
    params, opt, step = make(1)
    ds = fj.data.Dataset(X, Y, seed=5)
    run(step, ds, 4)
    ckpt = fj.train.Checkpoint(model=params, optimizer=opt, data=ds)
    path = ckpt.save(str(tmp_path / "ckpt"))
    losses_a = run(step, ds, 4)
    after_a = [p.numpy() for p in params] + [opt.get_slot(params[0], "m").numpy()]

    params2, opt2, step2 = make(7)              # different initial values, no slots yet
    ds2 = fj.data.Dataset(X, Y, seed=99)
    assert not opt2._slots
    fj.train.Checkpoint(model=params2, optimizer=opt2, data=ds2).restore(path)
    assert int(opt2.iterations.numpy()) == 4 and len(opt2._slots) == 6
    losses_b = run(step2, ds2, 4)
    after_b = [p.numpy() for p in params2] + [opt2.get_slot(params2[0], "m").numpy()]
    assert losses_a == losses_b
    for a, b in zip(after_a, after_b):
        np.testing.assert_array_equal(a, b)

    ckpt.restore(path)                           # into objects the compiled step already uses
    assert run(step, ds, 4) == losses_a
    np.testing.assert_array_equal(params[0].numpy(), after_a[0])
    with pytest.raises(T.CheckpointError, match=r"'data' \(Dataset\).*permutation of this dataset's 15"):
        fj.train.Checkpoint(model=params, optimizer=opt, data=fj.data.Dataset(X[:15], Y[:15])).restore(path)


def test_restore_errors_name_the_variable(tmp_path):
    params, opt, _ = make(1)
    path = fj.train.Checkpoint(model=params, optimizer=opt).save(str(tmp_path / "c"))
    wrong = [fj.Variable(np.zeros((5, 8), np.float32)), fj.Variable(np.zeros(8, np.float32)),
             fj.Variable(np.zeros((8, 4), np.float32), name="w2_wide")]
    before = wrong[0].numpy().copy()
    with pytest.raises(T.CheckpointError, match=r"'model/2' \(variable w2_wide:0\).*float32\(8, 3\).*float32\(8, 4\)"):
        fj.train.Checkpoint(model=wrong, optimizer=fj.optimizers.Adam()).restore(path)
    np.testing.assert_array_equal(wrong[0].numpy(), before)      # all or nothing
    with pytest.raises(T.CheckpointError, match="no value for extra/0"):
        fj.train.Checkpoint(model=params, optimizer=opt, extra=[fj.Variable(1.0)]).restore(path)
    with pytest.raises(T.CheckpointError, match="holds model/2"):
        fj.train.Checkpoint(model=params[:2], optimizer=opt).restore(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fj.train.Checkpoint(model=params).restore(str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="model/0 is a str"):
        fj.train.Checkpoint(model=["w"]).save(str(tmp_path / "x"))


def test_slots_of_untracked_variables_are_left_out_as_in_tf2(tmp_path):
    """An optimizer with slots for variables the checkpoint does not track saves its own
    state and no slot (TF2 saves a slot only with its variable); tracking the variable
    too saves and restores the slot."""
    v = fj.Variable(np.ones(3, np.float32), name="lonely")
    opt = fj.optimizers.SGD(0.1, momentum=0.9)
    opt.apply_gradients([(np.ones(3, np.float32), v)])
    p = fj.train.Checkpoint(optimizer=opt).save(str(tmp_path / "c"))
    assert sorted(fj.train.list_arrays(p)) == ["optimizer/iterations", "optimizer/learning_rate"]
    p2 = fj.train.Checkpoint(model=[v], optimizer=opt).save(str(tmp_path / "d"))
    m = opt.get_slot(v, "momentum").numpy().copy()
    w2 = fj.Variable(np.zeros(3, np.float32))
    opt2 = fj.optimizers.SGD(0.1, momentum=0.9)
    fj.train.Checkpoint(model=[w2], optimizer=opt2).restore(p2)
    np.testing.assert_array_equal(opt2.get_slot(w2, "momentum").numpy(), m)
    np.testing.assert_array_equal(w2.numpy(), v.numpy())


def test_arrays_round_trip_and_corruption(tmp_path):
    arrays = {"a/b": np.arange(6, dtype=np.float64).reshape(2, 3), "step": np.int64(7),
              "flags": np.array([True, False])}
    p = fj.train.save_arrays(str(tmp_path / "sub" / "arr"), arrays, metadata={"global_step": 7})
    out, meta = fj.train.load_arrays(p + ".index.json", with_metadata=True)
    assert meta == {"global_step": 7} and set(out) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(out[k], arrays[k])
        assert out[k].dtype == np.asarray(arrays[k]).dtype
    assert fj.train.latest_checkpoint(str(tmp_path / "sub")) == p
    assert fj.train.latest_checkpoint(str(tmp_path)) is None
    with pytest.raises(TypeError, match="only bool/int/float"):
        fj.train.save_arrays(str(tmp_path / "o"), {"x": np.array([{"a": 1}], dtype=object)})
    data = glob.glob(p + ".data-*.npz")[0]
    raw = bytearray(open(data, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(data, "wb").write(bytes(raw))
    with pytest.raises(T.CheckpointError, match="corrupt"):
        fj.train.load_arrays(p)


def _files(prefix):
    return sorted(os.path.basename(f) for f in glob.glob(prefix + "*"))


def test_failed_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    prefix = str(tmp_path / "ck")
    fj.train.save_arrays(prefix, {"w": np.full(1000, 1.0)})
    good = _files(prefix)

    def half_then_crash(f, payload):            # dies halfway through writing the data
        f.write(b"PK\x03\x04" + b"\0" * 500)
        raise KeyboardInterrupt("simulated crash")
    monkeypatch.setattr(T, "_write_npz", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        fj.train.save_arrays(prefix, {"w": np.full(1000, 2.0)})
    monkeypatch.undo()
    assert _files(prefix) == good
    np.testing.assert_array_equal(fj.train.load_arrays(prefix)["w"], 1.0)

    real_replace = os.replace

    def crash_on_commit(src, dst):              # data written, dies before the index commit
        if dst.endswith(".index.json"):
            raise OSError("simulated crash at commit")
        return real_replace(src, dst)
    monkeypatch.setattr(T.os, "replace", crash_on_commit)
    with pytest.raises(OSError, match="simulated"):
        fj.train.save_arrays(prefix, {"w": np.full(1000, 3.0)})
    monkeypatch.undo()
    np.testing.assert_array_equal(fj.train.load_arrays(prefix)["w"], 1.0)
    assert _files(prefix) == good
    fj.train.save_arrays(prefix, {"w": np.full(1000, 4.0)})   # the next save replaces it
    np.testing.assert_array_equal(fj.train.load_arrays(prefix)["w"], 4.0)
    assert len(_files(prefix)) == 2


def test_process_killed_mid_save(tmp_path):
    """A child saves 8 MB checkpoints in a loop; SIGKILL at arbitrary moments; the
    checkpoint always loads and holds one whole generation."""
    prefix = str(tmp_path / "ck")
    src = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(fj.__file__)))!r})
        from flowjit.train import save_arrays
        g = 0
        while True:
            save_arrays({prefix!r}, {{"w": np.full(1 << 20, float(g)), "g": np.int64(g)}})
            g += 1
            if g == 1:
                print("first", flush=True)
    """)
    for delay in (0.05, 0.23):
        p = subprocess.Popen([sys.executable, "-c", src], stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"first"
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        out = fj.train.load_arrays(prefix)
        assert np.all(out["w"] == float(out["g"]))
