"""Checkpoints and TensorBoard event files are written by one rank (rank 0 unless a TF1
cluster names a chief worker), whatever every rank's program asks for; write_files("all")
makes every rank write."""
import glob
import os

import numpy as np
import pytest

import flowjit as fj
from flowjit.runtime import process

D = fj.distributed
R, N = D.rank(), D.world_size()


@pytest.fixture
def shared_dir(tmp_path):
    """One directory every rank sees: rank 0's tmp_path."""
    raw = np.zeros(4096, np.uint8)
    if R == 0:
        b = os.fsencode(str(tmp_path))
        raw[:len(b)] = np.frombuffer(b, np.uint8)
    raw = D.broadcast(raw, root=0)
    path = os.fsdecode(raw[raw != 0].tobytes())
    yield path
    D.barrier()                       # nobody deletes it while another rank still reads it


def test_checkpoints_are_written_by_rank_0(shared_dir):
    v = fj.Variable(np.full(3, float(R)))
    prefix = fj.train.Checkpoint(v=v).save(os.path.join(shared_dir, "ckpt"))
    assert prefix == os.path.join(shared_dir, "ckpt")       # the same answer on every rank
    D.barrier()
    assert len(glob.glob(os.path.join(shared_dir, "ckpt.data-*.npz"))) == 1
    v.assign(np.full(3, -1.0))
    fj.train.Checkpoint(v=v).restore(prefix)
    np.testing.assert_array_equal(v.numpy(), np.zeros(3))   # rank 0's values, on every rank


def test_tf1_saver_state_file_and_pruning(shared_dir):
    import flowjit.compat.v1 as tf
    g = tf.Graph()
    with g.as_default():
        w = tf.Variable(np.full(2, float(R)), name="w")
        saver = tf.train.Saver(max_to_keep=1)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            for step in (1, 2):
                saver.save(sess, os.path.join(shared_dir, "model"), global_step=step)
            D.barrier()
            assert tf.train.latest_checkpoint(shared_dir) == os.path.join(shared_dir, "model-2")
            assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(shared_dir, "model-*.index.json"))) \
                == ["model-2.index.json"]                      # model-1 pruned by the writer
            sess.run(w.assign(np.full(2, 9.0)))
            saver.restore(sess, tf.train.latest_checkpoint(shared_dir))
            np.testing.assert_array_equal(sess.run(w), np.zeros(2))


def test_event_files_are_written_by_rank_0(shared_dir):
    pytest.importorskip("tensorboard")
    logdir = os.path.join(shared_dir, "logs")
    w = fj.summary.create_file_writer(logdir)
    with w.as_default():
        fj.summary.scalar("loss", float(R), step=0)
    w.close()
    D.barrier()
    assert len(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))) == 1


def test_write_files_all_lets_every_rank_write(shared_dir):
    D.write_files("all")
    try:
        assert D.writes_files()
        fj.train.Checkpoint(v=fj.Variable(np.float64(R))).save(os.path.join(shared_dir, f"r{R}", "c"))
    finally:
        process.set_write_mode(None)          # back to the default (FLOWJIT_WRITE_FILES)
    D.barrier()
    assert len(glob.glob(os.path.join(shared_dir, "r*", "c.data-*.npz"))) == N
    assert D.writes_files() == (R == 0)


def test_rank_from_the_launcher_environment(monkeypatch):
    for var in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("FLOWJIT_WRITE_FILES", raising=False)
    monkeypatch.setattr(process, "_state", {"writer": 0, "mode": None})
    assert process.rank() == 0 and process.writes_files()
    monkeypatch.setenv("PMI_RANK", "2")
    assert process.rank() == 2 and not process.writes_files()
    monkeypatch.setenv("FLOWJIT_WRITE_FILES", "all")
    assert process.writes_files()
    monkeypatch.delenv("FLOWJIT_WRITE_FILES")
    process.set_writer_rank(2)
    assert process.writes_files()
    D.write_files("rank0")
    assert process.write_mode() == "rank0"
    with pytest.raises(ValueError, match="'rank0' or 'all'"):
        D.write_files("some")
