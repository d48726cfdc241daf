"""`tf.nn` with TF1's signatures, delegating to `fj.nn`."""
from ...frontend import api as F
from ...frontend import nn as N
from .errors import UnimplementedError
from .graph import Tensor, make_op
from .ops import apply, static_value, sigmoid, tanh  # noqa: F401
from .random_ops import draw, get_seed


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
    if isinstance(params, (list, tuple)):
        if len(params) != 1:
            raise UnimplementedError("embedding_lookup over several shards is not supported")
        params = params[0]
    return apply("GatherV2", lambda p, i: F.gather(p, i, 0), (params, ids), name=name,
                 default_name="embedding_lookup")


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
