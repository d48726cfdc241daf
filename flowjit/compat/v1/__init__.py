"""`import flowjit.compat.v1 as tf`: TensorFlow 1 graph mode on flowjit.

Build a graph with placeholders, variables and ops; `tf.Session().run(fetches,
feed_dict)` compiles the subgraph the fetches need with `fj.jit` (once per fetches
and fed tensors) and runs it. See session.py for the execution model, train.py for
the optimizers' TF1 formulas."""
import types as _types

from ... import dtypes as _D
from ...frontend import api as _F
from . import errors, losses, nn, summary, train  # noqa: F401
from .graph import string as _graph_string
from .graph import (  # noqa: F401
    Dimension, Graph, GraphKeys, Operation, Tensor, TensorShape, get_default_graph,
    reset_default_graph,
)
from .ops import (  # noqa: F401
    abs, add, add_n, arg_max, arg_min, argmax, argmin, cast, ceil, clip_by_value, concat, constant,
    control_dependencies, convert_to_tensor, cos, div, divide, equal, exp, expand_dims, expm1, eye,
    fill, floor, floor_div, floordiv, floormod, gather, greater, greater_equal, group, identity,
    less, less_equal, linspace, log, log1p, logical_and, logical_not, logical_or, logical_xor,
    matmul, maximum, minimum, mod, multiply, neg, negative, no_op, not_equal, one_hot, ones,
    ones_like, pack, pad, pow, range, rank, realdiv, reciprocal, reduce_all, reduce_any,
    reduce_max, reduce_mean, reduce_min, reduce_prod, reduce_sum, reshape, rsqrt, shape, sigmoid,
    sign, sin, size, split, sqrt, square, squared_difference, squeeze, stack, stop_gradient,
    subtract, tanh, tile, to_double, to_float, to_int32, to_int64, transpose, truediv, tuple_ as tuple,
    unstack, where, zeros, zeros_like,
)
from .ops import Print, count_nonzero, print_ as print  # noqa: F401,A001
from .control_flow import cond, scan, while_loop  # noqa: F401
from .rnn import reverse, reverse_sequence  # noqa: F401
from . import rnn as _rnn
from .random_ops import random_normal, random_uniform, set_random_seed, truncated_normal  # noqa: F401
from .random_ops import TF_RANDOM as _TF_RANDOM, multinomial, random_shuffle  # noqa: F401
from .variables import (  # noqa: F401
    Variable, all_variables, assign, assign_add, assign_sub, global_variables,
    global_variables_initializer, initialize_all_variables, initialize_local_variables,
    local_variables, local_variables_initializer, tables_initializer, trainable_variables,
    variables_initializer,
)
from .gradients import gradients  # noqa: F401
from .session import (  # noqa: F401
    ConfigProto, GPUOptions, InteractiveSession, RunMetadata, RunOptions, Session,
    get_default_session,
)
from .placeholders import placeholder, placeholder_with_default  # noqa: F401
from . import data  # noqa: F401  (tf.data: pipelines and TF1 iterators)
from .scopes import (  # noqa: F401
    AUTO_REUSE, VariableScope, constant_initializer, get_variable, get_variable_scope,
    glorot_normal_initializer, glorot_uniform_initializer, ones_initializer,
    random_normal_initializer, random_uniform_initializer, truncated_normal_initializer,
    variable_scope, zeros_initializer,
)
from . import scopes as _scopes

__version__ = "1.15.0"     # the TF1 API level this module follows

float32, float64, int32, int64, bool = _D.float32, _D.float64, _D.int32, _D.int64, _D.bool_  # noqa: A001
# TF1's narrower types run as the nearest flowjit type (as fj.as_dtype maps NumPy's)
float16, int8, int16, uint8, uint16 = _D.float32, _D.int32, _D.int32, _D.int32, _D.int32
double = float64
string = _graph_string
DType = _D.DType
as_dtype = _D.as_dtype
newaxis = None
random = _types.SimpleNamespace(set_random_seed=set_random_seed)
random.__dict__.update(_TF_RANDOM)      # tf.random.categorical, tf.random.shuffle, ...
from . import layers, contrib  # noqa: E402,F401  (tf.layers, tf.contrib: layers.py, contrib.py)
from . import estimator, metrics  # noqa: E402,F401  (tf.estimator, tf.metrics: estimator.py, metrics.py)
sub, mul = subtract, multiply          # pre-1.0 names still in the classic talks


def name_scope(name, default_name=None, values=None):
    return get_default_graph().name_scope(name if name is not None else default_name)


def device(device_name_or_function):
    return get_default_graph().device(device_name_or_function)


def get_collection(key, scope=None):
    return get_default_graph().get_collection(key, scope)


def add_to_collection(name, value):
    get_default_graph().add_to_collection(name, value)


def get_seed(op_seed):
    from .random_ops import get_seed as _gs
    return _gs(op_seed, len(get_default_graph()._ops))


def disable_eager_execution():
    """Graph mode is the only mode of flowjit.compat.v1 (kept so TF2-era scripts run)."""


def disable_v2_behavior():
    """See disable_eager_execution."""


def executing_eagerly():
    return False


def enable_eager_execution(config=None, device_policy=None, execution_mode=None):
    """TF1's eager mode for the rest of the process: see eager.py."""
    from .eager import enable_eager_execution as enable
    enable(config, device_policy, execution_mode)


# `tf.compat.v1.*` as TF 1.14+ programs spell it: this very module
compat = _types.SimpleNamespace(v1=__import__("sys").modules[__name__])


def __getattr__(name):
    # a TF1 name flowjit.compat.v1 does not have: an UnimplementedError naming it (also an
    # AttributeError, so hasattr() works), never a bare AttributeError
    raise errors.missing("tf", name)
