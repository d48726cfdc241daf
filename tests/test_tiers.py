"""Tier 0 (a program's graph run by its ops' NumPy references, backends/reference.py)
against the compiled tier, forced with fj.config.tier: every registered op and its
gradient, training steps with their variables and optimizer slots, errors, and the
first-call choice of tier."""
import numpy as np
import pytest

import flowjit as fj
from flowjit.ir.registry import REGISTRY
from conftest import assert_close

TIERS = ("reference", "compiled")


def with_tier(tier, fn, *args):
    """fn jitted anew under `tier`, called on args: (outputs as NumPy, ops its programs ran)."""
    old = fj.config.tier
    fj.config.tier = tier
    try:
        jf = fj.jit(fn)
        out = jf(*args)
    finally:
        fj.config.tier = old
    ops = set()
    for entries in jf._cache.values():
        for c in entries:
            for st in c.stages:
                ops |= {n.op for n in st.program.graph.nodes}
                kind = "reference" if tier == "reference" else "python"
                assert st.exe.run.__name__.startswith(f"_run_{kind}"), st.exe.run
    return [np.asarray(o.numpy()) for o in (out if isinstance(out, (list, tuple)) else [out])], ops


def rand(*shape, lo=-2.0, hi=2.0, seed=0):
    return np.random.default_rng(seed + len(shape)).uniform(lo, hi, shape)


def unary(x):
    pos = fj.abs(x) + 0.5
    ys = [fj.abs(x), fj.ceil(x), fj.cos(x), fj.exp(x), fj.expm1(x), fj.floor(x), fj.log(pos),
          fj.log1p(pos), fj.negative(x), fj.nn.relu(x), fj.rsqrt(pos), fj.sigmoid(x), fj.sign(x),
          fj.sin(x), fj.nn.softplus(x), fj.sqrt(pos), fj.square(x), fj.tanh(x),
          fj.identity(x), fj.stop_gradient(x)]
    return fj.add_n([y * float(k + 1) for k, y in enumerate(ys)])


def binary(x, y):
    b = fj.reshape(y[0], (1, -1))              # broadcast along rows
    ys = [x + b, x - b, x * b, x / (fj.abs(b) + 1.0), fj.maximum(x, b), fj.minimum(x, b),
          fj.pow(fj.abs(x) + 0.5, b), fj.floordiv(x, fj.abs(b) + 1.0), fj.floormod(x, fj.abs(b) + 1.0)]
    c = [fj.equal(x, b), fj.not_equal(x, b), fj.greater(x, b), fj.greater_equal(x, b),
         fj.less(x, b), fj.less_equal(x, b)]
    logic = fj.logical_xor(fj.logical_or(c[2], c[4]), fj.logical_and(c[3], fj.logical_not(c[5])))
    picked = fj.where(logic, x, b) + fj.cast(c[0], x.dtype) + fj.cast(c[1], x.dtype)
    return fj.add_n(ys) + picked


def reductions(x):
    s = fj.reduce_sum(x, axis=1) + fj.reduce_max(x, axis=0)[:1] + fj.reduce_min(x, axis=1) \
        + fj.reduce_prod(x * 0.5, axis=1) + fj.reduce_mean(x, axis=1)
    return s, fj.argmax(x, axis=1), fj.argmin(x, axis=0)


def shapes(x, idx, e):
    t = fj.transpose(fj.reshape(x, (x.shape[0], 2, -1)), (2, 0, 1))
    p = fj.pad(x[1:, ::2], [[1, 0], [0, 2]])
    c = fj.concat([x, x * 2.0], axis=1)
    b = fj.broadcast_to(x[:, :1], (x.shape[0], 3))
    g = fj.gather(x, idx, axis=0)
    h = fj.one_hot(idx, 4, dtype=x.dtype)
    ipow = fj.pow(idx + 1, e)               # an integer power: its exponent is checked
    return fj.reduce_sum(t), p, c, b, g, h, ipow


def with_matmul(a, b, w):
    m = fj.matmul(a, b) + fj.matmul(a, b, transpose_b=False)
    bm = fj.matmul(fj.reshape(a, (2, a.shape[0] // 2, a.shape[1])), fj.reshape(w, (2, w.shape[0] // 2, -1)),
                   transpose_a=True)
    return fj.reduce_sum(fj.tanh(m)) + fj.reduce_sum(bm)


def convnet(x, f):
    y = fj.nn.conv2d(x, f, 1, "SAME")
    y = fj.nn.max_pool2d(fj.nn.relu(y), 2, 2, "VALID") + fj.nn.avg_pool2d(y, 2, 2, "VALID")
    return fj.reduce_sum(y * y)


def loop(x, w):
    c, ys = fj.scan(lambda c, r: (fj.tanh(c * w + r), fj.reduce_sum(c * c)), x[0], x)
    c = fj.cond(fj.reduce_sum(c) > 0, lambda: c * w, lambda: c - w)
    _, n = fj.while_loop(lambda v, n: fj.reduce_sum(v) < 50.0, lambda v, n: (v * 2.0 + 1.0, n + 1),
                         [fj.stop_gradient(c), fj.constant(0)])
    return fj.reduce_sum(c), ys, n


def sampling(x, labels):
    """The random and host ops: shuffle (argsort), the candidate sampler, print, and
    fj.distributed's collectives (whole, and split in start and wait)."""
    s = fj.random.shuffle(x, seed=3)
    ids, true_expected, sampled_expected = fj.random.log_uniform_candidate_sampler(
        labels, 1, 4, True, 10, seed=4)
    fj.print("sampled", ids)
    summed = fj.distributed.allreduce(fj.stop_gradient(s), op="sum")     # a world of size 1: a copy
    from flowjit.distributed import ops as dist_ops
    wait = dist_ops.start_and_wait([fj.stop_gradient(s)], "sum")           # the split allreduce
    split = fj.reshape(wait(), s.shape)
    return s, summed, split, fj.cast(ids, x.dtype), fj.cast(true_expected, x.dtype), fj.cast(sampled_expected, x.dtype)


def grads_of(fn, n):
    """fn's outputs, a loss summing its float outputs, and the loss's gradient with
    respect to fn's first n arguments."""
    def g(*args):
        with fj.GradientTape() as tape:
            ts = [fj.convert_to_tensor(a) for a in args]
            for t in ts[:n]:
                tape.watch(t)
            outs = fn(*ts)
            outs = list(outs) if isinstance(outs, tuple) else [outs]
            loss = fj.add_n([fj.reduce_sum(o * float(k + 1)) for k, o in enumerate(outs)
                             if o.dtype.is_floating])
        return [loss] + list(tape.gradient(loss, ts[:n])) + outs
    return g


CASES = {
    "unary": (grads_of(unary, 1), lambda: [rand(3, 5)]),
    "binary": (grads_of(binary, 2), lambda: [rand(3, 5), rand(2, 5, seed=1)]),
    "reductions": (grads_of(reductions, 1), lambda: [rand(3, 5)]),
    "shapes": (grads_of(shapes, 1), lambda: [rand(4, 6), np.array([3, 0, 2, 3]), np.array(2)]),
    "matmul": (grads_of(with_matmul, 3), lambda: [rand(4, 3), rand(3, 5), rand(4, 5)]),
    "conv": (grads_of(convnet, 2), lambda: [rand(2, 6, 6, 2), rand(3, 3, 2, 3, seed=1)]),
    "scan": (grads_of(loop, 2), lambda: [rand(4, 3), rand(3, seed=1)]),
    "sampling": (grads_of(sampling, 1), lambda: [rand(5, 3), np.array([[1], [3]], np.int64)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tier_0_matches_the_compiled_tier_and_eager(case):
    fn, make = CASES[case]
    args = make()
    got, ops = with_tier("reference", fn, *args)
    want, _ = with_tier("compiled", fn, *args)
    eager = [np.asarray(o.numpy()) for o in fn(*args)]
    for a, b, e in zip(got, want, eager):
        assert_close(a, b)
        assert_close(a, e)
    assert len(ops) > 3


def test_the_cases_cover_every_registered_op():
    """Tier 0 runs what the compiled programs run: every op a program can hold after
    simplification appears in a case above (so each has a row here)."""
    seen = set()
    for fn, make in CASES.values():
        seen |= with_tier("reference", fn, *make())[1]
    seen |= with_tier("reference", lambda: fj.random.normal((3, 4), seed=5)
                      + fj.random.uniform((3, 4), seed=6))[1]
    # sources; ops simplification removes (identity, stop_gradient) or never makes
    # (reduce_mean's count is a sym_scalar only for a run-time size)
    absent = {"identity", "stop_gradient"}
    missing = set(REGISTRY) - seen - absent - {n for n, d in REGISTRY.items() if d.kernels}
    assert not missing, sorted(missing)


def test_random_ops_draw_the_same_numbers_in_both_tiers():
    def f():
        return (fj.random.normal((50,), seed=3), fj.random.uniform((7, 3), seed=4),
                fj.random.truncated_normal((40,), seed=5, dtype=fj.float64))
    got, _ = with_tier("reference", f)
    want, _ = with_tier("compiled", f)
    for a, b in zip(got, want):
        assert_close(a, b, rtol=1e-6, atol=1e-6)


def mlp_step(opt):
    rng = np.random.default_rng(0)
    vs = [fj.Variable(rng.standard_normal((12, 16)).astype(np.float32) * 0.3),
          fj.Variable(np.zeros(16, np.float32)),
          fj.Variable(rng.standard_normal((16, 4)).astype(np.float32) * 0.3)]

    def step(x, y):
        with fj.GradientTape() as tape:
            h = fj.sigmoid(fj.matmul(x, vs[0]) + vs[1])
            loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, fj.matmul(h, vs[2])))
        opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
        return loss
    x = rng.standard_normal((10, 12)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 10)]
    return vs, step, (x, y)


def cnn_step(opt):
    rng = np.random.default_rng(1)
    vs = [fj.Variable(rng.standard_normal((3, 3, 1, 4)).astype(np.float32) * 0.3),
          fj.Variable(np.zeros(4, np.float32)),
          fj.Variable(rng.standard_normal((36, 3)).astype(np.float32) * 0.3)]

    def step(x, labels):
        with fj.GradientTape() as tape:
            h = fj.nn.relu(fj.nn.conv2d(x, vs[0], 1, "SAME") + vs[1])
            h = fj.nn.max_pool2d(h, 2, 2, "VALID")
            logits = fj.matmul(fj.reshape(h, (-1, 36)), vs[2])
            loss = fj.reduce_mean(fj.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
        return loss
    x = rng.standard_normal((5, 6, 6, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 5)
    return vs, step, (x, labels)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_twenty_training_steps_agree_in_both_tiers(model, optimizer):
    """Losses, variables and optimizer slots after 20 steps in tier 0 and compiled."""
    results = {}
    for tier in TIERS:
        opt = fj.optimizers.SGD(0.3, momentum=0.5) if optimizer == "sgd" else fj.optimizers.Adam(0.05)
        vs, step, data = (mlp_step if model == "mlp" else cnn_step)(opt)
        old = fj.config.tier
        fj.config.tier = tier
        try:
            jstep = fj.jit(step)
            losses = [float(jstep(*data)) for _ in range(20)]
        finally:
            fj.config.tier = old
        slots = [v.numpy() for v in opt.variables()]
        results[tier] = (losses, [v.numpy() for v in vs], slots)
    (l0, v0, s0), (l1, v1, s1) = results["reference"], results["compiled"]
    assert l0[-1] < l0[0]
    np.testing.assert_allclose(l0, l1, rtol=2e-5, atol=2e-6)
    assert len(s0) == len(s1) and len(s0) > 1
    for a, b in zip(v0 + s0, v1 + s1):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_a_bad_index_in_tier_0_names_the_op_and_line_and_changes_nothing():
    v = fj.Variable(np.ones((4, 3), np.float32))
    old = fj.config.tier
    fj.config.tier = "reference"
    try:
        @fj.jit
        def f(i):
            v.assign(v * 2.0)
            return fj.gather(v, i)
        assert_close(f(np.array([1, 3])), np.full((2, 3), 2.0, np.float32))
        with pytest.raises(fj.errors.OutOfRangeError, match=r"gather \(at .*test_tiers.py:\d+"):
            f(np.array([0, 7]))
    finally:
        fj.config.tier = old
    assert_close(v.numpy(), np.full((4, 3), 2.0, np.float32))


def test_a_variable_updated_in_place_leaves_tier_0_outputs_alone():
    """An output that is a view of a variable in tier 0 (the transpose of a column is a
    contiguous view) stays what it was when the step updates the variable in place."""
    v = fj.Variable(np.arange(3, dtype=np.float32).reshape(3, 1))
    old = fj.config.tier
    fj.config.tier = "reference"
    try:
        @fj.jit
        def f():
            out = fj.transpose(v)
            v.assign_add(fj.ones_like(v))
            return out
        first = f()
        f()
    finally:
        fj.config.tier = old
    assert_close(first.numpy(), np.arange(3, dtype=np.float32).reshape(1, 3))
    assert_close(v.numpy(), np.arange(3, dtype=np.float32).reshape(3, 1) + 2)


def test_an_unknown_tier_is_a_clear_error():
    old = fj.config.tier
    fj.config.tier = "fast"
    try:
        with pytest.raises(ValueError, match="fj.config.tier"):
            fj.jit(lambda x: x + 1.0)(np.ones(3, np.float32))
    finally:
        fj.config.tier = old


def test_tier_0_gives_ieee_results_without_numpy_warnings():
    import warnings
    x = np.array([0.0, -1.0, 2.0], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, _ = with_tier("reference", lambda x: (fj.log(x), x / 0.0), x)
    want, _ = with_tier("compiled", lambda x: (fj.log(x), x / 0.0), x)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_both_tiers_return_the_same_array_types_from_every_stage():
    """The forward's residuals go to the backward as they are, and either may run in
    either tier: every stage returns arrays of the same shapes, dtypes and layout in
    both (a 0-d value as shape (1,), as compiled code allocates it)."""
    def f(x, w):
        with fj.GradientTape() as tape:
            tape.watch(w)
            s = fj.reduce_sum(x * w)
            loss = s * s + fj.reduce_sum(fj.sin(w))
        return loss, tape.gradient(loss, w)
    x, w = rand(3, 4), rand(3, 4, seed=1)
    kinds = {}
    for tier in TIERS:
        old = fj.config.tier
        fj.config.tier = tier
        try:
            jf = fj.jit(f)
            jf(x, w)
            seen = []
            c = next(iter(jf._cache.values()))[0]
            for st in c.stages:
                def record(args, run=st.exe.run):
                    outs = run(args)
                    seen.append([(o.shape, o.dtype, o.flags.c_contiguous) for o in outs])
                    return outs
                st.exe.run = record
            jf(x, w)
        finally:
            fj.config.tier = old
        kinds[tier] = seen
    assert len(kinds["reference"]) == 2
    assert kinds["reference"] == kinds["compiled"]
    assert ((1,), np.dtype(np.float64), True) in kinds["reference"][0]     # the 0-d residual


def test_a_failed_load_of_the_compiled_tier_is_tried_again_at_the_next_call(monkeypatch):
    from flowjit.backends.cpu.backend import CpuExecutable
    load = CpuExecutable._load_python_tier
    failures = []

    def flaky(self):
        if not failures:
            failures.append(self)
            raise KeyboardInterrupt
        return load(self)
    monkeypatch.setattr(CpuExecutable, "_load_python_tier", flaky)
    f = fj.jit(lambda x: fj.tanh(x) * 2.0)
    x = rand(5)
    with pytest.raises(KeyboardInterrupt):
        f(x)
    assert_close(f(x).numpy(), np.tanh(x) * 2.0)
