"""`fj.random`: seeded, reproducible random tensors.

Like TF: `set_seed(s)` makes every later op-level sequence reproducible; an op's
`seed=` picks its stream. Eagerly each call draws fresh numbers; under `@fj.jit` each
random op gets a stream at trace time and a fresh key on every call of the compiled
function, so the compiled code is shared by all calls (the key is an argument)."""
import os

import numpy as np

from .. import dtypes as D
from ..errors import TracerError
from ..ops import random_core as R
from .tensor import Tensor, apply_op, current_trace, convert
from .api import _dims

_global = {"seed": None, "ops": 0, "entropy": int.from_bytes(os.urandom(8), "little")}


def set_seed(seed):
    """Set the global seed; resets the op counter so sequences repeat (as in TF)."""
    _global["seed"] = None if seed is None else int(seed)
    _global["ops"] = 0
    _eager_streams.clear()


def get_seed():
    return _global["seed"]


def _mix(*parts):
    z = np.uint64(0x6A09E667F3BCC908)
    with np.errstate(over="ignore"):
        for p in parts:
            z = R.mix(z ^ np.uint64(int(p) & 0xFFFFFFFFFFFFFFFF))
    return z


class Stream:
    """A sequence of 64-bit keys: one per draw (eager) or per call (jit)."""

    def __init__(self, op_seed):
        g = _global
        base = g["seed"] if g["seed"] is not None else g["entropy"]
        if op_seed is None:
            op_seed = g["ops"]
            g["ops"] += 1
            self.parts = (base, 0x5EED, op_seed)
        else:
            self.parts = (base, int(op_seed))
        self.count = 0

    def next_key(self):
        k = _mix(*self.parts, self.count)
        self.count += 1
        return np.int64(k.view(np.int64) if hasattr(k, "view") else np.uint64(k).astype(np.int64))


# seed=given ops share a stream per (global seed, op seed) in eager mode, as TF does
_eager_streams = {}


def _key_tensor(seed):
    ctx = current_trace()
    if ctx is not None:
        if ctx.parent is not None:
            raise TracerError("random ops inside an fj.scan body are not supported yet: draw the "
                              "random values before the loop and pass them in as part of xs")
        g = ctx.graph
        g.rng_streams.append(Stream(seed))
        node = g.add("rng_key", (), {"stream": len(g.rng_streams) - 1}, (), D.int64)
        return Tensor(node=node, graph=g)
    if seed is None:
        s = Stream(None)
    else:
        k = (_global["seed"], int(seed))
        s = _eager_streams.get(k)
        if s is None:
            s = _eager_streams[k] = Stream(seed)
    return Tensor(value=np.asarray(s.next_key(), np.int64))


def _draw(dist, shape, dtype, seed):
    dtype = D.as_dtype(dtype)
    if not dtype.is_floating:
        raise TypeError(f"random {dist}: dtype must be float32 or float64, got {dtype.name}")
    return apply_op("random", [_key_tensor(seed)],
                    {"shape": _dims(shape, "random"), "dist": dist, "dtype": dtype})


def uniform(shape, minval=0, maxval=None, dtype=D.float32, seed=None, name=None):
    dtype = D.as_dtype(dtype)
    if dtype.is_integer:
        if maxval is None:
            raise ValueError("uniform with an integer dtype needs maxval")
        u = _draw("uniform", shape, D.float64, seed)
        from .api import cast, floor
        return cast(floor(u * float(maxval - minval)) + float(minval), dtype)
    maxval = 1 if maxval is None else maxval
    u = _draw("uniform", shape, dtype, seed)
    if maxval != 1 or minval != 0:
        u = u * (convert(maxval, dtype) - convert(minval, dtype)) + convert(minval, dtype)
    return u


def normal(shape, mean=0.0, stddev=1.0, dtype=D.float32, seed=None, name=None):
    z = _draw("normal", shape, dtype, seed)
    if not (isinstance(stddev, (int, float)) and stddev == 1):
        z = z * stddev
    if not (isinstance(mean, (int, float)) and mean == 0):
        z = z + mean
    return z


def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=D.float32, seed=None, name=None):
    z = _draw("truncated_normal", shape, dtype, seed)
    if not (isinstance(stddev, (int, float)) and stddev == 1):
        z = z * stddev
    if not (isinstance(mean, (int, float)) and mean == 0):
        z = z + mean
    return z
