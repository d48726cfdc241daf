"""`keras.metrics`: Keras 3's streaming metrics.

A metric's state lives in float32 `fj.Variable`s (trainable=False) that `update_state`
changes with `assign`/`assign_add`, all `fj` ops: called inside an `@fj.jit` training
step, the update is compiled into that step (no host round trip per batch), and eagerly
it runs op by op. `result()` is a tensor in both cases."""
import numpy as np

import flowjit as fj

from . import initializers
from . import losses as L
from .losses import _snake, _tensor, squeeze_or_expand_to_same_rank
from .identifiers import from_config_dict, from_name


class Metric:
    """Keras 3's contract: `update_state(...)`, `result()`, `reset_state()`,
    `variables`, `name`, `dtype`; calling it updates, then returns the result."""

    def __init__(self, name=None, dtype=None):
        self.name = name or _snake(type(self).__name__)
        self._dtype = fj.as_dtype(dtype or "float32")
        self._variables = []

    @property
    def dtype(self):
        return self._dtype.name

    @property
    def variables(self):
        return list(self._variables)

    def add_variable(self, shape=(), initializer="zeros", dtype=None, name=None):
        """A state variable, made now from a NumPy value (never inside a trace)."""
        dt = fj.as_dtype(dtype or self._dtype)
        value = np.asarray(initializers.get(initializer)(tuple(shape), dtype=dt), dt.np)
        v = fj.Variable(value, name=f"{self.name}/{name or 'variable'}", trainable=False)
        self._variables.append(v)
        return v

    def update_state(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.update_state")

    def result(self):
        raise NotImplementedError(f"{type(self).__name__}.result")

    def reset_state(self):
        for v in self._variables:
            v.assign(np.zeros(tuple(v.shape), v.dtype.np))

    def __call__(self, *args, **kwargs):
        self.update_state(*args, **kwargs)
        return self.result()

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


def _samplewise(values, sample_weight, reduce_fn, dtype):
    """Keras's reduce_to_samplewise_values: the values reduced to one per sample (over
    the axes the weights do not cover, then the inner axes), weighted; and the weights
    reduced likewise (None if none were given)."""
    values = _tensor(values, dtype)
    if sample_weight is not None:
        sample_weight = _tensor(sample_weight, dtype)
        values, sample_weight = squeeze_or_expand_to_same_rank(values, sample_weight)
        wr, vr = len(sample_weight.shape), len(values.shape)
        if vr > wr:
            values = reduce_fn(values, axis=list(range(wr, vr)))
        sample_weight = sample_weight * fj.ones_like(values)       # broadcast
        values = values * sample_weight
        if wr > 1:
            sample_weight = reduce_fn(sample_weight, axis=list(range(1, wr)))
    if len(values.shape) > 1:
        values = reduce_fn(values, axis=list(range(1, len(values.shape))))
    return values, sample_weight


class Sum(Metric):
    def __init__(self, name="sum", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(name="total")

    def update_state(self, values, sample_weight=None):
        values, _ = _samplewise(values, sample_weight, fj.reduce_sum, self._dtype)
        self.total.assign_add(fj.reduce_sum(values))

    def result(self):
        return self.total.read_value()


class Mean(Metric):
    """The (weighted) mean of everything seen: total / count."""

    def __init__(self, name="mean", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(name="total")
        self.count = self.add_variable(name="count")

    def update_state(self, values, sample_weight=None):
        values, sample_weight = _samplewise(values, sample_weight, fj.reduce_mean, self._dtype)
        self.total.assign_add(fj.reduce_sum(values))
        if sample_weight is not None:
            n = fj.reduce_sum(sample_weight)
        elif len(values.shape) >= 1:     # a runtime size under jit: no retrace per batch size
            n = fj.cast(fj.size(values), self._dtype)
        else:
            n = fj.constant(1.0, self._dtype)
        self.count.assign_add(n)

    def result(self):
        return L._divide_no_nan(self.total.read_value(), self.count.read_value())


class MeanMetricWrapper(Mean):
    """The running mean of a per-sample function fn(y_true, y_pred, **kwargs)."""

    def __init__(self, fn, name=None, dtype=None, **kwargs):
        super().__init__(name=name or getattr(fn, "__name__", None), dtype=dtype)
        self._fn = fn
        self._fn_kwargs = kwargs

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(self._fn(y_true, y_pred, **self._fn_kwargs),
                                    sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), **self._fn_kwargs}


# --- per-sample functions ---------------------------------------------------------------
def _f32(x):
    return fj.cast(x, fj.float32)


def accuracy(y_true, y_pred):
    y_pred = _tensor(y_pred)
    y_true, y_pred = squeeze_or_expand_to_same_rank(_tensor(y_true, y_pred.dtype), y_pred)
    return _f32(fj.equal(y_true, y_pred))


def binary_accuracy(y_true, y_pred, threshold=0.5):
    y_pred = _tensor(y_pred)
    y_true, y_pred = squeeze_or_expand_to_same_rank(_tensor(y_true), y_pred)
    y_pred = fj.cast(y_pred > threshold, y_true.dtype)
    return _f32(fj.equal(y_true, y_pred))


def categorical_accuracy(y_true, y_pred):
    """argmax(y_true) == argmax(y_pred) (the first maximum wins ties, as in Keras)."""
    return _f32(fj.equal(fj.argmax(_tensor(y_true), axis=-1), fj.argmax(_tensor(y_pred), axis=-1)))


def _sparse_labels(y_true, y_pred):
    y_true = _tensor(y_true)
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
        y_true = fj.squeeze(y_true, [-1])
    return y_true


def sparse_categorical_accuracy(y_true, y_pred):
    """argmax(y_pred) == the label; labels (N,) or (N, 1), ints or integral floats (the
    comparison is in floats, as Keras's)."""
    y_pred = _tensor(y_pred)
    y_true = _sparse_labels(y_true, y_pred)
    pred = fj.cast(fj.argmax(y_pred, axis=-1), y_pred.dtype)
    return _f32(fj.equal(fj.cast(y_true, y_pred.dtype), pred))


def _in_top_k(labels, y_pred, k):
    """Keras's in_top_k: the label's score ranks within the first k, its rank being 1 +
    the number of strictly greater scores (ties count in the label's favour; a NaN score
    for the label never does). No sort needed."""
    labels = labels if labels.dtype.is_integer else fj.cast(labels, fj.int32)
    hit = fj.one_hot(labels, y_pred.shape[-1], on_value=True, off_value=False, dtype=fj.bool)
    neg_inf = fj.zeros_like(y_pred) - np.inf
    at_label = fj.reduce_max(fj.where(hit, y_pred, neg_inf), axis=-1, keepdims=True)
    at_label = fj.where(fj.not_equal(at_label, at_label), fj.zeros_like(at_label) - np.inf, at_label)
    rank = 1 + fj.reduce_sum(fj.cast(y_pred > at_label, fj.int32), axis=-1)
    return rank <= k


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    y_pred = _tensor(y_pred)
    return _f32(_in_top_k(fj.argmax(_tensor(y_true), axis=-1), y_pred, k))


def sparse_top_k_categorical_accuracy(y_true, y_pred, k=5):
    y_pred = _tensor(y_pred)
    return _f32(_in_top_k(_sparse_labels(y_true, y_pred), y_pred, k))


# --- classes ------------------------------------------------------------------------
class Accuracy(MeanMetricWrapper):
    def __init__(self, name="accuracy", dtype=None):
        super().__init__(accuracy, name=name, dtype=dtype)


class BinaryAccuracy(MeanMetricWrapper):
    def __init__(self, name="binary_accuracy", dtype=None, threshold=0.5):
        super().__init__(binary_accuracy, name=name, dtype=dtype, threshold=threshold)
        self.threshold = threshold


class CategoricalAccuracy(MeanMetricWrapper):
    def __init__(self, name="categorical_accuracy", dtype=None):
        super().__init__(categorical_accuracy, name=name, dtype=dtype)


class SparseCategoricalAccuracy(MeanMetricWrapper):
    def __init__(self, name="sparse_categorical_accuracy", dtype=None):
        super().__init__(sparse_categorical_accuracy, name=name, dtype=dtype)


class TopKCategoricalAccuracy(MeanMetricWrapper):
    def __init__(self, k=5, name="top_k_categorical_accuracy", dtype=None):
        super().__init__(top_k_categorical_accuracy, name=name, dtype=dtype, k=k)
        self.k = k


class SparseTopKCategoricalAccuracy(MeanMetricWrapper):
    def __init__(self, k=5, name="sparse_top_k_categorical_accuracy", dtype=None):
        super().__init__(sparse_top_k_categorical_accuracy, name=name, dtype=dtype, k=k)
        self.k = k


class _AccuracyByShape(MeanMetricWrapper):
    """"accuracy" for a loss that does not say which: binary, sparse or categorical
    accuracy chosen from the shapes at each update, as Keras 3's compile does at the first."""

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(self._by_shape, name=name, dtype=dtype)

    @staticmethod
    def _by_shape(y_true, y_pred):
        y_true, y_pred = _tensor(y_true), _tensor(y_pred)
        kind = L._crossentropy_kind(y_true, y_pred)
        fn = {"binary": binary_accuracy, "sparse": sparse_categorical_accuracy,
              "categorical": categorical_accuracy}[kind]
        return fn(y_true, y_pred)

    def get_config(self):
        return Metric.get_config(self)


class MeanSquaredError(MeanMetricWrapper):
    def __init__(self, name="mean_squared_error", dtype=None):
        super().__init__(L.mean_squared_error, name=name, dtype=dtype)


class MeanAbsoluteError(MeanMetricWrapper):
    def __init__(self, name="mean_absolute_error", dtype=None):
        super().__init__(L.mean_absolute_error, name=name, dtype=dtype)


class RootMeanSquaredError(Mean):
    """sqrt of the running (weighted) mean of the squared errors."""

    def __init__(self, name="root_mean_squared_error", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = _tensor(y_pred, self._dtype)
        y_true, y_pred = squeeze_or_expand_to_same_rank(_tensor(y_true, self._dtype), y_pred)
        return super().update_state(fj.square(y_pred - y_true), sample_weight=sample_weight)

    def result(self):
        return fj.sqrt(super().result())


class BinaryCrossentropy(MeanMetricWrapper):
    def __init__(self, name="binary_crossentropy", dtype=None, from_logits=False, label_smoothing=0):
        super().__init__(L.binary_crossentropy, name=name, dtype=dtype, from_logits=from_logits,
                         label_smoothing=label_smoothing)


class CategoricalCrossentropy(MeanMetricWrapper):
    def __init__(self, name="categorical_crossentropy", dtype=None, from_logits=False,
                 label_smoothing=0, axis=-1):
        super().__init__(L.categorical_crossentropy, name=name, dtype=dtype,
                         from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)


class SparseCategoricalCrossentropy(MeanMetricWrapper):
    def __init__(self, name="sparse_categorical_crossentropy", dtype=None, from_logits=False,
                 ignore_class=None, axis=-1):
        super().__init__(L.sparse_categorical_crossentropy, name=name, dtype=dtype,
                         from_logits=from_logits, ignore_class=ignore_class, axis=axis)


class _Confusion(Metric):
    """Precision and Recall for binary (or multi-label) predictions: y_pred above the
    threshold is a positive, a nonzero y_true a true one; counts are weighted."""
    _second = None      # the count besides true_positives

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        if top_k is not None or class_id is not None:
            raise NotImplementedError(f"{type(self).__name__}: top_k and class_id are not supported")
        if isinstance(thresholds, (list, tuple)):
            if len(thresholds) != 1:
                raise NotImplementedError(f"{type(self).__name__}: one threshold only")
            thresholds = thresholds[0]
        super().__init__(name=name, dtype=dtype)
        self.thresholds = thresholds
        self._threshold = 0.5 if thresholds is None else float(thresholds)
        self.true_positives = self.add_variable(name="true_positives")
        setattr(self, self._second, self.add_variable(name=self._second))

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = _tensor(y_pred, self._dtype)
        y_pred, y_true = squeeze_or_expand_to_same_rank(y_pred, _tensor(y_true, self._dtype))
        w = fj.ones_like(y_pred)
        if sample_weight is not None:
            # Keras: one weight per sample (row), broadcast over the row's predictions
            sw = fj.expand_dims(_tensor(sample_weight, self._dtype), -1)
            _, sw = squeeze_or_expand_to_same_rank(y_true, sw, expand_rank_1=False)
            w = w * sw
        true = fj.cast(fj.not_equal(y_true, 0.0), self._dtype)
        pos = fj.cast(y_pred > self._threshold, self._dtype)
        self.true_positives.assign_add(fj.reduce_sum(w * true * pos))
        other = pos * (1.0 - true) if self._second == "false_positives" else (1.0 - pos) * true
        getattr(self, self._second).assign_add(fj.reduce_sum(w * other))

    def result(self):
        tp = self.true_positives.read_value()
        return L._divide_no_nan(tp, tp + getattr(self, self._second).read_value())

    def get_config(self):
        return {**super().get_config(), "thresholds": self.thresholds, "top_k": None,
                "class_id": None}


class Precision(_Confusion):
    """true positives / predicted positives."""
    _second = "false_positives"


class Recall(_Confusion):
    """true positives / actual positives."""
    _second = "false_negatives"


# --- lookup ---------------------------------------------------------------------------
_CLASSES = (Mean, Sum, Accuracy, BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy,
            TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy, MeanSquaredError,
            MeanAbsoluteError, RootMeanSquaredError, Precision, Recall, BinaryCrossentropy,
            CategoricalCrossentropy, SparseCategoricalCrossentropy)
_BY_NAME = {c.__name__: c for c in _CLASSES}
_BY_NAME.update({_snake(c.__name__): c for c in _CLASSES})
_BY_NAME.update(mse=MeanSquaredError, MSE=MeanSquaredError, mae=MeanAbsoluteError,
                MAE=MeanAbsoluteError, bce=BinaryCrossentropy, BCE=BinaryCrossentropy)


def get(identifier):
    """A Metric from a name ("sparse_categorical_accuracy", "SparseCategoricalAccuracy",
    "mse"), a dict {"class_name": ..., "config": {...}}, a class or an instance; a plain
    function f(y_true, y_pred) becomes a MeanMetricWrapper. None gives None."""
    if identifier is None or isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, dict):
        return from_config_dict(identifier, _BY_NAME, "metric")
    if isinstance(identifier, str):
        return from_name(identifier, _BY_NAME, "metric")
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if callable(identifier):
        return MeanMetricWrapper(identifier)
    raise ValueError(f"Could not interpret metric identifier: {identifier!r}")


_CE_METRICS = {"binary": BinaryCrossentropy, "sparse": SparseCategoricalCrossentropy,
               "categorical": CategoricalCrossentropy}
_ACCURACIES = {"binary": BinaryAccuracy, "sparse": SparseCategoricalAccuracy,
               "categorical": CategoricalAccuracy}


def resolve(identifier, loss=None):
    """The metric `compile(metrics=[...])` makes of `identifier`, given the loss.
    "accuracy"/"acc": sparse categorical, categorical or binary accuracy for the
    matching crossentropy loss; for any other loss chosen from the shapes at each update,
    as Keras 3 does. "crossentropy"/"ce": the crossentropy metric of the loss (with its
    from_logits). A string keeps its spelling as the display name ("acc", "mse")."""
    if isinstance(identifier, str) and identifier.lower() in ("accuracy", "acc", "crossentropy", "ce"):
        kind, from_logits = L.crossentropy_kind(loss)
        if identifier.lower() in ("accuracy", "acc"):
            return _ACCURACIES[kind](name=identifier) if kind else _AccuracyByShape(name=identifier)
        if kind:
            return _CE_METRICS[kind](name=identifier, from_logits=from_logits)
        return MeanMetricWrapper(L._CrossentropyByShape().call, name=identifier)
    metric = get(identifier)
    if isinstance(identifier, str):
        metric.name = identifier
    return metric
