"""Every example in quick mode (--steps), in this process so compiled kernels are shared;
the metrics each returns are checked, and --logdir / --mnist / --device are exercised."""
import importlib
import importlib.util
import math
import os
import sys

import numpy as np
import pytest

import flowjit as fj

pytest.importorskip("sklearn")
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)
QUICK = ["--no-progress", "--steps"]
HAS_TB = importlib.util.find_spec("tensorboard") is not None


def run(name, *argv):
    return importlib.import_module(name).main(list(argv))


def test_quadratics():
    m = run("minimize_quadratic", *QUICK, "100", "--a", "-2.5")
    assert m["error"] < 1e-4
    m = run("constrained_quadratic", *QUICK, "240", "--phases", "3", "--epochs", "5")
    # 3 phases (mu = 1, 10, 100) of 80 steps: x sits at the penalty optimum (a + 100 b) / 101
    assert m["error_vs_optimum"] < 1e-4 and m["penalty_optimum"] == pytest.approx((3 + 100) / 101)


def test_linear_regression_gd_matches_closed_form():
    m = run("linear_regression", *QUICK, "150")
    assert m["max_gap"] < 1e-3 and abs(m["W_closed"] - 0.1) < 0.02 and abs(m["b_closed"] - 0.3) < 0.02


@pytest.mark.parametrize("name,steps,floor", [("softmax_regression", "40", 0.7), ("logistic_regression", "40", 0.85),
                                              ("sigmoid_mlp", "40", 0.3)])
def test_classifiers(name, steps, floor):
    m = run(name, *QUICK, steps)
    assert m["test_accuracy"] >= floor and math.isfinite(m["final_loss"])


def test_mlp_with_logdir(tmp_path):
    acc = run("mlp_digits", *QUICK, "30", "--logdir", str(tmp_path)) if HAS_TB else run("mlp_digits", *QUICK, "30")
    assert acc > 0.5
    if HAS_TB:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        ea = EventAccumulator(str(tmp_path))
        ea.Reload()
        assert [e.step for e in ea.Scalars("loss")] == [0, 10, 20, 29]
        assert ea.Scalars("final/test_accuracy")[0].value == pytest.approx(acc)
        assert "w1" in ea.Tags()["histograms"] and ea.Graph().node


@pytest.mark.parametrize("static", [False, True])
def test_tf1_lstm_digits(static):
    m = run("tf1_lstm_digits", *QUICK, "80", *(["--static"] if static else []))
    assert m["test_accuracy"] > 0.6 and math.isfinite(m["final_loss"])


def test_char_rnn_beats_the_unigram_baseline(tmp_path):
    argv = [*QUICK, "150", "--hidden", "32", "--seq-len", "16", "--sample-len", "40", "--sample-every", "100"]
    m = run("char_rnn", *argv, *(["--logdir", str(tmp_path)] if HAS_TB else []))
    assert m["final_loss"] < m["unigram_loss"] - 0.3
    assert len(m["sample"]) == 40
    if HAS_TB:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        ea = EventAccumulator(str(tmp_path))
        ea.Reload()
        assert [e.step for e in ea.Scalars("loss")][:2] == [0, 10]


def test_autoencoder(tmp_path):
    png = tmp_path / "ae.png"
    m = run("autoencoder", *QUICK, "60", "--png", str(png))
    assert m["test_mse"] < m["mean_image_mse"] * 1.2
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.stat().st_size > 1000
    else:
        assert "matplotlib" in m["png"]


def test_project_layout_resumes_from_checkpoint(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    first = run("project_layout.train", *QUICK, "20", "--ckpt", ckpt)
    second = run("project_layout.train", *QUICK, "20", "--ckpt", ckpt)
    assert first["step"] == 20 and second["step"] == 40
    assert fj.train.list_arrays(ckpt)["model/0"][0] == (64, 96)


def test_mnist_flag_and_missing_gpu(tmp_path):
    rng = np.random.default_rng(0)
    for stem, arr in [("train-images-idx3-ubyte", rng.integers(0, 256, (40, 4, 4))),
                      ("train-labels-idx1-ubyte", rng.integers(0, 10, 40)),
                      ("t10k-images-idx3-ubyte", rng.integers(0, 256, (10, 4, 4))),
                      ("t10k-labels-idx1-ubyte", rng.integers(0, 10, 10))]:
        head = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (tmp_path / stem).write_bytes(head + arr.astype(np.uint8).tobytes())
    m = run("softmax_regression", *QUICK, "5", "--mnist", str(tmp_path), "--batch-size", "8")
    assert 0.0 <= m["test_accuracy"] <= 1.0
    if all(d.kind != "GPU" for d in fj.list_devices()):
        with pytest.raises(fj.errors.DeviceError):
            run("minimize_quadratic", *QUICK, "5", "--device", "/gpu:0")


def test_tf1_examples(tmp_path):
    w, b = run("tf1_linear_regression", *QUICK, "300")
    assert abs(w - 0.1) < 0.01 and abs(b - 0.3) < 0.01
    logdir = str(tmp_path) if HAS_TB else None
    acc = run("tf1_softmax_digits", *QUICK, "60", *(["--logdir", logdir] if logdir else []))
    assert acc > 0.8
    if HAS_TB:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        ea = EventAccumulator(str(tmp_path))
        ea.Reload()
        assert [e.step for e in ea.Scalars("loss")] == [0, 10, 20, 30, 40, 50]
        assert any(n.op == "MatMul" for n in ea.Graph().node)


def test_custom_op_example():
    m = run("custom_op", *QUICK, "60")
    assert m["test_accuracy"] >= 0.5 and math.isfinite(m["final_loss"])
    assert m["swish_bias_loops"] == 1           # the user's swish fused with the bias add


def test_keras_quickstart():
    m = run("keras_quickstart", "--epochs", "2", "--verbose", "0")
    assert m["test_accuracy"] > 0.85 and math.isfinite(m["final_loss"])


def test_keras_mnist_convnet_quick():
    m = run("keras_mnist_convnet", "--epochs", "2", "--steps", "6", "--verbose", "0")
    assert m["test_accuracy"] > 0.3 and math.isfinite(m["final_loss"])


def test_tf2_data_pipeline_quick():
    m = run("tf2_data_pipeline", *QUICK, "60", "--epochs", "5")
    assert m["test_accuracy"] > 0.85 and math.isfinite(m["final_loss"]) and m["epochs"] == 3


def test_word2vec_nce_learns_cooccurrence():
    m = run("word2vec", *QUICK, "1500")
    # the NCE loss (1 true + 32 sampled logits per example) falls far below its start
    assert m["final_loss"] < 0.3 * m["first_loss"]
    # words that appear next to each other end up with similar embeddings
    assert m["cooccurring_similarity"] > m["random_similarity"] + 0.05
    assert ("standard", "error") in m["pairs"] and len(m["neighbours"]["fetch"]) == 6


@pytest.mark.parametrize("fmt", ["idx", "npz"])
def test_keras_examples_read_real_mnist_files(tmp_path, fmt):
    """--mnist DIR: the four IDX files (as the other examples read them) or Keras's
    mnist.npz, 28x28 uint8 images."""
    rng = np.random.default_rng(1)
    parts = {"train": (rng.integers(0, 256, (48, 28, 28)), rng.integers(0, 10, 48)),
             "t10k": (rng.integers(0, 256, (16, 28, 28)), rng.integers(0, 10, 16))}
    if fmt == "npz":
        np.savez(tmp_path / "mnist.npz", x_train=parts["train"][0].astype(np.uint8),
                 y_train=parts["train"][1].astype(np.uint8), x_test=parts["t10k"][0].astype(np.uint8),
                 y_test=parts["t10k"][1].astype(np.uint8))
    else:
        for part, (images, labels) in parts.items():
            for stem, arr in ((f"{part}-images-idx3-ubyte", images), (f"{part}-labels-idx1-ubyte", labels)):
                head = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
                (tmp_path / stem).write_bytes(head + arr.astype(np.uint8).tobytes())
    m = run("keras_quickstart", "--mnist", str(tmp_path), "--epochs", "1", "--steps", "2", "--verbose", "0")
    assert 0.0 <= m["test_accuracy"] <= 1.0 and math.isfinite(m["final_loss"])
