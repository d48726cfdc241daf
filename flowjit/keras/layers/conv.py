"""Convolution and pooling layers (Keras 3's Conv1D/Conv2D, Max/AveragePooling1D/2D,
GlobalAverage/GlobalMaxPooling1D/2D) on fj.nn.conv2d / max_pool2d / avg_pool2d.

Weights as Keras 3: a Conv2D kernel is (kh, kw, in_channels // groups, filters), a
Conv1D kernel (k, in_channels // groups, filters), the bias (filters,). "same" padding
puts the odd pad at the end (TF's and JAX's rule), average pooling with "same" counts
only the window's elements inside the input, as Keras. channels_first inputs are
(batch, channels, ...); fj.nn transposes them to NHWC around the op.

The 1-D layers run the 2-D ops on a size-1 height axis; Conv1D's "causal" padding pads
(k - 1) * dilation on the left of the time axis and convolves "valid", as Keras.
"""
import flowjit as fj
from .. import activations, initializers
from ..layer import Layer
from .core import activate, _act_name


def _tuple(value, n, name):
    """Keras's standardize_tuple: an int or n ints, each >= 1 (kernel sizes, strides)."""
    vals = (value,) * n if isinstance(value, int) else tuple(value)
    if len(vals) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise ValueError(f"The `{name}` argument must be a tuple of {n} integers. Received {name}={value!r}")
    if any(v < 1 for v in vals):
        raise ValueError(f"The `{name}` argument must be >= 1. Received {name}={value!r}")
    return vals


def _padding(padding, allow_causal=False):
    p = str(padding).lower()
    allowed = ("valid", "same", "causal") if allow_causal else ("valid", "same")
    if p not in allowed:
        raise ValueError(f"The `padding` argument must be one of {allowed}. Received: padding={padding!r}")
    return p


def _data_format(data_format):
    """None is Keras's default image_data_format, "channels_last"."""
    fmt = "channels_last" if data_format is None else str(data_format).lower()
    if fmt not in ("channels_last", "channels_first"):
        raise ValueError("The `data_format` argument must be one of {'channels_first', 'channels_last'}. "
                         f"Received: data_format={data_format!r}")
    return fmt


def _check_rank(layer, inputs, rank):
    if len(inputs.shape) != rank:
        raise ValueError(f"{type(layer).__name__} {layer.name}: expected an input of rank {rank} "
                         f"(batch, ...), got shape {tuple(inputs.shape)}")


class _Conv(Layer):
    rank = 2

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1,
                 groups=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, lora_rank=None,
                 lora_alpha=None, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if lora_rank:
            raise ValueError(f"{type(self).__name__}(lora_rank=...): LoRA is not supported by flowjit's Keras")
        self.filters = int(filters)
        if self.filters <= 0:
            raise ValueError(f"Invalid value for argument `filters`. Expected a strictly positive value. "
                             f"Received filters={filters}.")
        self.groups = int(groups)
        if self.groups <= 0 or self.filters % self.groups:
            raise ValueError(f"The number of filters must be evenly divisible by the number of groups. "
                             f"Received: groups={groups}, filters={filters}.")
        self.kernel_size = _tuple(kernel_size, self.rank, "kernel_size")
        self.strides = _tuple(strides, self.rank, "strides")
        self.dilation_rate = _tuple(dilation_rate, self.rank, "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"`strides > 1` not supported in conjunction with `dilation_rate > 1`. "
                             f"Received: strides={self.strides} and dilation_rate={self.dilation_rate}")
        self.padding = _padding(padding, allow_causal=self.rank == 1)
        self.data_format = _data_format(data_format)
        self.activation_name = _act_name(activation)
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer, self.bias_regularizer = kernel_regularizer, bias_regularizer
        self.kernel_constraint, self.bias_constraint = kernel_constraint, bias_constraint

    def build(self, input_shape):
        if input_shape is None or len(input_shape) != self.rank + 2:
            raise ValueError(f"{type(self).__name__} {self.name}: expected an input of rank {self.rank + 2}, "
                             f"got shape {input_shape}")
        channels = input_shape[-1] if self.data_format == "channels_last" else input_shape[1]
        if channels is None:
            raise ValueError(f"{type(self).__name__} {self.name}: the channel dimension of the input must be "
                             f"known, got shape {input_shape}")
        if channels % self.groups:
            raise ValueError(f"The number of input channels must be evenly divisible by the number of groups. "
                             f"Received groups={self.groups}, but the input has {channels} channels (full "
                             f"input shape is {input_shape}).")
        self.kernel = self.add_weight(self.kernel_size + (channels // self.groups, self.filters),
                                      self.kernel_initializer, regularizer=self.kernel_regularizer,
                                      constraint=self.kernel_constraint, name="kernel")
        self.bias = self.add_weight((self.filters,), self.bias_initializer, regularizer=self.bias_regularizer,
                                    constraint=self.bias_constraint, name="bias") if self.use_bias else None

    def _conv2d(self, x, kernel, strides, padding, dilations):
        """fj.nn.conv2d over `groups` channel groups (HWIO kernel, 4-D x)."""
        fmt = "NHWC" if self.data_format == "channels_last" else "NCHW"
        if self.groups == 1:
            return fj.nn.conv2d(x, kernel, strides, padding, fmt, dilations)
        axis = 3 if fmt == "NHWC" else 1
        xs = fj.split(x, self.groups, axis=axis)
        ks = fj.split(kernel, self.groups, axis=3)
        return fj.concat([fj.nn.conv2d(a, k, strides, padding, fmt, dilations) for a, k in zip(xs, ks)],
                         axis=axis)

    def _finish(self, y):
        if self.bias is not None:
            b = self.bias.read_value()
            if self.data_format == "channels_first":
                b = fj.reshape(b, (self.filters,) + (1,) * self.rank)
            y = y + b
        return activate(self.activation, self.activation_name, y)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "data_format": self.data_format,
                "dilation_rate": self.dilation_rate, "groups": self.groups, "activation": self.activation_name,
                "use_bias": self.use_bias}


class Conv2D(_Conv):
    """2-D convolution: (batch, h, w, channels) -> (batch, h', w', filters), or channels
    first; activation(conv(inputs, kernel) + bias)."""
    rank = 2

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, data_format=data_format,
                         dilation_rate=dilation_rate, groups=groups, activation=activation, use_bias=use_bias,
                         **kwargs)

    def call(self, inputs):
        _check_rank(self, inputs, 4)
        y = self._conv2d(inputs, self.kernel.read_value(), list(self.strides), self.padding.upper(),
                         list(self.dilation_rate))
        return self._finish(y)


class Conv1D(_Conv):
    """1-D convolution over the time axis: (batch, steps, channels) -> (batch, steps',
    filters), or channels first; padding "valid", "same" or "causal"."""
    rank = 1

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1,
                 groups=1, activation=None, use_bias=True, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, data_format=data_format,
                         dilation_rate=dilation_rate, groups=groups, activation=activation, use_bias=use_bias,
                         **kwargs)

    def call(self, inputs):
        _check_rank(self, inputs, 3)
        last = self.data_format == "channels_last"
        x = fj.expand_dims(inputs, 1 if last else 2)          # a height axis of size 1
        kernel = fj.expand_dims(self.kernel.read_value(), 0)   # (1, k, in, filters)
        padding = self.padding.upper()
        if padding == "CAUSAL":
            left = self.dilation_rate[0] * (self.kernel_size[0] - 1)
            padding = [[0, 0], [0, 0], [left, 0], [0, 0]] if last else [[0, 0], [0, 0], [0, 0], [left, 0]]
        y = self._conv2d(x, kernel, [1, self.strides[0]], padding, [1, self.dilation_rate[0]])
        return self._finish(fj.squeeze(y, [1 if last else 2]))


class _Pooling(Layer):
    rank = 2
    op = None

    def __init__(self, pool_size, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _tuple(pool_size, self.rank, "pool_size")
        self.strides = self.pool_size if strides is None else _tuple(strides, self.rank, "strides")
        self.padding = _padding(padding)
        self.data_format = _data_format(data_format)

    def _pool(self, x, ksize, strides):
        fn = fj.nn.max_pool2d if self.op == "max" else fj.nn.avg_pool2d
        return fn(x, list(ksize), list(strides), self.padding.upper(),
                  "NHWC" if self.data_format == "channels_last" else "NCHW")

    def call(self, inputs):
        _check_rank(self, inputs, self.rank + 2)
        if self.rank == 2:
            return self._pool(inputs, self.pool_size, self.strides)
        axis = 1 if self.data_format == "channels_last" else 2
        y = self._pool(fj.expand_dims(inputs, axis), (1,) + self.pool_size, (1,) + self.strides)
        return fj.squeeze(y, [axis])

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding, "data_format": self.data_format}


class MaxPooling2D(_Pooling):
    """The max over each pool_size window (strides default to pool_size)."""
    rank, op = 2, "max"

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class AveragePooling2D(_Pooling):
    """The mean over each pool_size window ("same": over its elements inside the input)."""
    rank, op = 2, "avg"

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class MaxPooling1D(_Pooling):
    rank, op = 1, "max"

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class AveragePooling1D(_Pooling):
    rank, op = 1, "avg"

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class _GlobalPooling(Layer):
    rank = 2
    op = None

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        self.data_format = _data_format(data_format)
        self.keepdims = bool(keepdims)

    def call(self, inputs):
        _check_rank(self, inputs, self.rank + 2)
        first = 1 if self.data_format == "channels_last" else 2
        axes = list(range(first, first + self.rank))
        reduce = fj.reduce_max if self.op == "max" else fj.reduce_mean
        return reduce(inputs, axis=axes, keepdims=self.keepdims)

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format, "keepdims": self.keepdims}


class GlobalAveragePooling2D(_GlobalPooling):
    """The mean over the spatial axes: (batch, channels), or (batch, 1, 1, channels) with
    keepdims."""
    rank, op = 2, "avg"


class GlobalMaxPooling2D(_GlobalPooling):
    rank, op = 2, "max"


class GlobalAveragePooling1D(_GlobalPooling):
    rank, op = 1, "avg"


class GlobalMaxPooling1D(_GlobalPooling):
    rank, op = 1, "max"


# Keras's aliases
Convolution1D, Convolution2D = Conv1D, Conv2D
MaxPool1D, MaxPool2D, AvgPool1D, AvgPool2D = MaxPooling1D, MaxPooling2D, AveragePooling1D, AveragePooling2D
GlobalAvgPool1D, GlobalAvgPool2D = GlobalAveragePooling1D, GlobalAveragePooling2D
GlobalMaxPool1D, GlobalMaxPool2D = GlobalMaxPooling1D, GlobalMaxPooling2D
