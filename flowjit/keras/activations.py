"""`keras.activations`: Keras 3's activation functions as compositions of `fj` ops, so they
run eagerly, trace under `@fj.jit` and differentiate like any other op.

`softmax` and `sigmoid` remember their input (as Keras 3 stores `_keras_logits` on the
output) so that a crossentropy loss given their probabilities can use the logits instead:
log(softmax) from the logits stays finite where log(clip(probabilities)) saturates."""
import math

import flowjit as fj

from .losses import remember_logits


def _t(x):
    return x if isinstance(x, fj.Tensor) else fj.convert_to_tensor(x)


def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """max(x, 0); Keras's options: values below `threshold` are zeroed (and get slope
    `negative_slope` below it), values are capped at `max_value`."""
    x = _t(x)
    if negative_slope == 0.0 and max_value is None and threshold == 0.0:
        return fj.nn.relu(x)
    y = fj.where(x > threshold, x, fj.zeros_like(x)) if threshold != 0.0 else fj.nn.relu(x)
    if max_value is not None:
        y = fj.clip_by_value(y, 0.0, float(max_value))
    if negative_slope != 0.0:
        y = y - negative_slope * fj.nn.relu(threshold - x)
    return y


def leaky_relu(x, negative_slope=0.2):
    return fj.nn.leaky_relu(_t(x), alpha=negative_slope)


def relu6(x):
    return fj.nn.relu6(_t(x))


def softmax(x, axis=-1):
    x = _t(x)
    return remember_logits(fj.nn.softmax(x, axis=axis), x, "softmax", axis=axis)


def log_softmax(x, axis=-1):
    return fj.nn.log_softmax(_t(x), axis=axis)


def sigmoid(x):
    x = _t(x)
    return remember_logits(fj.sigmoid(x), x, "sigmoid")


def tanh(x):
    return fj.tanh(_t(x))


def elu(x, alpha=1.0):
    x = _t(x)
    # expm1 of min(x, 0): the branch not taken never overflows, so gradients stay finite
    return fj.where(x > 0.0, x, alpha * fj.expm1(fj.minimum(x, 0.0)))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def selu(x):
    return _SELU_SCALE * elu(x, _SELU_ALPHA)


def softplus(x):
    return fj.softplus(_t(x))         # log1p(exp(-|x|)) + max(x, 0): never overflows


def softsign(x):
    x = _t(x)
    return x / (fj.abs(x) + 1.0)


def silu(x):
    x = _t(x)
    return x * fj.sigmoid(x)


swish = silu


def _erfc(x):
    """erfc by the Chebyshev fit of Numerical Recipes (erfcc): relative error < 1.2e-7
    everywhere, the tails included, which float32 cannot resolve anyway. flowjit has no
    erf op; this composition traces, fuses and differentiates like the other activations
    (its derivative is within 1e-7 of -2/sqrt(pi) exp(-x^2))."""
    z = fj.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    a = t * fj.exp(poly - z * z)
    return fj.where(x >= 0.0, a, 2.0 - a)


def gelu(x, approximate=False):
    """x * Phi(x). Exact (Keras 3's default): 0.5 x erfc(-x/sqrt(2)), accurate for large
    negative x where 1 + erf would cancel. approximate=True: the tanh form."""
    x = _t(x)
    if approximate:
        c = math.sqrt(2.0 / math.pi)
        return 0.5 * x * (1.0 + fj.tanh(c * (x + 0.044715 * x * x * x)))
    return 0.5 * x * _erfc(x * (-1.0 / math.sqrt(2.0)))


def hard_sigmoid(x):
    """Keras 3's (not TF2's 0.2x+0.5): relu6(x + 3) / 6."""
    return fj.nn.relu6(_t(x) + 3.0) / 6.0


def hard_silu(x):
    x = _t(x)
    return x * hard_sigmoid(x)


hard_swish = hard_silu


def log_sigmoid(x):
    return -fj.softplus(-_t(x))


def mish(x):
    x = _t(x)
    return x * fj.tanh(fj.softplus(x))


def exponential(x):
    return fj.exp(_t(x))


def linear(x):
    return x


_BY_NAME = {f.__name__: f for f in (
    relu, leaky_relu, relu6, softmax, log_softmax, sigmoid, tanh, elu, selu, softplus, softsign,
    silu, gelu, hard_sigmoid, hard_silu, log_sigmoid, mish, exponential, linear)}
_BY_NAME.update(swish=silu, hard_swish=hard_silu)


def get(identifier):
    """None or "linear": the identity; a name: that function; a callable: itself."""
    if identifier is None:
        return linear
    if isinstance(identifier, dict):       # Keras's serialized form of a builtin
        identifier = identifier.get("config", identifier.get("class_name"))
    if isinstance(identifier, str):
        fn = _BY_NAME.get(identifier)
        if fn is None:
            raise ValueError(f"Could not interpret activation function identifier: {identifier!r} "
                             f"(known: {', '.join(sorted(_BY_NAME))})")
        return fn
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret activation function identifier: {identifier!r}")


def serialize(activation):
    """The name of a builtin activation (what `get` takes back)."""
    name = getattr(activation, "__name__", None)
    if _BY_NAME.get(name) is activation:
        return name
    raise ValueError(f"Unknown activation function {activation!r} cannot be serialized: only "
                     f"the builtins of flowjit.keras.activations have names")


def deserialize(config):
    return get(config)
