"""The CPU lowerings of the opaque ops whose kernels are small loops (argmax/argmin,
gather, scatter_add, concat, pow_exponent_check): kernel source templates for codegen's
`"axis3"`, `"gather"`, `"scatter"`, `"concat"` and `"check"` calls, attached to the registry
entries when the CPU backend loads (the ops themselves are in ops/). Also through the
generic `"call"`: argsort and the candidate sampler (ops/sampling.py), and `print`
(ops/host_ops.py), whose kernel calls back into Python through Numba's object mode."""
import textwrap

from ...ir.registry import REGISTRY
from ..loops import candidate_draws


def _arg_source(kind):
    cmp = ">" if kind == "max" else "<"

    def kernel_source(fname, dtype):
        # NaN wins like np.argmax: once a NaN is seen it stays the answer.
        return f'''
def {fname}(x, out):
    for o in range(x.shape[0]):
        for j in range(x.shape[2]):
            best = x[o, 0, j]
            bi = 0
            for k in range(1, x.shape[1]):
                v = x[o, k, j]
                if best == best and (v {cmp} best or v != v):
                    best = v
                    bi = k
            out[o, j] = bi
'''

    return kernel_source


# Every index is checked before any is used; the first bad one is reported via `err`
# (the executor turns it into an exception naming the op) and nothing is read or written.
_CHECK = """    for k in range(idx.shape[0]):
        v = idx[k]
        if v < 0 or v >= n:
            if err[0] == 0:
                err[0] = code
                err[1] = v
                err[2] = n
            return
"""


def _gather_source(fname, dtype):
    # params viewed as (outer, n, inner), indices flat, out as (outer, m, inner)
    return f'''
def {fname}(p, idx, out, err, code):
    n = p.shape[1]
{_CHECK}    for o in range(p.shape[0]):
        for k in range(idx.shape[0]):
            v = idx[k]
            for j in range(p.shape[2]):
                out[o, k, j] = p[o, v, j]
'''


def _nonneg_source(fname, dtype):
    return f'''
def {fname}(x, out, err, code):
    for k in range(x.shape[0]):
        if x[k] < 0:
            if err[0] == 0:
                err[0] = code
                err[1] = x[k]
                err[2] = 0
            return
    for k in range(x.shape[0]):
        out[k] = x[k]
'''


def _scatter_source(fname, dtype):
    return f'''
def {fname}(upd, idx, out, err, code):
    n = out.shape[1]
    for o in range(out.shape[0]):
        for k in range(n):
            for j in range(out.shape[2]):
                out[o, k, j] = 0
{_CHECK}    for o in range(out.shape[0]):
        for k in range(idx.shape[0]):
            v = idx[k]
            for j in range(out.shape[2]):
                out[o, v, j] += upd[o, k, j]
'''


def _copy3_source(fname, dtype):
    """concat: each input copied into its slice of the output, viewed as 3-d (before
    the axis, along it, after it)."""
    return f'''
def {fname}(src, dst, offset):
    for o in range(src.shape[0]):
        for k in range(src.shape[1]):
            for j in range(src.shape[2]):
                dst[o, offset + k, j] = src[o, k, j]
'''


def _print_source(fname, dtype, n_inputs):
    # the ordering token and the tensors, handed to Python as they are (object mode;
    # a cached kernel still finds host_print, pickled by reference)
    xs = "".join(f"x{i}, " for i in range(n_inputs))
    return f'''
def {fname}({xs}out, site):
    with objmode():
        host_print(site, {xs})
    out[0] = 0

from numba import objmode
from flowjit.ops.host_ops import host_print
'''


def _argsort_source(fname, dtype):
    # stable ascending sort along the last axis (NumPy's kind="stable")
    return f'''
def {fname}(x, out):
    m = x.shape[x.ndim - 1]
    rows = x.size // m if m > 0 else 0
    x2 = x.reshape((rows, m))
    o2 = out.reshape((rows, m))
    for r in range(rows):
        o2[r, :] = np.argsort(x2[r], kind="mergesort")
'''


def _sampler_source(fname, dtype):
    # the same draws as ops/sampling.sample_candidates (the NumPy reference) and the GPU's
    return (f"\ndef {fname}(key, out, num_sampled, range_max, unique, log_uniform):\n"
            "    k = np.uint64(key[0])\n" + textwrap.indent(candidate_draws("uniform_f64", "np.log", "np.exp"), "    ") +
            "\nfrom flowjit.ops.random_core import uniform_f64\n")


def _attach(name, **lower):
    REGISTRY[name].lower = lower


_attach("argmax", kind="axis3", kernel=_arg_source("max"))
_attach("argmin", kind="axis3", kernel=_arg_source("min"))
_attach("gather", kind="gather", kernel=_gather_source)
_attach("scatter_add", kind="scatter", kernel=_scatter_source)
_attach("concat", kind="concat", kernel=_copy3_source)
_attach("pow_exponent_check", kind="check", kernel=_nonneg_source)
_attach("print", kind="call", kernel=_print_source, fixed=lambda attrs, shapes: len(shapes),
        args=lambda attrs: [attrs["site"]])
_attach("argsort", kind="call", kernel=_argsort_source)
_attach("candidate_sampler", kind="call", kernel=_sampler_source,
        args=lambda attrs: [attrs["num_sampled"], attrs["range_max"], int(attrs["unique"]),
                            int(attrs["dist"] == "log_uniform")])
