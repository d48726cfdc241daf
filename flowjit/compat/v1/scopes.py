"""`tf.variable_scope` / `tf.get_variable` (variables shared by name, with reuse, as
TF 1.15's variable_scope.py) and the TF1 initializers. `tf.layers` is in layers.py."""
import contextlib
import functools
import math

import numpy as np

from ... import dtypes as D
from .graph import Tensor, TensorShape, get_default_graph
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
    """TF1's VariableScope: the name prefix of get_variable, its reuse mode and the defaults
    (initializer, regularizer, dtype, custom getter) of the variables made in it.
    `original_name_scope` is the name scope the scope was first opened with (layers put
    their ops there, whatever name scope re-enters it)."""

    def __init__(self, reuse, name="", initializer=None, regularizer=None, caching_device=None,
                 partitioner=None, custom_getter=None, name_scope="", dtype=None, use_resource=None,
                 constraint=None):
        self._reuse, self._name = reuse, name
        self._initializer, self._regularizer = initializer, regularizer
        self._caching_device, self._partitioner = caching_device, partitioner
        self._custom_getter, self._name_scope = custom_getter, name_scope
        self._dtype, self._use_resource, self._constraint = dtype, use_resource, constraint

    name = property(lambda self: self._name)
    original_name_scope = property(lambda self: self._name_scope)
    reuse = property(lambda self: self._reuse)
    initializer = property(lambda self: self._initializer)
    regularizer = property(lambda self: self._regularizer)
    dtype = property(lambda self: self._dtype)
    caching_device = property(lambda self: self._caching_device)
    partitioner = property(lambda self: self._partitioner)
    custom_getter = property(lambda self: self._custom_getter)
    use_resource = property(lambda self: self._use_resource)
    constraint = property(lambda self: self._constraint)

    def reuse_variables(self):
        self._reuse = True

    def set_initializer(self, initializer):
        self._initializer = initializer

    def set_regularizer(self, regularizer):
        self._regularizer = regularizer

    def set_dtype(self, dtype):
        self._dtype = dtype

    def set_caching_device(self, caching_device):
        self._caching_device = caching_device

    def set_partitioner(self, partitioner):
        self._partitioner = partitioner

    def set_custom_getter(self, custom_getter):
        self._custom_getter = custom_getter

    def set_use_resource(self, use_resource):
        self._use_resource = use_resource

    def get_variable(self, var_store, name, shape=None, dtype=None, initializer=None, regularizer=None,
                     reuse=None, trainable=None, collections=None, caching_device=None, partitioner=None,
                     validate_shape=True, use_resource=None, custom_getter=None, constraint=None, **kwargs):
        """`name` in this scope (TF1's VariableScope.get_variable; var_store is not used)."""
        return _get_variable(self, name, shape, dtype, initializer, regularizer, trainable, collections,
                             custom_getter, reuse)

    def __repr__(self):
        return f"<tf.VariableScope '{self._name}' reuse={self._reuse}>"


def _state(g):
    if not hasattr(g, "_var_scopes"):
        g._var_scopes = [VariableScope(False)]   # the root scope (reuse False, as TF1's)
        g._var_store = {}
        g._scope_counts = {}      # TF1's variable_scopes_count: full name -> times opened
    return g


def get_variable_scope():
    return _state(get_default_graph())._var_scopes[-1]


def _unique_scope_name(g, prefix):
    """TF1's _get_unique_variable_scope: the first of prefix, prefix_1, ... not opened in
    the current variable scope since that scope was last entered."""
    cur = g._var_scopes[-1].name
    pre = cur + "/" if cur else ""
    counts = g._scope_counts
    if counts.get(pre + prefix, 0) == 0:
        return prefix
    i = 1
    while counts.get(f"{pre}{prefix}_{i}", 0) > 0:
        i += 1
    return f"{prefix}_{i}"


def _wrap_getter(custom_getter, old_getter):
    """A scope's custom getter over its enclosing scope's: custom_getter gets a getter
    that calls old_getter with the true getter (TF1's _maybe_wrap_custom_getter)."""
    if old_getter is None:
        return custom_getter

    def wrapped(getter, *args, **kwargs):
        return custom_getter(functools.partial(old_getter, getter), *args, **kwargs)
    return wrapped


@contextlib.contextmanager
def _pure_variable_scope(g, name_or_scope, reuse, initializer, regularizer, caching_device, partitioner,
                         custom_getter, old_name_scope, dtype, use_resource, constraint):
    """TF1's _pure_variable_scope: the variable-scope half of variable_scope (no name scope)."""
    outer = g._var_scopes[-1]
    counts = g._scope_counts
    if isinstance(name_or_scope, VariableScope):
        # jumping to a captured scope: its own settings (not the enclosing scope's), reuse
        # only if asked for or captured
        src = name_or_scope
        new_name = src.name
        scope = VariableScope(src.reuse if not reuse else reuse, new_name, src.initializer,
                              src.regularizer, src.caching_device, src.partitioner, src.custom_getter,
                              src.original_name_scope, src.dtype, src.use_resource, constraint)
        base_getter = src.custom_getter
    else:
        new_name = (outer.name + "/" if outer.name else "") + name_or_scope
        scope = VariableScope(reuse or outer.reuse, new_name, outer.initializer, outer.regularizer,
                              outer.caching_device, outer.partitioner, outer.custom_getter,
                              old_name_scope if old_name_scope is not None else name_or_scope,
                              outer.dtype, outer.use_resource, constraint)
        base_getter = outer.custom_getter
    if initializer is not None:
        scope.set_initializer(initializer)
    if regularizer is not None:
        scope.set_regularizer(regularizer)
    if caching_device is not None:
        scope.set_caching_device(caching_device)
    if partitioner is not None:
        scope.set_partitioner(partitioner)
    if custom_getter is not None:
        scope.set_custom_getter(_wrap_getter(custom_getter, base_getter))
    if dtype is not None:
        scope.set_dtype(dtype)
    if use_resource is not None:
        scope.set_use_resource(use_resource)
    counts[new_name] = counts.get(new_name, 0) + 1
    saved = dict(counts) if isinstance(name_or_scope, VariableScope) else None
    g._var_scopes.append(scope)
    try:
        yield scope
    finally:
        if g._var_scopes[-1] is not scope:
            raise RuntimeError("Improper nesting of variable_scope.")
        g._var_scopes.pop()
        # as TF1: leaving a scope opened by name forgets the default names taken inside it
        # (so re-entering it, e.g. with reuse=True, gives the same `dense`, `dense_1`, ...);
        # leaving a re-entered scope object restores the counts it found
        if saved is not None:
            counts.clear()          # (in place: other contexts hold this dict)
            counts.update(saved)
        else:
            for k in list(counts):
                if k.startswith(new_name + "/"):
                    counts[k] = 0


@contextlib.contextmanager
def variable_scope(name_or_scope, default_name=None, values=None, initializer=None, regularizer=None,
                   caching_device=None, partitioner=None, custom_getter=None, reuse=None, dtype=None,
                   use_resource=None, constraint=None, auxiliary_name_scope=True):
    """TF1's tf.variable_scope: a name scope and a variable scope.

    A string name extends the current variable scope and inherits its reuse; None takes
    `default_name` made unique among the scopes opened in the current one since it was
    entered (`dense`, `dense_1`, ...); a VariableScope object re-enters that scope with its
    own settings. The name scope opened is the name (or default_name, or the last part of
    the scope object's name) made unique as any name scope, unless auxiliary_name_scope
    is False (the current name scope is kept)."""
    if default_name is None and name_or_scope is None:
        raise TypeError("If default_name is None then name_or_scope is required")
    if reuse is False:
        reuse = None            # TF1 >= 1.1: False means "inherit", as None
    if not (reuse is True or reuse is None or reuse is AUTO_REUSE):
        raise ValueError("The reuse parameter must be True or False or None.")
    if not isinstance(auxiliary_name_scope, bool):
        raise TypeError(f"The auxiliary_name_scope must be `True` or `False`, while get "
                        f"{auxiliary_name_scope}")
    if name_or_scope is not None and not isinstance(name_or_scope, (VariableScope, str)):
        raise TypeError("VariableScope: name_or_scope must be a string or VariableScope.")
    if name_or_scope is None and reuse:
        raise ValueError("reuse=True cannot be used without a name_or_scope")
    g = _state(get_default_graph())
    if auxiliary_name_scope:
        ns_cm = None
    else:
        cur = g.get_name_scope()
        ns_cm = g.name_scope(cur + "/" if cur else "")      # re-enter the current name scope
    if name_or_scope is None:
        ns_cm = ns_cm or g.name_scope(default_name)
    else:
        ns_name = (name_or_scope if isinstance(name_or_scope, str)
                   else name_or_scope.name.split("/")[-1])
        if ns_cm is None and ns_name:
            ns_cm = g.name_scope(ns_name)
    with (ns_cm if ns_cm is not None else contextlib.nullcontext(None)) as ns:
        if name_or_scope is None:
            target, old_ns = _unique_scope_name(g, default_name), ns
        elif isinstance(name_or_scope, str):
            target, old_ns = name_or_scope, ns
        else:
            target, old_ns = name_or_scope, None
        with _pure_variable_scope(g, target, reuse, initializer, regularizer, caching_device, partitioner,
                                  custom_getter, old_ns, dtype, use_resource, constraint) as scope:
            yield scope


REGULARIZATION_LOSSES = "regularization_losses"      # TF1's GraphKeys.REGULARIZATION_LOSSES


def get_variable(name, shape=None, dtype=None, initializer=None, regularizer=None, trainable=None,
                 collections=None, caching_device=None, partitioner=None, validate_shape=True,
                 use_resource=None, custom_getter=None, constraint=None, synchronization=None,
                 aggregation=None):
    """The variable `scope/name`: created on first use, shared when the scope reuses.
    The scope's initializer, regularizer, dtype and custom getter apply as in TF1."""
    return _get_variable(get_variable_scope(), name, shape, dtype, initializer, regularizer, trainable,
                         collections, custom_getter)


def _get_variable(scope, name, shape, dtype, initializer, regularizer, trainable, collections,
                  custom_getter, reuse=None, caching_device=None, partitioner=None, validate_shape=True,
                  use_resource=None, constraint=None):
    full = (scope.name + "/" if scope.name else "") + name
    if initializer is None:
        initializer = scope.initializer
    if regularizer is None:
        regularizer = scope.regularizer
    if dtype is None:
        dtype = scope.dtype
    if custom_getter is None:
        custom_getter = scope.custom_getter
    kwargs = dict(shape=shape, dtype=dtype, initializer=initializer, regularizer=regularizer,
                  reuse=scope.reuse if reuse is None else reuse, trainable=trainable, collections=collections,
                  caching_device=caching_device, partitioner=partitioner, validate_shape=validate_shape,
                  use_resource=use_resource, constraint=constraint)
    if custom_getter is not None:
        return custom_getter(getter=_true_getter, name=full, **kwargs)
    return _true_getter(full, **kwargs)


def _true_getter(name, shape=None, dtype=None, initializer=None, regularizer=None, reuse=None,
                 trainable=None, collections=None, caching_device=None, partitioner=None,
                 validate_shape=True, use_resource=None, constraint=None, synchronization=None,
                 aggregation=None, **unused):
    """TF1's _VariableStore._get_single_variable for the full name `name`."""
    g = _state(get_default_graph())
    full = name
    dtype = D.as_dtype(dtype or D.float32)
    existing = g._var_store.get(full)
    if existing is not None:
        if not reuse:
            raise ValueError(f"Variable {full} already exists, disallowed. Did you mean to set "
                             f"reuse=True or reuse=tf.AUTO_REUSE in VarScope? Originally defined at: "
                             f"{existing.op._src}")
        if shape is not None and not existing.shape.is_compatible_with(shape):
            raise ValueError(f"Trying to share variable {full}, but specified shape "
                             f"{TensorShape(list(shape))} and found shape {existing.shape}.")
        if dtype is not existing.dtype:
            raise ValueError(f"Trying to share variable {full}, but specified dtype {dtype.name} and "
                             f"found dtype {existing.dtype.name}.")
        return existing
    if reuse is True:
        raise ValueError(f"Variable {full} does not exist, or was not created with tf.get_variable(). "
                         f"Did you mean to set reuse=tf.AUTO_REUSE in VarScope?")
    init = initializer
    with g.name_scope(full + "/"), g.control_dependencies(None):
        if isinstance(init, (Tensor, np.ndarray, list, int, float)) and not callable(init):
            value = init
        else:
            if shape is None:
                raise ValueError(f"get_variable {full}: the shape is needed to initialize it")
            if init is None:
                if dtype.is_floating:
                    init = glorot_uniform_initializer()
                elif dtype.is_integer or dtype is D.bool_:
                    init = zeros_initializer()
                else:
                    raise ValueError(f"An initializer for variable {full} of {dtype.name} is required")
            value = init(list(shape), dtype)
    with g.name_scope(None):
        g.unique_name(full)       # the variable's own name is taken now
    var = Variable(value, trainable=True if trainable is None else trainable, collections=collections,
                   name=full + "/", dtype=dtype if not isinstance(value, Tensor) else None)
    g._var_store[full] = var
    if regularizer is not None:
        with g.name_scope(full + "/Regularizer/"), g.control_dependencies(None):
            loss = regularizer(var)
        if loss is not None:
            g.add_to_collection(REGULARIZATION_LOSSES, loss)
    return var


def dense(*args, **kwargs):
    """tf.layers.dense (kept here for older imports; see layers.py)."""
    from .layers import dense as _dense
    return _dense(*args, **kwargs)
