"""flowjit.compat.v1 I/O: `tf.summary.*` ops + `FileWriter` read back with TensorBoard's
own EventAccumulator, and `tf.train.Saver` checkpoints (resume bit-identically, pruning,
the `checkpoint` state file, clear errors, atomic saves)."""
import importlib.util
import os

import numpy as np
import pytest

import flowjit as fj
import flowjit.compat.v1 as tf

needs_tb = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                              reason="the tensorboard package is not installed")

X_DATA = np.linspace(-1.0, 1.0, 16).astype(np.float32)
Y_DATA = (0.1 * X_DATA + 0.3).astype(np.float32)


@pytest.fixture(autouse=True)
def _entry_tier(monkeypatch):
    # as in test_compat_v1.py: stay on the kernel-compiled Python entry tier
    monkeypatch.setattr(fj.config, "compile_entry_after", 10**9)


class LinReg:
    """The classic TF1 linear regression y = 0.1 x + 0.3, with summaries, a global step
    and a momentum optimizer (its slots are ordinary variables a Saver must save)."""

    def __init__(self, w_shape=(1,)):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.x = tf.placeholder(tf.float32, [None], name="x")
            self.y_ = tf.placeholder(tf.float32, [None], name="y")
            self.W = tf.Variable(tf.random_uniform(list(w_shape), -1.0, 1.0, seed=3), name="W")
            self.b = tf.Variable(tf.zeros([1]), name="b")
            y = self.W * self.x + self.b
            self.loss = tf.reduce_mean(tf.square(y - self.y_))
            with tf.name_scope("train"):
                tf.summary.scalar("loss", self.loss)
            tf.summary.histogram("weights", self.W)
            self.merged = tf.summary.merge_all()
            self.step = tf.train.get_or_create_global_step()
            self.train = tf.train.MomentumOptimizer(0.2, 0.9).minimize(self.loss, global_step=self.step)
            self.init = tf.global_variables_initializer()
        self.feed = {self.x: X_DATA, self.y_: Y_DATA}

    def session(self):
        return tf.Session(graph=self.graph)

    def saver(self, **kw):
        with self.graph.as_default():
            return tf.train.Saver(**kw)


@pytest.fixture(scope="module")
def model():
    return LinReg()


def read_events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    return ea


@needs_tb
def test_summaries_and_graph_read_back_by_tensorboard(model, tmp_path):
    m = model
    assert m.merged.name == "Merge/MergeSummary:0" and m.merged.dtype is tf.string
    assert {t.op.name for t in m.graph.get_collection(tf.GraphKeys.SUMMARIES)} == {"train/loss", "weights"}
    losses, weights = [], []
    with m.session() as sess:
        sess.run(m.init)
        writer = tf.summary.FileWriter(str(tmp_path), sess.graph)
        for i in range(5):
            summary, loss, w, _ = sess.run([m.merged, m.loss, m.W, m.train], m.feed)
            assert isinstance(summary, bytes)
            writer.add_summary(summary, i)
            losses.append(loss)
            weights.append(w)
        one = sess.run(m.graph.get_tensor_by_name("train/loss:0"), m.feed)      # a lone summary op
        assert sess.run(m.merged.op, m.feed) is None                         # fetched as an op
        writer.close()
    assert losses[-1] < losses[0]
    ea = read_events(tmp_path)
    got = ea.Scalars("train/loss")
    assert [e.step for e in got] == list(range(5))
    assert [e.value for e in got] == [float(v) for v in losses]       # float32 both ways: exact
    hist = ea.Histograms("weights")
    assert len(hist) == 5 and hist[0].histogram_value.num == 1
    assert hist[0].histogram_value.min == pytest.approx(float(weights[0][0]))
    from tensorboard.compat.proto import summary_pb2
    parsed = summary_pb2.Summary.FromString(one)
    assert [v.tag for v in parsed.value] == ["train/loss"]

    nodes = {n.name: n for n in ea.Graph().node}
    for name, op in [("x", "Placeholder"), ("W", "VariableV2"), ("b", "VariableV2"), ("Mean", "Mean"),
                     ("train/loss", "ScalarSummary"), ("weights", "HistogramSummary"),
                     ("Merge/MergeSummary", "MergeSummary"), ("global_step", "VariableV2"),
                     ("W/Momentum", "VariableV2"), ("Momentum", "ApplyGradients")]:
        assert nodes[name].op == op, name
    assert list(nodes["train/loss"].input) == ["Mean"]
    assert list(nodes["Merge/MergeSummary"].input) == ["train/loss", "weights"]
    assert list(nodes["mul"].input) == ["W", "x"]
    assert nodes["init"].input and all(i.startswith("^") for i in nodes["init"].input)
    assert [d.size for d in nodes["x"].attr["shape"].shape.dim] == [-1]
    assert nodes["W"].attr["dtype"].type == 1            # DT_FLOAT
    assert [d.size for d in nodes["W"].attr["_output_shapes"].list.shape[0].dim] == [1]
    assert "test_compat_v1_io.py" in nodes["Mean"].attr["_src"].s.decode()


def test_summary_ops_errors_and_edges():
    g = tf.Graph()
    with g.as_default():
        assert tf.summary.merge_all() is None
        x = tf.placeholder(tf.float32, [None], name="x")
        with pytest.raises(ValueError, match=r"scalar\('bad'\).*shape \(3,\)"):
            tf.summary.scalar("bad", tf.zeros([3]))
        with pytest.raises(TypeError, match="not a summary tensor"):
            tf.summary.merge([x])
        h = tf.summary.histogram("log x", tf.log(x))
        assert h.op.name == "log_x"                      # TF1 cleans the tag
        with pytest.raises(tf.errors.UnimplementedError, match="not supported"):
            tf.summary.image("img", x)
        count = tf.Variable(0.0, name="count")
        with tf.control_dependencies([tf.assign_add(count, 1.0)]):
            counted = tf.summary.scalar("five", tf.constant(5.0), collections=[])
    assert g.get_collection(tf.GraphKeys.SUMMARIES) == [h]
    with tf.Session(graph=g) as sess:
        sess.run(count.initializer)
        sess.run(counted)
        sess.run(counted.op)
        assert sess.run(count) == 2.0              # a summary's control inputs run with it
        with pytest.raises(fj.errors.InvalidArgumentError, match="placeholder tensor 'x'"):
            sess.run(h)
        assert sess.run(h, {x: [1.0, 2.0]})
        with pytest.raises(fj.errors.InvalidArgumentError, match=r"HistogramSummary op 'log_x'.*NaN"):
            sess.run(h, {x: [-1.0, 2.0]})


def test_saver_resumes_training_bit_identically(model, tmp_path):
    m = model
    saver = m.saver()
    prefix = str(tmp_path / "model.ckpt")
    with m.session() as sess:
        sess.run(m.init)
        for _ in range(3):
            sess.run(m.train, m.feed)
        path = saver.save(sess, prefix, global_step=m.step)
        saved = sess.run({"W": m.W, "b": m.b})
        uninterrupted = [sess.run([m.loss, m.train], m.feed)[0] for _ in range(4)]
    assert path == prefix + "-3" and tf.train.latest_checkpoint(str(tmp_path)) == path
    names = fj.train.list_arrays(path)
    assert set(names) == {"W", "b", "global_step", "W/Momentum", "b/Momentum"}    # slots too
    with m.session() as sess:                      # a fresh session: no initializer run
        saver.restore(sess, tf.train.latest_checkpoint(str(tmp_path)))
        assert sess.run(m.step) == 3
        np.testing.assert_array_equal(sess.run(m.W), saved["W"])
        np.testing.assert_array_equal(sess.run(m.b), saved["b"])
        resumed = [sess.run([m.loss, m.train], m.feed)[0] for _ in range(4)]
    np.testing.assert_array_equal(resumed, uninterrupted)


def test_max_to_keep_state_file_and_latest_checkpoint(model, tmp_path):
    m = model
    saver = m.saver(max_to_keep=2)
    assert tf.train.latest_checkpoint(str(tmp_path)) is None
    with m.session() as sess:
        sess.run(m.init)
        paths = [saver.save(sess, str(tmp_path / "m"), global_step=k) for k in (10, 20, 30)]
        again = saver.save(sess, str(tmp_path / "m"), global_step=20)     # re-saved: newest again
    assert again == paths[1]
    assert saver.last_checkpoints == [paths[2], paths[1]]
    assert not tf.train.checkpoint_exists(paths[0])
    assert not any(f.startswith("m-10") for f in os.listdir(tmp_path))
    assert tf.train.latest_checkpoint(str(tmp_path)) == paths[1]
    with open(tmp_path / "checkpoint") as f:
        assert f.read().splitlines() == ['model_checkpoint_path: "m-20"',
                                         'all_model_checkpoint_paths: "m-30"',
                                         'all_model_checkpoint_paths: "m-20"']
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert state.all_model_checkpoint_paths == [paths[2], paths[1]]


def test_restore_errors_name_the_variable(model, tmp_path):
    m = model
    with m.session() as sess:
        sess.run(m.init)
        path = m.saver().save(sess, str(tmp_path / "ok"))
    with m.session() as fresh:
        with pytest.raises(tf.errors.FailedPreconditionError, match="W .*is not initialized"):
            m.saver().save(fresh, str(tmp_path / "nothing"))
    wide = LinReg(w_shape=(2,))
    with wide.session() as sess:
        with pytest.raises(fj.errors.InvalidArgumentError, match=r"variable W .*float32\[2\].*W as float32\[1\]"):
            wide.saver().restore(sess, path)
        with wide.graph.as_default():
            extra = tf.Variable(1.0, name="extra")
            with pytest.raises(tf.errors.NotFoundError, match="key extra"):
                tf.train.Saver([extra]).restore(sess, path)
        with pytest.raises(ValueError, match="not a valid checkpoint"):
            wide.saver().restore(sess, str(tmp_path / "missing"))
        with pytest.raises(fj.errors.FlowjitError, match="uninitialized value b"):
            sess.run(wide.b)                    # nothing was assigned by the failed restores


def test_a_crashed_save_keeps_the_last_checkpoint(model, tmp_path, monkeypatch):
    m = model
    saver = m.saver()
    with m.session() as sess:
        sess.run(m.init)
        good = saver.save(sess, str(tmp_path / "m"), global_step=1)
        w_good = sess.run(m.W)
        sess.run(m.train, m.feed)
        from flowjit import train as T

        def half_then_crash(f, payload):
            f.write(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt("simulated crash mid-save")
        monkeypatch.setattr(T, "_write_npz", half_then_crash)
        with pytest.raises(KeyboardInterrupt):
            saver.save(sess, str(tmp_path / "m"), global_step=2)
        monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == sorted(["checkpoint", "m-1.index.json"] +
                                                  [f for f in os.listdir(tmp_path) if f.startswith("m-1.data-")])
    assert tf.train.latest_checkpoint(str(tmp_path)) == good
    with m.session() as sess:
        saver.restore(sess, good)
        np.testing.assert_array_equal(sess.run(m.W), w_good)
