"""Dense, activations, shape layers, Dropout, Embedding and merging layers."""

import flowjit as fj
from .. import activations, initializers, losses
from ..layer import Layer


def activate(fn, name, x):
    """fn(x); a softmax or sigmoid output remembers its logits, so a crossentropy loss on
    the probabilities computes from the logits (stable, as TensorFlow does)."""
    y = fn(x)
    if name in ("softmax", "sigmoid"):
        losses.remember_logits(y, x, name)
    return y


def _act_name(activation):
    return activation if isinstance(activation, str) else getattr(activation, "__name__", None)


class Dense(Layer):
    """activation(inputs @ kernel + bias), over the last axis of inputs of any rank."""

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = int(units)
        self.activation_name = _act_name(activation)
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer, self.bias_regularizer = kernel_regularizer, bias_regularizer

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"Dense {self.name}: the last dimension of the input must be known, "
                             f"got shape {input_shape}")
        self.kernel = self.add_weight((input_shape[-1], self.units), self.kernel_initializer,
                                      regularizer=self.kernel_regularizer, name="kernel")
        self.bias = self.add_weight((self.units,), self.bias_initializer, regularizer=self.bias_regularizer,
                                    name="bias") if self.use_bias else None

    def call(self, inputs):
        if not inputs.dtype.is_floating:       # integer features: promoted, as Keras does
            inputs = fj.cast(inputs, self.kernel.dtype)
        y = fj.matmul(inputs, self.kernel)
        if self.bias is not None:
            y = y + self.bias
        return activate(self.activation, self.activation_name, y)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation_name,
                "use_bias": self.use_bias}


class Activation(Layer):
    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation_name = _act_name(activation)
        self.activation = activations.get(activation)

    def call(self, inputs):
        return activate(self.activation, self.activation_name, inputs)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation_name}


class Softmax(Layer):
    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, inputs):
        y = fj.nn.softmax(inputs, axis=self.axis)
        if self.axis == -1:
            losses.remember_logits(y, inputs, "softmax")
        return y

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class ReLU(Layer):
    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold

    def call(self, inputs):
        x = inputs
        y = fj.where(x >= self.threshold, x, (x - self.threshold) * self.negative_slope) \
            if self.negative_slope or self.threshold else fj.nn.relu(x)
        if self.max_value is not None:
            y = fj.minimum(y, float(self.max_value))
        return y

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value, "negative_slope": self.negative_slope,
                "threshold": self.threshold}


class LeakyReLU(Layer):
    def __init__(self, negative_slope=0.3, **kwargs):
        super().__init__(**kwargs)
        self.negative_slope = negative_slope

    def call(self, inputs):
        return fj.nn.leaky_relu(inputs, alpha=self.negative_slope)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


class Flatten(Layer):
    """(batch, ...) -> (batch, product of the rest)."""

    def call(self, inputs):
        # the sizes may be symbols inside a compiled step: their product is one too
        if len(inputs.shape) == 2:
            return inputs
        return fj.reshape(inputs, (inputs.shape[0], -1))


class Reshape(Layer):
    """(batch, ...) -> (batch,) + target_shape; one entry of target_shape may be -1."""

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = tuple(int(d) for d in target_shape)

    def call(self, inputs):
        # the batch stays the batch; a -1 in target_shape is solved by reshape itself
        return fj.reshape(inputs, (inputs.shape[0],) + self.target_shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": self.target_shape}


class Dropout(Layer):
    """Zeroes a fraction `rate` of the inputs and scales the rest by 1/(1-rate), in
    training only."""

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate}")
        self.rate, self.noise_shape, self.seed = float(rate), noise_shape, seed

    def call(self, inputs, training=None):
        if not training or self.rate == 0:
            return inputs
        noise_shape = self.noise_shape
        if noise_shape is not None:         # a None entry takes the input's size there, as Keras
            noise_shape = [inputs.shape[i] if d is None else d for i, d in enumerate(noise_shape)]
        return fj.nn.dropout(inputs, self.rate, noise_shape=noise_shape, seed=self.seed)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "noise_shape": self.noise_shape, "seed": self.seed}


class Embedding(Layer):
    """Integer ids (any shape) -> rows of an (input_dim, output_dim) table."""

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", embeddings_regularizer=None,
                 mask_zero=False, input_length=None, **kwargs):
        if mask_zero:
            raise ValueError("Embedding(mask_zero=True): flowjit's Keras layers do not propagate masks; "
                             "pass sequence lengths to the RNN, or pad with a learned id instead")
        super().__init__(**kwargs)
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        self.embeddings_regularizer = embeddings_regularizer
        self.autocast = False

    def build(self, input_shape):
        self.embeddings = self.add_weight((self.input_dim, self.output_dim), self.embeddings_initializer,
                                          regularizer=self.embeddings_regularizer, name="embeddings")

    def call(self, inputs):
        ids = inputs if inputs.dtype in (fj.int32, fj.int64) else fj.cast(inputs, fj.int32)
        return fj.gather(self.embeddings, ids)

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim}


class Lambda(Layer):
    def __init__(self, function, output_shape=None, arguments=None, **kwargs):
        super().__init__(**kwargs)
        self.function, self.arguments = function, dict(arguments or {})

    def call(self, inputs):
        return self.function(inputs, **self.arguments)


class _Merge(Layer):
    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ValueError(f"{type(self).__name__} {self.name}: needs a list of at least 2 inputs")
        out = inputs[0]
        for x in inputs[1:]:
            out = self._merge(out, x)
        return out


class Add(_Merge):
    def _merge(self, a, b):
        return a + b


class Subtract(_Merge):
    def _merge(self, a, b):
        return a - b


class Multiply(_Merge):
    def _merge(self, a, b):
        return a * b


class Average(_Merge):
    def call(self, inputs):
        return super().call(inputs) * (1.0 / len(inputs))

    def _merge(self, a, b):
        return a + b


class Maximum(_Merge):
    def _merge(self, a, b):
        return fj.maximum(a, b)


class Minimum(_Merge):
    def _merge(self, a, b):
        return fj.minimum(a, b)


class Concatenate(Layer):
    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, inputs):
        return fj.concat(list(inputs), axis=self.axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


def add(inputs, **kwargs):
    return Add(**kwargs)(inputs)


def concatenate(inputs, axis=-1, **kwargs):
    return Concatenate(axis=axis, **kwargs)(inputs)
