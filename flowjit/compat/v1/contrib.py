"""`tf.contrib`: the parts of TF 1.15's contrib that classic programs use.

- `tf.contrib.layers`: initializers (xavier_initializer, variance_scaling_initializer),
  fully_connected / conv2d / conv2d_transpose / batch_norm / dropout (variables
  `fully_connected/weights`, `Conv/biases`, `BatchNorm/moving_mean`, ..., made by the
  tf.layers classes through TF1's renaming custom getter, and also put in
  tf.GraphKeys.MODEL_VARIABLES), max_pool2d / avg_pool2d / flatten, the l1/l2
  regularizers and apply_regularization;
- `tf.contrib.rnn`: the RNN cells of rnn.py;
- `tf.contrib.framework`: the global-step helpers and get_variables.

Anything else (`tf.contrib.learn`, `factorization`, `slim`, ..., or a name missing
from a namespace above) raises tf.errors.UnimplementedError naming it and what to use
instead; the error is also an AttributeError, so hasattr() answers False.
"""
import math
import numbers
import re

from ... import dtypes as D
from . import layers as _L
from . import nn as _nn
from . import ops as O
from . import rnn as _rnn
from . import train as _train
from .errors import UnimplementedError
from .graph import GraphKeys, Tensor, get_default_graph
from .layers import MissingFeatureError
from .random_ops import random_uniform, truncated_normal
from .scopes import (
    REGULARIZATION_LOSSES, VariableScope, _Init, ones_initializer, variable_scope, zeros_initializer,
)


class _Namespace:
    """A contrib namespace: its members, then (optionally) another object's attributes;
    any other name raises MissingFeatureError naming `<path>.<name>` with `advice`."""

    def __init__(self, path, members=None, fallback=None, advice=""):
        self.__dict__.update(members or {})
        self._path, self._fallback, self._advice = path, fallback, advice

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        fb = self.__dict__.get("_fallback")
        if fb is not None:
            try:
                return getattr(fb, name)
            except AttributeError:
                pass
        raise MissingFeatureError(f"{self._path}.{name} is not implemented in flowjit.compat.v1. "
                                  f"{self._advice}".rstrip())

    def __dir__(self):
        names = [k for k in self.__dict__ if not k.startswith("_")]
        if self._fallback is not None:
            names += [k for k in dir(self._fallback) if not k.startswith("_")]
        return sorted(set(names))

    def __repr__(self):
        return f"<{self._path} (flowjit.compat.v1)>"


# --- initializers --------------------------------------------------------------------------------
class variance_scaling_initializer(_Init):
    """contrib's variance scaling: n = fan_in, fan_out or their mean (fans over the last
    two dims times the receptive field); uniform(-sqrt(3 factor / n), +...) or a
    normal truncated at 2 stddev with stddev sqrt(1.3 factor / n)."""

    def __init__(self, factor=2.0, mode="FAN_IN", uniform=False, seed=None, dtype=D.float32):
        if not D.as_dtype(dtype).is_floating:
            raise TypeError("Cannot create initializer for non-floating point type.")
        if mode not in ("FAN_IN", "FAN_OUT", "FAN_AVG"):
            raise TypeError(f"Unknown mode {mode} [FAN_IN, FAN_AVG, FAN_OUT]")
        self.factor, self.mode, self.uniform, self.seed, self.dtype = factor, mode, uniform, seed, dtype

    def make(self, shape, dtype):
        if not dtype.is_floating:
            raise TypeError("Cannot create initializer for non-floating point type.")
        if shape:
            fan_in = float(shape[-2]) if len(shape) > 1 else float(shape[-1])
            fan_out = float(shape[-1])
        else:
            fan_in = fan_out = 1.0
        for d in shape[:-2]:
            fan_in *= float(d)
            fan_out *= float(d)
        n = {"FAN_IN": fan_in, "FAN_OUT": fan_out, "FAN_AVG": (fan_in + fan_out) / 2.0}[self.mode]
        if self.uniform:
            limit = math.sqrt(3.0 * self.factor / n)
            return random_uniform(shape, -limit, limit, dtype, self.seed)
        return truncated_normal(shape, 0.0, math.sqrt(1.3 * self.factor / n), dtype, self.seed)


def xavier_initializer(uniform=True, seed=None, dtype=D.float32):
    """Glorot/Xavier: variance_scaling_initializer(1.0, 'FAN_AVG', uniform)."""
    return variance_scaling_initializer(factor=1.0, mode="FAN_AVG", uniform=uniform, seed=seed, dtype=dtype)


xavier_initializer_conv2d = xavier_initializer


# --- regularizers --------------------------------------------------------------------------------
def _check_scale(scale):
    if isinstance(scale, numbers.Integral):
        raise ValueError(f"scale cannot be an integer: {scale}")
    if isinstance(scale, numbers.Real):
        if scale < 0.0:
            raise ValueError(f"Setting a scale less than 0 on a regularizer: {scale:g}.")
        if scale == 0.0:
            return False
    return True


def l1_regularizer(scale, scope=None):
    """weights -> scale * sum(|weights|) (None when scale is 0)."""
    if not _check_scale(scale):
        return lambda _: None

    def l1(weights):
        with get_default_graph().name_scope(scope or "l1_regularizer"):
            s = O.convert_to_tensor(scale, dtype=weights.dtype, name="scale")
            return O.multiply(s, O.reduce_sum(O.abs(weights)))
    return l1


def l2_regularizer(scale, scope=None):
    """weights -> scale * sum(weights ** 2) / 2 (tf.nn.l2_loss; None when scale is 0)."""
    if not _check_scale(scale):
        return lambda _: None

    def l2(weights):
        with get_default_graph().name_scope(scope or "l2_regularizer"):
            s = O.convert_to_tensor(scale, dtype=weights.dtype, name="scale")
            return O.multiply(s, _nn.l2_loss(weights))
    return l2


def sum_regularizer(regularizer_list, scope=None):
    """weights -> the sum of the regularizers' penalties (those not None)."""
    regs = [r for r in regularizer_list if r is not None]
    if not regs:
        return None

    def total(weights):
        with get_default_graph().name_scope(scope or "sum_regularizer"):
            pens = [p for p in (r(weights) for r in regs) if p is not None]
            return O.add_n(pens) if pens else None
    return total


def l1_l2_regularizer(scale_l1=1.0, scale_l2=1.0, scope=None):
    if isinstance(scale_l1, numbers.Real) and isinstance(scale_l2, numbers.Real) \
            and scale_l1 == 0.0 and scale_l2 == 0.0:
        return lambda _: None
    return sum_regularizer([l1_regularizer(scale_l1), l2_regularizer(scale_l2)],
                           scope=scope or "l1_l2_regularizer")


def apply_regularization(regularizer, weights_list=None):
    """The sum of regularizer(w) over weights_list (default: tf.GraphKeys.WEIGHTS), also
    added to tf.GraphKeys.REGULARIZATION_LOSSES."""
    g = get_default_graph()
    if not weights_list:
        weights_list = g.get_collection(GraphKeys.WEIGHTS)
    if not weights_list:
        raise ValueError("No weights to regularize.")
    with g.name_scope("get_regularization_penalty"):
        pens = [regularizer(w) for w in weights_list]
        pens = [p if p is not None else O.constant(0.0) for p in pens]
        for p in pens:
            if p.shape.ndims != 0:
                raise ValueError(f"regularizer must return a scalar Tensor instead of a Tensor with rank "
                                 f"{p.shape.ndims}.")
        total = O.add_n(pens)
    g.add_to_collection(REGULARIZATION_LOSSES, total)
    return total


# --- layers ------------------------------------------------------------------------------------
def _model_variable_getter(getter, name, rename=None, collections=None, **kwargs):
    """contrib's getter: renames kernel/bias to weights/biases and adds the variable to
    tf.GraphKeys.MODEL_VARIABLES."""
    short = name.split("/")[-1]
    if rename and short in rename:
        name = "/".join(name.split("/")[:-1] + [rename[short]])
    cols = list(collections or [])
    for c in (GraphKeys.GLOBAL_VARIABLES, GraphKeys.MODEL_VARIABLES):
        if c not in cols:
            cols.append(c)
    return getter(name, collections=cols, **kwargs)


def _layer_variable_getter(rename=None):
    def getter(getter, *args, **kwargs):
        kwargs["rename"] = rename
        return _model_variable_getter(getter, *args, **kwargs)
    return getter


_KERNEL_RENAME = {"bias": "biases", "kernel": "weights"}


def _add_variable_to_collections(variable, collections_set, collections_name):
    if isinstance(collections_set, dict):
        cols = collections_set.get(collections_name) or []
    else:
        cols = collections_set or []
    g = get_default_graph()
    for c in ([cols] if isinstance(cols, str) else cols):
        if all(v is not variable for v in g.get_collection(c)):
            g.add_to_collection(c, variable)


def _collect_named_outputs(collections, alias, outputs):
    if collections:
        outputs.alias = alias
        g = get_default_graph()
        for c in ([collections] if isinstance(collections, str) else collections):
            g.add_to_collection(c, outputs)
    return outputs


def _check_num(num_outputs):
    if not isinstance(num_outputs, numbers.Integral):
        raise ValueError(f"num_outputs type should be one of [<class 'int'>], got {type(num_outputs)}.")


def _finish(sc, layer, outputs, normalizer_fn, normalizer_params, activation_fn, variables_collections,
            outputs_collections):
    _add_variable_to_collections(layer.kernel, variables_collections, "weights")
    if layer.bias is not None:
        _add_variable_to_collections(layer.bias, variables_collections, "biases")
    if normalizer_fn is not None:
        outputs = normalizer_fn(outputs, **(normalizer_params or {}))
    if activation_fn is not None:
        outputs = activation_fn(outputs)
    return _collect_named_outputs(outputs_collections, sc.name, outputs)


def fully_connected(inputs, num_outputs, activation_fn=_nn.relu, normalizer_fn=None, normalizer_params=None,
                    weights_initializer=xavier_initializer(), weights_regularizer=None,
                    biases_initializer=zeros_initializer(), biases_regularizer=None, reuse=None,
                    variables_collections=None, outputs_collections=None, trainable=True, scope=None):
    """activation_fn(inputs @ weights + biases): variables `<scope or fully_connected_N>/weights`
    and `/biases` (no biases when normalizer_fn is given)."""
    _check_num(num_outputs)
    with variable_scope(scope, "fully_connected", [inputs], reuse=reuse,
                        custom_getter=_layer_variable_getter(_KERNEL_RENAME)) as sc:
        inputs = O.convert_to_tensor(inputs)
        layer = _L.Dense(num_outputs, activation=None,
                         use_bias=not normalizer_fn and biases_initializer is not None,
                         kernel_initializer=weights_initializer, bias_initializer=biases_initializer,
                         kernel_regularizer=weights_regularizer, bias_regularizer=biases_regularizer,
                         trainable=trainable, name=sc.name, dtype=inputs.dtype, _scope=sc, _reuse=reuse)
        outputs = layer.apply(inputs)
        return _finish(sc, layer, outputs, normalizer_fn, normalizer_params, activation_fn,
                       variables_collections, outputs_collections)


def linear(inputs, num_outputs, **kwargs):
    """fully_connected without an activation."""
    kwargs["activation_fn"] = None
    return fully_connected(inputs, num_outputs, **kwargs)


def convolution2d(inputs, num_outputs, kernel_size, stride=1, padding="SAME", data_format=None, rate=1,
                  activation_fn=_nn.relu, normalizer_fn=None, normalizer_params=None,
                  weights_initializer=xavier_initializer(), weights_regularizer=None,
                  biases_initializer=zeros_initializer(), biases_regularizer=None, reuse=None,
                  variables_collections=None, outputs_collections=None, trainable=True, scope=None):
    """contrib's 2-D convolution: variables `<scope or Conv_N>/weights` [kh, kw, in, out]
    and `/biases`; padding 'SAME' and activation relu by default."""
    with variable_scope(scope, "Conv", [inputs], reuse=reuse,
                        custom_getter=_layer_variable_getter(_KERNEL_RENAME)) as sc:
        inputs = O.convert_to_tensor(inputs)
        if inputs.shape.ndims != 4:
            raise ValueError(f"Convolution expects input with rank 4, got {inputs.shape.ndims}")
        if data_format is None or data_format == "NHWC":
            df = "channels_last"
        elif data_format == "NCHW":
            df = "channels_first"
        else:
            raise ValueError(f"Invalid data_format: {data_format!r}")
        layer = _L.Conv2D(num_outputs, kernel_size, strides=stride, padding=padding, data_format=df,
                          dilation_rate=rate, activation=None,
                          use_bias=not normalizer_fn and biases_initializer is not None,
                          kernel_initializer=weights_initializer, bias_initializer=biases_initializer,
                          kernel_regularizer=weights_regularizer, bias_regularizer=biases_regularizer,
                          trainable=trainable, name=sc.name, dtype=inputs.dtype, _scope=sc, _reuse=reuse)
        outputs = layer.apply(inputs)
        return _finish(sc, layer, outputs, normalizer_fn, normalizer_params, activation_fn,
                       variables_collections, outputs_collections)


conv2d = convolution2d


def convolution2d_transpose(inputs, num_outputs, kernel_size, stride=1, padding="SAME", data_format="NHWC",
                            activation_fn=_nn.relu, normalizer_fn=None, normalizer_params=None,
                            weights_initializer=xavier_initializer(), weights_regularizer=None,
                            biases_initializer=zeros_initializer(), biases_regularizer=None, reuse=None,
                            variables_collections=None, outputs_collections=None, trainable=True,
                            scope=None):
    """contrib's transposed convolution: variables `<scope or Conv2d_transpose_N>/weights`
    [kh, kw, out, in] and `/biases`."""
    with variable_scope(scope, "Conv2d_transpose", [inputs], reuse=reuse,
                        custom_getter=_layer_variable_getter(_KERNEL_RENAME)) as sc:
        if data_format not in ("NCHW", "NHWC"):
            raise ValueError("data_format has to be either NCHW or NHWC.")
        inputs = O.convert_to_tensor(inputs)
        df = "channels_first" if data_format.startswith("NC") else "channels_last"
        layer = _L.Conv2DTranspose(num_outputs, kernel_size, strides=stride, padding=padding, data_format=df,
                                   activation=None,
                                   use_bias=not normalizer_fn and biases_initializer is not None,
                                   kernel_initializer=weights_initializer, bias_initializer=biases_initializer,
                                   kernel_regularizer=weights_regularizer, bias_regularizer=biases_regularizer,
                                   trainable=trainable, name=sc.name, dtype=inputs.dtype, _scope=sc,
                                   _reuse=reuse)
        outputs = layer.apply(inputs)
        return _finish(sc, layer, outputs, normalizer_fn, normalizer_params, activation_fn,
                       variables_collections, outputs_collections)


conv2d_transpose = convolution2d_transpose


def _pool(kind, default, inputs, kernel_size, stride, padding, data_format, outputs_collections, scope):
    if data_format not in ("NCHW", "NHWC"):
        raise ValueError("data_format has to be either NCHW or NHWC.")
    g = get_default_graph()
    with g.name_scope(scope or default) as sc:
        inputs = O.convert_to_tensor(inputs)
        k = _L._tuple(kernel_size, 2, "pool_size")
        s = _L._tuple(stride, 2, "strides")
        ks, st, fmt = _L._conv_args(k, s, data_format == "NCHW")
        fn = _nn.max_pool if kind == "max" else _nn.avg_pool
        out = fn(inputs, ksize=ks, strides=st, padding=_L._padding(padding).upper(), data_format=fmt)
        return _collect_named_outputs(outputs_collections, sc, out)


def max_pool2d(inputs, kernel_size, stride=2, padding="VALID", data_format="NHWC", outputs_collections=None,
               scope=None):
    """Max pooling, stride 2 and 'VALID' by default (ops under `MaxPool2D/`)."""
    return _pool("max", "MaxPool2D", inputs, kernel_size, stride, padding, data_format, outputs_collections,
                 scope)


def avg_pool2d(inputs, kernel_size, stride=2, padding="VALID", data_format="NHWC", outputs_collections=None,
               scope=None):
    """Average pooling, stride 2 and 'VALID' by default (ops under `AvgPool2D/`)."""
    return _pool("avg", "AvgPool2D", inputs, kernel_size, stride, padding, data_format, outputs_collections,
                 scope)


def flatten(inputs, outputs_collections=None, scope=None):
    """[batch, ...] -> [batch, k] (ops under `Flatten/`)."""
    g = get_default_graph()
    with g.name_scope(scope or "Flatten") as sc:
        inputs = O.convert_to_tensor(inputs)
        if inputs.shape.ndims is None:
            raise ValueError("Inputs rank must be known")
        if inputs.shape.ndims < 2:
            raise ValueError("Inputs must have a least 2 dimensions.")
        return _collect_named_outputs(outputs_collections, sc, _L.flatten(inputs))


def dropout(inputs, keep_prob=0.5, noise_shape=None, is_training=True, outputs_collections=None, scope=None,
            seed=None):
    """contrib's dropout: keeps a fraction keep_prob (is_training True by default)."""
    with variable_scope(scope, "Dropout", [inputs], custom_getter=_model_variable_getter) as sc:
        inputs = O.convert_to_tensor(inputs)
        rate = (1 - keep_prob) if not isinstance(keep_prob, Tensor) else O.subtract(1.0, keep_prob)
        layer = _L.Dropout(rate=rate, noise_shape=noise_shape, seed=seed, name=sc.name, _scope=sc)
        return _collect_named_outputs(outputs_collections, sc.name, layer.apply(inputs, training=is_training))


def batch_norm(inputs, decay=0.999, center=True, scale=False, epsilon=0.001, activation_fn=None,
               param_initializers=None, param_regularizers=None, updates_collections=GraphKeys.UPDATE_OPS,
               is_training=True, reuse=None, variables_collections=None, outputs_collections=None,
               trainable=True, batch_weights=None, fused=None, data_format="NHWC",
               zero_debias_moving_mean=False, scope=None, renorm=False, renorm_clipping=None,
               renorm_decay=0.99, adjustment=None):
    """contrib's batch norm (decay 0.999, no gamma, training by default): variables
    `<scope or BatchNorm_N>/beta`, `/moving_mean`, `/moving_variance` (and `/gamma` with
    scale=True). Its update ops go to updates_collections (tf.GraphKeys.UPDATE_OPS), or
    run with the outputs when updates_collections is None. As TF 1.15 (fused kernel for
    rank 2 and 4 inputs), the moving variance follows the unbiased batch variance."""
    for what, v in (("batch_weights", batch_weights), ("renorm", renorm), ("adjustment", adjustment),
                    ("zero_debias_moving_mean", zero_debias_moving_mean)):
        if v:
            raise UnimplementedError(f"tf.contrib.layers.batch_norm: {what} is not supported by "
                                     f"flowjit.compat.v1")
    if data_format not in ("NCHW", "NHWC"):
        raise ValueError("data_format has to be either NCHW or NHWC.")
    inputs = O.convert_to_tensor(inputs)
    rank = inputs.shape.ndims
    if rank is None:
        raise ValueError(f"Inputs {inputs.name} has undefined rank.")
    fused = True if fused is None else fused
    inits = param_initializers or {}
    regs = param_regularizers or {}
    with variable_scope(scope, "BatchNorm", [inputs], reuse=reuse, custom_getter=_layer_variable_getter()) as sc:
        layer = _L.BatchNormalization(
            axis=1 if data_format == "NCHW" else -1, momentum=decay, epsilon=epsilon, center=center,
            scale=scale, beta_initializer=inits.get("beta", zeros_initializer()),
            gamma_initializer=inits.get("gamma", ones_initializer()),
            moving_mean_initializer=inits.get("moving_mean", zeros_initializer()),
            moving_variance_initializer=inits.get("moving_variance", ones_initializer()),
            beta_regularizer=regs.get("beta"), gamma_regularizer=regs.get("gamma"), trainable=trainable,
            fused=fused, name=sc.name, dtype=inputs.dtype, _scope=sc, _reuse=reuse,
            _unbiased_update=bool(fused) and rank in (2, 4))
        outputs = layer.apply(inputs, training=is_training)
        for v, n in ((layer.moving_mean, "moving_mean"), (layer.moving_variance, "moving_variance"),
                     (layer.beta, "beta"), (layer.gamma, "gamma")):
            if v is not None:
                _add_variable_to_collections(v, variables_collections, n)
        if updates_collections is not GraphKeys.UPDATE_OPS and layer.updates:
            coll = get_default_graph().get_collection_ref(GraphKeys.UPDATE_OPS)
            coll[:] = [u for u in coll if all(u is not x for x in layer.updates)]
            if updates_collections is None:         # update in place: with the outputs
                with get_default_graph().control_dependencies(layer.updates):
                    outputs = O.identity(outputs)
            else:
                for c in ([updates_collections] if isinstance(updates_collections, str)
                          else updates_collections):
                    for u in layer.updates:
                        get_default_graph().add_to_collection(c, u)
        if activation_fn is not None:
            outputs = activation_fn(outputs)
        return _collect_named_outputs(outputs_collections, sc.name, outputs)


layers = _Namespace("tf.contrib.layers", dict(
    xavier_initializer=xavier_initializer, xavier_initializer_conv2d=xavier_initializer_conv2d,
    variance_scaling_initializer=variance_scaling_initializer,
    l1_regularizer=l1_regularizer, l2_regularizer=l2_regularizer, l1_l2_regularizer=l1_l2_regularizer,
    sum_regularizer=sum_regularizer, apply_regularization=apply_regularization,
    fully_connected=fully_connected, linear=linear, conv2d=conv2d, convolution2d=convolution2d,
    conv2d_transpose=conv2d_transpose, convolution2d_transpose=convolution2d_transpose,
    max_pool2d=max_pool2d, avg_pool2d=avg_pool2d, flatten=flatten, dropout=dropout, batch_norm=batch_norm,
), advice="Use tf.layers (dense, conv2d, max_pooling2d, batch_normalization, dropout, flatten) or tf.nn; "
          "for optimize_loss, use tf.train.<Name>Optimizer(learning_rate).minimize(loss, global_step) "
          "inside tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)).")


# --- framework -----------------------------------------------------------------------------------
def get_variables(scope=None, suffix=None, collection=GraphKeys.GLOBAL_VARIABLES):
    """The variables of `collection` whose names match scope (a prefix regex) and end in suffix."""
    if isinstance(scope, VariableScope):
        scope = scope.name
    pattern = scope
    if suffix is not None:
        if ":" not in suffix:
            suffix += ":"
        pattern = (scope or "") + ".*" + suffix
    items = get_default_graph().get_collection(collection)
    if pattern:
        items = [v for v in items if re.match(pattern, v.name)]
    return items


def get_model_variables(scope=None, suffix=None):
    return get_variables(scope, suffix, GraphKeys.MODEL_VARIABLES)


def get_trainable_variables(scope=None, suffix=None):
    return get_variables(scope, suffix, GraphKeys.TRAINABLE_VARIABLES)


def get_variables_by_name(given_name, scope=None):
    return get_variables(scope=scope, suffix="/" + given_name + ":")


def get_or_create_global_step(graph=None):
    """tf.train.get_or_create_global_step (the existing step is tested against None: a
    tf.Variable has no truth value)."""
    step = _train.get_global_step(graph)
    return step if step is not None else _train.create_global_step(graph)


framework = _Namespace("tf.contrib.framework", dict(
    get_or_create_global_step=get_or_create_global_step, get_global_step=_train.get_global_step,
    create_global_step=_train.create_global_step, get_variables=get_variables,
    get_model_variables=get_model_variables, get_trainable_variables=get_trainable_variables,
    get_variables_by_name=get_variables_by_name,
), advice="arg_scope and the other slim helpers are not provided; pass the arguments to each "
          "tf.layers / tf.contrib.layers call.")

rnn = _Namespace("tf.contrib.rnn", fallback=_rnn.contrib_rnn,
                 advice="The cells provided are those of tf.nn.rnn_cell (BasicRNNCell, BasicLSTMCell, "
                        "LSTMCell, GRUCell, MultiRNNCell, DropoutWrapper) with static_rnn / "
                        "tf.nn.dynamic_rnn.")


# --- whole libraries that are not provided --------------------------------------------------------
_LIBRARIES = {
    "learn": "tf.contrib.learn (Estimators such as DNNClassifier/LinearRegressor, SKCompat, "
             "learn.datasets) is not provided: build the model with tf.layers and train it with a "
             "tf.train optimizer in a tf.Session, or in a tf.estimator.Estimator model_fn (or use "
             "flowjit.keras); for data use fj.data (fj.data.load_digits(), fj.data.load_mnist()) "
             "and feed batches with feed_dict.",
    "factorization": "tf.contrib.factorization (KMeans, WALSModel, GMM) is not provided: write the "
                     "k-means / EM steps with tf ops in a Session (tf.argmin of the distances, new "
                     "centers from tf.one_hot assignments and tf.matmul), or use scikit-learn's "
                     "KMeans / GaussianMixture on NumPy arrays.",
    "tensor_forest": "tf.contrib.tensor_forest (random forests) is not provided: use scikit-learn's "
                     "RandomForestClassifier / RandomForestRegressor on NumPy arrays.",
    "boosted_trees": "tf.contrib.boosted_trees is not provided: use scikit-learn's "
                     "GradientBoostingClassifier on NumPy arrays.",
    "slim": "tf.contrib.slim is not provided: use tf.contrib.layers (conv2d, fully_connected, "
            "max_pool2d, avg_pool2d, flatten, dropout, batch_norm, l2_regularizer, which slim "
            "re-exports) or tf.layers, passing each call's arguments instead of arg_scope.",
    "keras": "tf.contrib.keras is not provided: use flowjit.keras (the Keras 3 API on flowjit) or "
             "tf.layers in graph mode.",
    "seq2seq": "tf.contrib.seq2seq is not provided: run the decoder with tf.nn.dynamic_rnn or a "
               "tf.while_loop over tf.nn.rnn_cell cells.",
    "legacy_seq2seq": "tf.contrib.legacy_seq2seq is not provided: unroll the encoder/decoder with "
                      "tf.contrib.rnn.static_rnn over tf.nn.rnn_cell cells.",
    "crf": "tf.contrib.crf is not provided: write the forward algorithm with tf.scan.",
    "losses": "tf.contrib.losses is not provided: use tf.losses (same functions).",
    "metrics": "tf.contrib.metrics is not provided: use tf.metrics, or compute metrics with tf ops, "
               "e.g. tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32)).",
    "distributions": "tf.contrib.distributions is not provided: write the log-densities with tf ops "
                     "and sample with tf.random_normal / tf.random_uniform.",
    "training": "tf.contrib.training is not provided: use tf.train optimizers and feed batches with "
                "feed_dict.",
    "opt": "tf.contrib.opt is not provided: use the tf.train optimizers.",
    "data": "tf.contrib.data is not provided: use tf.data, or feed NumPy batches with feed_dict "
            "(fj.data datasets have next_batch).",
    "estimator": "tf.contrib.estimator is not provided: use tf.estimator, or train with a "
                 "tf.Session loop.",
    "summary": "tf.contrib.summary is not provided: use tf.summary (scalar, histogram, FileWriter).",
    "cudnn_rnn": "tf.contrib.cudnn_rnn is not provided: use tf.nn.rnn_cell cells with "
                 "tf.nn.dynamic_rnn (compiled by flowjit for the CPU or GPU).",
    "tpu": "tf.contrib.tpu is not provided (flowjit runs on CPUs and NVIDIA GPUs).",
}


class _Unavailable:
    """A contrib library that is not provided: every attribute raises MissingFeatureError."""

    def __init__(self, path, advice):
        self._path, self._advice = path, advice

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingFeatureError(f"{self._path}.{name} is not implemented in flowjit.compat.v1: "
                                  f"{self._advice}")

    def __repr__(self):
        return f"<{self._path}: not provided by flowjit.compat.v1>"


_stubs = {}


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    if name == "eager":         # tf.contrib.eager (tfe) is eager.py
        from . import eager
        return eager
    if name in _LIBRARIES:
        return _stubs.setdefault(name, _Unavailable(f"tf.contrib.{name}", _LIBRARIES[name]))
    raise MissingFeatureError(f"tf.contrib.{name} is not implemented in flowjit.compat.v1 (tf.contrib "
                              f"here has layers, rnn and framework); use the core tf.* API (tf.layers, "
                              f"tf.nn, tf.train, tf.losses) instead.")


def _register_eager():
    # `import tensorflow.contrib.eager as tfe`: this module is not a package, so the
    # submodule is registered under its dotted name for the import statement to find
    import sys
    from . import eager
    sys.modules[__name__ + ".eager"] = eager


_register_eager()
