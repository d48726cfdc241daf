"""TF1 random ops with TF1's seed rules: an op with a seed (its own, or derived from
the graph's `tf.set_random_seed`) gives the same sequence in every new Session; each
`sess.run` of the op draws the next numbers of that sequence. The numbers come from
flowjit's counter-based `random` op, keyed per (session, op) and per run, so compiled
code is shared by all runs (the key is an input, as in `fj.random`)."""
from ... import dtypes as D
from ...frontend import api as F
from ...frontend.tensor import apply_op
from .graph import Tensor, get_default_graph, make_op
from .ops import _shape_arg

DEFAULT_GRAPH_SEED = 87654321


def set_random_seed(seed):
    """The graph-level seed: ops created afterwards without `seed=` get one from it."""
    get_default_graph().seed = None if seed is None else int(seed)


def get_seed(op_seed, op_index):
    g = get_default_graph().seed
    if g is not None:
        return (g, op_seed if op_seed is not None else op_index)
    if op_seed is not None:
        return (DEFAULT_GRAPH_SEED, int(op_seed))
    return None


def draw(ev, op, dist, shape, dtype):
    """Inside an evaluation: fresh `dist` numbers of `shape` for random op `op`. Inside a
    loop body or a cond branch the body's evaluator draws them before the loop
    (control_flow._BodyEvaluator.draw)."""
    hook = getattr(ev, "draw", None)
    if hook is not None:
        return hook(op, dist, shape, dtype)
    return apply_op("random", [ev.random_key(op)], {"shape": tuple(shape), "dist": dist,
                                                     "dtype": D.as_dtype(dtype)})


def _random(type_, default_name, dist, shape, dtype, seed, name, params, post):
    s = _shape_arg(shape, default_name)
    dt = D.as_dtype(dtype)
    if not dt.is_floating and dist != "uniform_int":
        raise TypeError(f"{default_name}: dtype must be float32 or float64, got {dt.name}")
    tensors = [p for p in params if isinstance(p, Tensor)]
    holder = {}

    def compute(ev, *vals):
        it = iter(vals)
        ps = [next(it) if isinstance(p, Tensor) else p for p in params]
        z = draw(ev, holder["op"], "uniform" if dist == "uniform_int" else dist, s,
                 D.float64 if dist == "uniform_int" else dt)
        return [post(z, *ps)]

    op = make_op(type_, compute, tensors, name=name, default_name=default_name, stateful=True,
                 out_specs=[(dt, s)])
    holder["op"] = op
    op.attrs["seed"] = get_seed(seed, op._id)
    return op.outputs[0]


def _scale(z, mean, stddev):
    if not (isinstance(stddev, (int, float)) and stddev == 1):
        z = z * stddev
    if not (isinstance(mean, (int, float)) and mean == 0):
        z = z + mean
    return z


def random_normal(shape, mean=0.0, stddev=1.0, dtype=D.float32, seed=None, name=None):
    return _random("RandomStandardNormal", "random_normal", "normal", shape, dtype, seed, name,
                   [mean, stddev], _scale)


def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=D.float32, seed=None, name=None):
    return _random("TruncatedNormal", "truncated_normal", "truncated_normal", shape, dtype, seed,
                   name, [mean, stddev], _scale)


def random_uniform(shape, minval=0, maxval=None, dtype=D.float32, seed=None, name=None):
    dt = D.as_dtype(dtype)
    if dt.is_integer:
        if maxval is None:
            raise ValueError("random_uniform with an integer dtype needs maxval")

        def post_int(u, lo, hi):
            return F.cast(F.floor(u * float(hi - lo)) + float(lo), dt)
        return _random("RandomUniformInt", "random_uniform", "uniform_int", shape, dt, seed, name,
                       [minval, maxval], post_int)
    maxval = 1.0 if maxval is None else maxval

    def post(u, lo, hi):
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo == 0 and hi == 1:
            return u
        return u * (hi - lo) + lo
    return _random("RandomUniform", "random_uniform", "uniform", shape, dt, seed, name,
                   [minval, maxval], post)
