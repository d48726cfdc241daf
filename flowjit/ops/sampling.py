"""Ops for random sampling that elementwise random draws cannot compose:

- `argsort`: the stable ascending order along the last axis (int64). `fj.random.shuffle`
  is a gather along a permutation, the argsort of uniform keys.
- `candidate_sampler`: TF's log-uniform (Zipfian) and uniform candidate samplers
  (`tf.random.log_uniform_candidate_sampler`): `num_sampled` class ids in
  [0, range_max), drawn with replacement, or (unique) without, by rejecting repeats as
  TF's samplers do. Its one input is a random key (as the `random` op's: a fresh one per
  call under jit); its output is the ids followed by the number of draws it took, which
  the expected counts need (`-expm1(tries * log1p(-p))` when unique). The reference
  below and the CPU kernel (backends/cpu/lowerings.py) make the same draws: the
  counter-based uniforms of random_core, element c of the key being draw c.

A log-uniform draw is TF's LogUniformSampler: floor(exp(u * log(range_max + 1))) - 1,
modulo range_max, so P(c) = log((c + 2) / (c + 1)) / log(range_max + 1).
"""
import math

import numpy as np

from .. import dtypes as D
from ..errors import InvalidArgumentError, ShapeError
from ..ir.registry import register
from . import random_core as R
from .rules import fmt


# --- argsort ----------------------------------------------------------------------------
def _argsort_infer(shapes, dts, attrs):
    x = shapes[0]
    if len(x) == 0:
        raise ShapeError("argsort needs a tensor of rank >= 1, got a scalar")
    if dts[0].is_bool:
        raise ShapeError("argsort is not defined for bool")
    return tuple(x), D.int64


def _argsort_ref(arrs, attrs, shape, dtype):
    return np.argsort(arrs[0], axis=-1, kind="stable").astype(np.int64)


register("argsort", "opaque", _argsort_infer, _argsort_ref)


# --- candidate sampler ------------------------------------------------------------------
DISTS = ("log_uniform", "uniform")


def _sampler_infer(shapes, dts, attrs):
    k, r = attrs["num_sampled"], attrs["range_max"]
    if attrs["dist"] not in DISTS:
        raise ValueError(f"candidate sampler: unknown distribution {attrs['dist']!r}")
    if shapes[0] != () or not dts[0].is_integer:
        raise ShapeError(f"candidate sampler: the key must be an int64 scalar, got {fmt(shapes[0])}")
    if k < 1 or r < 1:
        raise InvalidArgumentError(f"candidate sampler: num_sampled ({k}) and range_max ({r}) "
                                   f"must be >= 1")
    if attrs["unique"] and k > r:
        raise InvalidArgumentError(f"candidate sampler: num_sampled ({k}) must be <= range_max "
                                   f"({r}) when unique=True (it draws without replacement)")
    return (k + 1,), D.int64


def sample_candidates(key, num_sampled, range_max, unique, dist):
    """The ids drawn for uint64 `key`, then the number of draws (int64 [num_sampled + 1])."""
    out = np.empty(num_sampled + 1, np.int64)
    key = np.uint64(key)
    log_range = math.log(range_max + 1.0)
    seen = set()
    i = tries = c = 0
    batch = max(num_sampled, 16)
    with np.errstate(over="ignore"):
        while i < num_sampled:
            # draws c, c+1, ... of the key, a batch at a time (the kernel draws them one by one)
            us = R.uniform_f64(key, np.arange(c, c + batch, dtype=np.uint64))
            for u in us:
                c += 1
                tries += 1
                if dist == "log_uniform":
                    v = (int(math.exp(float(u) * log_range)) - 1) % range_max
                else:
                    v = int(float(u) * range_max) % range_max
                if unique:
                    if v in seen:
                        continue
                    seen.add(v)
                out[i] = v
                i += 1
                if i == num_sampled:
                    break
    out[num_sampled] = tries
    return out


def _sampler_ref(arrs, attrs, shape, dtype):
    key = np.asarray(arrs[0]).reshape(()).astype(np.int64).view(np.uint64)[()]
    return sample_candidates(key, attrs["num_sampled"], attrs["range_max"], attrs["unique"],
                             attrs["dist"])


register("candidate_sampler", "opaque", _sampler_infer, _sampler_ref)


def _grads():
    from .grads import defgrad
    defgrad("argsort", lambda ins, out, g, at: [None])
    defgrad("candidate_sampler", lambda ins, out, g, at: [None])


_grads()
