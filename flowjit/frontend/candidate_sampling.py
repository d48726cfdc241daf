"""Sampled losses for big output vocabularies, TF's `tf.nn.nce_loss` and
`tf.nn.sampled_softmax_loss` (TF's `_compute_sampled_logits`, composed from flowjit ops).

Per step a few negative classes are drawn for the whole batch (by default TF's
log-uniform sampler, `fj.random.log_uniform_candidate_sampler`, without repeats), the
logits of each example's true classes and of the sampled classes are computed from
the rows of `weights`/`biases` they need (gathers: their gradients are row updates of
the full tables), and each logit is corrected by subtracting log(expected count of its
class among the draws). NCE then scores every logit with a sigmoid cross-entropy
(true classes: label 1 / num_true, sampled: 0), sampled softmax with a softmax
cross-entropy over [true, sampled]. The draws are random ops with flowjit's streams:
under `@fj.jit` each call draws afresh; pass `sampled_values` (what a sampler returns)
to fix them (gradients then flow to weights, biases and inputs as for any loss).
"""
from .. import dtypes as D
from ..errors import ShapeError
from . import api as F
from .api import _is_tensor, _t
from .tensor import convert, user_src

FLT_MAX = 3.4028234663852886e38      # TF adds -FLT_MAX to the logits of accidental hits


def _x(v, dtype=None):
    return _t(v) if _is_tensor(v) else convert(v, dtype)


def compute_sampled_logits(weights, biases, labels, inputs, num_sampled, num_classes, num_true=1,
                           sampled_values=None, subtract_log_q=True, remove_accidental_hits=False,
                           partition_strategy="div", seed=None, op="sampled logits"):
    """(logits [batch, num_true + num_sampled], labels of the same shape), as TF's."""
    from . import nn as N
    from . import random as R
    x = _x(inputs)
    lab = _x(labels, D.int64)
    num_true = F._int(num_true, op, "num_true")
    if not lab.dtype.is_integer:
        raise TypeError(f"{op} (at {user_src()}): labels must be integers, got {lab.dtype.name}")
    if len(x.shape) != 2:
        raise ShapeError(f"{op} (at {user_src()}): inputs must be 2-D [batch_size, dim], got "
                         f"shape {tuple(x.shape)}")
    if len(lab.shape) == 1 and num_true == 1:
        lab = F.expand_dims(lab, 1)
    if len(lab.shape) != 2 or lab.shape[1] != num_true:
        raise ShapeError(f"{op} (at {user_src()}): labels must have shape [batch_size, "
                         f"num_true={num_true}], got {tuple(lab.shape)}")
    lab = F.cast(lab, D.int64)
    if sampled_values is None:
        sampled_values = R.log_uniform_candidate_sampler(lab, num_true, num_sampled, True,
                                                         num_classes, seed=seed)
    sampled, true_ec, sampled_ec = (F.stop_gradient(_x(s)) for s in sampled_values)
    sampled = F.cast(sampled, D.int64)
    if len(sampled.shape) != 1:
        raise ShapeError(f"{op} (at {user_src()}): sampled candidates must be 1-D, got shape "
                         f"{tuple(sampled.shape)}")
    b, dim = lab.shape[0], x.shape[1]

    def rows(ids):
        w = N.embedding_lookup(weights, ids, partition_strategy=partition_strategy)
        bb = N.embedding_lookup(biases, ids, partition_strategy=partition_strategy)
        return F.cast(w, x.dtype), F.cast(bb, x.dtype)

    true_w, true_b = rows(F.reshape(lab, [-1]))
    sampled_w, sampled_b = rows(sampled)
    if len(true_w.shape) != 2 or true_w.shape[1] != dim:
        raise ShapeError(f"{op} (at {user_src()}): weights rows have shape "
                         f"{tuple(true_w.shape[1:])} but inputs have {dim} columns "
                         f"(inputs {tuple(x.shape)})")
    # [batch, num_true]: each example's dot products with its true classes' rows
    true_logits = F.reduce_sum(F.reshape(true_w, [b, num_true, dim]) * F.expand_dims(x, 1), axis=-1)
    true_logits = true_logits + F.reshape(true_b, [b, num_true])
    # [batch, num_sampled]: every example against every sampled class
    sampled_logits = F.matmul(x, sampled_w, transpose_b=True) + sampled_b
    if remove_accidental_hits:
        # a sampled class that is one of the example's true classes is pushed out
        hit = F.reduce_any(F.equal(F.expand_dims(lab, 2), F.reshape(sampled, [1, 1, -1])), axis=1)
        sampled_logits = sampled_logits + F.where(hit, F.constant(-FLT_MAX, x.dtype),
                                                  F.zeros_like(sampled_logits))
    if subtract_log_q:
        true_logits = true_logits - F.log(F.cast(true_ec, x.dtype))
        sampled_logits = sampled_logits - F.log(F.cast(sampled_ec, x.dtype))
    out_logits = F.concat([true_logits, sampled_logits], 1)
    out_labels = F.concat([F.ones_like(true_logits) / float(num_true), F.zeros_like(sampled_logits)], 1)
    return out_logits, out_labels


def nce_loss(weights, biases, labels, inputs, num_sampled, num_classes, num_true=1,
             sampled_values=None, remove_accidental_hits=False, name="nce_loss", seed=None,
             partition_strategy="div"):
    """Noise-contrastive estimation loss per example ([batch]), as tf.nn.nce_loss:
    weights [num_classes, dim] (or a list of shards), biases [num_classes], labels
    [batch, num_true] int, inputs [batch, dim]. The mean over the batch is the training
    loss; at evaluation compute the full softmax instead."""
    from . import nn as N
    logits, labels = compute_sampled_logits(
        weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
        True, remove_accidental_hits, partition_strategy, seed, "nce_loss")
    losses = N.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return F.reduce_sum(losses, axis=1)


def sampled_softmax_loss(weights, biases, labels, inputs, num_sampled, num_classes, num_true=1,
                         sampled_values=None, remove_accidental_hits=True, seed=None,
                         name="sampled_softmax_loss", partition_strategy="div"):
    """Sampled softmax loss per example ([batch]), as tf.nn.sampled_softmax_loss: the
    softmax cross-entropy over each example's true classes and the sampled ones (a
    sampled class equal to a true one is removed by default)."""
    from . import nn as N
    logits, labels = compute_sampled_logits(
        weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
        True, remove_accidental_hits, partition_strategy, seed, "sampled_softmax_loss")
    return N.softmax_cross_entropy_with_logits(labels=F.stop_gradient(labels), logits=logits)
