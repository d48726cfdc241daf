"""`tf.losses`: TF1's loss helpers with the default reduction (the mean over all
elements, times a scalar `weights`), each also added to the LOSSES collection."""
from ...frontend import api as F
from ...frontend import nn as N
from .graph import get_default_graph
from .ops import apply

LOSSES = "losses"


def _loss(type_, fn, args, weights, scope):
    def compute(*vals):
        per = fn(*vals)
        return F.reduce_mean(per) * weights if not (isinstance(weights, (int, float)) and weights == 1) \
            else F.reduce_mean(per)
    out = apply(type_, compute, args, name=scope)
    get_default_graph().add_to_collection(LOSSES, out)
    return out


def _check_weights(weights):
    if not isinstance(weights, (int, float)):
        raise NotImplementedError("tf.losses: only scalar Python weights are supported")
    return weights


def mean_squared_error(labels, predictions, weights=1.0, scope=None, loss_collection=LOSSES,
                       reduction=None):
    return _loss("mean_squared_error", lambda y, p: F.square(p - y), (labels, predictions),
                 _check_weights(weights), scope)


def absolute_difference(labels, predictions, weights=1.0, scope=None, loss_collection=LOSSES,
                        reduction=None):
    return _loss("absolute_difference", lambda y, p: F.abs(p - y), (labels, predictions),
                 _check_weights(weights), scope)


def softmax_cross_entropy(onehot_labels, logits, weights=1.0, label_smoothing=0, scope=None,
                          loss_collection=LOSSES, reduction=None):
    def per(y, x):
        if label_smoothing:
            n = x.shape[-1]
            y = y * (1.0 - label_smoothing) + label_smoothing / float(n)
        return N.softmax_cross_entropy_with_logits(F.stop_gradient(y), x)
    return _loss("softmax_cross_entropy_loss", per, (onehot_labels, logits), _check_weights(weights),
                 scope)


def sparse_softmax_cross_entropy(labels, logits, weights=1.0, scope=None, loss_collection=LOSSES,
                                 reduction=None):
    return _loss("sparse_softmax_cross_entropy_loss", N.sparse_softmax_cross_entropy_with_logits,
                 (labels, logits), _check_weights(weights), scope)


def sigmoid_cross_entropy(multi_class_labels, logits, weights=1.0, label_smoothing=0, scope=None,
                          loss_collection=LOSSES, reduction=None):
    def per(z, x):
        if label_smoothing:
            z = z * (1.0 - label_smoothing) + 0.5 * label_smoothing
        return N.sigmoid_cross_entropy_with_logits(labels=z, logits=x)
    return _loss("sigmoid_cross_entropy_loss", per, (multi_class_labels, logits),
                 _check_weights(weights), scope)


def get_losses(scope=None, loss_collection=LOSSES):
    return get_default_graph().get_collection(loss_collection, scope)


def get_total_loss(add_regularization_losses=True, name="total_loss"):
    from .ops import add_n
    return add_n(get_losses(), name=name)
