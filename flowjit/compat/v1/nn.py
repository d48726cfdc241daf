"""`tf.nn` with TF1's signatures, delegating to `fj.nn`."""
from ... import dtypes as D
from ...frontend import api as F
from ...frontend import nn as N
from .errors import UnimplementedError
from .graph import Tensor, make_op
from .ops import apply, static_or_tensor, static_value, sigmoid, tanh  # noqa: F401
from .random_ops import draw, get_seed
from .random_ops import log_uniform_candidate_sampler, uniform_candidate_sampler  # noqa: F401


def _unary(type_, fn):
    def f(features, name=None):
        return apply(type_, fn, (features,), name=name)
    f.__name__ = fn.__name__
    return f


relu = _unary("Relu", N.relu)
relu6 = _unary("Relu6", N.relu6)
elu = _unary("Elu", N.elu)
softsign = _unary("Softsign", lambda x: x / (F.abs(x) + 1.0))


def leaky_relu(features, alpha=0.2, name=None):
    return apply("LeakyRelu", lambda x: N.leaky_relu(x, alpha), (features,), name=name)


def softmax(logits, axis=None, name=None, dim=None):
    ax = -1 if axis is None and dim is None else (axis if axis is not None else dim)
    return apply("Softmax", lambda x: N.softmax(x, ax), (logits,), name=name)


def log_softmax(logits, axis=None, name=None, dim=None):
    ax = -1 if axis is None and dim is None else (axis if axis is not None else dim)
    return apply("LogSoftmax", lambda x: N.log_softmax(x, ax), (logits,), name=name)


def _named_only(fname, sentinel):
    if sentinel is not None:
        raise ValueError(f"Only call `{fname}` with named arguments (labels=..., logits=..., ...)")


def softmax_cross_entropy_with_logits(_sentinel=None, labels=None, logits=None, dim=-1, name=None,
                                      axis=None):
    _named_only("softmax_cross_entropy_with_logits", _sentinel)
    ax = dim if axis is None else axis
    return apply("SoftmaxCrossEntropyWithLogits",
                 lambda lab, x: N.softmax_cross_entropy_with_logits(F.stop_gradient(lab), x, ax),
                 (labels, logits), name=name)


def softmax_cross_entropy_with_logits_v2(_sentinel=None, labels=None, logits=None, axis=None,
                                         name=None, dim=None):
    _named_only("softmax_cross_entropy_with_logits_v2", _sentinel)
    ax = -1 if axis is None and dim is None else (axis if axis is not None else dim)
    return apply("SoftmaxCrossEntropyWithLogits",
                 lambda lab, x: N.softmax_cross_entropy_with_logits(lab, x, ax),
                 (labels, logits), name=name)


def sparse_softmax_cross_entropy_with_logits(_sentinel=None, labels=None, logits=None, name=None):
    _named_only("sparse_softmax_cross_entropy_with_logits", _sentinel)
    return apply("SparseSoftmaxCrossEntropyWithLogits", N.sparse_softmax_cross_entropy_with_logits,
                 (labels, logits), name=name)


def sigmoid_cross_entropy_with_logits(_sentinel=None, labels=None, logits=None, name=None):
    _named_only("sigmoid_cross_entropy_with_logits", _sentinel)
    return apply("SigmoidCrossEntropyWithLogits", N.sigmoid_cross_entropy_with_logits,
                 (), {"labels": labels, "logits": logits}, name=name)


def l2_loss(t, name=None):
    return apply("L2Loss", N.l2_loss, (t,), name=name)


def bias_add(value, bias, data_format=None, name=None):
    return apply("BiasAdd", lambda x, b: N.bias_add(x, b, data_format), (value, bias), name=name)


def xw_plus_b(x, weights, biases, name=None):
    return apply("xw_plus_b", lambda a, w, b: N.bias_add(F.matmul(a, w), b), (x, weights, biases),
                 name=name)


def embedding_lookup(params, ids, partition_strategy="mod", name=None, validate_indices=True,
                     max_norm=None):
    if isinstance(params, (list, tuple)) and len(params) == 1:
        params = params[0]
    if isinstance(params, (list, tuple)) or max_norm is not None:
        return apply("embedding_lookup",
                     lambda p, i: N.embedding_lookup(p, i, max_norm=max_norm,
                                                     partition_strategy=partition_strategy),
                     (list(params) if isinstance(params, (list, tuple)) else params, ids), name=name,
                     default_name="embedding_lookup")
    return apply("GatherV2", lambda p, i: F.gather(p, i, 0), (params, ids), name=name,
                 default_name="embedding_lookup")


def batch_normalization(x, mean, variance, offset, scale, variance_epsilon, name=None):
    return apply("batchnorm", N.batch_normalization, (x, mean, variance, offset, scale,
                                                      variance_epsilon), name=name,
                 default_name="batchnorm")


def _sampled(kind, fn, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
             sampled_values, remove_accidental_hits, partition_strategy, name, seed):
    if sampled_values is None:
        # the draws are an op of their own (as in TF): stateful, fresh on every run
        lab = apply("Cast", lambda v: F.cast(v, D.int64), (labels,))
        sampled_values = log_uniform_candidate_sampler(lab, num_true, num_sampled, True,
                                                       num_classes, seed=seed)
    w = list(weights) if isinstance(weights, (list, tuple)) else weights
    b = list(biases) if isinstance(biases, (list, tuple)) else biases
    return apply(kind, lambda w_, b_, l_, x_, sv: fn(
        w_, b_, l_, x_, num_sampled, num_classes, num_true, sampled_values=tuple(sv),
        remove_accidental_hits=remove_accidental_hits, partition_strategy=partition_strategy),
        (w, b, labels, inputs, list(sampled_values)), name=name, default_name=kind)


def nce_loss(weights, biases, labels, inputs, num_sampled, num_classes, num_true=1,
             sampled_values=None, remove_accidental_hits=False, partition_strategy="mod",
             name="nce_loss"):
    """tf.nn.nce_loss (fj.nn.nce_loss; TF1's default partition_strategy "mod")."""
    return _sampled("nce_loss", N.nce_loss, weights, biases, labels, inputs, num_sampled,
                    num_classes, num_true, sampled_values, remove_accidental_hits,
                    partition_strategy, name, None)


def sampled_softmax_loss(weights, biases, labels, inputs, num_sampled, num_classes, num_true=1,
                         sampled_values=None, remove_accidental_hits=True, partition_strategy="mod",
                         name="sampled_softmax_loss", seed=None):
    """tf.nn.sampled_softmax_loss (fj.nn.sampled_softmax_loss)."""
    return _sampled("sampled_softmax_loss", N.sampled_softmax_loss, weights, biases, labels,
                    inputs, num_sampled, num_classes, num_true, sampled_values,
                    remove_accidental_hits, partition_strategy, name, seed)


def moments(x, axes, shift=None, name=None, keep_dims=None, keepdims=None):
    ax = static_value(axes, "moments axes")
    kd = bool(keepdims if keepdims is not None else (keep_dims or False))
    return tuple(apply("Moments", lambda v: list(N.moments(v, ax, kd)), (x,), name=name,
                       default_name="moments", multi=True))


def dropout(x, keep_prob=None, noise_shape=None, seed=None, name=None, rate=None):
    """TF1: x / keep_prob * floor(keep_prob + uniform) (keep_prob may be a fed tensor;
    rate = 1 - keep_prob). A fresh mask every run."""
    if (keep_prob is None) == (rate is None):
        raise ValueError("dropout: give exactly one of keep_prob and rate")
    if keep_prob is None:
        keep_prob = (1.0 - rate) if not isinstance(rate, Tensor) else apply("Sub", F.subtract, (1.0, rate))
    if isinstance(keep_prob, (int, float)) and not 0 < keep_prob <= 1:
        raise ValueError(f"dropout: keep_prob must be in (0, 1], got {keep_prob}")
    ns = None if noise_shape is None else static_value(noise_shape, "dropout noise_shape")
    inputs = [x] + ([keep_prob] if isinstance(keep_prob, Tensor) else [])
    holder = {}

    def compute(ev, xv, *kp):
        kp = kp[0] if kp else keep_prob
        if not isinstance(kp, (int, float)):
            kp = F.cast(kp, xv.dtype)
        u = draw(ev, holder["op"], "uniform", ns if ns is not None else tuple(xv.shape), xv.dtype)
        return [xv / kp * F.floor(u + kp)]

    op = make_op("Dropout", compute, inputs, name=name, default_name="dropout", stateful=True,
                 out_specs=[(x.dtype, x.shape)])
    holder["op"] = op
    op.attrs["seed"] = get_seed(seed, op._id)
    return op.outputs[0]


def _need(fn_name, tf_name):
    fn = getattr(N, fn_name, None)
    if fn is None:
        raise UnimplementedError(f"tf.nn.{tf_name} needs fj.nn.{fn_name}, which this flowjit build "
                                 f"does not have yet")
    return fn


def conv2d(input, filter=None, strides=None, padding=None, use_cudnn_on_gpu=True, data_format="NHWC",
           dilations=(1, 1, 1, 1), name=None, filters=None):
    fn = _need("conv2d", "conv2d")
    w = filter if filter is not None else filters
    st = static_value(strides, "conv2d strides")
    dil = static_value(dilations, "conv2d dilations")
    kw = {"data_format": data_format}
    if dil not in (1, [1, 1], [1, 1, 1, 1]):
        kw["dilations"] = dil
    return apply("Conv2D", lambda x, k: fn(x, k, st, padding, **kw), (input, w), name=name)


def max_pool(value, ksize, strides, padding, data_format="NHWC", name=None, input=None):
    fn = _need("max_pool2d", "max_pool")
    x = value if value is not None else input
    ks, st = static_value(ksize, "max_pool ksize"), static_value(strides, "max_pool strides")
    return apply("MaxPool", lambda v: fn(v, ks, st, padding, data_format=data_format), (x,), name=name)


def avg_pool(value, ksize, strides, padding, data_format="NHWC", name=None, input=None):
    fn = _need("avg_pool2d", "avg_pool")
    x = value if value is not None else input
    ks, st = static_value(ksize, "avg_pool ksize"), static_value(strides, "avg_pool strides")
    return apply("AvgPool", lambda v: fn(v, ks, st, padding, data_format=data_format), (x,),
                 name=name)


max_pool2d, avg_pool2d = max_pool, avg_pool


def conv2d_transpose(value=None, filter=None, output_shape=None, strides=None, padding="SAME",
                     data_format="NHWC", name=None, input=None, filters=None, dilations=None):
    """tf.nn.conv2d_transpose (fj.nn.conv2d_transpose); output_shape may be computed in
    the graph (`tf.stack([tf.shape(x)[0], 14, 14, 32])`)."""
    x = value if value is not None else input
    w = filter if filter is not None else filters
    st = static_value(strides, "conv2d_transpose strides")
    dil = None if dilations is None else static_value(dilations, "conv2d_transpose dilations")
    os_, ot = static_or_tensor(output_shape, "conv2d_transpose output_shape")

    def fn(v, k, *shape):
        return N.conv2d_transpose(v, k, shape[0] if shape else os_, st, padding, data_format, dil)
    return apply("Conv2DBackpropInput", fn, (x, w) + ((ot,) if ot is not None else ()), name=name,
                 default_name="conv2d_transpose")


def _camel(name):
    return "".join(part.capitalize() for part in name.split("_"))


# ops that name themselves public in fj.nn (ir/registry.OpDef.api), under TF1's op types
def _op(type_, fn):
    def f(*xs, name=None):
        return apply(type_, fn, xs, name=name)
    f.__name__ = fn.__name__
    return f


globals().update({k: _op(_camel(k), v) for k, v in F.public_ops("nn").items() if k not in globals()})


# recurrent networks (rnn.py, rnn_cell.py); imported last: the cells use dropout above
from . import rnn_cell  # noqa: E402
from .rnn import (  # noqa: E402,F401
    bidirectional_dynamic_rnn, dynamic_rnn, static_bidirectional_rnn, static_rnn,
)
