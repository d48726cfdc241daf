"""flowjit: a JIT-compiling deep-learning array library (graphs traced, fused and
compiled by Numba)."""
import os as _os

import numba as _numba

# Numba's OpenMP threading layer keeps its threads spinning after each parallel loop; on
# a machine with few cores (or one shared with other jobs) the spinning threads steal
# the cores the next kernel or BLAS call needs (a 4M-element training step ran 2.8x
# slower). OMP_WAIT_POLICY=PASSIVE fixes that but is read once per OpenMP runtime, and
# PyTorch can share that runtime with Numba: setting it made torch's own ops 2x slower
# in the same process. The workqueue layer's threads sleep between loops and share
# nothing with other libraries, so flowjit picks it unless the user chose a layer.
if "NUMBA_THREADING_LAYER" not in _os.environ:
    _numba.config.THREADING_LAYER = "workqueue"

from . import ops as _ops  # noqa: F401  (registers every op)
from . import errors
from .dtypes import DType, as_dtype, float32, float64, int32, int64, bool_ as bool  # noqa: A004
from .frontend.tensor import Tensor, TensorShape
from .frontend.api import (  # noqa: F401
    abs, add, add_n, argmax, clip_by_global_norm, global_norm, argmin, broadcast_to, cast, ceil, clip_by_value, concat, constant,
    convert_to_tensor, cos, divide, equal, exp, expand_dims, expm1, eye, fill, floor, floordiv,
    floormod, gather, greater, greater_equal, identity, less, less_equal, log, log1p,
    logical_and, logical_not, logical_or, logical_xor, matmul, maximum, minimum, mod, multiply,
    negative, not_equal, one_hot, ones, ones_like, pad, pow, range, rank, reduce_all, reduce_any,
    reduce_max, reduce_mean, reduce_min, reduce_prod, reduce_sum, reshape, rsqrt, shape,
    sigmoid, sign, sin, size, split, sqrt, square, squeeze, stack, stop_gradient, subtract,
    tanh, tile, transpose, truediv, unstack, where, zeros, zeros_like,
)
from .frontend import random  # noqa: F401
from .frontend.variables import Variable
from .frontend.autodiff import GradientTape, grad, value_and_grad
from .frontend.control_flow import cond, fori_loop, scan, while_loop
from .frontend import nn, optimizers  # noqa: F401
from . import data  # noqa: F401
from . import train, summary  # noqa: F401
from .frontend.jit import jit, eval_shape, function, ShapeDtypeStruct, TensorSpec
from .frontend.module import Module
from .frontend.custom_op import custom_op
from .runtime.stats import stats, reset_stats
from .config import config
from .frontend.device import device, list_devices, DeviceSpec  # noqa: F401

from .frontend.api import count_nonzero  # noqa: F401
from .frontend.printing import print  # noqa: F401,A004
from .frontend.api import public_ops as _public_ops
globals().update({k: v for k, v in _public_ops("").items() if k not in globals()})
from .frontend import namespaces as _namespaces
math, linalg = _namespaces.build(globals())

__version__ = "0.1.0"
newaxis = None


# TF2 names that live in another flowjit module, imported on first use (most programs
# never need them): tf.keras, tf.initializers (Keras's), tf.estimator, tf.compat.v1, and
# tf.losses / tf.metrics, which TF2 made Keras's
_LAZY = {"keras": ".keras", "initializers": ".keras.initializers", "losses": ".keras.losses",
         "metrics": ".keras.metrics", "estimator": ".compat.v1.estimator", "compat": ".compat",
         "distributed": ".distributed"}
_LEFT_OUT = {
    "strings": "flowjit has string constants but no string ops",
    "io": "read files with NumPy (np.load, fj.data.read_idx) and feed the arrays",
    "image": "resize or augment images with NumPy before feeding them",
    "saved_model": "save weights with fj.train.Checkpoint or model.save_weights",
    "distribute": "flowjit runs on one machine (distributed training on MPI is planned)",
    "sparse": "flowjit has dense tensors only", "ragged": "flowjit has dense tensors only",
    "lite": "there is no TFLite converter", "tpu": "flowjit compiles for CPUs and CUDA GPUs",
    "feature_column": "build the features with NumPy or Keras layers",
    "autograph": "Python control flow on tensors is not converted: use fj.cond / fj.while_loop / fj.scan",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module = importlib.import_module(_LAZY[name], __name__)
        if name == "compat":
            importlib.import_module(".compat.v1", __name__)
        return module
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise errors.UnimplementedName(f"tf.{name} (flowjit.{name}) is not implemented by flowjit"
                                   + (f": {_LEFT_OUT[name]}" if name in _LEFT_OUT else ""))
