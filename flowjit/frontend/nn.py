"""`fj.nn`: activations, losses and layers' building blocks, composed from core ops
so they fuse (and differentiate) like them. Every loss is numerically stable for
large logits: softmax/log-softmax shift by the row max, the sigmoid cross-entropy uses
max(x, 0) - x*z + log1p(exp(-|x|))."""
from .. import dtypes as D
from ..errors import DTypeError, InvalidArgumentError
from ..ops.rules import as_int, nonzero
from . import api as F
from .api import _is_tensor, _t, sigmoid, tanh  # noqa: F401
from .tensor import apply_op, convert


def _x(x):
    return _t(x) if _is_tensor(x) else convert(x)


def relu(features, name=None):
    return apply_op("relu", [_x(features)])


def relu6(features, name=None):
    x = _x(features)
    # where, not minimum: TF's gradient is 0 at exactly 6 (and at 0)
    return F.where(x >= 6.0, F.zeros_like(x) + 6.0, relu(x))


def leaky_relu(features, alpha=0.2, name=None):
    x = _x(features)
    return F.where(x > 0.0, x, x * alpha)


def elu(features, name=None):
    x = _x(features)
    # expm1 of min(x, 0): the unused branch never overflows, so its gradient stays finite
    return F.where(x > 0.0, x, F.expm1(F.minimum(x, 0.0)))


def softmax(logits, axis=-1, name=None):
    x = _x(logits)
    e = F.exp(x - F.stop_gradient(F.reduce_max(x, axis=axis, keepdims=True)))
    return e / F.reduce_sum(e, axis=axis, keepdims=True)


def log_softmax(logits, axis=-1, name=None):
    x = _x(logits)
    z = x - F.stop_gradient(F.reduce_max(x, axis=axis, keepdims=True))
    return z - F.log(F.reduce_sum(F.exp(z), axis=axis, keepdims=True))


def softmax_cross_entropy_with_logits(labels, logits, axis=-1, name=None):
    x = _x(logits)
    lab = _t(labels) if _is_tensor(labels) else convert(labels, x.dtype)
    return -F.reduce_sum(lab * log_softmax(x, axis), axis=axis)


def sparse_softmax_cross_entropy_with_logits(labels, logits, name=None):
    x = _x(logits)
    lab = _t(labels) if _is_tensor(labels) else convert(labels, D.int64)
    if not lab.dtype.is_integer:
        raise TypeError(f"sparse_softmax_cross_entropy_with_logits: labels must be integers, got "
                        f"{lab.dtype.name}")
    # rows of an identity matrix picked by gather: an out-of-range label raises (as TF
    # does on the CPU) instead of giving an all-zero row and a silent loss of 0
    onehot = F.gather(F.eye(x.shape[-1], dtype=x.dtype), lab)
    return -F.reduce_sum(onehot * log_softmax(x), axis=-1)


def sigmoid_cross_entropy_with_logits(labels=None, logits=None, name=None):
    x = _x(logits)
    z = _t(labels) if _is_tensor(labels) else convert(labels, x.dtype)
    # TF's formulation: its gradient at x == 0 is 0.5 - z
    pos = x >= 0.0
    zero = F.zeros_like(x)
    return F.where(pos, x, zero) - x * z + F.log1p(F.exp(F.where(pos, -x, x)))


def l2_loss(t, name=None):
    x = _x(t)
    return F.reduce_sum(x * x) * 0.5


def bias_add(value, bias, data_format=None, name=None):
    x = _x(value)
    b = _t(bias) if _is_tensor(bias) else convert(bias, x.dtype)
    from ..ir.shapes import hint
    ch = x.shape[1] if data_format in ("NCHW", "NCW", "NCDHW") else x.shape[-1]
    if len(b.shape) != 1 or hint(b.shape[0]) != hint(ch):
        from ..errors import ShapeError
        raise ShapeError(f"bias_add: bias must be 1-D with {hint(ch)} entries (the channel "
                         f"dimension of {tuple(x.shape)}), got shape {tuple(b.shape)}")
    if data_format in ("NCHW", "NCW", "NCDHW"):
        b = F.reshape(b, [-1] + [1] * (len(x.shape) - 2))
    return x + b


def dropout(x, rate, noise_shape=None, seed=None, name=None):
    """Zero each element with probability `rate`, scale the rest by 1/(1-rate)
    (identity when rate is 0); a fresh mask per call, seeded like fj.random."""
    x = _x(x)
    if isinstance(rate, (int, float)):
        if not 0 <= rate < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        if rate == 0:
            return x
    from . import random as R
    shape = x.shape if noise_shape is None else noise_shape
    keep = R.uniform(shape, dtype=x.dtype if x.dtype.is_floating else D.float32, seed=seed) >= rate
    return x * F.cast(keep, x.dtype) * (1.0 / (1.0 - rate))


def moments(x, axes, keepdims=False, name=None):
    x = _x(x)
    mean = F.reduce_mean(x, axis=axes, keepdims=True)
    var = F.reduce_mean(F.square(x - F.stop_gradient(mean)), axis=axes, keepdims=True)
    if not keepdims:
        mean, var = F.squeeze(mean, axes), F.squeeze(var, axes)
    return mean, var


# --- convolution and pooling (ops in flowjit/ops/conv.py) -------------------------------
def _arg_error(op, msg, x):
    from .tensor import user_src
    return InvalidArgumentError(f"{op} (at {user_src()}): {msg} [input: {x.dtype.name}"
                                f"{tuple(x.shape)}]")


def _format(op, data_format, x):
    if data_format not in ("NHWC", "NCHW"):
        raise _arg_error(op, f"data_format must be 'NHWC' or 'NCHW', got {data_format!r}", x)
    if len(x.shape) != 4:
        raise _arg_error(op, f"input must be 4-D ({data_format}), got shape {tuple(x.shape)}", x)
    return data_format == "NCHW"


def _pair(op, what, v, nchw, x):
    """TF's int / [h, w] / [1, h, w, 1] (NHWC) or [1, 1, h, w] (NCHW) as (h, w)."""
    try:        # strict: 1.0 or True is refused, as TF does
        vals = [as_int(a, what) for a in (v if isinstance(v, (list, tuple)) else [v])]
    except DTypeError:
        vals = None
    if vals is None or len(vals) not in (1, 2, 4):
        raise _arg_error(op, f"{what} must be an int or a list of 1, 2 or 4 ints, got {v!r}", x)
    if len(vals) == 4:
        outer = (vals[0], vals[1]) if nchw else (vals[0], vals[3])
        if outer != (1, 1):
            raise _arg_error(op, f"{what} {vals} must be 1 in the batch and channel dimensions", x)
        vals = vals[2:] if nchw else vals[1:3]
    if len(vals) == 1:
        vals = vals * 2
    if min(vals) < 1:
        raise _arg_error(op, f"{what} must be >= 1, got {v!r}", x)
    return tuple(vals)


def _padding(op, padding, nchw, x, explicit_ok):
    if isinstance(padding, str):
        p = padding.upper()
        if p in ("SAME", "VALID"):
            return p
        raise _arg_error(op, f"padding must be 'SAME' or 'VALID', got {padding!r}", x)
    if explicit_ok and isinstance(padding, (list, tuple)) and len(padding) == 4:
        try:
            pads = [tuple(as_int(a, "padding") for a in p) for p in padding]
        except (TypeError, ValueError):
            pads = None
        if pads and all(len(p) == 2 and min(p) >= 0 for p in pads):
            outer, hw = ((pads[0], pads[1]), pads[2:]) if nchw else ((pads[0], pads[3]), pads[1:3])
            if outer == ((0, 0), (0, 0)):
                return tuple(hw)
    raise _arg_error(op, "padding must be 'SAME', 'VALID'" +
                     (" or [[0, 0], [top, bottom], [left, right], [0, 0]] (non-negative ints)"
                      if explicit_ok else "") + f", got {padding!r}", x)


def _to_nhwc(x, nchw):
    return F.transpose(x, [0, 2, 3, 1]) if nchw else x


def _from_nhwc(y, nchw):
    return F.transpose(y, [0, 3, 1, 2]) if nchw else y


def conv2d(input, filters, strides, padding, data_format="NHWC", dilations=1, name=None):
    """2-D convolution, TF semantics: NHWC (or NCHW) input, HWIO filters; strides and
    dilations an int or a list of 2 or 4; padding 'SAME' (the odd pad at the end),
    'VALID', or explicit [[0, 0], [top, bottom], [left, right], [0, 0]]."""
    x = _x(input)
    w = _t(filters) if _is_tensor(filters) else convert(filters, x.dtype)
    nchw = _format("conv2d", data_format, x)
    # TF refuses an empty filter; the shape rule would give a nonsense output size
    if not all(nonzero(d) for d in w.shape):
        raise _arg_error("conv2d", f"filters must not have zero elements (all dimensions must be "
                                   f"non-zero), got filter shape {tuple(w.shape)}", x)
    attrs = {"strides": _pair("conv2d", "strides", strides, nchw, x),
             "dilations": _pair("conv2d", "dilations", dilations, nchw, x),
             "padding": _padding("conv2d", padding, nchw, x, explicit_ok=True)}
    return _from_nhwc(apply_op("conv2d", [_to_nhwc(x, nchw), w], attrs), nchw)


def _pool(op, input, ksize, strides, padding, data_format):
    x = _x(input)
    nchw = _format(op, data_format, x)
    attrs = {"ksize": _pair(op, "ksize", ksize, nchw, x),
             "strides": _pair(op, "strides", strides, nchw, x),
             "padding": _padding(op, padding, nchw, x, explicit_ok=False)}
    return _from_nhwc(apply_op(op, [_to_nhwc(x, nchw)], attrs), nchw)


def max_pool2d(input, ksize, strides, padding, data_format="NHWC", name=None):
    """Max over each window (padding never wins); the gradient goes to the window's first
    maximum in row-major order, as TF's."""
    return _pool("max_pool2d", input, ksize, strides, padding, data_format)


def avg_pool2d(input, ksize, strides, padding, data_format="NHWC", name=None):
    """Mean over each window's elements inside the input (padding is not counted), as TF's."""
    return _pool("avg_pool2d", input, ksize, strides, padding, data_format)


max_pool = max_pool2d
avg_pool = avg_pool2d


def conv2d_transpose(input, filters, output_shape, strides, padding="SAME", data_format="NHWC",
                     dilations=None, name=None):
    """The transposed 2-D convolution (TF's tf.nn.conv2d_transpose): the gradient of
    conv2d(y, filters) with respect to y, for a y of `output_shape`. filters are
    [height, width, output_channels, in_channels] (conv2d's HWIO with input and output
    channels seen from the other side); output_shape is [batch, height, width, channels]
    (NCHW: [batch, channels, height, width]), Python ints or a 1-D tensor (under jit it
    may be computed from sizes, e.g. `[fj.shape(x)[0], 14, 14, 32]`); a conv2d of that
    shape with these strides and padding must give the input's spatial size. It is the
    `conv2d_backprop_input` op (ops/conv.py), whose gradients are conv2d (input) and
    conv2d_backprop_filter (filters)."""
    from ..errors import ShapeError
    from ..ir.shapes import hint, same, unify_dims
    from ..ops.conv import out_size
    from .tensor import user_src
    op = "conv2d_transpose"
    x = _x(input)
    w = _t(filters) if _is_tensor(filters) else convert(filters, x.dtype)
    nchw = _format(op, data_format, x)
    if len(w.shape) != 4:
        raise _arg_error(op, f"filters must be 4-D [height, width, output_channels, in_channels], "
                             f"got shape {tuple(w.shape)}", x)
    if not all(nonzero(d) for d in w.shape):
        raise _arg_error(op, f"filters must not have zero elements, got filter shape "
                             f"{tuple(w.shape)}", x)
    out = F._dims(output_shape, op, "output_shape")
    if len(out) != 4:
        raise _arg_error(op, f"output_shape must have 4 entries ({data_format}), got "
                             f"{[hint(d) for d in out]}", x)
    if nchw:
        out = (out[0], out[2], out[3], out[1])
    attrs = {"strides": _pair(op, "strides", strides, nchw, x),
             "dilations": _pair(op, "dilations", 1 if dilations is None else dilations, nchw, x),
             "padding": _padding(op, padding, nchw, x, explicit_ok=True)}
    xh = _to_nhwc(x, nchw)
    xs, ws = tuple(xh.shape), tuple(w.shape)
    shown = [hint(d) for d in ((out[0], out[3], out[1], out[2]) if nchw else out)]

    def where():
        return (f"(input {tuple(hint(d) for d in x.shape)}, filters {tuple(hint(d) for d in ws)}, "
                f"output_shape {shown})")

    def agree(a, b, what):
        if same(a, b):
            return
        if hint(a) != hint(b):
            raise ShapeError(f"{op} (at {user_src()}): {what} {where()}")
        unify_dims(a, b)
    agree(xs[3], ws[3], f"the input has {hint(xs[3])} channels but the filters expect "
                        f"{hint(ws[3])} (their last dimension, in_channels)")
    agree(out[3], ws[2], f"output_shape asks for {hint(out[3])} channels but the filters make "
                         f"{hint(ws[2])} (their third dimension, output_channels)")
    agree(out[0], xs[0], f"output_shape has batch size {hint(out[0])} but the input has "
                         f"{hint(xs[0])}")
    pad = attrs["padding"]
    got = []
    for k in (0, 1):
        p = pad if isinstance(pad, str) else tuple(pad[k])
        got.append(out_size(hint(out[1 + k]), hint(ws[k]), attrs["strides"][k], attrs["dilations"][k], p)[0])
    if got != [hint(xs[1]), hint(xs[2])]:
        raise ShapeError(f"{op} (at {user_src()}): output_shape does not match the input: a conv2d "
                         f"of a {hint(out[1])}x{hint(out[2])} image with {hint(ws[0])}x{hint(ws[1])} "
                         f"filters, strides {list(attrs['strides'])} and padding "
                         f"{pad if isinstance(pad, str) else [list(q) for q in pad]} gives "
                         f"{got[0]}x{got[1]}, but the input is {hint(xs[1])}x{hint(xs[2])} {where()}")
    attrs["input_shape"] = tuple(out)
    return _from_nhwc(apply_op("conv2d_backprop_input", [xh, w], attrs), nchw)


# --- normalisation and lookups ------------------------------------------------------------
def batch_normalization(x, mean, variance, offset, scale, variance_epsilon, name=None):
    """(x - mean) * scale / sqrt(variance + epsilon) + offset, in TF's arrangement:
    inv = rsqrt(variance + epsilon) * scale; x * inv + (offset - mean * inv). offset and
    scale may be None. Composed, so it fuses with what is around it."""
    x = _x(x)

    def arg(v):
        return _t(v) if _is_tensor(v) else convert(v, x.dtype)
    inv = F.rsqrt(arg(variance) + variance_epsilon)
    if scale is not None:
        inv = inv * arg(scale)
    shift = -arg(mean) * inv if offset is None else arg(offset) - arg(mean) * inv
    return x * F.cast(inv, x.dtype) + F.cast(shift, x.dtype)


def embedding_lookup(params, ids, max_norm=None, name=None, partition_strategy="div"):
    """The rows of `params` at `ids` (a gather along axis 0: an out-of-range id raises).
    params may be a list of shards of one table, split by `partition_strategy`: "div"
    (consecutive rows per shard; TF2's) or "mod" (row r in shard r % n; TF1's default).
    max_norm: each looked-up row scaled down to an L2 norm of at most max_norm."""
    from .tensor import user_src
    shards = list(params) if isinstance(params, (list, tuple)) else [params]
    if not shards:
        raise ValueError(f"embedding_lookup (at {user_src()}): params must not be empty")
    shards = [_t(p) if _is_tensor(p) else convert(p) for p in shards]
    i = _t(ids) if _is_tensor(ids) else convert(ids, D.int64)
    if not i.dtype.is_integer:
        raise DTypeError(f"embedding_lookup (at {user_src()}): ids must be integers, got {i.dtype.name}")
    if len(shards) == 1:
        out = F.gather(shards[0], i)
    elif partition_strategy == "div":
        out = F.gather(F.concat(shards, 0), i)
    elif partition_strategy == "mod":
        import numpy as np
        n = len(shards)
        sizes = [int(p.shape[0]) for p in shards]
        offsets = np.cumsum([0] + sizes[:-1]).astype(np.int64)
        # an id past the table would land in another shard's rows: a gather from
        # range(total) passes the valid ones through and raises for the others
        i64 = F.gather(F.range(sum(sizes), dtype=D.int64), F.cast(i, D.int64))
        flat = F.gather(F.constant(offsets), F.floormod(i64, n)) + F.floordiv(i64, n)
        out = F.gather(F.concat(shards, 0), flat)
    else:
        raise ValueError(f"embedding_lookup (at {user_src()}): partition_strategy must be 'div' "
                         f"or 'mod', got {partition_strategy!r}")
    if max_norm is not None:
        axes = list(range(len(i.shape), len(out.shape)))
        sq = F.reduce_sum(F.square(out), axis=axes, keepdims=True)
        norm = F.sqrt(F.where(sq > 0.0, sq, F.ones_like(sq)))
        norm = F.where(sq > 0.0, norm, F.zeros_like(sq))
        out = out * max_norm / F.maximum(norm, max_norm)
    return out


# ops that name themselves public in fj.nn (ir/registry.OpDef.api)
globals().update({k: v for k, v in F.public_ops("nn").items() if k not in globals()})


# recurrent cells and layers (on fj.scan)
from .rnn import dynamic_rnn, gru, gru_cell, lstm, lstm_cell, simple_rnn, simple_rnn_cell  # noqa: E402,F401

# sampled losses for big vocabularies (candidate_sampling.py)
from .candidate_sampling import nce_loss, sampled_softmax_loss  # noqa: E402,F401
from .random import log_uniform_candidate_sampler, uniform_candidate_sampler  # noqa: E402,F401
