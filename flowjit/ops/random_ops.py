"""Random sources: uniform, normal, truncated normal (counter-based, see random_core).

A random op takes one input, a scalar int64 key; under jit the key is a fresh value
per call (the executor draws it), so one compiled kernel serves every call."""
import numpy as np

from .. import dtypes as D
from ..ir import scalar as S
from ..ir.registry import register
from . import random_core as R


def _infer(shapes, dts, attrs):
    return tuple(attrs["shape"]), attrs["dtype"]


def sample_numpy(dist, key, n, dtype):
    """Eager reference: n draws of `dist` for uint64 key."""
    key = np.uint64(key)
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        if dist == "uniform":
            out = R.uniform_f32(key, i) if dtype is D.float32 else R.uniform_f64(key, i)
        elif dist == "normal":
            out = R.normal_f64(key, i)
        else:
            out = R.normal_f64(key, i)
            bad = np.abs(out) > 2.0
            t = 1
            while bad.any():
                out[bad] = R.normal_f64(R.retry_key(key, t), i[bad])
                bad = np.abs(out) > 2.0
                t += 1
    return out.astype(dtype.np)


def _ref(arrs, attrs, shape, dtype):
    n = int(np.prod([int(s) for s in shape]))
    key = np.asarray(arrs[0]).astype(np.uint64)
    return sample_numpy(attrs["dist"], key, n, dtype).reshape(tuple(int(s) for s in shape))


def _emit(a, attrs, ins, d):
    # a[0]: key (int64), a[1]: linear element index (int64), provided by the fusion pass
    return S.call("rand_" + attrs["dist"], d, a[0], a[1])


register("random", "elementwise", _infer, _ref, emit=_emit, cost=20)


def _grads():
    from .grads import defgrad
    defgrad("random", lambda ins, out, g, at: [None])


_grads()
