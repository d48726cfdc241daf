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


# --- permutations, categorical draws, candidate samplers --------------------------------
def _x(value):
    from .api import _is_tensor, _t
    return _t(value) if _is_tensor(value) else convert(value)


def shuffle(value, seed=None, name=None):
    """`value` with its first axis randomly permuted (tf.random.shuffle): a gather along
    the (stable) argsort of fresh uniform keys, so it runs under jit with symbolic sizes
    and jit draws the same permutation as eager mode for the same stream."""
    x = _x(value)
    if not x.shape:
        return x
    return shuffle_with_keys(x, _draw("uniform", (x.shape[0],), D.float64, seed))


def shuffle_with_keys(x, u):
    """x permuted along its first axis by the order of the keys u (shape [n])."""
    from .api import gather
    return gather(x, apply_op("argsort", [u]))


def categorical(logits, num_samples, dtype=None, seed=None, name=None):
    """`num_samples` class indices per row of `logits` [batch, num_classes] (unnormalised
    log-probabilities), as tf.random.categorical: [batch, num_samples] of `dtype`
    (int64 by default). Drawn by the Gumbel-max trick, argmax(logits + Gumbel noise), in
    float64: a class whose logit is -inf is never drawn."""
    from .api import _int
    from .tensor import user_src
    x = _x(logits)
    if len(x.shape) != 2:
        from ..errors import ShapeError
        raise ShapeError(f"categorical (at {user_src()}): logits must be 2-D [batch_size, "
                         f"num_classes], got shape {tuple(x.shape)}")
    n = _int(num_samples, "categorical", "num_samples")
    if n < 0:
        raise ValueError(f"categorical (at {user_src()}): num_samples must be >= 0, got {n}")
    u = _draw("uniform", (x.shape[0], n, x.shape[1]), D.float64, seed)
    return categorical_with_uniforms(x, u, dtype)


def categorical_with_uniforms(logits, u, dtype=None):
    """Gumbel-max draws: u holds uniforms of shape [batch, num_samples, num_classes]."""
    from .api import argmax, cast, expand_dims, log
    dtype = D.as_dtype(dtype or D.int64)
    if dtype not in (D.int32, D.int64):
        raise TypeError(f"categorical: dtype must be int32 or int64, got {dtype.name}")
    z = expand_dims(cast(logits, D.float64), 1)
    return argmax(z - log(-log(u)), axis=-1, output_type=dtype)


def multinomial(logits, num_samples, seed=None, name=None, output_dtype=None):
    """TF1's name for `categorical`."""
    return categorical(logits, num_samples, dtype=output_dtype, seed=seed, name=name)


def log_uniform_candidate_sampler(true_classes, num_true, num_sampled, unique, range_max,
                                  seed=None, name=None):
    """TF's log-uniform (Zipfian) candidate sampler: `num_sampled` ids in [0, range_max)
    with P(c) = log((c + 2) / (c + 1)) / log(range_max + 1) (frequent words first when
    ids are sorted by frequency), without repeats when `unique`. Returns
    (sampled_candidates int64 [num_sampled], true_expected_count float32 [batch,
    num_true], sampled_expected_count float32 [num_sampled]): how many times each class
    is expected among the draws (with `unique`, -expm1(tries * log1p(-p)), tries the
    number of draws it took)."""
    return candidate_sampler("log_uniform", true_classes, num_true, num_sampled, unique,
                             range_max, _key_tensor(seed))


def uniform_candidate_sampler(true_classes, num_true, num_sampled, unique, range_max,
                              seed=None, name=None):
    """As log_uniform_candidate_sampler, every class with probability 1 / range_max."""
    return candidate_sampler("uniform", true_classes, num_true, num_sampled, unique,
                             range_max, _key_tensor(seed))


def candidate_sampler(dist, true_classes, num_true, num_sampled, unique, range_max, key):
    """The sampler drawing with random key `key` (an int64 scalar tensor)."""
    from .api import _int, cast, getitem
    from .tensor import user_src
    op = f"{dist}_candidate_sampler"
    num_true = _int(num_true, op, "num_true")
    num_sampled = _int(num_sampled, op, "num_sampled")
    range_max = _int(range_max, op, "range_max")
    tc = _x(true_classes)
    if not tc.dtype.is_integer:
        raise TypeError(f"{op} (at {user_src()}): true_classes must be integers, got {tc.dtype.name}")
    if len(tc.shape) != 2 or tc.shape[1] != num_true:
        from ..errors import ShapeError
        raise ShapeError(f"{op} (at {user_src()}): true_classes must have shape [batch_size, "
                         f"num_true={num_true}], got {tuple(tc.shape)}")
    out = apply_op("candidate_sampler", [key], {"num_sampled": num_sampled, "range_max": range_max,
                                                "unique": bool(unique), "dist": dist})
    sampled = getitem(out, slice(0, num_sampled))
    tries = getitem(out, num_sampled)
    tc = cast(tc, D.int64)
    return (sampled, _expected_count(dist, tc, tries, num_sampled, range_max, unique),
            _expected_count(dist, sampled, tries, num_sampled, range_max, unique))


def _expected_count(dist, classes, tries, num_sampled, range_max, unique):
    """TF's ExpectedCountHelper over the sampler's probability of each class."""
    import math
    from .api import cast, equal, expm1, log1p, where, zeros_like
    if dist == "log_uniform":
        c = cast(classes, D.float64)
        p = log1p(1.0 / (c + 1.0)) * (1.0 / math.log(range_max + 1.0))
    else:
        p = zeros_like(classes, D.float64) + 1.0 / range_max
    count = p * float(num_sampled)
    if unique:
        t = cast(tries, D.float64)
        count = where(equal(tries, num_sampled), count, -expm1(t * log1p(-p)))
    return cast(count, D.float32)
