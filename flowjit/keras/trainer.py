"""`compile`, `fit`, `evaluate`, `predict` and the `*_on_batch` methods of a Model.

`fit`'s training step is one `@fj.jit` function: the forward, the loss, the backward,
the optimizer's update and the metrics' running sums compiled together, once per
signature. The batch size is a symbolic size of that signature, so the last, smaller
batch of an epoch runs the same compiled code; a lone last example (size 1 is part of
the signature) joins the batch before it instead of compiling again.
"""
import numpy as np

import flowjit as fj
from ..frontend.variables import Variable


def _as_list(x):
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


class Trainer:
    def __init__(self):
        self.compiled = False
        self.optimizer = None
        self.loss = None
        self.stop_training = False
        self.history = None
        self.run_eagerly = False
        self.train_function = self.test_function = self.predict_function = None
        self._train_example = None
        self._compile_metrics = []

    # --- compile ----------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, weighted_metrics=None,
                run_eagerly=False, steps_per_execution=1, jit_compile="auto", auto_scale_loss=True):
        from . import losses, metrics as M, optimizers
        if loss_weights is not None or weighted_metrics is not None:
            raise ValueError("compile: loss_weights and weighted_metrics are not supported; "
                             "combine the losses in a subclassed model's train step instead")
        if isinstance(loss, (dict, list, tuple)):
            raise ValueError("compile: one loss for a single-output model; got a "
                             f"{type(loss).__name__} of losses")
        self.optimizer = optimizers.get(optimizer)
        self.loss = loss
        self._loss_fn = losses.get(loss) if loss is not None else None
        self._compile_metrics = [M.resolve(m, loss) for m in _as_list(metrics)]
        self._metric_identifiers = _as_list(metrics)        # as given, for model.save
        self._loss_tracker = _LossTracker(self.name)
        self.run_eagerly = bool(run_eagerly)
        self.train_function = self.test_function = self.predict_function = None
        self.compiled = True

    def _assert_compiled(self, what):
        if not self.compiled:
            raise RuntimeError(f"You must call compile() before using the model ({what}).")

    @property
    def metrics_names(self):
        return ["loss"] + [m.name for m in self._compile_metrics]

    @property
    def metrics(self):
        return list(self._compile_metrics)

    def reset_metrics(self):
        if self.compiled:
            self._loss_tracker.reset()
        for m in self._compile_metrics:
            m.reset_state()

    # --- the steps (traced by fj.jit unless run_eagerly) -------------------------------
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = [] if self._loss_fn is None else [self._loss_fn(y, y_pred)]
        terms += self.losses
        if not terms:
            raise ValueError(f"{self.name}: compile() was given no loss and the model added none")
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    def _update_metrics(self, loss, x, y, y_pred):
        n = fj.cast(fj.shape(_first(x))[0], fj.float32)
        mean_loss = self._loss_tracker.update(fj.cast(loss, fj.float32), n)
        for m in self._compile_metrics:
            m.update_state(y, y_pred)
        return (mean_loss,) + tuple(m.result() for m in self._compile_metrics)

    def train_step(self, x, y):
        with fj.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred)
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._update_metrics(loss, x, y, y_pred)

    def test_step(self, x, y):
        y_pred = self(x, training=False)
        return self._update_metrics(self.compute_loss(x, y, y_pred, training=False), x, y, y_pred)

    def predict_step(self, x):
        return self(x, training=False)

    def _function(self, kind):
        attr = f"{kind}_function"
        if getattr(self, attr) is None:
            step = getattr(self, f"{kind}_step")
            setattr(self, attr, step if self.run_eagerly else fj.jit(step))
        return getattr(self, attr)

    def _logs(self, values):
        return {name: float(v) for name, v in zip(self.metrics_names, values)}

    # --- fit / evaluate / predict -----------------------------------------------------
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1):
        from .callbacks import CallbackList
        self._assert_compiled("fit")
        _no_weights("fit", class_weight, sample_weight)
        if validation_split and validation_data is None:
            (x, y), validation_data = _split(x, y, validation_split)
        data = Batches(x, y, batch_size, shuffle, steps_per_epoch)
        self._build_from(data)
        verbose = 1 if verbose == "auto" else verbose
        cbs = CallbackList(callbacks, add_history=True, add_progbar=verbose != 0, model=self,
                           verbose=verbose, epochs=epochs, steps=data.steps)
        self.stop_training = False
        train = self._function("train")
        cbs.on_train_begin()
        logs = {}
        for epoch in range(initial_epoch, epochs):
            self.reset_metrics()
            cbs.on_epoch_begin(epoch)
            for step, (xb, yb) in enumerate(data.epoch()):
                cbs.on_train_batch_begin(step)
                values = train(xb, yb)
                if self._train_example is None:
                    self._train_example = (xb, yb)
                logs = self._logs(values)
                cbs.on_train_batch_end(step, logs)
                if self.stop_training:
                    break
            epoch_logs = dict(logs)
            if validation_data is not None and (epoch + 1) % validation_freq == 0:
                vx, vy = _unpack_validation(validation_data)
                val = self.evaluate(vx, vy, batch_size=validation_batch_size or batch_size, verbose=0,
                                    steps=validation_steps, return_dict=True)
                epoch_logs.update({f"val_{k}": v for k, v in val.items()})
            cbs.on_epoch_end(epoch, epoch_logs)
            logs = epoch_logs
            if self.stop_training:
                break
        cbs.on_train_end(logs)
        return self.history

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False):
        from .callbacks import CallbackList
        self._assert_compiled("evaluate")
        _no_weights("evaluate", None, sample_weight)
        data = Batches(x, y, batch_size, False, steps)
        self._build_from(data)
        verbose = 1 if verbose == "auto" else verbose
        cbs = CallbackList(callbacks, add_progbar=verbose != 0, model=self, verbose=verbose, epochs=1,
                           steps=data.steps)
        test = self._function("test")
        self.reset_metrics()
        cbs.on_test_begin()
        logs = {}
        for step, (xb, yb) in enumerate(data.epoch()):
            cbs.on_test_batch_begin(step)
            logs = self._logs(test(xb, yb))
            cbs.on_test_batch_end(step, logs)
        cbs.on_test_end(logs)
        if return_dict:
            return logs
        values = [logs[k] for k in self.metrics_names]
        return values[0] if len(values) == 1 else values

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        from .callbacks import CallbackList
        data = Batches(x, None, batch_size, False, steps)
        self._build_from(data)
        verbose = 1 if verbose == "auto" else verbose
        cbs = CallbackList(callbacks, add_progbar=verbose != 0, model=self, verbose=verbose, epochs=1,
                           steps=data.steps)
        predict = self._function("predict")
        cbs.on_predict_begin()
        outs = []
        for step, (xb, _) in enumerate(data.epoch()):
            cbs.on_predict_batch_begin(step)
            out = predict(xb)
            outs.append(_to_numpy(out))
            cbs.on_predict_batch_end(step, {"outputs": outs[-1]})
        cbs.on_predict_end()
        return _concat(outs)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        self._assert_compiled("train_on_batch")
        _no_weights("train_on_batch", class_weight, sample_weight)
        xb, yb = _convert(x), _convert(y)
        self._build_from(None, xb)
        logs = self._logs(self._function("train")(xb, yb))
        return _result(logs, self.metrics_names, return_dict)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        self._assert_compiled("test_on_batch")
        _no_weights("test_on_batch", None, sample_weight)
        xb, yb = _convert(x), _convert(y)
        self._build_from(None, xb)
        logs = self._logs(self._function("test")(xb, yb))
        return _result(logs, self.metrics_names, return_dict)

    def predict_on_batch(self, x):
        xb = _convert(x)
        self._build_from(None, xb)
        return _to_numpy(self._function("predict")(xb))

    def _build_from(self, data, xb=None):
        """Create the weights before the first compiled step (weights are created outside
        traces, from the shapes of the first batch)."""
        if self.built and self.weights:
            return
        if xb is None:
            xb = data.sample_x()
        if xb is None:
            return
        if isinstance(xb, (list, tuple)):
            specs = [fj.ShapeDtypeStruct((None,) + tuple(a.shape[1:]), a.dtype) for a in xb]
        else:
            specs = fj.ShapeDtypeStruct((None,) + tuple(xb.shape[1:]), xb.dtype)
        fj.eval_shape(lambda x: self(x, training=False), specs)


class _LossTracker:
    """The running mean of the loss over an epoch, weighted by batch size (as Keras's
    loss tracker); its variables are the model's state, not its weights."""

    def __init__(self, name):
        self.total = Variable(np.float32(0), name=f"{name}/loss_total", trainable=False)
        self.count = Variable(np.float32(0), name=f"{name}/loss_count", trainable=False)

    def update(self, loss, n):
        self.total.assign_add(loss * n)
        self.count.assign_add(n)
        return self.total.read_value() / fj.maximum(self.count.read_value(), 1.0)

    def reset(self):
        self.total.assign(np.float32(0))
        self.count.assign(np.float32(0))


def _no_weights(what, class_weight, sample_weight):
    if class_weight is not None or sample_weight is not None:
        raise ValueError(f"{what}: class_weight and sample_weight are not supported; weight the "
                         "examples in a custom loss instead")


def _result(logs, names, return_dict):
    if return_dict:
        return logs
    values = [logs[k] for k in names]
    return values[0] if len(values) == 1 else values


def _to_numpy(out):
    if isinstance(out, (list, tuple)):
        return type(out)(_to_numpy(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_numpy(v) for k, v in out.items()}
    return out.numpy() if hasattr(out, "numpy") else np.asarray(out)


def _concat(outs):
    first = outs[0]
    if isinstance(first, (list, tuple)):
        return type(first)(_concat([o[i] for o in outs]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _concat([o[k] for o in outs]) for k in first}
    return np.concatenate(outs, axis=0)


def _convert(a):
    """One array as the compiled step takes it: float32 for floating data, int32 for
    small integer types (uint8 MNIST labels), contiguous; converted once, not per batch."""
    if a is None:
        return None
    if isinstance(a, (list, tuple)):
        return [_convert(v) for v in a]
    if isinstance(a, dict):
        raise ValueError("dict inputs are not supported; pass a list of arrays in the model's input order")
    if hasattr(a, "numpy") and not isinstance(a, np.ndarray):
        a = a.numpy()
    a = np.asarray(a)
    if a.dtype.kind == "f" and a.dtype != np.float32:
        a = a.astype(np.float32)
    elif a.dtype.kind in "iub" and a.dtype not in (np.int32, np.int64):
        a = a.astype(np.int32)
    elif a.dtype.kind not in "fiub":
        raise TypeError(f"cannot feed an array of dtype {a.dtype} to a model")
    return np.ascontiguousarray(a)


def _length(x):
    return len(x[0]) if isinstance(x, list) else len(x)


def _take(x, idx):
    return [v[idx] for v in x] if isinstance(x, list) else x[idx]


def _split(x, y, fraction):
    """Keras's validation_split: the last `fraction` of the examples, before shuffling."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation_split must be in (0, 1), got {fraction}")
    if not _is_array_data(x):
        raise ValueError("validation_split needs arrays; pass validation_data with a generator or dataset")
    x, y = _convert(x), _convert(y)
    n = _length(x)
    cut = int(n * (1 - fraction))
    if cut <= 0 or cut >= n:
        raise ValueError(f"validation_split={fraction} leaves no training or no validation examples of {n}")
    return (_take(x, slice(0, cut)), None if y is None else _take(y, slice(0, cut))), \
        (_take(x, slice(cut, None)), None if y is None else _take(y, slice(cut, None)))


def _unpack_validation(v):
    if isinstance(v, tuple) and len(v) in (2, 3):
        if len(v) == 3 and v[2] is not None:
            raise ValueError("validation_data with sample weights is not supported")
        return v[0], v[1]
    return v, None


def _is_array_data(x):
    return isinstance(x, (np.ndarray, list)) or (hasattr(x, "shape") and hasattr(x, "dtype"))


class Batches:
    """Batches of (x, y) for one epoch at a time, from arrays (shuffled each epoch when
    asked), an `fj.data.Dataset`, or an iterator/generator of (x, y) batches."""

    def __init__(self, x, y, batch_size, shuffle, steps):
        from .. import data as fj_data
        from . import random_state
        if isinstance(x, fj_data.Dataset):
            x, y = x.images, x.labels
        self.iterator = None
        if _is_array_data(x) and not (isinstance(x, list) and x and not hasattr(x[0], "shape")):
            self.x, self.y = _convert(x), _convert(y)
            n = _length(self.x)
            if self.y is not None and _length(self.y) != n:
                raise ValueError(f"x has {n} examples but y has {_length(self.y)}")
            if n == 0:
                raise ValueError("no data: x has 0 examples")
            self.n = n
            self.batch_size = int(batch_size or 32)
            full, rest = divmod(n, self.batch_size)
            self.bounds = [(i * self.batch_size, (i + 1) * self.batch_size) for i in range(full)]
            if rest == 1 and full:      # a batch of one compiles again: it joins the one before
                self.bounds[-1] = (self.bounds[-1][0], n)
            elif rest:
                self.bounds.append((full * self.batch_size, n))
            self.steps = len(self.bounds) if steps is None else min(int(steps), len(self.bounds))
            self.shuffle = shuffle
            self.rng = random_state.rng()
        elif hasattr(x, "__iter__") or hasattr(x, "__next__"):
            self.iterator = x
            self._it = iter(x)
            self.steps = None if steps is None else int(steps)
            self._peeked = None
        else:
            raise TypeError(f"cannot train on x of type {type(x).__name__}: pass NumPy arrays, an "
                            "fj.data.Dataset, or a generator of (x, y) batches")

    def sample_x(self):
        if self.iterator is None:
            return _take(self.x, slice(0, 2))
        if self._peeked is None:
            try:
                self._peeked = _batch_pair(next(self._it))
            except StopIteration:
                return None
        return self._peeked[0]

    def epoch(self):
        if self.iterator is not None:
            yield from self._from_iterator()
            return
        if self.shuffle:
            order = self.rng.permutation(self.n)
            x, y = _take(self.x, order), None if self.y is None else _take(self.y, order)
        else:
            x, y = self.x, self.y
        for a, b in self.bounds[:self.steps]:
            yield _take(x, slice(a, b)), None if y is None else _take(y, slice(a, b))

    def _from_iterator(self):
        count = 0
        while self.steps is None or count < self.steps:
            if self._peeked is not None:
                batch, self._peeked = self._peeked, None
            else:
                try:
                    batch = _batch_pair(next(self._it))
                except StopIteration:
                    if self.steps is None:      # a finite iterable: one pass is one epoch
                        self._it = iter(self.iterator)
                    return
            count += 1
            yield batch


def _batch_pair(b):
    if isinstance(b, tuple) and len(b) in (1, 2):
        return _convert(b[0]), _convert(b[1]) if len(b) == 2 else None
    return _convert(b), None

