"""`tf.layers`: TF 1.15's graph-mode layers (tensorflow/python/layers), on get_variable.

Each layer is a `Layer` object (the class forms `tf.layers.Dense`, `Conv2D`, ...); the
functions (`tf.layers.dense`, `conv2d`, ...) make one and call it, as TF1 does. The
naming and sharing rules are TF1's legacy-layer rules:

- a layer without a name opens `variable_scope(None, default_name=<snake class name>)`,
  so its variables are `dense/kernel`, `dense_1/kernel`, ... counted per enclosing
  variable scope, and the counts start again each time that scope is re-entered (a
  tower rebuilt under `variable_scope(name, reuse=True)` finds `name/dense` again);
- a named layer uses `variable_scope(name)`; `reuse=True` (or a reusing enclosing
  scope, or tf.AUTO_REUSE) shares its variables; an unnamed layer with reuse=True uses
  the plain class name (`dense`);
- the layer's ops go in the name scope its variable scope was first opened with;
- a layer called again reuses its own variables; update ops (batch normalization's
  moving averages) are added to `tf.GraphKeys.UPDATE_OPS`, regularization losses (of
  the kernel_regularizer etc.) to `tf.GraphKeys.REGULARIZATION_LOSSES`.
"""
import re

import numpy as np

from ... import dtypes as D
from ...frontend import api as F
from ...frontend import nn as N
from . import losses as _losses
from . import nn as _nn
from . import ops as O
from .errors import UnimplementedError
from .graph import GraphKeys, Tensor, TensorShape, get_default_graph
from .scopes import (
    REGULARIZATION_LOSSES, VariableScope, get_variable, ones_initializer, variable_scope,
    zeros_initializer,
)
from .variables import assign_sub

try:
    from .errors import UnimplementedName as MissingFeatureError
except ImportError:         # (errors.py without it)
    class MissingFeatureError(UnimplementedError, AttributeError):
        """A TF1 name flowjit.compat.v1 does not provide: a tf.errors.UnimplementedError
        (that says what to use instead), and an AttributeError so hasattr() answers False."""

# TF1 collection names this module fills (GraphKeys gets them if graph.py lacks them)
for _k, _v in (("REGULARIZATION_LOSSES", REGULARIZATION_LOSSES), ("MODEL_VARIABLES", "model_variables"),
               ("WEIGHTS", "weights"), ("BIASES", "biases"), ("ACTIVATIONS", "activations")):
    if not hasattr(GraphKeys, _k):
        setattr(GraphKeys, _k, _v)


def _get_regularization_losses(scope=None):
    return get_default_graph().get_collection(REGULARIZATION_LOSSES, scope)


def _get_regularization_loss(scope=None, name="total_regularization_loss"):
    losses = _get_regularization_losses(scope)
    if losses:
        return O.add_n(losses, name=name)
    return O.constant(0.0)


# tf.losses' regularization helpers, where losses.py does not define them
if not hasattr(_losses, "get_regularization_losses"):
    _losses.get_regularization_losses = _get_regularization_losses
if not hasattr(_losses, "get_regularization_loss"):
    _losses.get_regularization_loss = _get_regularization_loss


# --- helpers ---------------------------------------------------------------------------------
def _snake(name):
    """Keras' to_snake_case: Conv2DTranspose -> conv2d_transpose."""
    s = re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    s = re.sub("([a-z])([A-Z])", r"\1_\2", s).lower()
    return s if s[0] != "_" else "private" + s


def _unique_layer_name(base):
    """Keras' per-graph unique object name (1-based, as TF1's legacy layers: the first
    unnamed Dense is `dense_1`; its *variables* are named by the variable scope)."""
    g = get_default_graph()
    if not hasattr(g, "_layer_name_uids"):
        g._layer_name_uids = {}
    n = g._layer_name_uids.get(base, 0) + 1
    g._layer_name_uids[base] = n
    return f"{base}_{n}"


def _tuple(value, n, what):
    if isinstance(value, (int, np.integer)):
        return (int(value),) * n
    try:
        t = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"The `{what}` argument must be a tuple of {n} integers. Received: {value}") from None
    if len(t) != n:
        raise ValueError(f"The `{what}` argument must be a tuple of {n} integers. Received: {value}")
    return t


def _padding(padding):
    p = str(padding).lower()
    if p not in ("valid", "same"):
        raise ValueError(f'The `padding` argument must be one of "valid", "same". Received: {padding}')
    return p


def _data_format(value):
    v = "channels_last" if value is None else str(value).lower()
    if v not in ("channels_first", "channels_last"):
        raise ValueError(f'The `data_format` argument must be one of "channels_first", "channels_last". '
                         f'Received: {value}')
    return v


def _constraint_unsupported(owner, **constraints):
    for k, v in constraints.items():
        if v is not None:
            raise UnimplementedError(f"{owner}: {k} is not supported by flowjit.compat.v1 (TF1 applies "
                                     f"it after each optimizer step); clip the variable with "
                                     f"tf.assign(v, tf.clip_by_value(v, ...)) after the train op")


def _static_bool(x):
    """TF1's tf_utils.constant_value: True/False when known while building, else None."""
    if isinstance(x, Tensor):
        if x.op.type == "Const":
            return bool(x.op.attrs["value"])
        return None
    if x is None:
        return False            # TF1: the Keras learning phase, False unless fed
    return bool(x)


def _add_to_collection_once(name, items):
    coll = get_default_graph().get_collection_ref(name)
    have = {id(x) for x in coll}
    for x in items:
        if id(x) not in have:
            coll.append(x)
            have.add(id(x))


# --- the base class ----------------------------------------------------------------------------
class Layer:
    """TF1's tf.layers.Layer: variables through get_variable in the layer's variable
    scope (fixed at its first call), `build(input_shape)` once, `call(inputs)` each time."""

    def __init__(self, trainable=True, name=None, dtype=None, **kwargs):
        scope = kwargs.pop("_scope", None)
        reuse = kwargs.pop("_reuse", None)
        self.activity_regularizer = kwargs.pop("activity_regularizer", None)
        for k in kwargs:
            if k not in ("input_shape", "batch_input_shape", "autocast", "dynamic"):
                raise TypeError(f"Keyword argument not understood: {k}")
        self.trainable = bool(trainable)
        self._reuse = reuse if reuse is not False else None
        self.built = False
        self._dtype = None if dtype is None else D.as_dtype(dtype)
        self._trainable_weights, self._non_trainable_weights = [], []
        self._updates, self._losses = [], []
        if isinstance(name, VariableScope):
            self._base_name = name.name
            self._name = _unique_layer_name(_snake(type(self).__name__))
        else:
            self._base_name, self._name = name, name
        if not name:
            self._base_name = _snake(type(self).__name__)
            self._name = _unique_layer_name(self._base_name)
        self._scope = None
        if scope:
            with variable_scope(scope) as s:
                self._scope = s
        self._current_scope = None

    # -- properties ---------------------------------------------------------------------------
    @property
    def name(self):
        return self._name

    @property
    def dtype(self):
        return self._dtype

    @property
    def scope_name(self):
        if not self._scope:
            raise ValueError(f'No name available for layer scope because the layer "{self._name}" has '
                             f'not been used yet. The scope name is determined the first time the '
                             f'layer instance is called. You must therefore call the layer before '
                             f'querying `scope_name`.')
        return self._scope.name

    @property
    def trainable_weights(self):
        return list(self._trainable_weights) if self.trainable else []

    @property
    def non_trainable_weights(self):
        if self.trainable:
            return list(self._non_trainable_weights)
        return list(self._trainable_weights) + list(self._non_trainable_weights)

    @property
    def weights(self):
        return self.trainable_weights + self.non_trainable_weights

    trainable_variables = trainable_weights
    non_trainable_variables = non_trainable_weights
    variables = weights

    @property
    def updates(self):
        return list(self._updates)

    @property
    def losses(self):
        return list(self._losses)

    # -- building -----------------------------------------------------------------------------
    def _set_scope(self, scope=None):
        if self._scope is None:
            if self._reuse:
                with variable_scope(scope if scope is not None else self._base_name) as s:
                    self._scope = s
            else:
                with variable_scope(scope, default_name=self._base_name) as s:
                    self._scope = s

    def add_weight(self, name, shape, dtype=None, initializer=None, regularizer=None, trainable=None,
                   constraint=None, **kwargs):
        """get_variable(name) in the layer's scope, tracked as the layer's weight."""
        _constraint_unsupported(f"{type(self).__name__} weight {name}", constraint=constraint)
        trainable = True if trainable is None else bool(trainable)
        v = get_variable(name, shape, dtype or self._dtype or D.float32, initializer, regularizer,
                         trainable=trainable and self.trainable)
        if v.trainable:
            self._trainable_weights.append(v)
        else:
            self._non_trainable_weights.append(v)
        return v

    add_variable = add_weight

    def add_update(self, updates, inputs=None):
        self._updates.extend(updates if isinstance(updates, (list, tuple)) else [updates])

    def add_loss(self, losses, inputs=None):
        new = list(losses) if isinstance(losses, (list, tuple)) else [losses]
        self._losses.extend(new)
        _add_to_collection_once(REGULARIZATION_LOSSES, new)

    def build(self, input_shape):
        self.built = True

    def call(self, inputs, **kwargs):
        return inputs

    def compute_output_shape(self, input_shape):
        # as TF1's base Layer: a subclass that is asked its output shape must say it
        raise NotImplementedError(f"tf.layers: {type(self).__name__}.compute_output_shape is not defined "
                                  f"(input shape {input_shape}); override it in the subclass")

    # -- calling ------------------------------------------------------------------------------
    def __call__(self, inputs, *args, **kwargs):
        scope = kwargs.pop("scope", None)
        g = get_default_graph()
        self._set_scope(scope)
        reuse = True if self.built else self._reuse
        with variable_scope(self._scope, reuse=reuse, auxiliary_name_scope=False) as vs:
            self._current_scope = vs
            with g.name_scope(vs.original_name_scope):
                if not isinstance(inputs, (list, tuple)):
                    inputs = O.convert_to_tensor(inputs)
                if not self.built:
                    first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
                    if self._dtype is None and isinstance(first, Tensor):
                        self._dtype = first.dtype if first.dtype.is_floating else D.float32
                    shape = ([x.shape for x in inputs] if isinstance(inputs, (list, tuple))
                             else inputs.shape)
                    self.build(shape)
                    self.built = True
                outputs = self.call(inputs, *args, **kwargs)
                if self.activity_regularizer is not None:
                    with g.name_scope("ActivityRegularizer"):
                        loss = self.activity_regularizer(outputs)
                        batch = O.cast(O.shape(outputs)[0], loss.dtype)
                        self.add_loss(O.divide(loss, batch))
        _add_to_collection_once(GraphKeys.UPDATE_OPS, self._updates)
        return outputs

    def apply(self, inputs, *args, **kwargs):
        return self.__call__(inputs, *args, **kwargs)

    def __repr__(self):
        return f"<tf.layers.{type(self).__name__} '{self._name}'>"


# --- core layers --------------------------------------------------------------------------------
class Dense(Layer):
    """outputs = activation(inputs @ kernel + bias); kernel [in, units], bias [units]."""

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer=None,
                 bias_initializer=zeros_initializer(), kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, trainable=True,
                 name=None, **kwargs):
        super().__init__(trainable=trainable, name=name, activity_regularizer=activity_regularizer,
                         **kwargs)
        _constraint_unsupported("Dense", kernel_constraint=kernel_constraint, bias_constraint=bias_constraint)
        self.units = int(units)
        self.activation = activation
        self.use_bias = use_bias
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        self.kernel_regularizer, self.bias_regularizer = kernel_regularizer, bias_regularizer
        self.kernel = self.bias = None

    def build(self, input_shape):
        input_shape = TensorShape(input_shape)
        if input_shape.ndims is None or input_shape[-1].value is None:
            raise ValueError("The last dimension of the inputs to `Dense` should be defined. Found `None`.")
        self.kernel = self.add_weight("kernel", [input_shape[-1].value, self.units],
                                      initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.bias = self.add_weight("bias", [self.units], initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer)

    def call(self, inputs):
        rank = inputs.shape.ndims
        if rank is not None and rank > 2:
            # TF1: tensordot over the last axis of the inputs
            outputs = O.apply("Tensordot", F.matmul, (inputs, self.kernel))
            outputs.set_shape(inputs.shape.as_list()[:-1] + [self.units])
        else:
            outputs = O.matmul(inputs, self.kernel)
        if self.use_bias:
            outputs = _nn.bias_add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return TensorShape(TensorShape(input_shape).as_list()[:-1] + [self.units])


class Dropout(Layer):
    """Training: inputs / (1 - rate) where kept, 0 where dropped (rate = the fraction
    dropped); not training: the inputs. `training` may be a bool tensor."""

    def __init__(self, rate=0.5, noise_shape=None, seed=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.rate, self.noise_shape, self.seed = rate, noise_shape, seed

    def _noise(self, inputs):
        if self.noise_shape is None:
            return None
        ns = O.static_value(self.noise_shape, "dropout noise_shape")
        dims = inputs.shape.as_list() if inputs.shape.ndims is not None else None
        out = []
        for i, d in enumerate(ns):
            if d is None:
                if dims is None or dims[i] is None:
                    raise UnimplementedError("tf.layers.dropout: a None entry of noise_shape needs that "
                                             "dim of the inputs to be known while the graph is built")
                d = dims[i]
            out.append(int(d))
        return out

    def call(self, inputs, training=False):
        static = _static_bool(training)
        ns = self._noise(inputs)

        def dropped():
            return _nn.dropout(inputs, noise_shape=ns, seed=self.seed, rate=self.rate)

        if static is False:
            return O.identity(inputs)
        if static is True:
            return dropped()
        from .control_flow import cond
        return cond(training, dropped, lambda: O.identity(inputs))

    def compute_output_shape(self, input_shape):
        return TensorShape(input_shape)


class Flatten(Layer):
    """[batch, ...] -> [batch, prod(...)] (channels_first inputs are made channels_last first)."""

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = _data_format(data_format)

    def call(self, inputs):
        nd = inputs.shape.ndims
        if nd is None:
            raise ValueError("tf.layers.flatten: the rank of the inputs must be known")
        if self.data_format == "channels_first" and nd > 1:
            inputs = O.transpose(inputs, [0] + list(range(2, nd)) + [1])
        dims = inputs.shape.as_list()
        rest = dims[1:]
        if any(d is None for d in rest):
            raise UnimplementedError(f"tf.layers.flatten: the non-batch dims of the inputs must be known "
                                     f"while the graph is built, got shape {inputs.shape}")
        n = int(np.prod(rest)) if rest else 1
        return O.reshape(inputs, [dims[0] if dims[0] is not None else -1, n])

    def compute_output_shape(self, input_shape):
        s = TensorShape(input_shape).as_list()
        rest = s[1:]
        return TensorShape([s[0], int(np.prod(rest)) if rest and None not in rest else (1 if not rest else None)])


# --- convolution and pooling --------------------------------------------------------------------
def _conv_args(strides, dilation, channels_first):
    if channels_first:
        return [1, 1] + list(strides), [1, 1] + list(dilation), "NCHW"
    return [1] + list(strides) + [1], [1] + list(dilation) + [1], "NHWC"


class Conv2D(Layer):
    """2-D convolution: kernel [kh, kw, in_channels, filters], bias [filters]."""

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format="channels_last",
                 dilation_rate=(1, 1), activation=None, use_bias=True, kernel_initializer=None,
                 bias_initializer=zeros_initializer(), kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, trainable=True,
                 name=None, **kwargs):
        super().__init__(trainable=trainable, name=name, activity_regularizer=activity_regularizer,
                         **kwargs)
        _constraint_unsupported(type(self).__name__, kernel_constraint=kernel_constraint,
                                bias_constraint=bias_constraint)
        self.filters = int(filters)
        self.kernel_size = _tuple(kernel_size, 2, "kernel_size")
        self.strides = _tuple(strides, 2, "strides")
        self.padding = _padding(padding)
        self.data_format = _data_format(data_format)
        self.dilation_rate = _tuple(dilation_rate, 2, "dilation_rate")
        self.activation, self.use_bias = activation, use_bias
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        self.kernel_regularizer, self.bias_regularizer = kernel_regularizer, bias_regularizer
        self.kernel = self.bias = None

    def _channels(self, input_shape):
        input_shape = TensorShape(input_shape)
        if input_shape.ndims != 4:
            raise ValueError(f"Input 0 of layer {self._name} is incompatible with the layer: expected "
                             f"ndim=4, found ndim={input_shape.ndims}. Full shape received: {input_shape}")
        ax = 1 if self.data_format == "channels_first" else -1
        c = input_shape[ax].value
        if c is None:
            raise ValueError("The channel dimension of the inputs should be defined. Found `None`.")
        return c

    def _kernel_shape(self, channels):
        return list(self.kernel_size) + [channels, self.filters]

    def build(self, input_shape):
        c = self._channels(input_shape)
        self.kernel = self.add_weight("kernel", self._kernel_shape(c), initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.bias = self.add_weight("bias", [self.filters], initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer)

    def _conv(self, inputs):
        st, dil, fmt = _conv_args(self.strides, self.dilation_rate, self.data_format == "channels_first")
        return _nn.conv2d(inputs, self.kernel, strides=st, padding=self.padding.upper(), data_format=fmt,
                          dilations=dil)

    def call(self, inputs):
        outputs = self._conv(inputs)
        if self.use_bias:
            outputs = _nn.bias_add(outputs, self.bias,
                                   data_format="NCHW" if self.data_format == "channels_first" else "NHWC")
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


def _deconv_length(n, k, padding, stride, dilation=1):
    """Keras' conv_utils.deconv_output_length (no output_padding)."""
    if n is None:
        return None
    k = k + (k - 1) * (dilation - 1)
    if padding == "valid":
        return n * stride + max(k - stride, 0)
    return n * stride


class Conv2DTranspose(Conv2D):
    """The transpose (gradient) of a 2-D convolution: kernel [kh, kw, filters, in_channels];
    output size in * stride ('same') or in * stride + max(k - stride, 0) ('valid')."""

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format="channels_last",
                 activation=None, use_bias=True, kernel_initializer=None,
                 bias_initializer=zeros_initializer(), kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, trainable=True,
                 name=None, **kwargs):
        super().__init__(filters, kernel_size, strides, padding, data_format, (1, 1), activation, use_bias,
                         kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
                         activity_regularizer, kernel_constraint, bias_constraint, trainable, name, **kwargs)

    def _kernel_shape(self, channels):
        return list(self.kernel_size) + [self.filters, channels]

    def _conv(self, inputs):
        fn = getattr(N, "conv2d_transpose", None)
        if fn is None:
            raise UnimplementedError("tf.layers.conv2d_transpose needs fj.nn.conv2d_transpose, which this "
                                     "flowjit build does not have yet")
        cf = self.data_format == "channels_first"
        st, _, fmt = _conv_args(self.strides, (1, 1), cf)
        hw = (2, 3) if cf else (1, 2)
        dims = inputs.shape.as_list()
        oh = _deconv_length(dims[hw[0]], self.kernel_size[0], self.padding, self.strides[0])
        ow = _deconv_length(dims[hw[1]], self.kernel_size[1], self.padding, self.strides[1])
        if oh is None or ow is None:
            raise UnimplementedError(f"tf.layers.conv2d_transpose: the spatial dims of the inputs must be "
                                     f"known while the graph is built, got shape {inputs.shape}")
        pad = self.padding.upper()

        def compute(x, k):
            n = x.shape[0]
            out_shape = [n, self.filters, oh, ow] if cf else [n, oh, ow, self.filters]
            return fn(x, k, out_shape, st, pad, data_format=fmt)
        out = O.apply("Conv2DBackpropInput", compute, (inputs, self.kernel), name="conv2d_transpose")
        out.set_shape([dims[0], self.filters, oh, ow] if cf else [dims[0], oh, ow, self.filters])
        return out


class _Pooling2D(Layer):
    _type = None

    def __init__(self, pool_size, strides, padding="valid", data_format="channels_last", name=None,
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.pool_size = _tuple(pool_size, 2, "pool_size")
        self.strides = _tuple(strides if strides is not None else pool_size, 2, "strides")
        self.padding = _padding(padding)
        self.data_format = _data_format(data_format)

    def call(self, inputs):
        cf = self.data_format == "channels_first"
        ks, st, fmt = _conv_args(self.pool_size, self.strides, cf)     # [1, ph, pw, 1], [1, sh, sw, 1]
        fn = _nn.max_pool if self._type == "max" else _nn.avg_pool
        return fn(inputs, ksize=ks, strides=st, padding=self.padding.upper(), data_format=fmt)


class MaxPooling2D(_Pooling2D):
    """Max over pool_size windows moved by strides."""
    _type = "max"


class AveragePooling2D(_Pooling2D):
    """Mean over pool_size windows moved by strides (padding not counted)."""
    _type = "avg"


MaxPool2D, AvgPool2D = MaxPooling2D, AveragePooling2D


# --- batch normalization -----------------------------------------------------------------------
class BatchNormalization(Layer):
    """TF1's batch normalization: gamma * (x - mean) / sqrt(var + epsilon) + beta, with the
    batch's mean and (biased) variance when training, the moving ones otherwise.

    Training adds two update ops to tf.GraphKeys.UPDATE_OPS (run them with the train
    op): moving -= (moving - batch_value) * (1 - momentum). As TF 1.15, when the fused
    kernel applies (4-D float32 inputs, axis 1 or 3) the variance fed to the moving
    average is the unbiased batch variance (n / (n - 1) times the biased one) and epsilon
    is at least 1.001e-5; otherwise it is the biased variance."""

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer=zeros_initializer(), gamma_initializer=ones_initializer(),
                 moving_mean_initializer=zeros_initializer(), moving_variance_initializer=ones_initializer(),
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None, gamma_constraint=None,
                 renorm=False, renorm_clipping=None, renorm_momentum=0.99, fused=None, trainable=True,
                 virtual_batch_size=None, adjustment=None, name=None, **kwargs):
        self._unbiased_update = kwargs.pop("_unbiased_update", None)     # (contrib.layers.batch_norm)
        super().__init__(trainable=trainable, name=name, **kwargs)
        _constraint_unsupported("BatchNormalization", beta_constraint=beta_constraint,
                                gamma_constraint=gamma_constraint)
        for what, v in (("renorm", renorm), ("virtual_batch_size", virtual_batch_size),
                        ("adjustment", adjustment)):
            if v:
                raise UnimplementedError(f"tf.layers.batch_normalization: {what} is not supported by "
                                         f"flowjit.compat.v1")
        self.axis = list(axis) if isinstance(axis, (list, tuple)) else axis
        self.momentum, self.epsilon = momentum, epsilon
        self.center, self.scale = center, scale
        self.beta_initializer, self.gamma_initializer = beta_initializer, gamma_initializer
        self.moving_mean_initializer = moving_mean_initializer
        self.moving_variance_initializer = moving_variance_initializer
        self.beta_regularizer, self.gamma_regularizer = beta_regularizer, gamma_regularizer
        self.fused = True if fused is None else fused
        self.gamma = self.beta = self.moving_mean = self.moving_variance = None

    def build(self, input_shape):
        input_shape = TensorShape(input_shape)
        if not input_shape.ndims:
            raise ValueError("Input has undefined rank:", input_shape)
        nd = input_shape.ndims
        axes = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        axes = [a + nd if a < 0 else a for a in axes]
        for a in axes:
            if a < 0 or a >= nd:
                raise ValueError(f"Invalid axis: {a}")
        if len(axes) != len(set(axes)):
            raise ValueError(f"Duplicate axis: {axes}")
        self.axis = axes
        dims = input_shape.as_list()
        for a in axes:
            if dims[a] is None:
                raise ValueError("Input has undefined `axis` dimension. Input shape: ", input_shape)
        self._fused = bool(self.fused) and nd == 4 and axes in ([1], [3]) and self._dtype is D.float32
        self._param_shape = [dims[axes[0]]] if len(axes) == 1 else [dims[i] if i in axes else 1
                                                                     for i in range(nd)]
        self._bshape = [dims[i] if i in axes else 1 for i in range(nd)]
        if self.scale:
            self.gamma = self.add_weight("gamma", self._param_shape, initializer=self.gamma_initializer,
                                         regularizer=self.gamma_regularizer)
        if self.center:
            self.beta = self.add_weight("beta", self._param_shape, initializer=self.beta_initializer,
                                        regularizer=self.beta_regularizer)
        self.moving_mean = self.add_weight("moving_mean", self._param_shape,
                                           initializer=self.moving_mean_initializer, trainable=False)
        self.moving_variance = self.add_weight("moving_variance", self._param_shape,
                                               initializer=self.moving_variance_initializer, trainable=False)

    def call(self, inputs, training=False):
        static = _static_bool(training)
        nd = inputs.shape.ndims
        red = [i for i in range(nd) if i not in self.axis]
        bshape, pshape = self._bshape, self._param_shape
        eps = max(self.epsilon, 1.001e-5) if self._fused else self.epsilon
        unbiased = self._fused if self._unbiased_update is None else self._unbiased_update
        scale, center = self.scale, self.center
        params = ([self.gamma] if scale else []) + ([self.beta] if center else [])
        if static is not True:
            params += [self.moving_mean, self.moving_variance]
        if static is None:
            training = O.convert_to_tensor(training)
            params.append(training)

        def normalize(x, mean, var, gamma, beta):
            # TF1's nn.batch_normalization: x * inv + (beta - mean * inv), inv = gamma / sqrt(var + eps)
            inv = F.rsqrt(var + eps)
            if gamma is not None:
                inv = inv * gamma
            return x * inv + ((beta - mean * inv) if beta is not None else -mean * inv)

        def compute(x, *ps):
            it = iter(ps)
            gamma = F.reshape(next(it), bshape) if scale else None
            beta = F.reshape(next(it), bshape) if center else None
            if static is False:
                mm, mv = next(it), next(it)
                return normalize(x, F.reshape(mm, bshape), F.reshape(mv, bshape), gamma, beta)
            mean, var = N.moments(x, red, True)
            y = normalize(x, mean, var, gamma, beta)
            upd = var
            if unbiased:
                n = F.cast(F.size(x), x.dtype) / float(np.prod(bshape))
                upd = var * (n / (n - 1.0))
            if static is None:
                mm, mv, tr = next(it), next(it), next(it)
                y = F.where(tr, y, normalize(x, F.reshape(mm, bshape), F.reshape(mv, bshape), gamma, beta))
            return [y, F.reshape(mean, pshape), F.reshape(upd, pshape)]

        kind = "FusedBatchNormV3" if self._fused else "BatchNorm"
        if static is False:
            return O.apply(kind, compute, (inputs, *params))
        y, mean, var = O.apply(kind, compute, (inputs, *params), multi=True)
        y.set_shape(inputs.shape)
        if static is True:
            decay = 1.0 - self.momentum
        else:
            decay = O.multiply(O.cast(training, self.moving_mean.dtype), 1.0 - self.momentum)
        self.add_update([_assign_moving_average(self.moving_mean, mean, decay),
                         _assign_moving_average(self.moving_variance, var, decay)])
        return y


def _assign_moving_average(variable, value, decay):
    """TF1: variable -= (variable - value) * decay."""
    g = get_default_graph()
    with g.name_scope("AssignMovingAvg"):
        if not isinstance(decay, Tensor):
            decay = O.constant(decay, variable.dtype, name="decay")
        delta = O.multiply(O.subtract(variable, value), decay)
        return assign_sub(variable, delta)


# --- the functions -----------------------------------------------------------------------------
def dense(inputs, units, activation=None, use_bias=True, kernel_initializer=None,
          bias_initializer=zeros_initializer(), kernel_regularizer=None, bias_regularizer=None,
          activity_regularizer=None, kernel_constraint=None, bias_constraint=None, trainable=True,
          name=None, reuse=None):
    """activation(inputs @ kernel + bias), variables `<name or dense_N>/kernel`, `/bias`."""
    layer = Dense(units, activation=activation, use_bias=use_bias, kernel_initializer=kernel_initializer,
                  bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
                  bias_regularizer=bias_regularizer, activity_regularizer=activity_regularizer,
                  kernel_constraint=kernel_constraint, bias_constraint=bias_constraint, trainable=trainable,
                  name=name, _scope=name, _reuse=reuse)
    return layer.apply(inputs)


def dropout(inputs, rate=0.5, noise_shape=None, seed=None, training=False, name=None):
    """Drops a fraction `rate` of the inputs when training (a bool or a bool tensor)."""
    layer = Dropout(rate, noise_shape=noise_shape, seed=seed, name=name)
    return layer.apply(inputs, training=training)


def flatten(inputs, name=None, data_format="channels_last"):
    return Flatten(name=name, data_format=data_format).apply(inputs)


def conv2d(inputs, filters, kernel_size, strides=(1, 1), padding="valid", data_format="channels_last",
           dilation_rate=(1, 1), activation=None, use_bias=True, kernel_initializer=None,
           bias_initializer=zeros_initializer(), kernel_regularizer=None, bias_regularizer=None,
           activity_regularizer=None, kernel_constraint=None, bias_constraint=None, trainable=True,
           name=None, reuse=None):
    """2-D convolution, variables `<name or conv2d_N>/kernel` [kh, kw, in, filters], `/bias`."""
    layer = Conv2D(filters, kernel_size, strides=strides, padding=padding, data_format=data_format,
                   dilation_rate=dilation_rate, activation=activation, use_bias=use_bias,
                   kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
                   kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                   activity_regularizer=activity_regularizer, kernel_constraint=kernel_constraint,
                   bias_constraint=bias_constraint, trainable=trainable, name=name, _reuse=reuse,
                   _scope=name)
    return layer.apply(inputs)


def conv2d_transpose(inputs, filters, kernel_size, strides=(1, 1), padding="valid",
                     data_format="channels_last", activation=None, use_bias=True, kernel_initializer=None,
                     bias_initializer=zeros_initializer(), kernel_regularizer=None, bias_regularizer=None,
                     activity_regularizer=None, kernel_constraint=None, bias_constraint=None, trainable=True,
                     name=None, reuse=None):
    """Transposed 2-D convolution, variables `<name or conv2d_transpose_N>/kernel`
    [kh, kw, filters, in], `/bias`."""
    layer = Conv2DTranspose(filters, kernel_size, strides=strides, padding=padding, data_format=data_format,
                            activation=activation, use_bias=use_bias, kernel_initializer=kernel_initializer,
                            bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
                            bias_regularizer=bias_regularizer, activity_regularizer=activity_regularizer,
                            kernel_constraint=kernel_constraint, bias_constraint=bias_constraint,
                            trainable=trainable, name=name, _reuse=reuse, _scope=name)
    return layer.apply(inputs)


def max_pooling2d(inputs, pool_size, strides, padding="valid", data_format="channels_last", name=None):
    return MaxPooling2D(pool_size, strides, padding=padding, data_format=data_format, name=name).apply(inputs)


def average_pooling2d(inputs, pool_size, strides, padding="valid", data_format="channels_last", name=None):
    return AveragePooling2D(pool_size, strides, padding=padding, data_format=data_format,
                            name=name).apply(inputs)


def batch_normalization(inputs, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                        beta_initializer=zeros_initializer(), gamma_initializer=ones_initializer(),
                        moving_mean_initializer=zeros_initializer(),
                        moving_variance_initializer=ones_initializer(), beta_regularizer=None,
                        gamma_regularizer=None, beta_constraint=None, gamma_constraint=None, training=False,
                        trainable=True, name=None, reuse=None, renorm=False, renorm_clipping=None,
                        renorm_momentum=0.99, fused=None, virtual_batch_size=None, adjustment=None):
    """Batch normalization (see BatchNormalization); with training=True (or a bool tensor)
    its moving-average updates go to tf.GraphKeys.UPDATE_OPS."""
    layer = BatchNormalization(axis=axis, momentum=momentum, epsilon=epsilon, center=center, scale=scale,
                               beta_initializer=beta_initializer, gamma_initializer=gamma_initializer,
                               moving_mean_initializer=moving_mean_initializer,
                               moving_variance_initializer=moving_variance_initializer,
                               beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
                               beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
                               renorm=renorm, renorm_clipping=renorm_clipping, renorm_momentum=renorm_momentum,
                               fused=fused, trainable=trainable, virtual_batch_size=virtual_batch_size,
                               adjustment=adjustment, name=name, _reuse=reuse, _scope=name)
    return layer.apply(inputs, training=training)


max_pool2d, average_pool2d = max_pooling2d, average_pooling2d

_PROVIDED = ("dense, dropout, flatten, conv2d, conv2d_transpose, max_pooling2d, average_pooling2d, "
             "batch_normalization and the classes Layer, Dense, Dropout, Flatten, Conv2D, "
             "Conv2DTranspose, MaxPooling2D, AveragePooling2D, BatchNormalization")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingFeatureError(f"tf.layers.{name} is not implemented in flowjit.compat.v1 (it has "
                              f"{_PROVIDED}); 1-D/3-D inputs can often be reshaped to 2-D "
                              f"(e.g. tf.expand_dims(x, 1) before conv2d)")
