"""flowjit.keras utils, callbacks and datasets. The expected Progbar and callback output
was recorded from Keras 3.15 (JAX backend) driven with the same fake clock, logs and
stub model; Keras itself is not imported here."""
import gzip
import importlib.util
import os
import random
import re

import numpy as np
import pytest

import flowjit as fj
from flowjit.keras import callbacks as C
from flowjit.keras import random_state, utils
from flowjit.keras.datasets import digits, fashion_mnist, mnist

BAR = "\u2501"
needs_tb = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                              reason="the tensorboard package is not installed")
# Keras redraws the bar in place on every POSIX system, tty or not (see utils.Progbar)
posix = pytest.mark.skipif(os.name != "posix", reason="Keras's in-place redraw is chosen by os.name")
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="scikit-learn is not installed")


# -- utils ------------------------------------------------------------------------------

def test_to_categorical_shapes_and_dtype():
    a = utils.to_categorical([0, 2, 1])
    assert a.dtype == np.float32 and a.shape == (3, 3)
    np.testing.assert_array_equal(a, np.eye(3, dtype=np.float32)[[0, 2, 1]])
    assert utils.to_categorical([[1], [2]]).shape == (2, 3)            # trailing 1 squeezed
    assert utils.to_categorical(np.array([[0, 1], [2, 3]])).shape == (2, 2, 4)
    assert utils.to_categorical(np.array(3)).shape == (4,)
    assert utils.to_categorical([[[1]]]).shape == (1, 1, 2)            # only the last 1 goes
    np.testing.assert_array_equal(utils.to_categorical([1], num_classes=4), [[0, 1, 0, 0]])
    np.testing.assert_array_equal(utils.to_categorical([1.7, 0.2]), [[0, 1], [1, 0]])   # cast to int
    assert utils.to_categorical(np.zeros(0, int), num_classes=3).shape == (0, 3)


@pytest.mark.parametrize("x, n, msg", [([5], 3, "class id 5 is outside 0..2"),
                                       ([-1], 3, "class id -1"),
                                       (np.zeros(0, int), None, "empty")])
def test_to_categorical_errors(x, n, msg):
    with pytest.raises(ValueError, match=msg):
        utils.to_categorical(x, n)


def test_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(utils.normalize(x), [[0.6, 0.8], [0, 0]])
    np.testing.assert_allclose(utils.normalize(np.array([3, 4]), order=1), [3 / 7, 4 / 7])
    np.testing.assert_allclose(utils.normalize(np.array([[3.0], [4.0]]), axis=0), [[0.6], [0.8]])


def test_set_random_seed_repeats_every_source():
    def draws():
        return (random.random(), float(np.random.rand()), fj.random.normal([3]).numpy().tolist(),
                random_state.next_seed())
    utils.set_random_seed(123)
    a = draws()
    utils.set_random_seed(123)
    assert draws() == a
    utils.set_random_seed(124)
    assert all(x != y for x, y in zip(draws(), a))
    with pytest.raises(ValueError, match="integer"):
        utils.set_random_seed(1.5)


# -- Progbar: the exact bytes Keras 3 writes -----------------------------------------------

class Clock:
    """Stands in for the time module inside flowjit.keras.utils."""
    t = 0.0

    def time(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(utils, "time", c)
    return c


def redraw(width):
    return "\b" * width + "\r"


@posix
def test_progbar_verbose1(clock, capsys):
    # redrawn in place with \b and \r even though stdout is captured (not a tty): Keras
    # 3 does this on every POSIX system
    clock.t = 100.0
    p = utils.Progbar(3)
    clock.t = 100.5
    p.update(1, [("loss", 0.5), ("acc", 0.25)])
    clock.t = 100.52
    p.update(2, [("loss", 0.25), ("acc", 0.0001)])      # within `interval`: not drawn
    clock.t = 100.7
    p.update(3, [("loss", 0.125), ("acc", 0.5)])        # final: the values given, not averaged
    assert capsys.readouterr().out == (
        f"\r\x1b[1m1/3\x1b[0m \x1b[32m{BAR * 6}\x1b[0m\x1b[37m{BAR * 14}\x1b[0m \x1b[1m1s\x1b[0m "
        f"500ms/step - loss: 0.5000 - acc: 0.2500" + redraw(67) +
        f"\x1b[1m3/3\x1b[0m \x1b[32m{BAR * 20}\x1b[0m\x1b[37m\x1b[0m \x1b[1m1s\x1b[0m "
        f"100ms/step - loss: 0.1250 - acc: 0.5000\n")


@posix
def test_progbar_eta_and_step_time_formats(clock, capsys):
    p = utils.Progbar(10000)
    for t, step in [(2.0, 1), (3.0, 2), (3.5, 3), (4.0, 9000)]:
        clock.t = t
        p.update(step)
    head = "\x1b[1m{:>5}/10000\x1b[0m "
    assert capsys.readouterr().out == (
        "\r" + head.format(1) + f"\x1b[37m{BAR * 20}\x1b[0m \x1b[1m5:33:18\x1b[0m 2s/step" + redraw(48)
        + head.format(2) + f"\x1b[37m{BAR * 20}\x1b[0m \x1b[1m2:46:38\x1b[0m 1s/step" + redraw(48)
        + head.format(3) + f"\x1b[37m{BAR * 20}\x1b[0m \x1b[1m2:04:57\x1b[0m 750ms/step" + redraw(51)
        + head.format(9000) + f"\x1b[32m{BAR * 18}\x1b[0m\x1b[37m{BAR * 2}\x1b[0m \x1b[1m0s\x1b[0m "
        "222us/step     ")                          # padded over the longer previous line


def test_progbar_without_dynamic_display(clock, capsys):
    p = utils.Progbar(2)
    p._dynamic_display = False       # Keras's branch for a non-POSIX, non-tty stdout
    clock.t = 0.001
    p.update(1, [("loss", 2.0)])     # less than `interval` after the (zero) last update
    clock.t = 0.0011
    p.update(2, [("loss", 1.0)])
    assert capsys.readouterr().out == (f"\n\x1b[1m2/2\x1b[0m \x1b[32m{BAR * 20}\x1b[0m\x1b[37m\x1b[0m "
                                       "\x1b[1m0s\x1b[0m 100us/step - loss: 1.0000\n")


def test_progbar_verbose2(clock, capsys):
    clock.t = 10.0
    p = utils.Progbar(1875, verbose=2)
    clock.t = 11.0
    p.update(1, [("accuracy", 0.5), ("loss", 1.0)])        # verbose=2 prints only the end
    clock.t = 13.4
    p.update(1875, [("accuracy", 0.91), ("loss", 0.3)])
    clock.t = 0.0
    p = utils.Progbar(5, verbose=2, stateful_metrics=["b"])
    clock.t = 2.5
    p.update(4, [("a", -1.0), ("b", 0.0005)])
    clock.t = 7.0
    p.add(1, [("a", -1.0), ("b", 0.0005)])
    assert capsys.readouterr().out == ("1875/1875 - 3s - 1ms/step - accuracy: 0.9100 - loss: 0.3000\n"
                                       "5/5 - 7s - 1s/step - a: -1.0000e+00 - b: 5.0000e-04\n")


@posix
def test_progbar_averages_stateless_values(capsys):
    p = utils.Progbar(4, verbose=1, interval=0)
    p.update(2, [("loss", 1.0)])       # stands for steps 1-2
    p.update(3, [("loss", 4.0)])       # (2 * 1 + 4) / 3
    # (spaces after it blank the rest of a longer previous line: "111us/step" then "88us/step")
    assert capsys.readouterr().out.rstrip(" ").endswith(" - loss: 2.0000")
    p = utils.Progbar(None, verbose=1, interval=0)
    p.update(1)
    p.update(2, finalize=True)
    out = capsys.readouterr().out
    assert re.fullmatch(r"\r      1/Unknown \x1b\[1m0s\x1b\[0m \d+(us|ms)/step\x08+\r"
                        r"      2/Unknown \x1b\[1m0s\x1b\[0m \d+(us|ms)/step\n", out), repr(out)


def test_progbar_real_time_verbose2(capsys):
    p = utils.Progbar(3, verbose=2)
    for i in range(1, 4):
        p.update(i, [("loss", 0.5)])
    assert re.fullmatch(r"3/3 - 0s - \d+(us|ms)/step - loss: 0\.5000\n", capsys.readouterr().out)


class Stub:
    """The model interface callbacks use."""

    class Optimizer:
        learning_rate = 0.1
        iterations = 0

    def __init__(self):
        self.optimizer = self.Optimizer()
        self.stop_training = False
        self.w = [np.zeros(2)]
        self.saved = []

    def get_weights(self):
        return [a.copy() for a in self.w]

    def set_weights(self, ws):
        self.w = [a.copy() for a in ws]

    def save_weights(self, path):
        self.saved.append(("weights", os.path.basename(path)))
        open(path, "w").close()

    def save(self, path):
        self.saved.append(("model", os.path.basename(path)))
        open(path, "w").close()


def fit_like(callbacks, val_losses, model=None, val_acc=None, batches=2, verbose=0):
    """Drive a CallbackList the way fit does; epoch e logs loss = val_loss - 0.5 and
    sets the weights to e."""
    m = model or Stub()
    cl = C.CallbackList(callbacks, add_history=True, add_progbar=bool(verbose), model=m,
                        verbose=verbose, epochs=len(val_losses), steps=batches)
    cl.on_train_begin()
    for e, v in enumerate(val_losses):
        if m.stop_training:
            break
        cl.on_epoch_begin(e)
        for b in range(batches):
            cl.on_train_batch_begin(b)
            cl.on_train_batch_end(b, {"loss": np.float32(v - 0.5 + b)})
        m.w = [np.full(2, float(e))]
        logs = {"loss": np.float32(v - 0.5), "val_loss": v}
        if val_acc:
            logs["val_accuracy"] = val_acc[e]
        cl.on_epoch_end(e, logs)
    cl.on_train_end()
    return m


@posix
def test_progbar_logger_in_fit_and_evaluate(clock, capsys):
    class M:
        pass
    cl = C.CallbackList(None, add_history=True, add_progbar=True, model=M(), verbose=2, epochs=2, steps=3)
    cl.on_train_begin()
    for e in range(2):
        cl.on_epoch_begin(e)
        for b in range(3):
            clock.t += 0.004
            cl.on_train_batch_begin(b)
            cl.on_train_batch_end(b, {"loss": 1.0, "accuracy": 0.5})
        cl.on_test_begin()                       # validation inside fit prints nothing
        cl.on_test_batch_end(0, {"loss": 9.0})
        cl.on_test_end({"loss": 9.0})
        cl.on_epoch_end(e, {"loss": 0.30000001, "accuracy": 0.91, "val_loss": 0.25, "val_accuracy": 0.95})
    cl.on_train_end()
    epoch_line = ("3/3 - 0s - 4ms/step - accuracy: 0.9100 - loss: 0.3000 - val_accuracy: 0.9500 "
                  "- val_loss: 0.2500\n")
    assert capsys.readouterr().out == f"Epoch 1/2\n{epoch_line}Epoch 2/2\n{epoch_line}"
    ev = C.CallbackList(None, add_progbar=True, model=M(), verbose=1, epochs=1, steps=2)
    clock.t = 50.0
    ev.on_test_begin()
    for b in range(2):
        clock.t += 0.000003
        ev.on_test_batch_end(b, {"loss": 0.5})
    ev.on_test_end({"loss": 0.5, "compile_metrics": {"accuracy": 0.75}})     # nested logs flattened
    assert capsys.readouterr().out == (
        f"\r\x1b[1m1/2\x1b[0m \x1b[32m{BAR * 10}\x1b[0m\x1b[37m{BAR * 10}\x1b[0m \x1b[1m0s\x1b[0m 3us/step"
        " - loss: 0.5000" + redraw(51) + f"\x1b[1m2/2\x1b[0m \x1b[32m{BAR * 20}\x1b[0m\x1b[37m\x1b[0m "
        "\x1b[1m0s\x1b[0m 3us/step - loss: 0.5000 - accuracy: 0.7500\n")


# -- callbacks ----------------------------------------------------------------------------

def test_callback_list_dispatch_order_and_logs():
    calls = []

    class Rec(C.Callback):
        def __init__(self, tag):
            self.tag = tag

        def on_epoch_end(self, epoch, logs=None):
            calls.append((self.tag, "epoch_end", epoch, list(logs.items())))
            logs["added_" + self.tag] = 1.0          # later callbacks see it

        def on_batch_end(self, batch, logs=None):   # the legacy name still fires
            calls.append((self.tag, "batch_end", batch, dict(logs)))

        def on_test_begin(self, logs=None):
            calls.append((self.tag, "test_begin"))

    m = Stub()
    a, b = Rec("a"), Rec("b")
    cl = C.CallbackList([a, b], add_history=True, model=m, verbose=0, epochs=1, steps=1)
    assert a.model is m and a.params == {"verbose": 0, "epochs": 1, "steps": 1}
    assert isinstance(cl.callbacks[-1], C.History) and m.history is cl.callbacks[-1]
    trainer_logs = {"val_loss": np.float32(0.5), "loss": fj.constant(2.0), "m": {"acc": np.array(0.25)}}
    cl.on_train_begin()
    cl.on_train_batch_end(0, {"loss": 1})
    cl.on_epoch_end(0, trainer_logs)
    cl.on_test_begin()
    assert calls == [("a", "batch_end", 0, {"loss": 1.0}), ("b", "batch_end", 0, {"loss": 1.0}),
                     ("a", "epoch_end", 0, [("loss", 2.0), ("acc", 0.25), ("val_loss", 0.5)]),     # sorted by outer key
                     ("b", "epoch_end", 0, [("loss", 2.0), ("acc", 0.25), ("val_loss", 0.5), ("added_a", 1.0)]),
                     ("a", "test_begin"), ("b", "test_begin")]
    assert set(trainer_logs) == {"val_loss", "loss", "m"}           # the trainer's dict is untouched
    assert m.history.history == {"acc": [0.25], "loss": [2.0], "val_loss": [0.5], "added_a": [1.0],
                                 "added_b": [1.0]}
    assert m.history.epoch == [0]
    hist = C.History()
    assert C.CallbackList([hist], add_history=True, model=m).callbacks == [hist]    # no second one


def test_early_stopping_restores_best_weights(capsys):
    es = C.EarlyStopping(patience=2, verbose=1, restore_best_weights=True)
    m = fit_like([es], [1.5, 1.3, 1.35, 1.29, 1.4, 1.45, 1.2, 1.49])
    assert m.history.epoch == [0, 1, 2, 3, 4, 5] and es.stopped_epoch == 5
    assert m.w[0].tolist() == [3.0, 3.0]
    assert capsys.readouterr().out == ("Epoch 6: early stopping\n"
                                       "Restoring model weights from the end of the best epoch: 4.\n")


@pytest.mark.parametrize("kw, epochs", [(dict(patience=1), 3), (dict(patience=1, min_delta=0.02), 3),
                                        (dict(patience=0, baseline=0.5), 3),
                                        (dict(patience=1, start_from_epoch=3), 5),
                                        (dict(monitor="loss", mode="max", patience=1), 2),
                                        (dict(monitor="val_accuracy", patience=1), 3)])
def test_early_stopping_rules(kw, epochs):
    m = fit_like([C.EarlyStopping(**kw)], [1.5, 1.3, 1.35, 1.29, 1.4, 1.45, 1.2, 1.49],
                 val_acc=[0.5, 0.6, 0.55, 0.6, 0.61, 0.5, 0.4, 0.3])
    assert len(m.history.epoch) == epochs


def test_monitor_mode_auto():
    class Metric:
        def __init__(self, name, direction):
            self.name, self._direction = name, direction

    class Container:                       # like Keras's CompileMetrics
        metrics = [Metric("score", "up")]

    m = Stub()
    m.metrics = [Container()]
    for monitor, op in [("val_loss", np.less), ("val_accuracy", np.greater), ("auc_1", np.greater),
                        ("val_mae", np.less), ("val_score", np.greater)]:
        es = C.EarlyStopping(monitor=monitor)
        es.set_model(m)
        es._set_monitor_op()
        assert es.monitor_op is op, monitor
    es = C.EarlyStopping(monitor="val_foo")
    es.set_model(m)
    with pytest.raises(ValueError, match="Pass `mode='max'`"):
        es._set_monitor_op()
    with pytest.warns(UserWarning, match="mode 'up' is unknown"):
        C.EarlyStopping(mode="up")


def test_model_checkpoint(tmp_path, capsys):
    pattern = str(tmp_path / "ckpt" / "c{epoch:02d}-{val_loss:.2f}.weights.h5")
    m = fit_like([C.ModelCheckpoint(pattern, save_weights_only=True)], [1.5, 1.3, 1.35])
    assert m.saved == [("weights", "c01-1.50.weights.h5"), ("weights", "c02-1.30.weights.h5"),
                       ("weights", "c03-1.35.weights.h5")]
    assert sorted(os.listdir(tmp_path / "ckpt")) == [n for _, n in m.saved]
    m = fit_like([C.ModelCheckpoint(pattern, save_weights_only=True, save_best_only=True, verbose=1)],
                 [1.5, 1.3, 1.35])
    assert [n for _, n in m.saved] == ["c01-1.50.weights.h5", "c02-1.30.weights.h5"]
    p = str(tmp_path / "ckpt")
    assert capsys.readouterr().out == (
        f"\nEpoch 1: val_loss improved from None to 1.50000, saving model to {p}/c01-1.50.weights.h5\n"
        f"\nEpoch 1: finished saving model to {p}/c01-1.50.weights.h5\n"
        f"\nEpoch 2: val_loss improved from 1.50000 to 1.30000, saving model to {p}/c02-1.30.weights.h5\n"
        f"\nEpoch 2: finished saving model to {p}/c02-1.30.weights.h5\n"
        f"\nEpoch 3: val_loss did not improve from 1.30000\n")
    m = fit_like([C.ModelCheckpoint(str(tmp_path / "m.keras"), save_best_only=True,
                                    initial_value_threshold=1.3)], [1.5, 1.3, 1.29])
    assert m.saved == [("model", "m.keras")]                 # only the epoch below 1.3
    m = fit_like([C.ModelCheckpoint(str(tmp_path / "b{epoch}-{batch}.weights.h5"), save_weights_only=True,
                                    save_freq=3)], [1.0, 1.0, 1.0], batches=2)
    assert [n for _, n in m.saved] == ["b2-1.weights.h5", "b3-2.weights.h5"]       # every 3 batches
    with pytest.raises(ValueError, match=r"must end in `\.weights\.h5`"):
        C.ModelCheckpoint("w.npz", save_weights_only=True)
    with pytest.raises(ValueError, match=r"must end in `\.keras`"):
        C.ModelCheckpoint("m.npz")
    with pytest.raises(KeyError, match="Failed to format"):
        fit_like([C.ModelCheckpoint(str(tmp_path / "{nope}.keras"))], [1.0])


def test_learning_rate_scheduler(capsys):
    m = fit_like([C.LearningRateScheduler(lambda epoch, lr: lr * 0.5, verbose=1)], [1.0, 1.0, 1.0])
    assert m.optimizer.learning_rate == 0.0125
    assert m.history.history["learning_rate"] == [0.05, 0.025, 0.0125]
    assert capsys.readouterr().out == "".join(
        f"\nEpoch {e}: LearningRateScheduler setting learning rate to {lr}.\n"
        for e, lr in [(1, 0.05), (2, 0.025), (3, 0.0125)])
    m = fit_like([C.LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1))], [1.0, 1.0])   # old API
    assert m.history.history["learning_rate"] == [0.01, 0.02]
    with pytest.raises(ValueError, match="should be a float. Got: 1"):
        fit_like([C.LearningRateScheduler(lambda epoch, lr: 1)], [1.0])


def test_reduce_lr_on_plateau(capsys):
    cb = C.ReduceLROnPlateau(patience=1, factor=0.5, verbose=1, cooldown=1, min_lr=0.02)
    m = fit_like([cb], [1.5, 1.3, 1.35, 1.29, 1.4, 1.45, 1.2, 1.49])
    # the rate logged is the one the epoch ran with, before that epoch's reduction
    assert m.history.history["learning_rate"] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.02, 0.02]
    assert capsys.readouterr().out == ("\nEpoch 3: ReduceLROnPlateau reducing learning rate to 0.05.\n"
                                       "\nEpoch 5: ReduceLROnPlateau reducing learning rate to 0.025.\n"
                                       "\nEpoch 6: ReduceLROnPlateau reducing learning rate to 0.02.\n")


def test_csv_logger(tmp_path):
    f = tmp_path / "log.csv"
    fit_like([C.CSVLogger(str(f))], [1.5, 1.25])
    first = "epoch,loss,val_loss\r\n0,1.0,1.5\r\n1,0.75,1.25\r\n"
    assert f.read_bytes().decode() == first
    fit_like([C.CSVLogger(str(f), separator=";", append=True)], [2.5])
    assert f.read_bytes().decode() == first + "0;2.0;2.5\r\n"              # no second header
    m = Stub()
    cl = C.CallbackList([C.CSVLogger(str(f))], model=m)
    cl.on_train_begin()
    cl.on_epoch_end(0, {"b": 1, "a": [1, 2]})               # no val_ keys yet: columns reserved
    cl.on_epoch_end(1, {"b": 2, "val_b": 3.0})
    cl.on_train_end()
    assert f.read_bytes().decode() == 'epoch,a,b,val_a,val_b\r\n0,"""[1, 2]""",1.0,NA,NA\r\n1,NA,2.0,NA,3.0\r\n'


def test_terminate_on_nan(capsys):
    m = fit_like([C.TerminateOnNaN()], [1.5, float("nan"), 2.0])
    assert m.history.epoch == [0, 1] and m.stop_training
    assert capsys.readouterr().out == ("Batch 0: Invalid loss, terminating training\n"
                                       "Batch 1: Invalid loss, terminating training\n")
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch 0"):
        fit_like([C.TerminateOnNaN(raise_error=True)], [float("inf")])


def test_lambda_callback():
    seen = []
    cb = C.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append((epoch, logs["val_loss"])),
                          on_train_end=lambda logs: seen.append("end"),
                          on_test_end=lambda logs: seen.append("test"))
    fit_like([cb], [1.5, 1.25])
    cb.on_test_end(None)
    assert seen == [(0, 1.5), (1, 1.25), "end", "test"]


# -- TensorBoard ---------------------------------------------------------------------------

def read_events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    return ea


@needs_tb
def test_tensorboard_scalars_graph_histograms(tmp_path):
    w = fj.Variable(np.full((3, 2), 0.5, np.float32), name="w")

    @fj.jit
    def train_step(x):
        return fj.reduce_mean(fj.square(x @ w))

    class Layer:
        weights = [w]

    m = Stub()
    m.train_function, m._train_example = train_step, (np.ones((4, 3), np.float32),)
    m.layers = [Layer()]
    tb = C.TensorBoard(log_dir=str(tmp_path), histogram_freq=2, update_freq=2)
    fit_like([tb], [1.5, 1.25, 1.0], model=m, val_acc=[0.5, 0.75, 0.875])
    train, val = read_events(tmp_path / "train"), read_events(tmp_path / "validation")
    assert sorted(train.Tags()["scalars"]) == ["batch_loss", "epoch_learning_rate", "epoch_loss"]
    assert [(e.step, e.value) for e in train.Scalars("epoch_loss")] == [(0, 1.0), (1, 0.75), (2, 0.5)]
    assert [e.value for e in train.Scalars("epoch_learning_rate")] == pytest.approx([0.1] * 3)
    assert [(e.step, e.value) for e in train.Scalars("batch_loss")] == [(2, 2.0), (4, 1.75), (6, 1.5)]
    assert sorted(val.Tags()["scalars"]) == ["epoch_accuracy", "epoch_loss"]     # val_ prefix dropped
    assert [(e.step, e.value) for e in val.Scalars("epoch_accuracy")] == [(0, 0.5), (1, 0.75), (2, 0.875)]
    assert "variables/w" in {n.name for n in train.Graph().node}                 # written once
    assert [e.step for e in train.Histograms("w/histogram")] == [0, 2]
    tb.set_model(m)                  # evaluate: the optimizer step count gives the x axis
    m.optimizer.iterations = 7
    tb.on_test_end({"loss": 0.25})
    val = read_events(tmp_path / "validation")
    assert [(e.step, e.value) for e in val.Scalars("evaluation_loss_vs_iterations")] == [(7, 0.25)]


@needs_tb
def test_tensorboard_without_train_function(tmp_path):
    fit_like([C.TensorBoard(log_dir=str(tmp_path))], [1.5])          # the stub has no train_function
    train = read_events(tmp_path / "train")
    assert not train.Tags()["graph"] and train.Scalars("epoch_loss")[0].value == 1.0


# -- datasets ------------------------------------------------------------------------------

@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    return tmp_path / "datasets"


def fake_mnist(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def test_mnist_reads_keras_cache(keras_home):
    (xa, ya), (xb, yb) = fake_mnist(6, 0), fake_mnist(4, 1)
    np.savez(keras_home / "mnist.npz", x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    for got, want in [(x_train, xa), (y_train, ya), (x_test, xb), (y_test, yb)]:
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    np.savez(keras_home / "other.npz", x_train=xa, y_train=ya, x_test=xb.astype(np.float32), y_test=yb)
    with pytest.raises(ValueError, match=r"x_test is float32 \(4, 28, 28\), expected uint8"):
        mnist.load_data("other.npz")
    np.savez(keras_home / "bad.npz", x_train=xa, y_train=ya + 10, x_test=xb, y_test=yb)
    with pytest.raises(ValueError, match="y_train holds labels"):
        mnist.load_data("bad.npz")


def test_mnist_missing_file_says_where(keras_home):
    with pytest.raises(FileNotFoundError) as e:
        mnist.load_data()
    msg = str(e.value)
    assert str(keras_home / "mnist.npz") in msg and "KERAS_HOME" in msg
    assert "flowjit.keras.datasets.digits.load_data()" in msg and "mnist.npz" in msg


def write_idx_gz(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_fashion_mnist_reads_keras_cache(keras_home):
    d = keras_home / "fashion-mnist"
    d.mkdir()
    (xa, ya), (xb, yb) = fake_mnist(5, 2), fake_mnist(3, 3)
    for name, arr in [("train-images-idx3-ubyte.gz", xa), ("train-labels-idx1-ubyte.gz", ya),
                      ("t10k-images-idx3-ubyte.gz", xb)]:
        write_idx_gz(d / name, arr)
    with pytest.raises(FileNotFoundError, match=r"fashion-mnist/t10k-labels-idx1-ubyte\.gz not found.*digits"):
        fashion_mnist.load_data()
    write_idx_gz(d / "t10k-labels-idx1-ubyte.gz", yb)
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    np.testing.assert_array_equal(x_train, xa)
    np.testing.assert_array_equal(y_test, yb)
    assert x_test.shape == (3, 28, 28) and y_train.dtype == np.uint8
    write_idx_gz(d / "t10k-labels-idx1-ubyte.gz", xb)          # images where labels belong
    with pytest.raises(ValueError, match="magic number"):
        fashion_mnist.load_data()


@needs_sklearn
def test_digits_stand_in():
    from sklearn.datasets import load_digits
    (x_train, y_train), (x_test, y_test) = digits.load_data()
    assert x_train.shape == (1438, 28, 28) and x_test.shape == (359, 28, 28)
    assert x_train.dtype == y_train.dtype == np.uint8 and x_train.max() == 255 and x_train.min() == 0
    assert set(np.unique(np.concatenate([y_train, y_test]))) == set(range(10))
    again = digits.load_data()
    np.testing.assert_array_equal(again[0][0], x_train)
    np.testing.assert_array_equal(again[1][1], y_test)
    assert not np.array_equal(digits.load_data(seed=1)[1][1], y_test)
    # the same split as fj.data.load_digits
    np.testing.assert_array_equal(y_test, fj.data.load_digits(one_hot=False).test.labels)
    # size 8: no resampling, only the 0..16 -> 0..255 scaling
    (x8, _), (t8, _) = digits.load_data(size=8, test_fraction=0.0)
    assert t8.shape == (0, 8, 8)
    perm = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(x8, np.rint(load_digits().images[perm] * 255 / 16).astype(np.uint8))


def test_bilinear_resize():
    img = np.array([[[0.0, 4.0], [8.0, 12.0]]])
    out = digits.resize_bilinear(img, 4)
    # pixel centres: output 0..3 sample input -0.25, 0.25, 0.75, 1.25 (edges clamped)
    np.testing.assert_allclose(out[0, 0], [0, 1, 3, 4])
    np.testing.assert_allclose(out[0, :, 0], [0, 2, 6, 8])
    np.testing.assert_allclose(digits.resize_bilinear(img, 1), [[[6.0]]])
