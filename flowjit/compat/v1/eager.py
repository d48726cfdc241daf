"""TF1's eager mode: `tf.enable_eager_execution()` and `tf.contrib.eager` (`tfe`).

TF 1.5-1.15 programs could switch the whole process to eager execution at start-up, and
then `tf.constant`, `tf.matmul`, ... compute at once, `tfe.Variable` holds a value, and
`tfe.implicit_gradients(loss_fn)` differentiates a Python function with respect to the
variables it reads. flowjit's core API is eager already, so enabling eager execution
rebinds this module's names to it: each TF1 op name that flowjit's core has becomes the
core function, TF1-only spellings (`to_float`, `random_normal`, ...) map onto theirs,
TF1 optimizers with the same formulas as flowjit's (GradientDescent, Momentum, Adam)
wrap them, and graph-only names (`placeholder`, `Session`) raise TF's error. As in TF
it is for the whole process and must come before the graph is used.
"""
import sys
import types

import numpy as np

import flowjit as fj
from ... import dtypes as D
from . import errors

_SAVED = {}          # name -> the graph-mode value, while eager execution is on


def _variable(initial_value=None, trainable=True, name=None, dtype=None, **unused):
    if initial_value is None:
        raise ValueError("initial_value must be specified")
    return fj.Variable(initial_value, name=name, trainable=trainable, dtype=dtype)


def _graph_only(what):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"tf.{what} is not compatible with eager execution")
    refuse.__name__ = what
    return refuse


def _grads_and_vars(f, args, kwargs):
    with fj.GradientTape() as tape:
        value = f(*args, **kwargs)
    variables = [v for v in tape.watched_variables() if v.trainable]
    if not variables:
        raise ValueError(f"implicit_gradients: {getattr(f, '__name__', f)} reads no trainable variables")
    return value, list(zip(tape.gradient(value, variables), variables))


def implicit_value_and_gradients(f):
    """f(*args) -> (value, [(gradient, variable)]) for the trainable variables f reads."""
    def wrapped(*args, **kwargs):
        return _grads_and_vars(f, args, kwargs)
    return wrapped


def implicit_gradients(f):
    """f(*args) -> [(gradient, variable)] for the trainable variables f reads."""
    def wrapped(*args, **kwargs):
        return _grads_and_vars(f, args, kwargs)[1]
    return wrapped


def gradients_function(f, params=None):
    """f(*args) -> the gradients of f's value with respect to its arguments (or those
    whose positions are in params)."""
    def wrapped(*args):
        xs = [fj.convert_to_tensor(a) if not isinstance(a, fj.Tensor) else a for a in args]
        with fj.GradientTape() as tape:
            for x in xs:
                tape.watch(x)
            value = f(*xs)
        chosen = [xs[i] for i in (params if params is not None else range(len(xs)))]
        return tape.gradient(value, chosen)
    return wrapped


def value_and_gradients_function(f, params=None):
    def wrapped(*args):
        return f(*args), gradients_function(f, params)(*args)
    return wrapped


class _EagerOptimizer:
    """A TF1 optimizer in eager mode: apply_gradients on (gradient, variable) pairs, and
    minimize of a zero-argument loss function, on the flowjit optimizer with TF1's
    formula."""

    def __init__(self, fj_opt):
        self._opt = fj_opt

    def compute_gradients(self, loss, var_list=None, **unused):
        if not callable(loss):
            raise TypeError("in eager mode compute_gradients takes a function returning the loss")
        return _grads_and_vars(loss, (), {})[1] if var_list is None else \
            _explicit(loss, list(var_list))

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        self._opt.apply_gradients([(g, v) for g, v in grads_and_vars if g is not None])
        if global_step is not None:
            global_step.assign_add(np.int64(1) if global_step.dtype is D.int64 else 1)

    def minimize(self, loss, global_step=None, var_list=None, **unused):
        self.apply_gradients(self.compute_gradients(loss, var_list), global_step)

    def variables(self):
        return self._opt.variables()


def _explicit(loss, var_list):
    with fj.GradientTape() as tape:
        value = loss()
    return list(zip(tape.gradient(value, var_list), var_list))


def _optimizers():
    O = fj.optimizers

    def gd(learning_rate, use_locking=False, name="GradientDescent"):
        return _EagerOptimizer(O.SGD(learning_rate))

    def momentum(learning_rate, momentum, use_locking=False, name="Momentum", use_nesterov=False):
        return _EagerOptimizer(O.SGD(learning_rate, momentum=momentum, nesterov=use_nesterov))

    def adam(learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8, use_locking=False, name="Adam"):
        return _EagerOptimizer(O.Adam(learning_rate, beta_1=beta1, beta_2=beta2, epsilon=epsilon))

    def global_step(graph=None):
        return fj.Variable(np.int64(0), name="global_step", trainable=False)
    return {"GradientDescentOptimizer": gd, "MomentumOptimizer": momentum, "AdamOptimizer": adam,
            "get_or_create_global_step": global_step, "get_global_step": global_step,
            "create_global_step": global_step, "Checkpoint": fj.train.Checkpoint}


_RENAMED = {
    "to_float": lambda x, name=None: fj.cast(x, D.float32),
    "to_double": lambda x, name=None: fj.cast(x, D.float64),
    "to_int32": lambda x, name=None: fj.cast(x, D.int32),
    "to_int64": lambda x, name=None: fj.cast(x, D.int64),
    "arg_max": fj.argmax, "arg_min": fj.argmin, "div": fj.divide, "neg": fj.negative,
    "mul": fj.multiply, "sub": fj.subtract,
    "random_normal": fj.random.normal, "random_uniform": fj.random.uniform,
    "truncated_normal": fj.random.truncated_normal, "set_random_seed": fj.random.set_seed,
    "Variable": _variable,
    "global_variables_initializer": lambda: None, "initialize_all_variables": lambda: None,
    "local_variables_initializer": lambda: None,
    "placeholder": _graph_only("placeholder"), "Session": _graph_only("Session"),
    "InteractiveSession": _graph_only("InteractiveSession"),
    "executing_eagerly": lambda: True,
}


def enable_eager_execution(config=None, device_policy=None, execution_mode=None):
    """Switch `flowjit.compat.v1` to eager execution for the rest of the process."""
    v1 = sys.modules[__name__.rpartition(".")[0]]
    if _SAVED:
        return
    g = v1.get_default_graph()
    if g._ops:
        raise ValueError("tf.enable_eager_execution must be called at program startup "
                         f"(the default graph already holds {len(g._ops)} ops)")
    new = {}
    for name in dir(v1):
        if name.startswith("_") or name in _RENAMED:
            continue
        core = getattr(fj, name, None)
        if callable(core) and not isinstance(core, type) and callable(getattr(v1, name)) and \
                not isinstance(getattr(v1, name), type):
            new[name] = core
    new.update(_RENAMED)
    new["nn"] = fj.nn
    train = types.SimpleNamespace(**{k: getattr(v1.train, k) for k in dir(v1.train) if not k.startswith("_")})
    for k in ("AdagradOptimizer", "AdadeltaOptimizer", "RMSPropOptimizer", "Saver"):
        setattr(train, k, _unsupported(f"tf.train.{k} in eager mode"))
    for k, v in _optimizers().items():
        setattr(train, k, v)
    new["train"] = train
    for name, value in new.items():
        _SAVED[name] = v1.__dict__.get(name, _MISSING)
        setattr(v1, name, value)


_MISSING = object()


def _unsupported(what):
    def refuse(*args, **kwargs):
        raise errors.UnimplementedError(f"{what} is not implemented by flowjit.compat.v1 (its TF1 "
                                        "formula differs from flowjit's optimizers); use "
                                        "GradientDescentOptimizer, MomentumOptimizer or AdamOptimizer")
    return refuse


def _disable_eager_execution():
    """Back to graph mode (for tests; TF itself cannot switch back)."""
    v1 = sys.modules[__name__.rpartition(".")[0]]
    for name, value in _SAVED.items():
        if value is _MISSING:
            delattr(v1, name)
        else:
            setattr(v1, name, value)
    _SAVED.clear()


def executing_eagerly():
    return bool(_SAVED)


def num_gpus():
    return sum(1 for d in fj.list_devices() if "GPU" in str(d))


Variable = _variable
defun = fj.function
Iterator = iter
