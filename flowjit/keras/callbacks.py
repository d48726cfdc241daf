"""`keras.callbacks` on flowjit, with Keras 3's semantics and messages.

A callback sees the model through a small interface, so any object providing it works:
`model.stop_training` (set to stop `fit` after the epoch), `model.optimizer.learning_rate`
(a float, readable and assignable), `model.get_weights()` / `model.set_weights(list)`,
`model.save_weights(path)`, `model.save(path)`, and for TensorBoard's graph
`model.train_function` (an `fj.jit` function) with `model._train_example` (a tuple of
arguments it was called with). `model.metrics`, `model.layers` and
`model.optimizer.iterations` are used when present.

`CallbackList` is what `fit` / `evaluate` / `predict` drive: as in Keras, every hook
passes the same logs dict (a copy of the trainer's, keys sorted, values made Python
floats) to each callback in turn, so a key one callback adds (LearningRateScheduler's
"learning_rate") is seen by the later ones, History included.
"""
import collections
import csv
import os
import re
import warnings

import numpy as np

from .. import summary as fj_summary
from .utils import Progbar, print_msg


def _to_float(value):
    """A Python float from a float, NumPy scalar or flowjit tensor / Variable."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    return float(np.asarray(value))


def _pythonify_logs(logs):
    """Keras's `pythonify_logs`: keys sorted, nested dicts flattened, values converted
    with float() where that works. The sorting is why `fit` prints
    `accuracy - loss - val_accuracy - val_loss`."""
    out = {}
    for key, value in sorted((logs or {}).items()):
        if isinstance(value, dict):
            out.update(_pythonify_logs(value))
            continue
        try:
            value = _to_float(value)
        except (TypeError, ValueError):
            pass
        out[key] = value
    return out


class Callback:
    """Base class: every hook does nothing. `model` and `params` (`verbose`, `epochs`,
    `steps` from `fit`) are set by the CallbackList before training starts."""

    model = None
    params = None

    def set_params(self, params):
        self.params = params

    def set_model(self, model):
        self.model = model

    def on_batch_begin(self, batch, logs=None):
        """Legacy name of on_train_batch_begin (called by its default)."""

    def on_batch_end(self, batch, logs=None):
        """Legacy name of on_train_batch_end (called by its default)."""

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)      # so overriding the legacy name works

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    def on_test_batch_begin(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_predict_batch_begin(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        pass

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_test_begin(self, logs=None):
        pass

    def on_test_end(self, logs=None):
        pass

    def on_predict_begin(self, logs=None):
        pass

    def on_predict_end(self, logs=None):
        pass


class CallbackList(Callback):
    """Calls each hook on every callback, in order. `add_history` / `add_progbar`
    append a History / ProgbarLogger unless the list already holds one; the model gets
    the History as `model.history`. `**params` (verbose, epochs, steps) go to every
    callback's set_params."""

    def __init__(self, callbacks=None, add_history=False, add_progbar=False, model=None, **params):
        self.callbacks = list(callbacks) if callbacks else []
        self._history = next((c for c in self.callbacks if isinstance(c, History)), None)
        self._progbar = next((c for c in self.callbacks if isinstance(c, ProgbarLogger)), None)
        if self._history is None and add_history:
            self._history = History()
            self.callbacks.append(self._history)
        if self._progbar is None and add_progbar:
            self._progbar = ProgbarLogger()
            self.callbacks.append(self._progbar)
        self.set_model(model)
        self.set_params(params)

    def set_params(self, params):
        self.params = params
        if params:
            for c in self.callbacks:
                c.set_params(params)

    def set_model(self, model):
        if model is None:
            return
        self.model = model
        if self._history is not None:
            model.history = self._history
        for c in self.callbacks:
            c.set_model(model)

    def _call(self, hook, *args):
        logs = _pythonify_logs(args[-1])
        for c in self.callbacks:
            getattr(c, hook)(*args[:-1], logs)

    def on_batch_begin(self, batch, logs=None):
        self._call("on_batch_begin", batch, logs)

    def on_batch_end(self, batch, logs=None):
        self._call("on_batch_end", batch, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._call("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._call("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._call("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._call("on_train_batch_end", batch, logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._call("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._call("on_test_batch_end", batch, logs)

    def on_predict_batch_begin(self, batch, logs=None):
        self._call("on_predict_batch_begin", batch, logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._call("on_predict_batch_end", batch, logs)

    def on_train_begin(self, logs=None):
        self._call("on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._call("on_train_end", logs)

    def on_test_begin(self, logs=None):
        self._call("on_test_begin", logs)

    def on_test_end(self, logs=None):
        self._call("on_test_end", logs)

    def on_predict_begin(self, logs=None):
        self._call("on_predict_begin", logs)

    def on_predict_end(self, logs=None):
        self._call("on_predict_end", logs)


class History(Callback):
    """Records each epoch's logs: `history` maps a name to its list of values, `epoch`
    lists the epoch indices. `fit` returns it (also `model.history`)."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)
        self.model.history = self


class ProgbarLogger(Callback):
    """Prints `Epoch i/n` (when n > 1) and a Progbar per epoch (verbose=1: redrawn
    every batch; verbose=2: one line at the end of the epoch). Inside `fit` the
    validation pass is silent; `evaluate` and `predict` get a bar of their own. Values
    are shown as the trainer logs them (its running averages), not re-averaged."""

    def __init__(self):
        self.seen = 0
        self.progbar = None
        self.target = None
        self.verbose = 1
        self.epochs = 1
        self._called_in_fit = False

    def set_params(self, params):
        self.verbose = 1 if params["verbose"] == "auto" else params["verbose"]
        self.epochs = params["epochs"]
        self.target = params["steps"]

    def on_train_begin(self, logs=None):
        self._called_in_fit = True

    def on_test_begin(self, logs=None):
        if not self._called_in_fit:
            self._reset_progbar()
            self._maybe_init_progbar()

    def on_predict_begin(self, logs=None):
        self._reset_progbar()
        self._maybe_init_progbar()

    def on_epoch_begin(self, epoch, logs=None):
        self._reset_progbar()
        self._maybe_init_progbar()
        if self.verbose and self.epochs > 1:
            print_msg(f"Epoch {epoch + 1}/{self.epochs}")

    def on_train_batch_end(self, batch, logs=None):
        self._update_progbar(batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        if not self._called_in_fit:
            self._update_progbar(batch, logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._update_progbar(batch, None)            # predictions are not metrics

    def on_epoch_end(self, epoch, logs=None):
        self._finalize_progbar(logs)

    def on_test_end(self, logs=None):
        if not self._called_in_fit:
            self._finalize_progbar(logs)

    def on_predict_end(self, logs=None):
        self._finalize_progbar(logs)

    def _reset_progbar(self):
        self.seen = 0
        self.progbar = None

    def _maybe_init_progbar(self):
        if self.progbar is None:
            self.progbar = Progbar(target=self.target, verbose=self.verbose, unit_name="step",
                                   stateless_metrics=set())

    def _update_progbar(self, batch, logs=None):
        self._maybe_init_progbar()
        self.seen = batch + 1
        if self.verbose == 1:
            self.progbar.update(self.seen, list((logs or {}).items()), finalize=False)

    def _finalize_progbar(self, logs):
        if self.target is None:          # unknown number of steps: now we know it
            self.target = self.seen
            self.progbar.target = self.target
        self.progbar.update(self.target, list((logs or {}).items()), finalize=True)


# -- callbacks that watch one metric -----------------------------------------------------

# Keras 3 decides mode="auto" from the metric object's `_direction`; these are the
# directions of its built-in metrics, used when the model does not expose metric objects
# with a `_direction`.
_MAXIMIZED = {"accuracy", "acc", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy",
              "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy", "auc", "precision",
              "recall", "f1_score", "fbeta_score", "r2_score", "cosine_similarity", "pearson_correlation",
              "concordance_correlation", "iou", "mean_iou", "one_hot_iou", "one_hot_mean_iou",
              "binary_iou", "precision_at_recall", "recall_at_precision",
              "sensitivity_at_specificity", "specificity_at_sensitivity"}
_MINIMIZED = {"loss", "mean_squared_error", "mse", "mean_absolute_error", "mae",
              "mean_absolute_percentage_error", "mape", "mean_squared_logarithmic_error", "msle",
              "root_mean_squared_error", "logcosh", "hinge", "squared_hinge", "categorical_hinge",
              "kl_divergence", "poisson", "binary_crossentropy", "categorical_crossentropy",
              "sparse_categorical_crossentropy"}


def _metric_objects(model):
    """The model's metric objects, containers (Keras's CompileMetrics) flattened."""
    out = []
    for m in getattr(model, "metrics", None) or []:
        inner = getattr(m, "metrics", None)
        out.extend(inner if isinstance(inner, (list, tuple)) else [m])
    return out


class _MonitorCallback(Callback):
    """Keras's MonitorCallback: `monitor` compared with `mode` ("min", "max", "auto")
    after a `min_delta` margin."""

    def __init__(self, monitor="val_loss", mode="auto", baseline=None, min_delta=0):
        if mode not in ("auto", "min", "max"):
            warnings.warn(f"{type(self).__name__} mode '{mode}' is unknown, fallback to auto mode.",
                          stacklevel=3)
            mode = "auto"
        self.monitor = monitor
        self.mode = mode
        self.best = baseline
        self.min_delta = abs(min_delta)
        self.monitor_op = None

    def _set_monitor_op(self):
        # decided at the first epoch end, when the model's metrics exist
        if self.mode == "min":
            self.monitor_op = np.less
        elif self.mode == "max":
            self.monitor_op = np.greater
        else:
            name = self.monitor.removeprefix("val_")
            direction = None
            if name == "loss":
                direction = "down"
            for m in _metric_objects(self.model):
                if getattr(m, "name", None) == name and getattr(m, "_direction", None) in ("up", "down"):
                    direction = m._direction
            if direction is None:
                base = re.sub(r"_\d+$", "", name)        # "auc_1": a second AUC
                if base in _MAXIMIZED:
                    direction = "up"
                elif base in _MINIMIZED:
                    direction = "down"
            if direction is None:
                raise ValueError(
                    f"{type(self).__name__} callback received monitor={self.monitor}, but Keras isn't "
                    "able to automatically determine whether that metric should be maximized or "
                    "minimized. Pass `mode='max'` in order to monitor based on the highest metric "
                    "value, or pass `mode='min'` in order to use the lowest value.")
            self.monitor_op = np.greater if direction == "up" else np.less
        if self.monitor_op is np.less:
            self.min_delta *= -1

    def _is_improvement(self, value, reference):
        if reference is None:
            return True
        return bool(self.monitor_op(value - self.min_delta, reference))


class EarlyStopping(_MonitorCallback):
    """Stops training (`model.stop_training = True`) once `monitor` has not improved by
    more than `min_delta` for `patience` epochs, counting from `start_from_epoch`. With
    `baseline`, the patience count only restarts on epochs that also beat the baseline.
    `restore_best_weights`: at the end of training, put back the weights of the best
    epoch."""

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta=min_delta)
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.wait = 0
        self.stopped_epoch = 0
        self.restore_best_weights = restore_best_weights
        self.best_weights = None
        self.best_epoch = 0
        self.start_from_epoch = start_from_epoch

    def on_train_begin(self, logs=None):
        # reusable across fit() calls
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        current = self.get_monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()       # nothing better seen yet
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print_msg(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print_msg(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)

    def get_monitor_value(self, logs):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(f"Early stopping conditioned on metric `{self.monitor}` which is not available. "
                          f"Available metrics are: {','.join(logs)}", stacklevel=2)
        return value


class ModelCheckpoint(_MonitorCallback):
    """Saves the model (`model.save`, path ending `.keras` or `.h5`) or its weights
    (`save_weights_only=True`: `model.save_weights`, path ending `.weights.h5`) after
    every epoch, or every `save_freq` batches when it is an int. `filepath` may hold
    `str.format` fields filled from the epoch (1-based), the batch and the logs:
    `"ckpt/{epoch:02d}-{val_loss:.2f}.weights.h5"`. `save_best_only`: save only when
    `monitor` improves (on `initial_value_threshold` at first, when given)."""

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__(monitor, mode, initial_value_threshold)
        self.verbose = verbose
        self.filepath = os.fspath(filepath)
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.save_freq = save_freq
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = None
        self._current_epoch = 0
        if save_freq != "epoch" and not isinstance(save_freq, int):
            raise ValueError(f"Unrecognized save_freq: {save_freq}. Expected save_freq are 'epoch' or "
                             "integer values")
        # Keras's rules: the extension says which format is written
        if save_weights_only and not self.filepath.endswith(".weights.h5"):
            raise ValueError("When using `save_weights_only=True` in `ModelCheckpoint`, the filepath "
                             "provided must end in `.weights.h5` (Keras weights format). Received: "
                             f"filepath={self.filepath}")
        if not save_weights_only and not self.filepath.endswith((".keras", ".h5")):
            raise ValueError("The filepath provided must end in `.keras` (Keras model format). "
                             f"Received: filepath={self.filepath}")

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._should_save_on_batch(batch):
            self._save_model(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        if self.save_freq == "epoch":
            self._save_model(epoch, None, logs)

    def _should_save_on_batch(self, batch):
        if self.save_freq == "epoch":
            return False
        if self._last_batch_seen is None or batch <= self._last_batch_seen:
            add = batch + 1                      # a new epoch: batches are 0-based
        else:
            add = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += add
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            return True
        return False

    def _should_save_model(self, epoch, logs, filepath):
        if not self.save_best_only:
            if self.verbose > 0:
                print_msg(f"\nEpoch {epoch + 1}: saving model to {filepath}")
            return True
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=2)
            return True
        if isinstance(current, np.ndarray) and current.ndim > 0:
            warnings.warn(f"Can save best model only when `monitor` is a scalar value. Received: {current}. "
                          "Falling back to `save_best_only=False`.", stacklevel=2)
            return True
        best = "None" if self.best is None else f"{self.best:.5f}"
        if self._is_improvement(current, self.best):
            if self.verbose > 0:
                print_msg(f"\nEpoch {epoch + 1}: {self.monitor} improved from {best} to {current:.5f}, "
                          f"saving model to {filepath}")
            self.best = current
            return True
        if self.verbose > 0:
            print_msg(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best}")
        return False

    def _save_model(self, epoch, batch, logs):
        logs = logs or {}
        filepath = self._get_file_path(epoch, batch, logs)
        if not self._should_save_model(epoch, logs, filepath):
            return
        if os.path.isdir(filepath):
            raise IOError("Please specify a non-directory filepath for ModelCheckpoint. Filepath used is "
                          f"an existing directory: {filepath}")
        dirname = os.path.dirname(filepath)
        if dirname:
            os.makedirs(dirname, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(filepath)
        else:
            self.model.save(filepath)
        if self.verbose > 0:
            print_msg(f"\nEpoch {epoch + 1}: finished saving model to {filepath}")

    def _get_file_path(self, epoch, batch, logs):
        try:
            if batch is None or "batch" in logs:
                return self.filepath.format(epoch=epoch + 1, **logs)
            return self.filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
        except KeyError as e:
            raise KeyError(f'Failed to format this callback filepath: "{self.filepath}". Reason: {e}') from None


class ReduceLROnPlateau(_MonitorCallback):
    """Multiplies the learning rate by `factor` (down to `min_lr`) once `monitor` has
    not improved by `min_delta` for `patience` epochs, then waits `cooldown` epochs
    before counting again. Logs get "learning_rate"."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, min_delta=min_delta)
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau does not support a factor >= 1.0. Received factor={factor}")
        self.factor = factor
        self.min_lr = min_lr
        self.patience = patience
        self.verbose = verbose
        self.cooldown = cooldown
        self.cooldown_counter = 0
        self.wait = 0

    def on_train_begin(self, logs=None):
        self.best = None
        self.cooldown_counter = 0
        self.wait = 0

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = _to_float(optimizer.learning_rate)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Learning rate reduction is conditioned on metric `{self.monitor}` which is not "
                          f"available. Available metrics are: {','.join(logs)}.", stacklevel=2)
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = _to_float(optimizer.learning_rate)
                # compared in float32, as the optimizer stores it
                if old_lr > np.float32(self.min_lr):
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    optimizer.learning_rate = new_lr
                    if self.verbose > 0:
                        print_msg(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


# -- the others ----------------------------------------------------------------------------

class LearningRateScheduler(Callback):
    """At each epoch's start sets `model.optimizer.learning_rate = schedule(epoch, lr)`
    (or `schedule(epoch)`: the old one-argument form); the result must be a float.
    Logs get "learning_rate"."""

    def __init__(self, schedule, verbose=0):
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        if not hasattr(optimizer, "learning_rate"):
            raise ValueError('Optimizer must have a "learning_rate" attribute.')
        try:
            lr = self.schedule(epoch, _to_float(optimizer.learning_rate))
        except TypeError:                                  # schedule(epoch)
            lr = self.schedule(epoch)
        if not isinstance(lr, (float, np.float32, np.float64)):
            raise ValueError(f"The output of the `schedule` function should be a float. Got: {lr}")
        optimizer.learning_rate = lr
        if self.verbose > 0:
            print_msg(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _to_float(self.model.optimizer.learning_rate)


class CSVLogger(Callback):
    """One CSV row per epoch: `epoch` then the log keys sorted (fixed by the first
    epoch; when it has no `val_` keys, `val_<key>` columns are added for each, "NA"
    until they appear). `append=True` continues an existing file, without a second
    header."""

    def __init__(self, filename, separator=",", append=False):
        self.sep = separator
        self.filename = os.fspath(filename)
        self.append = append
        self.writer = None
        self.keys = None
        self.append_header = True
        self.csv_file = None

    def on_train_begin(self, logs=None):
        if self.append:
            if os.path.exists(self.filename):
                with open(self.filename) as f:
                    self.append_header = not bool(len(f.readline()))
            mode = "a"
        else:
            mode = "w"
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        # newline="": the csv module writes its own "\r\n" (Excel's dialect, as Keras)
        self.csv_file = open(self.filename, mode, newline="")
        self.writer = None
        self.keys = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}

        def handle_value(v):
            if isinstance(v, str):
                return v
            if isinstance(v, collections.abc.Iterable) and not (isinstance(v, np.ndarray) and v.ndim == 0):
                return f'"[{", ".join(map(str, v))}]"'
            return v

        if self.keys is None:
            self.keys = sorted(logs)
            if self.keys and not any(k.startswith("val_") for k in self.keys):
                self.keys.extend(f"val_{k}" for k in list(self.keys))
        if self.writer is None:
            class Dialect(csv.excel):
                delimiter = self.sep
            self.writer = csv.DictWriter(self.csv_file, fieldnames=["epoch"] + self.keys, dialect=Dialect)
            if self.append_header:
                self.writer.writeheader()
        row = {"epoch": epoch}
        row.update((k, handle_value(logs.get(k, "NA"))) for k in self.keys)
        self.writer.writerow(row)
        self.csv_file.flush()

    def on_train_end(self, logs=None):
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        self.writer = None


class TerminateOnNaN(Callback):
    """Stops training when a batch's loss is NaN or infinite (`raise_error=True`:
    raises RuntimeError instead)."""

    def __init__(self, raise_error=False):
        self.raise_error = raise_error

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and (np.isnan(loss) or np.isinf(loss)):
            if self.raise_error:
                raise RuntimeError(f"NaN or Inf loss encountered at batch {batch}. Loss value: {loss}. "
                                   "Terminating training immediately.")
            print_msg(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback from functions: `on_epoch_begin(epoch, logs)`, `on_epoch_end(epoch,
    logs)`, `on_train_begin(logs)`, `on_train_end(logs)`, `on_train_batch_begin(batch,
    logs)`, `on_train_batch_end(batch, logs)`; other keyword arguments (any hook name,
    e.g. `on_test_end`) become attributes too, as in Keras."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None,
                 on_train_batch_begin=None, on_train_batch_end=None, **kwargs):
        self.__dict__.update(kwargs)
        given = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end, on_train_begin=on_train_begin,
                     on_train_end=on_train_end, on_train_batch_begin=on_train_batch_begin,
                     on_train_batch_end=on_train_batch_end)
        for name, fn in given.items():
            if fn is not None:
                setattr(self, name, fn)


class TensorBoard(Callback):
    """TensorBoard logs, laid out as Keras writes them: `<log_dir>/train` gets
    `epoch_<name>` scalars (step = epoch, 0-based) for the training logs plus
    `epoch_learning_rate`, `<log_dir>/validation` gets the `val_` logs with the prefix
    dropped (`epoch_loss`, `epoch_accuracy`), so TensorBoard draws train and validation
    on one chart. `update_freq="batch"` or N also writes `batch_<name>` every N training
    batches (step = batches since fit began). `histogram_freq=N` writes a histogram of
    every layer weight every N epochs. `write_graph`: the training step's traced graph
    (Graphs tab), once, after the first batch, when the model exposes `train_function`
    and `_train_example`. `evaluate` writes `evaluation_<name>_vs_iterations` (step =
    optimizer iterations) into `validation`. Needs the `tensorboard` package."""

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, update_freq="epoch"):
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq = histogram_freq
        self.write_graph = write_graph
        self.update_freq = 1 if update_freq == "batch" else update_freq
        self._train_dir = os.path.join(self.log_dir, "train")
        self._val_dir = os.path.join(self.log_dir, "validation")
        self._writers = {}          # created on first write: no empty event files
        self._global_train_batch = 0
        self._should_write_graph = False

    def set_model(self, model):
        self.model = model
        self._writers = {}
        self._should_write_graph = bool(self.write_graph)

    def _writer(self, which):
        if which not in self._writers:
            self._writers[which] = fj_summary.create_file_writer(self._train_dir if which == "train"
                                                                 else self._val_dir)
        return self._writers[which]

    def _scalars(self, which, prefix, logs, step):
        for name, value in logs.items():
            try:
                value = _to_float(value)
            except (TypeError, ValueError):
                continue                  # not a scalar (a per-class array, a string): no chart
            fj_summary.scalar(prefix + name, value, step=step, writer=self._writer(which))

    def on_train_begin(self, logs=None):
        self._global_train_batch = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._global_train_batch += 1

    def on_train_batch_end(self, batch, logs=None):
        if self._should_write_graph:
            self._should_write_graph = False
            self._write_graph()
        if self.update_freq != "epoch" and self._global_train_batch % self.update_freq == 0 and logs:
            self._scalars("train", "batch_", logs, self._global_train_batch)

    def _write_graph(self):
        fn = getattr(self.model, "train_function", None)
        example = getattr(self.model, "_train_example", None)
        if fn is None or example is None:
            return
        try:
            fj_summary.graph(fn, *example, writer=self._writer("train"))
        except Exception as e:    # a drawing failure must not stop training
            warnings.warn(f"TensorBoard: could not write the training graph ({type(e).__name__}: {e})",
                          stacklevel=2)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        optimizer = getattr(self.model, "optimizer", None)
        if logs and optimizer is not None and hasattr(optimizer, "learning_rate"):
            train["learning_rate"] = _to_float(optimizer.learning_rate)
        if train:
            self._scalars("train", "epoch_", train, epoch)
        if val:
            self._scalars("validation", "epoch_", val, epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._log_weights(epoch)
        for w in self._writers.values():
            w.flush()

    def _log_weights(self, epoch):
        for layer in getattr(self.model, "layers", None) or []:
            for weight in getattr(layer, "weights", None) or []:
                # Keras 3 tags by the variable's path ("dense/kernel"); a flowjit
                # Variable's name carries TF's output suffix ("w:0"), dropped here
                name = getattr(weight, "path", None) or re.sub(r":\d+$", "", weight.name)
                name = name.replace(":", "_")
                value = weight.numpy() if hasattr(weight, "numpy") else np.asarray(weight)
                fj_summary.histogram(f"{name}/histogram", value, step=epoch, writer=self._writer("train"))

    def on_test_end(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        if logs and optimizer is not None and hasattr(optimizer, "iterations"):
            step = int(_to_float(optimizer.iterations))
            self._scalars("validation", "evaluation_", {f"{k}_vs_iterations": v for k, v in logs.items()}, step)
            self._writer("validation").flush()

    def on_train_end(self, logs=None):
        for w in self._writers.values():
            w.close()
        self._writers = {}
