"""`keras.losses`: Keras 3's losses (per-sample functions, `Loss` classes with the
reduction) as `fj` ops, so they run eagerly, under `@fj.jit` and under `fj.GradientTape`.

Probabilities (`from_logits=False`) are handled as Keras 3 does: normalised, clipped to
[1e-7, 1 - 1e-7], logged. But when `y_pred` is the very tensor a softmax/sigmoid produced
(`activations.softmax`/`sigmoid`, or a layer that calls `remember_logits`), the loss uses
its logits instead, as Keras's TensorFlow backend does with `_keras_logits`: the value is
the same where nothing saturates, and it stays finite (with useful gradients) where
log(clip(p)) would flatten at log(1e-7)."""
import re
import weakref

import flowjit as fj
from .identifiers import from_config_dict

EPSILON = 1e-7      # keras.backend.epsilon()

# --- the logits of softmax / sigmoid outputs ------------------------------------------
# id(probabilities) -> (weak reference to them, logits, kind, axis). Tensors hash by id,
# not by value; the weak reference guards against a reused id, and a finalizer drops the
# entry when the probabilities die (the logits are held only as long as they live).
_LOGITS = {}


def remember_logits(probs, logits, kind, axis=-1):
    """Record that `probs` is softmax(logits, axis) (kind "softmax") or sigmoid(logits)
    (kind "sigmoid"); returns `probs`. A crossentropy loss on `probs` then uses `logits`."""
    if kind not in ("softmax", "sigmoid"):
        raise ValueError(f"remember_logits: kind must be 'softmax' or 'sigmoid', got {kind!r}")
    if not isinstance(probs, fj.Tensor):
        return probs
    key = id(probs)
    _LOGITS[key] = (weakref.ref(probs), logits, kind, axis)
    weakref.finalize(probs, _LOGITS.pop, key, None)
    return probs


def _remembered(y_pred):
    hit = _LOGITS.get(id(y_pred))
    if hit is None or hit[0]() is not y_pred:
        return None
    return hit


def _logits_of(y_pred, kind, axis=-1):
    """The logits behind `y_pred` if it is the output of that kind of activation (a
    softmax along the loss's class axis), else None."""
    hit = _remembered(y_pred)
    if hit is None or hit[2] != kind:
        return None
    if kind == "softmax":
        rank = len(y_pred.shape)
        if hit[3] % rank != axis % rank:
            return None
    return hit[1]


def _derive(old, new, fn, reshaped=True):
    """`new` = fn(`old`), a cast or (reshaped=True) a reshape: it inherits old's logits
    as fn(logits). A softmax is only carried through a cast; a reshape may move its
    class axis."""
    hit = _remembered(old) if new is not old else None
    if hit is not None and (hit[2] == "sigmoid" or not reshaped):
        remember_logits(new, fn(hit[1]), hit[2], hit[3])
    return new


# --- helpers --------------------------------------------------------------------------
def _tensor(x, dtype=None):
    if not isinstance(x, fj.Tensor):
        x = x.read_value() if isinstance(x, fj.Variable) else fj.convert_to_tensor(x)
    if dtype is not None and x.dtype != fj.as_dtype(dtype):
        x = fj.cast(x, dtype)
    return x


def _pred(y_pred, dtype):
    """y_pred as a tensor of `dtype`, keeping its remembered logits."""
    t = _tensor(y_pred)
    if t.dtype != fj.as_dtype(dtype):
        t = _derive(t, fj.cast(t, dtype), lambda x: fj.cast(x, dtype), reshaped=False)
    return t


def squeeze_or_expand_to_same_rank(x1, x2, expand_rank_1=True):
    """Keras's rule: when the ranks differ by one and the longer has a last dim of 1,
    squeeze it (or, if the shorter is 1-D, expand the shorter)."""
    r1, r2 = len(x1.shape), len(x2.shape)
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        if r2 == 1 and expand_rank_1:
            x2 = _derive(x2, fj.expand_dims(x2, -1), lambda t: fj.expand_dims(t, -1))
        else:
            x1 = _derive(x1, fj.squeeze(x1, [-1]), lambda t: fj.squeeze(t, [-1]))
    elif r2 == r1 + 1 and x2.shape[-1] == 1:
        if r1 == 1 and expand_rank_1:
            x1 = _derive(x1, fj.expand_dims(x1, -1), lambda t: fj.expand_dims(t, -1))
        else:
            x2 = _derive(x2, fj.squeeze(x2, [-1]), lambda t: fj.squeeze(t, [-1]))
    return x1, x2


def _divide_no_nan(a, b):
    zero = fj.equal(b, 0.0)
    return fj.where(zero, fj.zeros_like(a), a / fj.where(zero, fj.ones_like(b), b))


def _log_clipped(p):
    return fj.log(fj.clip_by_value(p, EPSILON, 1.0 - EPSILON))


def _snake(name):
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)).lower()


# --- per-sample functions (Keras 3's values) --------------------------------------------
def mean_squared_error(y_true, y_pred):
    y_pred = _tensor(y_pred)
    y_true, y_pred = squeeze_or_expand_to_same_rank(_tensor(y_true, y_pred.dtype), y_pred)
    return fj.reduce_mean(fj.square(y_true - y_pred), axis=-1)


def mean_absolute_error(y_true, y_pred):
    y_pred = _tensor(y_pred)
    y_true, y_pred = squeeze_or_expand_to_same_rank(_tensor(y_true, y_pred.dtype), y_pred)
    return fj.reduce_mean(fj.abs(y_true - y_pred), axis=-1)


mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error


def huber(y_true, y_pred, delta=1.0):
    """0.5 e^2 where |e| <= delta, else delta |e| - 0.5 delta^2; mean over the last axis."""
    y_pred = _tensor(y_pred)
    y_true, y_pred = squeeze_or_expand_to_same_rank(_tensor(y_true, y_pred.dtype), y_pred)
    err = y_pred - y_true
    a = fj.abs(err)
    d = fj.constant(delta, y_pred.dtype)
    return fj.reduce_mean(fj.where(a <= d, 0.5 * fj.square(err), d * a - 0.5 * fj.square(d)),
                          axis=-1)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """-sum(y_true * log p) over `axis` for one-hot (or soft) labels."""
    logits = None if from_logits else _logits_of(y_pred, "softmax", axis)
    y_pred = _tensor(y_pred)
    y_true = _tensor(y_true, y_pred.dtype)
    if logits is not None:
        y_pred, from_logits = _tensor(logits, y_pred.dtype), True
    if label_smoothing:
        n = fj.cast(fj.shape(y_true)[axis], y_pred.dtype)
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / n
    if from_logits:
        log_p = fj.nn.log_softmax(y_pred, axis=axis)
    else:
        log_p = _log_clipped(y_pred / fj.reduce_sum(y_pred, axis=axis, keepdims=True))
    return -fj.reduce_sum(y_true * log_p, axis=axis)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, axis=-1):
    """categorical_crossentropy with integer class labels of shape (N,) or (N, 1) (ints or
    integral floats, cast to int as Keras does). A label outside [0, classes) raises."""
    if ignore_class is not None:
        raise NotImplementedError("sparse_categorical_crossentropy: ignore_class is not supported")
    logits = None if from_logits else _logits_of(y_pred, "softmax", axis)
    y_pred = _tensor(y_pred)
    rank = len(y_pred.shape)
    if rank < 1 or axis % rank != rank - 1:
        raise ValueError(f"sparse_categorical_crossentropy: classes must be on the last axis "
                         f"(axis=-1), got axis={axis} for y_pred of shape {tuple(y_pred.shape)}")
    y_true = _tensor(y_true)
    if len(y_true.shape) == rank and y_true.shape[-1] == 1:
        y_true = fj.squeeze(y_true, [-1])
    if len(y_true.shape) != rank - 1:
        raise ValueError(f"sparse_categorical_crossentropy: labels of shape {tuple(y_true.shape)} "
                         f"do not match y_pred of shape {tuple(y_pred.shape)} (expected "
                         f"y_pred's shape without its last axis)")
    labels = y_true if y_true.dtype.is_integer else fj.cast(y_true, fj.int32)
    if logits is not None:
        y_pred, from_logits = _tensor(logits, y_pred.dtype), True
    # rows of an identity matrix, gathered: a label out of range raises instead of
    # silently contributing a loss of 0
    onehot = fj.gather(fj.eye(y_pred.shape[-1], dtype=y_pred.dtype), labels)
    if from_logits:
        log_p = fj.nn.log_softmax(y_pred, axis=-1)
    else:
        log_p = _log_clipped(y_pred / fj.reduce_sum(y_pred, axis=-1, keepdims=True))
    return -fj.reduce_sum(onehot * log_p, axis=-1)


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Elementwise -(t log p + (1-t) log(1-p)), mean over `axis`; labels smoothed toward
    0.5 by `label_smoothing`."""
    y_pred = _tensor(y_pred)
    # matching ranks first: a reshaped y_pred carries its sigmoid's logits along
    y_true, y_pred = squeeze_or_expand_to_same_rank(_tensor(y_true, y_pred.dtype), y_pred)
    logits = None if from_logits else _logits_of(y_pred, "sigmoid")
    if logits is not None:
        y_pred, from_logits = _tensor(logits, y_pred.dtype), True
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        bce = fj.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=y_pred)
    else:
        p = fj.clip_by_value(y_pred, EPSILON, 1.0 - EPSILON)
        bce = -(y_true * fj.log(p) + (1.0 - y_true) * fj.log(1.0 - p))
    return fj.reduce_mean(bce, axis=axis)


# --- reduction ------------------------------------------------------------------------
_REDUCTIONS = ("sum_over_batch_size", "sum", None, "none", "mean", "mean_with_sample_weight")


def reduce_weighted_values(values, sample_weight=None, reduction="sum_over_batch_size",
                           dtype="float32"):
    """Keras 3: weight the per-sample values, then "sum", or "sum_over_batch_size"/"mean"
    (the sum over the number of values, weighted or not), "mean_with_sample_weight" (over
    the sum of the weights), or None/"none" (the weighted values)."""
    values = _tensor(values, dtype)
    if sample_weight is not None:
        sample_weight = _tensor(sample_weight, values.dtype)
        values, sample_weight = squeeze_or_expand_to_same_rank(values, sample_weight)
        values = values * sample_weight
    if reduction in (None, "none") or len(values.shape) == 0:
        return values
    total = fj.reduce_sum(values)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        divisor = fj.reduce_sum(sample_weight)
    else:       # the count is a runtime size under jit (no retrace per batch size)
        divisor = fj.cast(fj.size(values), values.dtype)
    return _divide_no_nan(total, divisor)


# --- classes --------------------------------------------------------------------------
class Loss:
    """Subclasses implement `call(y_true, y_pred)` -> per-sample values; `__call__`
    applies the sample weights and the reduction and returns a scalar tensor (or the
    weighted values with reduction None/"none")."""

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"Invalid value for argument `reduction`. Expected one of "
                             f"{_REDUCTIONS}. Received: reduction={reduction!r}")
        self.name = name or _snake(type(self).__name__)
        self.reduction = reduction
        self._dtype = fj.as_dtype(dtype or "float32")      # keras.backend.floatx()

    @property
    def dtype(self):
        return self._dtype.name

    def __call__(self, y_true, y_pred, sample_weight=None):
        # both in the loss's dtype, as Keras (a subclass's call may mix them freely;
        # integer labels come back exactly up to 2**24)
        y_pred = _pred(y_pred, self._dtype)
        losses = self.call(_tensor(y_true, self._dtype), y_pred)
        return reduce_weighted_values(losses, sample_weight, self.reduction, self._dtype)

    def call(self, y_true, y_pred):
        raise NotImplementedError(f"{type(self).__name__}.call(y_true, y_pred)")

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


class LossFunctionWrapper(Loss):
    """A per-sample function `fn(y_true, y_pred, **kwargs)` as a Loss."""

    def __init__(self, fn, reduction="sum_over_batch_size", name=None, dtype=None, **kwargs):
        super().__init__(name=name or getattr(fn, "__name__", None), reduction=reduction,
                         dtype=dtype)
        self.fn = fn
        self._fn_kwargs = kwargs

    def call(self, y_true, y_pred):
        y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        return {**super().get_config(), **self._fn_kwargs}


class MeanSquaredError(LossFunctionWrapper):
    def __init__(self, reduction="sum_over_batch_size", name="mean_squared_error", dtype=None):
        super().__init__(mean_squared_error, reduction=reduction, name=name, dtype=dtype)

    def get_config(self):
        return Loss.get_config(self)


class MeanAbsoluteError(LossFunctionWrapper):
    def __init__(self, reduction="sum_over_batch_size", name="mean_absolute_error", dtype=None):
        super().__init__(mean_absolute_error, reduction=reduction, name=name, dtype=dtype)

    def get_config(self):
        return Loss.get_config(self)


class Huber(LossFunctionWrapper):
    def __init__(self, delta=1.0, reduction="sum_over_batch_size", name="huber_loss", dtype=None):
        super().__init__(huber, reduction=reduction, name=name, dtype=dtype, delta=delta)


class BinaryCrossentropy(LossFunctionWrapper):
    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="binary_crossentropy", dtype=None):
        super().__init__(binary_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


class CategoricalCrossentropy(LossFunctionWrapper):
    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="categorical_crossentropy", dtype=None):
        super().__init__(categorical_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


class SparseCategoricalCrossentropy(LossFunctionWrapper):
    def __init__(self, from_logits=False, ignore_class=None, reduction="sum_over_batch_size",
                 name="sparse_categorical_crossentropy", dtype=None):
        if ignore_class is not None:
            raise NotImplementedError("SparseCategoricalCrossentropy: ignore_class is not supported")
        super().__init__(sparse_categorical_crossentropy, reduction=reduction, name=name,
                         dtype=dtype, from_logits=from_logits)
        self.from_logits, self.ignore_class = from_logits, ignore_class

    def call(self, y_true, y_pred):
        # no rank matching: (N,) or (N, 1) labels against (N, C) are handled by the function
        return sparse_categorical_crossentropy(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        return {**super().get_config(), "ignore_class": None}


def _crossentropy_kind(y_true, y_pred):
    """Keras 3's choice for "crossentropy"/"accuracy" from the shapes: a last dim of 1 is
    binary; labels of lower rank (or a last dim of 1 against several classes) are sparse."""
    if y_pred.shape[-1] == 1:
        return "binary"
    if len(y_true.shape) < len(y_pred.shape) or y_true.shape[-1] == 1:
        return "sparse"
    return "categorical"


_BY_KIND = {"binary": binary_crossentropy, "sparse": sparse_categorical_crossentropy,
            "categorical": categorical_crossentropy}


class _CrossentropyByShape(Loss):
    """compile(loss="crossentropy"): binary, sparse or categorical by the shapes."""

    def call(self, y_true, y_pred):
        fn = _BY_KIND[_crossentropy_kind(y_true, y_pred)]
        if fn is not sparse_categorical_crossentropy:
            y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
        return fn(y_true, y_pred)


def crossentropy_kind(loss):
    """"sparse", "categorical" or "binary" for a crossentropy loss (an instance, a name,
    or the function), with its from_logits; (None, False) for any other loss."""
    if loss is not None and not isinstance(loss, Loss):
        try:
            loss = get(loss)
        except (ValueError, TypeError):
            return None, False
    fn = getattr(loss, "fn", None)
    for kind, f in _BY_KIND.items():
        if fn is f:
            return kind, bool(getattr(loss, "_fn_kwargs", {}).get("from_logits", False))
    return None, False


# --- lookup ---------------------------------------------------------------------------
_CLASSES = {c.__name__: c for c in (MeanSquaredError, MeanAbsoluteError, Huber, BinaryCrossentropy,
                                    CategoricalCrossentropy, SparseCategoricalCrossentropy)}
_FUNCTIONS = {f.__name__: f for f in (mean_squared_error, mean_absolute_error, huber,
                                      binary_crossentropy, categorical_crossentropy,
                                      sparse_categorical_crossentropy)}
_FUNCTIONS.update(mse=mean_squared_error, MSE=mean_squared_error, mae=mean_absolute_error,
                  MAE=mean_absolute_error, bce=binary_crossentropy, BCE=binary_crossentropy)


def get(identifier):
    """A Loss: an instance as is; a Loss class or its name (CamelCase) instantiated; a
    function's name ("mse", "sparse_categorical_crossentropy", ...) or a function
    f(y_true, y_pred) wrapped with the mean reduction and named as given;
    "crossentropy"/"ce" choosing binary/sparse/categorical by the shapes; a dict
    {"class_name": ..., "config": {...}}. None gives None."""
    if identifier is None or isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if isinstance(identifier, dict):
        return from_config_dict(identifier, _CLASSES, "loss")
    if isinstance(identifier, str):
        if identifier in _CLASSES:
            return _CLASSES[identifier]()
        if identifier in _FUNCTIONS:
            return LossFunctionWrapper(_FUNCTIONS[identifier], name=identifier)
        if identifier.lower() in ("crossentropy", "ce"):
            return _CrossentropyByShape(name=identifier)
        raise ValueError(f"Could not interpret loss identifier: {identifier!r} (known: "
                         f"{', '.join(sorted(set(_CLASSES) | set(_FUNCTIONS)))})")
    if callable(identifier):
        return LossFunctionWrapper(identifier, name=getattr(identifier, "__name__", None))
    raise ValueError(f"Could not interpret loss identifier: {identifier!r}")


def serialize(loss):
    return {"class_name": type(loss).__name__, "config": loss.get_config()}


def deserialize(config):
    return get(config)
