"""BatchNormalization and LayerNormalization with Keras 3's weights and formulas.

Both compute as Keras 3's JAX backend: inv = rsqrt(variance + epsilon) * gamma,
outputs = inputs * inv + (beta - mean * inv), with the biased variance mean((x - mean)^2).

BatchNormalization in training (training=True on a trainable layer) normalises with the
batch's statistics over every axis but `axis` and updates the moving ones with
`Variable.assign`:
    moving_mean     = moving_mean * momentum + mean * (1 - momentum)
    moving_variance = moving_variance * momentum + variance * (1 - momentum)
(Keras 3's formula, the biased batch variance). Inside `@fj.jit` the assignments are
effects of the compiled step, applied when it succeeds. In inference, or when the layer
is frozen (`trainable = False`, as Keras 3), it normalises with the moving statistics.
"""
import flowjit as fj
from .. import initializers
from ..layer import Layer


def _normalize(x, mean, variance, gamma, beta, epsilon):
    inv = fj.rsqrt(variance + epsilon)
    if gamma is not None:
        inv = inv * gamma
    res = -mean * inv
    if beta is not None:
        res = res + beta
    return x * inv + res


def _moments(x, axes):
    mean = fj.reduce_mean(x, axis=axes, keepdims=True)
    variance = fj.reduce_mean(fj.square(x - mean), axis=axes, keepdims=True)
    return mean, variance


class BatchNormalization(Layer):
    """Normalises each feature along `axis` with the batch's statistics (training) or
    the moving ones (inference), then scales by gamma and shifts by beta."""

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, renorm=False, renorm_clipping=None,
                 renorm_momentum=0.99, synchronized=False, **kwargs):
        super().__init__(**kwargs)
        if renorm:
            raise ValueError("BatchNormalization(renorm=True): batch renormalization is not supported by "
                             "flowjit's Keras")
        if synchronized:
            raise ValueError("Argument synchronized=True is only supported with the TensorFlow backend.")
        self.axis = int(axis)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.beta_regularizer, self.gamma_regularizer = beta_regularizer, gamma_regularizer
        self.beta_constraint, self.gamma_constraint = beta_constraint, gamma_constraint
        self.gamma = self.beta = self.moving_mean = self.moving_variance = None

    def build(self, input_shape):
        ndim = len(input_shape)
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"Axis {self.axis} is out of bounds for input shape {tuple(input_shape)}. "
                             f"Received: axis={self.axis}")
        channels = input_shape[self.axis]
        if channels is None:
            raise ValueError(f"BatchNormalization {self.name}: the size of axis {self.axis} must be known, "
                             f"got input shape {tuple(input_shape)}")
        shape = (channels,)
        if self.scale:
            self.gamma = self.add_weight(shape, self.gamma_initializer, regularizer=self.gamma_regularizer,
                                         constraint=self.gamma_constraint, name="gamma")
        if self.center:
            self.beta = self.add_weight(shape, self.beta_initializer, regularizer=self.beta_regularizer,
                                        constraint=self.beta_constraint, name="beta")
        self.moving_mean = self.add_weight(shape, self.moving_mean_initializer, trainable=False,
                                           name="moving_mean")
        self.moving_variance = self.add_weight(shape, self.moving_variance_initializer, trainable=False,
                                               name="moving_variance")
        self._axis = self.axis % ndim
        self._reduction_axes = [a for a in range(ndim) if a != self._axis]
        self._bshape = tuple(channels if a == self._axis else 1 for a in range(ndim))

    def call(self, inputs, training=None):
        x = inputs
        if len(x.shape) != len(self._bshape):
            raise ValueError(f"BatchNormalization {self.name}: built for inputs of rank {len(self._bshape)}, "
                             f"got shape {tuple(x.shape)}")

        def param(v):
            return None if v is None else fj.reshape(fj.cast(v.read_value(), x.dtype), self._bshape)
        gamma, beta = param(self.gamma), param(self.beta)
        if training and self.trainable:
            mean, variance = _moments(x, self._reduction_axes)
            m = self.momentum
            for var, stat in ((self.moving_mean, mean), (self.moving_variance, variance)):
                new = var.read_value() * m + fj.cast(fj.reshape(stat, (-1,)), var.dtype) * (1.0 - m)
                var.assign(new)
        else:
            mean, variance = param(self.moving_mean), param(self.moving_variance)
        return _normalize(x, mean, variance, gamma, beta, self.epsilon)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale}


class LayerNormalization(Layer):
    """Normalises each example over `axis` (an int or a list of ints), then scales by
    gamma and shifts by beta (both of the shape of those axes)."""

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, rms_scaling=False, **kwargs):
        super().__init__(**kwargs)
        if rms_scaling:
            raise ValueError("LayerNormalization(rms_scaling=True) is deprecated in Keras 3 and not supported; "
                             "use RMS normalization explicitly")
        if isinstance(axis, (list, tuple)):
            self.axis = [int(a) for a in axis]
        elif isinstance(axis, int):
            self.axis = int(axis)
        else:
            raise TypeError("Expected an int or a list/tuple of ints for the argument 'axis', but received: "
                            f"{axis!r}")
        self.epsilon = float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer, self.gamma_regularizer = beta_regularizer, gamma_regularizer
        self.beta_constraint, self.gamma_constraint = beta_constraint, gamma_constraint
        self.gamma = self.beta = None

    def build(self, input_shape):
        ndim = len(input_shape)
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        if any(not -ndim <= a < ndim for a in axes):
            raise ValueError(f"Axis {self.axis} is out of bounds for input shape {tuple(input_shape)}")
        self._axes = sorted(a % ndim for a in axes)
        shape = tuple(input_shape[a] for a in self._axes)
        if any(d is None for d in shape):
            raise ValueError(f"LayerNormalization {self.name}: the sizes of axis {self.axis} must be known, "
                             f"got input shape {tuple(input_shape)}")
        if self.scale:
            self.gamma = self.add_weight(shape, self.gamma_initializer, regularizer=self.gamma_regularizer,
                                         constraint=self.gamma_constraint, name="gamma")
        if self.center:
            self.beta = self.add_weight(shape, self.beta_initializer, regularizer=self.beta_regularizer,
                                        constraint=self.beta_constraint, name="beta")
        self._bshape = tuple(input_shape[a] if a in self._axes else 1 for a in range(ndim))

    def call(self, inputs):
        x = inputs
        if len(x.shape) != len(self._bshape):
            raise ValueError(f"LayerNormalization {self.name}: built for inputs of rank {len(self._bshape)}, "
                             f"got shape {tuple(x.shape)}")

        def param(v):
            return None if v is None else fj.reshape(fj.cast(v.read_value(), x.dtype), self._bshape)
        mean, variance = _moments(x, self._axes)
        return _normalize(x, mean, variance, param(self.gamma), param(self.beta), self.epsilon)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale}
