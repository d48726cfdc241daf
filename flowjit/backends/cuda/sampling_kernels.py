"""CUDA kernels of the sampling ops (ops/sampling.py): argsort, behind
`fj.random.shuffle`, and the candidate samplers behind `fj.nn.nce_loss` and
`fj.nn.sampled_softmax_loss`. Both make exactly what the NumPy reference and the CPU
kernel make, so a step gives the same numbers on either device.

- argsort: one thread per element counts the elements that sort before it in its row
  (smaller, or equal and earlier; NaN after every number, as NumPy's stable sort puts
  it) and writes its index at that rank. Quadratic in the row length, with no shared
  state, so any grid computes the same order.
- candidate_sampler: TF's samplers draw one id at a time and, when unique, reject an id
  already drawn, so the draws depend on each other: thread 0 of the grid runs that loop
  (num_sampled is small: tens to a few hundred) on the same counter-based uniforms as
  the CPU (scalar.rand_uniform_f64). The key is the entry's rng key, read on the host.
"""
import textwrap

from ..loops import candidate_draws, dim_src, int_arg, prod_src
from ..pyexpr import npt
from .kernels import host_fallback, kernel_def, lowering, named

_ARGSORT = kernel_def("x, out, rows, n", '''    t = cuda.grid(1)
    stride = cuda.gridsize(1)
    while t < rows * n:
        base = t - t % n
        i = t - base
        v = x[t]
        rank = 0
        for j in range(n):
            w = x[base + j]
            if v != v:
                before = w == w or j < i
            else:
                before = w < v or (w == v and j < i)
            if before:
                rank += 1
        out[base + rank] = i
        t += stride
''')


@lowering("argsort")
def _argsort(ctx, n):
    x = ctx.g.nodes[n.inputs[0]]
    name, src = named(_ARGSORT, "stable argsort along the last axis")
    rows, m = prod_src(x.shape[:-1]), dim_src(x.shape[-1])
    return {name: src}, [
        ctx.alloc(n.id, prod_src(n.shape), npt(n.dtype)),
        f"{name}[RT.grid(({rows}) * ({m})), RT.TPB]({ctx.buf(x.id)}, {ctx.buf(n.id)}, "
        f"{int_arg(rows)}, {int_arg(m)})"]


# the draws of ops/sampling.sample_candidates, one at a time, in thread 0
_SAMPLER = kernel_def("key, out, num_sampled, range_max, unique, log_uniform",
                      "    if cuda.grid(1) == 0:\n        k = np.uint64(key)\n" +
                      textwrap.indent(candidate_draws("rand_uniform_f64", "log_f64", "exp_f64"), "        "))


@lowering("candidate_sampler")
def _candidate_sampler(ctx, n):
    key = ctx.g.nodes[n.inputs[0]]
    if key.op != "rng_key":           # (a key computed on the device: not made by the frontend)
        return host_fallback(ctx, n)
    a = n.attrs
    name, src = named(_SAMPLER, "candidate sampler")
    return {name: src}, [
        ctx.alloc(n.id, prod_src(n.shape), npt(n.dtype)),
        f"{name}[1, RT.TPB](np.int64({ctx.buf(key.id)}[0]), {ctx.buf(n.id)}, "
        f"{int_arg(a['num_sampled'])}, {int_arg(a['range_max'])}, {int_arg(int(a['unique']))}, "
        f"{int_arg(int(a['dist'] == 'log_uniform'))})"]
