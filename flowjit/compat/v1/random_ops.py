"""TF1 random ops with TF1's seed rules: an op with a seed (its own, or derived from
the graph's `tf.set_random_seed`) gives the same sequence in every new Session; each
`sess.run` of the op draws the next numbers of that sequence. The numbers come from
flowjit's counter-based `random` op, keyed per (session, op) and per run, so compiled
code is shared by all runs (the key is an input, as in `fj.random`)."""
from ... import dtypes as D
from ...errors import FlowjitError
from ...frontend import api as F
from ...frontend import random as R
from ...frontend.tensor import apply_op
from .errors import UnimplementedError
from .graph import Tensor, TensorShape, _static_dims, get_default_graph, make_op
from .ops import _shape_arg, _tensor_shape_arg, convert_to_tensor

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


def shape_spec(st, what):
    """The static shape (None dims where unknown) of a tensor of shape `st`, a shape
    computed in the graph (tf.shape(x), [tf.shape(x)[0], 10]): read off the abstract
    trace, where the unknown sizes are symbols."""
    ab = st._abstract
    if ab is not None:
        try:
            res = st.graph._abstract.run(lambda v: F.zeros(v, D.float32), [ab])
            return TensorShape(_static_dims(res.shape))
        except FlowjitError:
            pass
    dims = st.shape.as_list() if st.shape.ndims == 1 else None
    return TensorShape(None if dims is None or dims[0] is None else [None] * dims[0])


def _random(type_, default_name, dist, shape, dtype, seed, name, params, post):
    st = _tensor_shape_arg(shape, default_name)
    s = _shape_arg(shape, default_name) if st is None else shape_spec(st, default_name)
    dt = D.as_dtype(dtype)
    if not dt.is_floating and dist != "uniform_int":
        raise TypeError(f"{default_name}: dtype must be float32 or float64, got {dt.name}")
    tensors = [p for p in params if isinstance(p, Tensor)] + ([st] if st is not None else [])
    holder = {}

    def compute(ev, *vals):
        it = iter(vals)
        ps = [next(it) if isinstance(p, Tensor) else p for p in params]
        dims = s if st is None else F._dims(next(it), default_name)   # sizes of this run
        z = draw(ev, holder["op"], "uniform" if dist == "uniform_int" else dist, dims,
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


# --- permutations, categorical draws, candidate samplers --------------------------------------
def _stateful(type_, default_name, name, inputs, seed, out_specs, fn):
    """A random op whose compute(ev, op, *values) draws through `draw` / a key."""
    holder = {}
    op = make_op(type_, lambda ev, *vals: fn(ev, holder["op"], *vals), inputs, name=name,
                 default_name=default_name, stateful=True, out_specs=out_specs)
    holder["op"] = op
    op.attrs["seed"] = get_seed(seed, op._id)
    return op


def random_shuffle(value, seed=None, name=None):
    """tf.random_shuffle: `value` with its first axis permuted afresh on every run."""
    x = convert_to_tensor(value)

    def compute(ev, op, v):
        if not v.shape:
            return [v]
        u = draw(ev, op, "uniform", (v.shape[0],), D.float64)
        return [R.shuffle_with_keys(v, u)]
    return _stateful("RandomShuffle", "random_shuffle", name, [x], seed, [(x.dtype, x.shape)],
                     compute).outputs[0]


def multinomial(logits, num_samples, seed=None, name=None, output_dtype=None):
    """tf.multinomial: [batch, num_samples] class ids drawn from each row of `logits`."""
    return categorical(logits, num_samples, dtype=output_dtype, seed=seed, name=name,
                       type_="Multinomial")


def categorical(logits, num_samples, dtype=None, seed=None, name=None, type_="Multinomial"):
    """tf.random.categorical (Gumbel-max draws, as fj.random.categorical)."""
    x = convert_to_tensor(logits)
    n = int(num_samples)
    dt = D.as_dtype(dtype or D.int64)
    if x.shape.ndims is not None and x.shape.ndims != 2:
        raise ValueError(f"categorical: logits must be 2-D [batch_size, num_classes], got shape "
                         f"{x.shape}")
    batch = x.shape.as_list()[0] if x.shape.ndims == 2 else None

    def compute(ev, op, v):
        u = draw(ev, op, "uniform", (v.shape[0], n, v.shape[1]), D.float64)
        return [R.categorical_with_uniforms(v, u, dt)]
    return _stateful(type_, "multinomial", name, [x], seed, [(dt, [batch, n])],
                     compute).outputs[0]


def _sampler(dist, true_classes, num_true, num_sampled, unique, range_max, seed, name):
    tc = convert_to_tensor(true_classes)
    k = int(num_sampled)
    batch = tc.shape.as_list()[0] if tc.shape.ndims == 2 else None
    camel = "LogUniformCandidateSampler" if dist == "log_uniform" else "UniformCandidateSampler"

    def compute(ev, op, t):
        if getattr(ev, "draw", None) is not None:
            raise UnimplementedError(f"{op.type} op '{op.name}' (created at {op._src}) samples "
                                     f"inside a loop or cond body, which is not supported")
        return list(R.candidate_sampler(dist, t, num_true, k, unique, range_max, ev.random_key(op)))
    op = _stateful(camel, camel, name, [tc], seed,
                   [(D.int64, [k]), (D.float32, [batch, num_true]), (D.float32, [k])], compute)
    return tuple(op.outputs)


def log_uniform_candidate_sampler(true_classes, num_true, num_sampled, unique, range_max,
                                  seed=None, name=None):
    """(sampled_candidates, true_expected_count, sampled_expected_count): TF's log-uniform
    (Zipfian) sampler, drawn afresh on every run (fj.random.log_uniform_candidate_sampler)."""
    return _sampler("log_uniform", true_classes, num_true, num_sampled, unique, range_max, seed, name)


def uniform_candidate_sampler(true_classes, num_true, num_sampled, unique, range_max,
                              seed=None, name=None):
    return _sampler("uniform", true_classes, num_true, num_sampled, unique, range_max, seed, name)


# tf.random's TF1 names (flowjit/compat/v1/__init__.py adds them to its `random` namespace)
TF_RANDOM = {"categorical": categorical, "shuffle": random_shuffle, "normal": random_normal,
             "uniform": random_uniform, "truncated_normal": truncated_normal,
             "log_uniform_candidate_sampler": log_uniform_candidate_sampler,
             "uniform_candidate_sampler": uniform_candidate_sampler, "multinomial": multinomial}
