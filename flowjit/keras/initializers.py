"""`keras.initializers`: Keras 3's initializers. Each returns a NumPy array, so a layer
can build its weights outside any trace (an `fj.Variable` takes it as is).

Seeds follow Keras 3: an initializer keeps one seed for its lifetime, so calling it twice
gives the same values. Given none, it takes the next seed of `random_state`'s sequence
when it is created (Keras draws `make_default_seed()` in `__init__`), which
`keras.utils.set_random_seed` makes repeatable."""
import math
import re

import numpy as np

import flowjit as fj

from . import random_state
from .identifiers import from_config_dict, from_name


def _np_dtype(dtype):
    if dtype is None:
        return np.dtype(np.float32)          # keras.backend.floatx()
    if isinstance(dtype, fj.DType):
        return np.dtype(dtype.np)
    return np.dtype(fj.as_dtype(dtype).np) if isinstance(dtype, str) else np.dtype(dtype)


def _float_dtype(dtype, who):
    dt = _np_dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"{who} draws random floats; dtype must be a float type, got {dt.name}")
    return dt


def compute_fans(shape):
    """Keras's (fan_in, fan_out): a kernel (..., in, out) counts every position of its
    receptive field (the leading dims) for each input and output channel."""
    shape = tuple(shape)
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return int(shape[0]), int(shape[0])
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    receptive = int(np.prod(shape[:-2]))
    return int(shape[-2]) * receptive, int(shape[-1]) * receptive


class Initializer:
    def __call__(self, shape, dtype=None):
        raise NotImplementedError(f"{type(self).__name__}.__call__(shape, dtype)")

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def clone(self):
        return type(self).from_config(self.get_config())

    def __repr__(self):
        return f"<{type(self).__name__} {self.get_config()}>"


class Zeros(Initializer):
    def __call__(self, shape, dtype=None):
        return np.zeros(tuple(shape), _np_dtype(dtype))


class Ones(Initializer):
    def __call__(self, shape, dtype=None):
        return np.ones(tuple(shape), _np_dtype(dtype))


class Constant(Initializer):
    def __init__(self, value=0.0):
        self.value = value

    def __call__(self, shape, dtype=None):
        return np.full(tuple(shape), self.value, _np_dtype(dtype))

    def get_config(self):
        return {"value": self.value}


class Identity(Initializer):
    """gain * the identity matrix (2-D shapes only, rectangular allowed)."""

    def __init__(self, gain=1.0):
        self.gain = gain

    def __call__(self, shape, dtype=None):
        if len(shape) != 2:
            raise ValueError(f"Identity matrix initializer can only be used for 2D matrices. "
                             f"Received: shape={tuple(shape)} of rank {len(shape)}.")
        return (self.gain * np.eye(*shape)).astype(_np_dtype(dtype))

    def get_config(self):
        return {"gain": self.gain}


class RandomInitializer(Initializer):
    def __init__(self, seed=None):
        if seed is not None and not isinstance(seed, (int, np.integer)):
            raise ValueError(f"`seed` argument should be an integer or None. Received: seed={seed!r}")
        self.seed = seed                          # as given (get_config)
        self._seed = random_state.next_seed() if seed is None else int(seed)

    def _rng(self):
        return random_state.rng(self._seed)

    def get_config(self):
        return {"seed": self.seed}


def _truncated_normal(rng, shape, mean, stddev):
    """Normal draws redrawn until within 2 standard deviations of the mean (Keras's and
    jax.random.truncated_normal's truncation; `stddev` is before truncation)."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return mean + stddev * z


class RandomNormal(RandomInitializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean, self.stddev = mean, stddev
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        dt = _float_dtype(dtype, "RandomNormal")
        return self._rng().normal(self.mean, self.stddev, tuple(shape)).astype(dt)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "stddev": self.stddev}


class TruncatedNormal(RandomInitializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean, self.stddev = mean, stddev
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        dt = _float_dtype(dtype, "TruncatedNormal")
        return _truncated_normal(self._rng(), tuple(shape), self.mean, self.stddev).astype(dt)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "stddev": self.stddev}


class RandomUniform(RandomInitializer):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        self.minval, self.maxval = minval, maxval
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        dt = _float_dtype(dtype, "RandomUniform")
        return self._rng().uniform(self.minval, self.maxval, tuple(shape)).astype(dt)

    def get_config(self):
        return {**super().get_config(), "minval": self.minval, "maxval": self.maxval}


class VarianceScaling(RandomInitializer):
    """Variance scale / n, n the fan_in, fan_out or their mean: "truncated_normal" with
    stddev sqrt(scale/n) / 0.8796... (the stddev of a unit normal truncated at 2, so the
    result has variance scale/n), "untruncated_normal", or "uniform" in +-sqrt(3 scale/n)."""

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        if scale <= 0.0:
            raise ValueError(f"Argument `scale` must be positive float. Received: scale={scale}")
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"Invalid `mode` argument: {mode!r}. Please use one of "
                             f"'fan_in', 'fan_out', 'fan_avg'")
        distribution = distribution.lower()
        if distribution == "normal":
            distribution = "truncated_normal"
        if distribution not in ("uniform", "truncated_normal", "untruncated_normal"):
            raise ValueError(f"Invalid `distribution` argument: {distribution!r}. Please use one "
                             f"of 'uniform', 'truncated_normal', 'untruncated_normal'")
        self.scale, self.mode, self.distribution = scale, mode, distribution
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        dt = _float_dtype(dtype, type(self).__name__)
        shape = tuple(shape)
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, n)
        rng = self._rng()
        if self.distribution == "truncated_normal":
            out = _truncated_normal(rng, shape, 0.0, math.sqrt(scale) / 0.87962566103423978)
        elif self.distribution == "untruncated_normal":
            out = rng.normal(0.0, math.sqrt(scale), shape)
        else:
            limit = math.sqrt(3.0 * scale)
            out = rng.uniform(-limit, limit, shape)
        return out.astype(dt)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "mode": self.mode,
                "distribution": self.distribution}


class _Preset(VarianceScaling):
    """Glorot/He/Lecun: VarianceScaling with fixed scale, mode and distribution."""
    _args = None

    def __init__(self, seed=None):
        super().__init__(*self._args, seed=seed)

    def get_config(self):
        return {"seed": self.seed}


class GlorotUniform(_Preset):
    _args = (1.0, "fan_avg", "uniform")


class GlorotNormal(_Preset):
    _args = (1.0, "fan_avg", "truncated_normal")


class HeNormal(_Preset):
    _args = (2.0, "fan_in", "truncated_normal")


class HeUniform(_Preset):
    _args = (2.0, "fan_in", "uniform")


class LecunNormal(_Preset):
    _args = (1.0, "fan_in", "truncated_normal")


class LecunUniform(_Preset):
    _args = (1.0, "fan_in", "uniform")


class Orthogonal(RandomInitializer):
    """gain * an orthogonal matrix (QR of a normal draw, signs fixed by R's diagonal so
    the result is uniformly distributed), for the shape flattened to (prod(shape[:-1]),
    shape[-1]): orthonormal columns, or rows when there are fewer rows than columns."""

    def __init__(self, gain=1.0, seed=None):
        self.gain = gain
        super().__init__(seed)

    def __call__(self, shape, dtype=None):
        dt = _float_dtype(dtype, "Orthogonal")
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"The tensor to initialize must be at least two-dimensional. "
                             f"Received: shape={shape} of rank {len(shape)}.")
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        a = self._rng().standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (self.gain * q.reshape(shape)).astype(dt)

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}


def _snake(name):
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)).lower()


_CLASSES = (Zeros, Ones, Constant, Identity, RandomNormal, RandomUniform, TruncatedNormal,
            VarianceScaling, GlorotUniform, GlorotNormal, HeNormal, HeUniform, LecunNormal,
            LecunUniform, Orthogonal)
_BY_NAME = {c.__name__: c for c in _CLASSES}
_BY_NAME.update({_snake(c.__name__): c for c in _CLASSES})
_BY_NAME.update(normal=RandomNormal, uniform=RandomUniform, one=Ones, zero=Zeros,
                IdentityInitializer=Identity, OrthogonalInitializer=Orthogonal)


def get(identifier):
    """An initializer from a name ("glorot_uniform" or "GlorotUniform"), a dict
    {"class_name": ..., "config": {...}}, a class, an instance or any callable
    `f(shape, dtype=None)` (returned as is). None gives None."""
    if identifier is None or isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, dict):
        return from_config_dict(identifier, _BY_NAME, "initializer")
    if isinstance(identifier, str):
        return from_name(identifier, _BY_NAME, "initializer")
    if isinstance(identifier, type):
        return identifier()
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret initializer identifier: {identifier!r}")


def serialize(initializer):
    return {"class_name": type(initializer).__name__, "config": initializer.get_config()}


def deserialize(config):
    return get(config)
