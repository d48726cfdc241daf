"""`tf.metrics`: TF1's streaming metrics.

Each metric returns `(value, update_op)` and keeps its running state in LOCAL
variables (`accuracy/total`, `accuracy/count`, ...), in the LOCAL_VARIABLES and
METRIC_VARIABLES collections as in TF1, so `tf.local_variables_initializer()` resets
them. `update_op` adds one batch's sums to the state and gives the metric of all the
batches seen so far; `value` reads the state without changing it (0 before any batch,
TF1's div_no_nan). Both are ordinary graph ops, so a `sess.run` of update ops is one
compiled plan whose variable updates are compiled effects."""
import numpy as np

from ... import dtypes as D
from ...frontend import api as F
from .graph import GraphKeys, get_default_graph
from .ops import apply, convert_to_tensor
from .variables import Variable, assign_add

METRIC_VARIABLES = "metric_variables"      # TF1's GraphKeys.METRIC_VARIABLES


def _metric_variable(name):
    """A float32 scalar local variable starting at 0 (TF1's metric_variable)."""
    return Variable(np.float32(0.0), trainable=False, name=name,
                    collections=[GraphKeys.LOCAL_VARIABLES, METRIC_VARIABLES])


def _tensor(x, what):
    if x is None:
        return None
    t = convert_to_tensor(x)
    if t.dtype is not D.bool_ and t.dtype.np.kind not in "biuf":
        raise TypeError(f"tf.metrics: {what} must be numeric or bool, got {t.dtype.name}")
    return t


def _squeezable(labels, predictions):
    """TF1's remove_squeezable_dimensions: drop a last dim of 1 from the one whose rank
    is one more than the other's (static ranks)."""
    from .ops import squeeze
    lr, pr = labels.shape.ndims, predictions.shape.ndims
    if lr is not None and pr is not None:
        if lr == pr + 1 and labels.shape.as_list()[-1] == 1:
            labels = squeeze(labels, [-1])
        elif pr == lr + 1 and predictions.shape.as_list()[-1] == 1:
            predictions = squeeze(predictions, [-1])
    return labels, predictions


def _check_shapes(a, b, what):
    if not a.shape.is_compatible_with(b.shape):
        raise ValueError(f"tf.metrics.{what}: shapes {a.shape} and {b.shape} are incompatible")


def _weighted_sums(values, weights):
    """(sum of values * weights, sum of weights broadcast to values) as float32."""
    v = F.cast(values, D.float32)
    if weights is None:
        return F.reduce_sum(v), F.cast(F.size(v), D.float32)
    w = F.cast(weights, D.float32)
    return F.reduce_sum(v * w), F.reduce_sum(F.ones_like(v) * w)     # weights broadcast to values


def _div_no_nan(t, c):
    ok = F.greater(c, 0.0)
    return F.where(ok, t / F.where(ok, c, F.ones_like(c)), F.zeros_like(t))


def _collect(metrics_collections, updates_collections, value, update_op):
    g = get_default_graph()
    if metrics_collections:
        g.add_to_collections(metrics_collections, value)
    if updates_collections:
        g.add_to_collections(updates_collections, update_op)
    return value, update_op


def _mean_of(stats_fn, inputs, name, default_name, metrics_collections, updates_collections,
             post=None):
    """The streaming weighted mean of the per-element values `stats_fn(*inputs)` gives:
    state (total, count); value = total / count."""
    g = get_default_graph()
    with g.name_scope(name or default_name):
        total = _metric_variable("total")
        count = _metric_variable("count")
        s, n = apply("BatchSums", stats_fn, tuple(inputs), multi=True)
        upd_total = assign_add(total, s)
        upd_count = assign_add(count, n)
        fin = post or (lambda x: x)
        value = apply("value", lambda t, c: fin(_div_no_nan(t, c)), (total, count))
        update_op = apply("update_op", lambda t, c: fin(_div_no_nan(t, c)), (upd_total, upd_count))
    return _collect(metrics_collections, updates_collections, value, update_op)


def mean(values, weights=None, metrics_collections=None, updates_collections=None, name=None):
    """The (weighted) mean of all the `values` seen: sum(values * weights) / sum(weights)."""
    values = _tensor(values, "values")
    weights = _tensor(weights, "weights")
    ins = [values] + ([weights] if weights is not None else [])
    return _mean_of(lambda v, *w: _weighted_sums(v, w[0] if w else None), ins, name, "mean",
                    metrics_collections, updates_collections)


def _pair(labels, predictions, weights, what):
    labels = _tensor(labels, "labels")
    predictions = _tensor(predictions, "predictions")
    labels, predictions = _squeezable(labels, predictions)
    _check_shapes(labels, predictions, what)
    weights = _tensor(weights, "weights")
    return labels, predictions, weights


def _pair_metric(labels, predictions, weights, per_element, name, default_name,
                 metrics_collections, updates_collections, post=None):
    labels, predictions, weights = _pair(labels, predictions, weights, default_name)
    ins = [labels, predictions] + ([weights] if weights is not None else [])

    def stats(y, p, *w):
        return _weighted_sums(per_element(y, p), w[0] if w else None)
    return _mean_of(stats, ins, name, default_name, metrics_collections, updates_collections, post)


def accuracy(labels, predictions, weights=None, metrics_collections=None, updates_collections=None,
             name=None):
    """The fraction of `predictions` equal to `labels` (predictions are cast to the
    labels' dtype, as in TF1)."""
    def per(y, p):
        if p.dtype is not y.dtype:
            p = F.cast(p, y.dtype)
        return F.equal(p, y)
    return _pair_metric(labels, predictions, weights, per, name, "accuracy", metrics_collections,
                        updates_collections)


def mean_squared_error(labels, predictions, weights=None, metrics_collections=None,
                       updates_collections=None, name=None):
    def per(y, p):
        d = F.cast(p, D.float32) - F.cast(y, D.float32)
        return d * d
    return _pair_metric(labels, predictions, weights, per, name, "mean_squared_error",
                        metrics_collections, updates_collections)


def mean_absolute_error(labels, predictions, weights=None, metrics_collections=None,
                        updates_collections=None, name=None):
    def per(y, p):
        return F.abs(F.cast(p, D.float32) - F.cast(y, D.float32))
    return _pair_metric(labels, predictions, weights, per, name, "mean_absolute_error",
                        metrics_collections, updates_collections)


def root_mean_squared_error(labels, predictions, weights=None, metrics_collections=None,
                            updates_collections=None, name=None):
    """sqrt of the streaming mean squared error."""
    def per(y, p):
        d = F.cast(p, D.float32) - F.cast(y, D.float32)
        return d * d
    return _pair_metric(labels, predictions, weights, per, name, "root_mean_squared_error",
                        metrics_collections, updates_collections, post=F.sqrt)


def mean_relative_error(labels, predictions, normalizer, weights=None, metrics_collections=None,
                        updates_collections=None, name=None):
    """mean(|predictions - labels| / normalizer), 0 where the normalizer is 0 (TF1)."""
    labels, predictions, weights = _pair(labels, predictions, weights, "mean_relative_error")
    normalizer = _tensor(normalizer, "normalizer")
    ins = [labels, predictions, normalizer] + ([weights] if weights is not None else [])

    def stats(y, p, n, *w):
        n = F.cast(n, D.float32)
        err = F.abs(F.cast(p, D.float32) - F.cast(y, D.float32))
        rel = F.where(F.equal(n, 0.0), F.zeros_like(err), err / F.where(F.equal(n, 0.0), F.ones_like(n), n))
        return _weighted_sums(rel, w[0] if w else None)
    return _mean_of(stats, ins, name, "mean_relative_error", metrics_collections, updates_collections)


# --- counts: true/false positives/negatives, precision, recall --------------------------------
_CONFUSION = {
    "true_positives": lambda y, p: F.logical_and(y, p),
    "false_positives": lambda y, p: F.logical_and(F.logical_not(y), p),
    "false_negatives": lambda y, p: F.logical_and(y, F.logical_not(p)),
    "true_negatives": lambda y, p: F.logical_and(F.logical_not(y), F.logical_not(p)),
}


def _as_bool(x):
    return x if x.dtype is D.bool_ else F.not_equal(x, F.zeros_like(x))


def _count(kind, labels, predictions, weights):
    """A local `<kind>/count` variable and the op adding one batch's (weighted) count."""
    g = get_default_graph()
    with g.name_scope(kind):
        var = _metric_variable("count")
        ins = [labels, predictions] + ([weights] if weights is not None else [])

        def stats(y, p, *w):
            hit = F.cast(_CONFUSION[kind](_as_bool(y), _as_bool(p)), D.float32)
            if w:
                hit = hit * F.cast(w[0], D.float32)
            return F.reduce_sum(hit)
        upd = assign_add(var, apply("BatchCount", stats, tuple(ins)))
    return var, upd


def _confusion_metric(kind, labels, predictions, weights, metrics_collections, updates_collections,
                      name):
    labels, predictions, weights = _pair(labels, predictions, weights, kind)
    g = get_default_graph()
    with g.name_scope(name or kind):
        var, upd = _count(kind, labels, predictions, weights)
        value = apply("Identity", F.identity, (var,), name="value")
    return _collect(metrics_collections, updates_collections, value, upd)


def true_positives(labels, predictions, weights=None, metrics_collections=None, updates_collections=None,
                   name=None):
    return _confusion_metric("true_positives", labels, predictions, weights, metrics_collections,
                             updates_collections, name)


def false_positives(labels, predictions, weights=None, metrics_collections=None,
                    updates_collections=None, name=None):
    return _confusion_metric("false_positives", labels, predictions, weights, metrics_collections,
                             updates_collections, name)


def false_negatives(labels, predictions, weights=None, metrics_collections=None,
                    updates_collections=None, name=None):
    return _confusion_metric("false_negatives", labels, predictions, weights, metrics_collections,
                             updates_collections, name)


def true_negatives(labels, predictions, weights=None, metrics_collections=None,
                   updates_collections=None, name=None):
    return _confusion_metric("true_negatives", labels, predictions, weights, metrics_collections,
                             updates_collections, name)


def _ratio_metric(default_name, first, second, labels, predictions, weights, metrics_collections,
                  updates_collections, name):
    """a / (a + b) of two streaming counts (0 while a + b is 0)."""
    labels, predictions, weights = _pair(labels, predictions, weights, default_name)
    g = get_default_graph()
    with g.name_scope(name or default_name):
        a, upd_a = _count(first, labels, predictions, weights)
        b, upd_b = _count(second, labels, predictions, weights)

        def ratio(x, y):
            return _div_no_nan(x, x + y)
        value = apply("value", ratio, (a, b))
        update_op = apply("update_op", ratio, (upd_a, upd_b))
    return _collect(metrics_collections, updates_collections, value, update_op)


def precision(labels, predictions, weights=None, metrics_collections=None, updates_collections=None,
              name=None):
    """true_positives / (true_positives + false_positives); labels and predictions are
    read as bools (nonzero is True), as in TF1."""
    return _ratio_metric("precision", "true_positives", "false_positives", labels, predictions, weights,
                         metrics_collections, updates_collections, name)


def recall(labels, predictions, weights=None, metrics_collections=None, updates_collections=None,
           name=None):
    """true_positives / (true_positives + false_negatives)."""
    return _ratio_metric("recall", "true_positives", "false_negatives", labels, predictions, weights,
                         metrics_collections, updates_collections, name)


def __getattr__(name):
    from .errors import missing
    raise missing("tf.metrics", name, "the streaming metrics here are accuracy, mean, "
                  "mean_squared_error, mean_absolute_error, root_mean_squared_error, "
                  "mean_relative_error, precision, recall and the true/false positive/negative counts")
