"""`tf.variable_scope` / `tf.get_variable` (variables shared by name, with reuse),
the TF1 initializers, and `tf.layers.dense` built on them."""
import contextlib
import math

import numpy as np

from ... import dtypes as D
from .graph import Tensor, get_default_graph
from . import ops as O
from .random_ops import random_normal, random_uniform, truncated_normal
from .variables import Variable

AUTO_REUSE = "AUTO_REUSE"


# --- initializers: callables (shape, dtype) -> a TF1 tensor ---------------------------------
class _Init:
    def __call__(self, shape, dtype=None, partition_info=None):
        return self.make([int(d) for d in shape], D.as_dtype(dtype or self.dtype or D.float32))


class zeros_initializer(_Init):
    def __init__(self, dtype=None):
        self.dtype = dtype

    def make(self, shape, dtype):
        return O.zeros(shape, dtype)


class ones_initializer(_Init):
    def __init__(self, dtype=None):
        self.dtype = dtype

    def make(self, shape, dtype):
        return O.ones(shape, dtype)


class constant_initializer(_Init):
    def __init__(self, value=0, dtype=None, verify_shape=False):
        self.value, self.dtype = value, dtype

    def make(self, shape, dtype):
        return O.constant(self.value, dtype, shape)


class random_normal_initializer(_Init):
    def __init__(self, mean=0.0, stddev=1.0, seed=None, dtype=None):
        self.mean, self.stddev, self.seed, self.dtype = mean, stddev, seed, dtype

    def make(self, shape, dtype):
        return random_normal(shape, self.mean, self.stddev, dtype, self.seed)


class truncated_normal_initializer(random_normal_initializer):
    def make(self, shape, dtype):
        return truncated_normal(shape, self.mean, self.stddev, dtype, self.seed)


class random_uniform_initializer(_Init):
    def __init__(self, minval=0.0, maxval=None, seed=None, dtype=None):
        self.minval, self.maxval, self.seed, self.dtype = minval, maxval, seed, dtype

    def make(self, shape, dtype):
        return random_uniform(shape, self.minval, self.maxval, dtype, self.seed)


def _fans(shape):
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


class glorot_uniform_initializer(_Init):
    """uniform(-limit, limit) with limit = sqrt(6 / (fan_in + fan_out))."""

    def __init__(self, seed=None, dtype=None):
        self.seed, self.dtype = seed, dtype

    def make(self, shape, dtype):
        fi, fo = _fans(shape)
        limit = math.sqrt(6.0 / (fi + fo))
        return random_uniform(shape, -limit, limit, dtype, self.seed)


class glorot_normal_initializer(_Init):
    """truncated normal with stddev = sqrt(2 / (fan_in + fan_out)) / 0.8796 (TF1's
    correction for the truncation at 2 stddev)."""

    def __init__(self, seed=None, dtype=None):
        self.seed, self.dtype = seed, dtype

    def make(self, shape, dtype):
        fi, fo = _fans(shape)
        return truncated_normal(shape, 0.0, math.sqrt(2.0 / (fi + fo)) / 0.87962566103423978, dtype,
                                self.seed)


# --- variable scopes ----------------------------------------------------------------------------
class VariableScope:
    def __init__(self, name, reuse=None, initializer=None, dtype=None):
        self.name, self.reuse, self.initializer, self.dtype = name, reuse, initializer, dtype
        self.original_name_scope = name + "/" if name else ""

    def reuse_variables(self):
        self.reuse = True


def _state(g):
    if not hasattr(g, "_var_scopes"):
        g._var_scopes = [VariableScope("")]
        g._var_store = {}
        g._scope_counts = {}
    return g


def get_variable_scope():
    return _state(get_default_graph())._var_scopes[-1]


@contextlib.contextmanager
def variable_scope(name_or_scope, default_name=None, values=None, initializer=None, regularizer=None,
                   caching_device=None, partitioner=None, custom_getter=None, reuse=None, dtype=None,
                   use_resource=None, constraint=None, auxiliary_name_scope=True):
    g = _state(get_default_graph())
    outer = g._var_scopes[-1]
    counts = g._scope_counts          # TF1's variable_scopes_count: full name -> times opened
    if isinstance(name_or_scope, VariableScope):
        full = name_or_scope.name
    else:
        base = name_or_scope
        if base is None:
            if default_name is None:
                raise ValueError("variable_scope needs a name or a default_name")
            # TF1's _get_unique_variable_scope: the first of default_name, default_name_1,
            # ... not opened in this scope since the scope was last entered
            pre = outer.name + "/" if outer.name else ""
            base, i = default_name, 1
            while counts.get(pre + base, 0) > 0:
                base = f"{default_name}_{i}"
                i += 1
        full = (outer.name + "/" if outer.name else "") + base
    if reuse is None or reuse is False:
        reuse = outer.reuse if outer.reuse else None
    if isinstance(name_or_scope, VariableScope) and reuse is None and name_or_scope.reuse:
        reuse = name_or_scope.reuse
    scope = VariableScope(full, reuse, initializer or outer.initializer, dtype or outer.dtype)
    counts[full] = counts.get(full, 0) + 1
    saved = dict(counts) if isinstance(name_or_scope, VariableScope) else None
    g._var_scopes.append(scope)
    try:
        with g.name_scope(full.rsplit("/", 1)[-1] if not isinstance(name_or_scope, VariableScope)
                          else full + "/"):
            yield scope
    finally:
        g._var_scopes.pop()
        # as TF1: leaving a scope forgets the scopes opened inside it (so reopening it, e.g.
        # with reuse=True, gives the same default names), a reentered scope object restores them
        if saved is not None:
            counts.clear()          # (in place: the enclosing scopes hold this dict)
            counts.update(saved)
        else:
            for k in list(counts):
                if k.startswith(full + "/"):
                    counts[k] = 0


def get_variable(name, shape=None, dtype=None, initializer=None, regularizer=None, trainable=True,
                 collections=None, caching_device=None, partitioner=None, validate_shape=True,
                 use_resource=None, custom_getter=None, constraint=None, synchronization=None,
                 aggregation=None):
    """The variable `scope/name`: created on first use, shared when the scope reuses."""
    g = _state(get_default_graph())
    scope = g._var_scopes[-1]
    full = (scope.name + "/" if scope.name else "") + name
    existing = g._var_store.get(full)
    if existing is not None:
        if scope.reuse is None:
            raise ValueError(f"Variable {full} already exists, disallowed. Did you mean to set "
                             f"reuse=True or reuse=tf.AUTO_REUSE in VarScope?")
        if shape is not None and not existing.shape.is_compatible_with(shape):
            raise ValueError(f"Trying to share variable {full}, but specified shape {list(shape)} "
                             f"and found shape {existing.shape}.")
        return existing
    if scope.reuse is True:
        raise ValueError(f"Variable {full} does not exist, or was not created with tf.get_variable(). "
                         f"Did you mean to set reuse=tf.AUTO_REUSE in VarScope?")
    dtype = D.as_dtype(dtype or scope.dtype or D.float32)
    init = initializer if initializer is not None else scope.initializer
    with g.name_scope(full + "/"), g.control_dependencies(None):
        if isinstance(init, (Tensor, np.ndarray, list, int, float)) and not callable(init):
            value = init
        else:
            if shape is None:
                raise ValueError(f"get_variable {full}: the shape is needed to initialize it")
            init = init if init is not None else (glorot_uniform_initializer() if dtype.is_floating
                                                  else zeros_initializer())
            value = init(list(shape), dtype)
    g.unique_name(full)           # the variable's own name is taken now
    var = Variable(value, trainable=trainable, collections=collections, name=full + "/",
                   dtype=dtype if not isinstance(value, Tensor) else None)
    g._var_store[full] = var
    return var


# --- tf.layers -------------------------------------------------------------------------------------
def dense(inputs, units, activation=None, use_bias=True, kernel_initializer=None,
          bias_initializer=None, kernel_regularizer=None, bias_regularizer=None,
          activity_regularizer=None, kernel_constraint=None, bias_constraint=None, trainable=True,
          name=None, reuse=None):
    """outputs = activation(inputs @ kernel + bias) with variables `<name>/kernel`, `<name>/bias`."""
    n_in = inputs.shape[-1].value
    if n_in is None:
        raise ValueError("The last dimension of the inputs to `dense` should be defined. Found `None`.")
    with variable_scope(name, default_name="dense", reuse=reuse):
        kernel = get_variable("kernel", [n_in, units], inputs.dtype, kernel_initializer,
                              trainable=trainable)
        out = O.matmul(inputs, kernel)
        if use_bias:
            bias = get_variable("bias", [units], inputs.dtype, bias_initializer or zeros_initializer(),
                                trainable=trainable)
            out = O.apply("BiasAdd", lambda x, b: x + b, (out, bias))
        if activation is not None:
            out = activation(out)
    return out
