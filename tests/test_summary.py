"""fj.summary: event files read back with the tensorboard package's own reader."""
import importlib.util
import sys

import numpy as np
import pytest

import flowjit as fj

def read(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    return ea


w = fj.Variable(np.full((3, 2), 0.5, np.float32), name="w")
opt = fj.optimizers.SGD(0.1)


@fj.jit
def step(x):
    with fj.GradientTape() as tape:
        loss = fj.reduce_mean(fj.square(x @ w))
    opt.apply_gradients(zip(tape.gradient(loss, [w]), [w]))
    return loss


needs_tb = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                              reason="the tensorboard package is not installed")


@needs_tb
def test_scalars_histograms_and_graph(tmp_path):
    x = np.ones((4, 3), np.float32)
    losses = []
    writer = fj.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for i in range(3):
            losses.append(float(step(x)))
            assert fj.summary.scalar("loss", losses[-1], step=i)
        fj.summary.scalar("w00", w[0, 0], step=3)                 # a Tensor value
        fj.summary.histogram("weights", w, step=3)
        fj.summary.graph(step, x)
    writer.close()
    ea = read(tmp_path)
    got = ea.Scalars("loss")
    assert [e.step for e in got] == [0, 1, 2]
    np.testing.assert_allclose([e.value for e in got], losses, rtol=1e-6)
    assert ea.Scalars("w00")[0].value == pytest.approx(float(w.numpy()[0, 0]))
    h = ea.Histograms("weights")[0].histogram_value
    assert h.num == 6 and h.min == h.max == pytest.approx(float(w.numpy()[0, 0]))
    g = ea.Graph()
    names = {n.name: n for n in g.node}
    assert "variables/w" in names and "inputs/input_0" in names and "assign/w" in names
    mm = [n for n in g.node if n.op == "matmul"]
    assert mm and set(mm[0].input) == {"inputs/input_0", "variables/w"}
    assert any(n.name.startswith("gradients/") for n in g.node)
    assert "test_summary.py" in mm[0].attr["src"].s.decode()
    dims = [d.size for d in mm[0].attr["_output_shapes"].list.shape[0].dim]
    assert dims == [-1, 2]                                        # the batch size is symbolic


@needs_tb
def test_histogram_buckets_and_tf1_surface(tmp_path):
    vals = np.random.default_rng(0).standard_normal(1000)
    with fj.summary.create_file_writer(str(tmp_path)) as writer:
        merged = fj.summary.merge_summaries([fj.summary.scalar_summary("a", 1.0),
                                             fj.summary.histogram_summary("h", vals, buckets=10)])
        writer.add_summary(merged, global_step=5)                 # TF1 FileWriter style
        fj.summary.set_step(6)
        fj.summary.scalar("b", np.float32(2.5))
        fj.summary.set_step(None)
        with pytest.raises(ValueError, match="no step"):
            fj.summary.scalar("c", 1.0)
    writer.close()
    ea = read(tmp_path)
    assert ea.Scalars("a")[0].step == 5 and ea.Scalars("b")[0].step == 6
    h = ea.Histograms("h")[0].histogram_value
    counts, edges = np.histogram(vals, bins=10)
    np.testing.assert_array_equal(h.bucket, counts)
    np.testing.assert_allclose(h.bucket_limit, edges[1:])
    assert h.sum == pytest.approx(vals.sum()) and h.sum_squares == pytest.approx((vals ** 2).sum())


def test_missing_tensorboard_says_what_to_install(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")] + ["tensorboard"]:
        monkeypatch.setitem(sys.modules, name, None)              # import tensorboard... -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'flowjit\[tensorboard\]'"):
        fj.summary.create_file_writer(str(tmp_path))


@needs_tb
def test_no_writer_and_errors():
    assert fj.summary.scalar("x", 1.0, step=0) is False          # TF2: no default writer, no-op
    with pytest.raises(ValueError, match="not a scalar"):
        fj.summary.scalar_summary("x", np.ones(3))

    @fj.jit
    def inside(x):
        fj.summary.scalar_summary("x", x)
        return x
    with pytest.raises(TypeError, match="inside @fj.jit"):
        inside(np.float32(1.0))
