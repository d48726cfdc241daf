"""`flowjit.keras` activations, initializers, losses and metrics against NumPy
references of Keras 3's definitions, eagerly and under `@fj.jit`; gradients of losses
against float64 finite differences; the softmax/sigmoid logits shortcut of the
crossentropies; metrics' running values over several batches."""
import gc

import numpy as np
import pytest
from scipy import special

import flowjit as fj
from conftest import assert_close, finite_differences
from flowjit.keras import activations as A
from flowjit.keras import initializers as I
from flowjit.keras import losses as L
from flowjit.keras import metrics as M
from flowjit.keras import optimizers as O
from flowjit.keras import random_state

F32 = dict(rtol=2e-6, atol=1e-6)


@pytest.fixture(autouse=True)
def _python_entry_tier(monkeypatch):
    # jitted functions stay on the kernel-compiled Python entry tier: compiling each
    # signature's njit entry costs seconds and is covered by tests/test_jit.py
    monkeypatch.setattr(fj.config, "compile_entry_after", 10**9)


def _grad(f, x):
    x = fj.constant(x)
    with fj.GradientTape() as tape:
        tape.watch(x)
        y = fj.reduce_sum(f(x))
    return tape.gradient(y, x).numpy()


# ------------------------------------------------------------------------------------
# activations
# ------------------------------------------------------------------------------------

def _np_activations(x):
    sig = special.expit(x)
    relu6 = np.clip(x, 0, 6)
    e = np.exp(x - x.max(-1, keepdims=True))
    elu = np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
    a, s = 1.6732632423543772, 1.0507009873554805
    return {
        "relu": np.maximum(x, 0), "sigmoid": sig, "tanh": np.tanh(x),
        "softmax": e / e.sum(-1, keepdims=True),
        "log_softmax": np.log(e / e.sum(-1, keepdims=True)),
        "elu": elu, "selu": s * np.where(x > 0, x, a * np.expm1(np.minimum(x, 0))),
        "gelu": 0.5 * x * (1 + special.erf(x / np.sqrt(2))),
        "softplus": np.logaddexp(0, x), "softsign": x / (1 + np.abs(x)),
        "swish": x * sig, "silu": x * sig,
        "leaky_relu": np.where(x > 0, x, 0.2 * x),            # Keras 3's default slope
        "relu6": relu6,
        "hard_sigmoid": relu6 * 0 + np.clip(x + 3, 0, 6) / 6,  # Keras 3: relu6(x + 3) / 6
        "exponential": np.exp(x), "linear": x,
    }


def _act_input():
    x = np.random.default_rng(5).normal(0, 3, (3, 7))
    x[0, :4] = [-7.5, -0.25, 0.5, 7.0]
    return x


def test_activations_match_numpy_eager_and_jit():
    x64 = _act_input()
    x = x64.astype(np.float32)
    ref = _np_activations(x64)
    names = list(ref)
    jitted = fj.jit(lambda t: {n: A.get(n)(t) for n in names})(x)
    for n in names:
        eager = A.get(n)(fj.constant(x))
        assert eager.dtype == fj.float32, n
        assert_close(eager, ref[n].astype(np.float32), rtol=5e-6, atol=2e-6)
        assert_close(jitted[n], ref[n].astype(np.float32), rtol=5e-6, atol=2e-6)


def test_activation_options_and_variants():
    x64 = _act_input()
    x = fj.constant(x64.astype(np.float32))
    c = np.sqrt(2 / np.pi)
    assert_close(A.gelu(x, approximate=True),
                 (0.5 * x64 * (1 + np.tanh(c * (x64 + 0.044715 * x64 ** 3)))).astype(np.float32), **F32)
    assert_close(A.leaky_relu(x, negative_slope=0.1), np.where(x64 > 0, x64, 0.1 * x64).astype(np.float32))
    assert_close(A.elu(x, alpha=2.0), np.where(x64 > 0, x64, 2 * np.expm1(np.minimum(x64, 0))).astype(np.float32), **F32)
    # Keras's relu: zero below the threshold (slope below it), capped at max_value
    ref = np.clip(np.where(x64 > 1.0, x64, 0), 0, 3) - 0.1 * np.maximum(1.0 - x64, 0)
    assert_close(A.relu(x, negative_slope=0.1, max_value=3.0, threshold=1.0), ref.astype(np.float32), **F32)
    assert_close(A.softmax(x, axis=0), special.softmax(x64, axis=0).astype(np.float32), **F32)
    # Variables and lists are accepted
    v = fj.Variable(np.array([-1.0, 8.0], np.float32))
    assert_close(A.relu6(v), np.array([0.0, 6.0], np.float32))
    assert_close(A.sigmoid([0.0]), np.array([0.5], np.float32))


def test_gelu_is_accurate_in_the_tails_and_its_gradient_matches_the_exact_one():
    x = np.array([-12.0, -6.0, -3.0, -1e-3, 0.0, 1e-3, 2.0, 5.0, 12.0])
    exact = 0.5 * x * special.erfc(-x / np.sqrt(2))
    got = A.gelu(fj.constant(x)).numpy()        # float64: limited by the erfc fit, 1.2e-7
    np.testing.assert_allclose(got, exact, rtol=3e-7, atol=1e-300)
    assert np.all(np.isfinite(A.gelu(fj.constant(np.float32([-60.0, 60.0]))).numpy()))
    dexact = 0.5 * special.erfc(-x / np.sqrt(2)) + x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    np.testing.assert_allclose(_grad(A.gelu, x), dexact, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["selu", "elu", "softsign", "swish", "gelu", "softplus",
                                  "hard_sigmoid", "log_softmax"])
def test_activation_gradients_match_finite_differences(name):
    x = _act_input()[:2, :5]
    x[0, :3] = [-2.5, 0.7, 1.5]       # hard_sigmoid: away from its kinks at -3 and 3
    fn = A.get(name)
    w = np.random.default_rng(1).normal(size=x.shape)     # a non-uniform upstream gradient
    num = finite_differences(lambda a: float(np.sum(w * fn(fj.constant(a)).numpy())), [x], 0)
    ana = _grad(lambda t: fn(t) * w, x)
    np.testing.assert_allclose(ana, num, rtol=1e-6, atol=1e-8)


def test_activations_get_and_serialize():
    assert A.get(None) is A.linear and A.get("linear") is A.linear
    assert A.get("swish") is A.silu and A.get("relu") is A.relu
    f = lambda t: t * 2      # noqa: E731
    assert A.get(f) is f
    with pytest.raises(ValueError, match="no_such_act"):
        A.get("no_such_act")
    with pytest.raises(ValueError, match="42"):
        A.get(42)
    assert A.serialize(A.relu) == "relu" and A.serialize(A.get("swish")) == "silu"
    assert A.get(A.serialize(A.gelu)) is A.gelu
    with pytest.raises(ValueError):
        A.serialize(f)


# ------------------------------------------------------------------------------------
# initializers
# ------------------------------------------------------------------------------------

def test_compute_fans_as_keras():
    assert I.compute_fans(()) == (1, 1)
    assert I.compute_fans((7,)) == (7, 7)
    assert I.compute_fans((3, 5)) == (3, 5)
    assert I.compute_fans((3, 3, 4, 8)) == (36, 72)       # receptive field 9 times channels


@pytest.mark.parametrize("name", ["zeros", "ones", "random_normal", "random_uniform", "truncated_normal",
                                  "glorot_uniform", "glorot_normal", "he_normal", "he_uniform",
                                  "lecun_normal", "lecun_uniform", "variance_scaling", "orthogonal"])
def test_initializer_shapes_and_dtypes(name):
    init = I.get(name)
    for shape in [(4, 6), (2, 3, 5)]:
        a = init(shape)
        assert isinstance(a, np.ndarray) and a.shape == shape and a.dtype == np.float32
    for dt in ["float64", fj.float64, np.float64]:
        assert init((3, 2), dtype=dt).dtype == np.float64
    if name in ("zeros", "ones"):
        assert init((2,), dtype="int32").dtype == np.int32
    else:
        with pytest.raises(ValueError):
            init((2, 2), dtype="int32")


def test_variance_scaling_statistics():
    shape = (3, 3, 32, 32)          # fan_in = fan_out = 288
    fan = 288
    a = I.GlorotUniform(seed=1)(shape)
    limit = np.sqrt(6 / (fan + fan))
    assert np.abs(a).max() <= limit and np.abs(a).max() > 0.99 * limit
    assert abs(a.std() - limit / np.sqrt(3)) < 0.03 * limit / np.sqrt(3)
    assert abs(a.mean()) < 0.05 * limit
    # truncated normals: variance scale/n after truncation, bounded at 2 stddev (before it)
    for init, var in [(I.HeNormal(seed=2), 2 / fan), (I.GlorotNormal(seed=3), 1 / fan),
                      (I.LecunNormal(seed=4), 1 / fan)]:
        a = init(shape)
        assert abs(a.var() / var - 1) < 0.05
        assert np.abs(a).max() <= 2 * np.sqrt(var) / 0.87962566103423978
    a = I.HeUniform(seed=5)(shape)
    assert np.abs(a).max() <= np.sqrt(6 / fan)
    # (64, 40, 5): receptive field 64, so fan_out = 5 * 64
    a = I.VarianceScaling(scale=3.0, mode="fan_out", distribution="untruncated_normal", seed=6)((64, 40, 5))
    assert abs(a.var() / (3.0 / 320) - 1) < 0.05 and np.abs(a).max() > 2.5 * np.sqrt(3.0 / 320)
    a = I.VarianceScaling(2.0, "fan_avg", "uniform", seed=7)((300, 100))
    assert np.abs(a).max() <= np.sqrt(3 * 2.0 / 200)
    a = I.TruncatedNormal(mean=1.0, stddev=0.5, seed=8)((100, 100))
    assert a.min() >= 0.0 and a.max() <= 2.0 and abs(a.mean() - 1.0) < 0.01
    a = I.RandomNormal(mean=-1.0, stddev=2.0, seed=9)((100, 100))
    assert abs(a.mean() + 1) < 0.06 and abs(a.std() - 2) < 0.05
    a = I.RandomUniform(-0.3, 0.1, seed=10)((100, 100))
    assert a.min() >= -0.3 and a.max() <= 0.1 and abs(a.mean() + 0.1) < 0.01


def test_orthogonal_identity_constant():
    q = I.Orthogonal(seed=1)((6, 3))
    assert_close(q.T @ q, np.eye(3, dtype=np.float32), atol=1e-6)
    q = I.Orthogonal(gain=2.0, seed=1)((3, 6))
    assert_close(q @ q.T, 4 * np.eye(3, dtype=np.float32), atol=1e-5)
    k = I.Orthogonal(seed=2)((2, 2, 3, 4))              # flattened to (12, 4)
    flat = k.reshape(12, 4)
    assert_close(flat.T @ flat, np.eye(4, dtype=np.float32), atol=1e-6)
    with pytest.raises(ValueError):
        I.Orthogonal()((5,))
    assert_close(I.Identity(gain=3.0)((2, 3)), 3 * np.eye(2, 3, dtype=np.float32))
    with pytest.raises(ValueError):
        I.Identity()((2, 2, 2))
    assert_close(I.Constant(1.5)((2, 2)), np.full((2, 2), 1.5, np.float32))
    assert_close(I.get("zeros")((3,)), np.zeros(3, np.float32))
    assert_close(I.get("ones")((3,)), np.ones(3, np.float32))


def test_initializer_seeds():
    a = I.GlorotUniform(seed=3)((4, 4))
    np.testing.assert_array_equal(a, I.GlorotUniform(seed=3)((4, 4)))
    assert not np.array_equal(a, I.GlorotUniform(seed=4)((4, 4)))
    # Keras 3: an instance keeps its seed, seeded or not: each call gives the same values
    for init in (I.RandomNormal(seed=1), I.HeNormal()):
        np.testing.assert_array_equal(init((3, 3)), init((3, 3)))
    # unseeded instances take the next seed of the global sequence: distinct, and
    # reproducible after random_state.seed (what keras.utils.set_random_seed calls)
    try:
        random_state.seed(123)
        first = [I.GlorotUniform()((3, 3)) for _ in range(2)]
        random_state.seed(123)
        again = [I.GlorotUniform()((3, 3)) for _ in range(2)]
    finally:
        random_state.seed(None)
    assert not np.array_equal(first[0], first[1])
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)


def test_initializers_get_and_config():
    assert isinstance(I.get("glorot_uniform"), I.GlorotUniform)
    assert isinstance(I.get("GlorotUniform"), I.GlorotUniform)
    assert isinstance(I.get("normal"), I.RandomNormal) and isinstance(I.get("uniform"), I.RandomUniform)
    inst = I.HeNormal(seed=1)
    assert I.get(inst) is inst and I.get(None) is None
    assert isinstance(I.get(I.Zeros), I.Zeros)
    f = lambda shape, dtype=None: np.full(shape, 2.0, np.float32)     # noqa: E731
    assert I.get(f) is f
    vs = I.get({"class_name": "VarianceScaling",
                "config": {"scale": 2.0, "mode": "fan_out", "distribution": "uniform", "seed": 5}})
    assert vs.get_config() == {"seed": 5, "scale": 2.0, "mode": "fan_out", "distribution": "uniform"}
    np.testing.assert_array_equal(vs((3, 4)), I.VarianceScaling(2.0, "fan_out", "uniform", seed=5)((3, 4)))
    assert I.GlorotUniform(seed=2).get_config() == {"seed": 2}
    assert I.RandomNormal().get_config() == {"seed": None, "mean": 0.0, "stddev": 0.05}
    clone = I.Orthogonal(gain=0.5, seed=3).clone()
    assert clone.gain == 0.5 and clone.seed == 3
    with pytest.raises(ValueError, match="glorot_unifrom"):
        I.get("glorot_unifrom")
    with pytest.raises(ValueError):
        I.VarianceScaling(mode="fan_sideways")


# ------------------------------------------------------------------------------------
# losses: NumPy references of Keras 3's per-sample values
# ------------------------------------------------------------------------------------
EPS = np.float32(1e-7)


def _np_log_clip(p):
    return np.log(np.clip(p, EPS, np.float32(1) - EPS))


def np_cce(y, p, ls=0.0):
    if ls:
        y = y * (1 - ls) + ls / y.shape[-1]
    return -np.sum(y * _np_log_clip(p / p.sum(-1, keepdims=True)), -1)


def np_cce_logits(y, z, ls=0.0):
    if ls:
        y = y * (1 - ls) + ls / y.shape[-1]
    return -np.sum(y * special.log_softmax(z, -1), -1)


def np_bce(y, p, ls=0.0):
    y = y * (1 - ls) + 0.5 * ls
    p = np.clip(p, EPS, np.float32(1) - EPS)
    return np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)), -1)


def np_bce_logits(y, z, ls=0.0):
    y = y * (1 - ls) + 0.5 * ls
    return np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), -1)


def np_huber(y, p, d=1.0):
    e = np.abs(p - y)
    return np.mean(np.where(e <= d, 0.5 * e * e, d * e - 0.5 * d * d), -1)


def _data(dtype=np.float32, n=6, c=4):
    r = np.random.default_rng(11)
    z = r.normal(0, 2, (n, c)).astype(dtype)
    p = special.softmax(z.astype(np.float64), -1).astype(dtype)
    lab = r.integers(0, c, n)
    oh = np.eye(c, dtype=dtype)[lab]
    bz = r.normal(0, 2, (n, 3)).astype(dtype)
    bp = special.expit(bz.astype(np.float64)).astype(dtype)
    bt = r.integers(0, 2, (n, 3)).astype(dtype)
    yr, pr = r.normal(size=(n, 3)).astype(dtype), r.normal(size=(n, 3)).astype(dtype)
    sw = r.uniform(0, 2, n).astype(dtype)
    return dict(z=z, p=p, lab=lab, oh=oh, bz=bz, bp=bp, bt=bt, yr=yr, pr=pr, sw=sw)


def _per_sample_cases(d):
    """(name, flowjit call, NumPy reference) of each per-sample function."""
    return [
        ("scce_int", lambda: L.sparse_categorical_crossentropy(d["lab"], d["p"]),
         -np.log(np.clip(d["p"][np.arange(6), d["lab"]], EPS, 1 - EPS))),
        ("scce_col_float", lambda: L.sparse_categorical_crossentropy(d["lab"][:, None].astype(np.float32), d["p"]),
         -np.log(np.clip(d["p"][np.arange(6), d["lab"]], EPS, 1 - EPS))),
        ("scce_logits", lambda: L.sparse_categorical_crossentropy(d["lab"], d["z"], from_logits=True),
         -special.log_softmax(d["z"], -1)[np.arange(6), d["lab"]]),
        ("cce", lambda: L.categorical_crossentropy(d["oh"], d["p"]), np_cce(d["oh"], d["p"])),
        ("cce_ls", lambda: L.categorical_crossentropy(d["oh"], d["p"], label_smoothing=0.1),
         np_cce(d["oh"], d["p"], 0.1)),
        ("cce_logits_ls", lambda: L.categorical_crossentropy(d["oh"], d["z"], from_logits=True, label_smoothing=0.2),
         np_cce_logits(d["oh"], d["z"], 0.2)),
        ("bce", lambda: L.binary_crossentropy(d["bt"], d["bp"]), np_bce(d["bt"], d["bp"])),
        ("bce_ls", lambda: L.binary_crossentropy(d["bt"], d["bp"], label_smoothing=0.2),
         np_bce(d["bt"], d["bp"], 0.2)),
        ("bce_logits", lambda: L.binary_crossentropy(d["bt"], d["bz"], from_logits=True),
         np_bce_logits(d["bt"], d["bz"])),
        ("bce_column", lambda: L.binary_crossentropy(d["bt"][:, 0], d["bp"][:, :1]),
         np_bce(d["bt"][:, :1], d["bp"][:, :1])),
        ("mse", lambda: L.mean_squared_error(d["yr"], d["pr"]), np.mean((d["yr"] - d["pr"]) ** 2, -1)),
        ("mae", lambda: L.mae(d["yr"], d["pr"]), np.mean(np.abs(d["yr"] - d["pr"]), -1)),
        ("huber", lambda: L.huber(d["yr"], d["pr"], delta=0.7), np_huber(d["yr"], d["pr"], 0.7)),
    ]


def test_loss_functions_per_sample_values():
    d = _data()
    for name, call, ref in _per_sample_cases(d):
        got = call()
        assert got.dtype == fj.float32, name
        assert_close(got, ref.astype(np.float32), rtol=5e-6, atol=2e-6)


def test_loss_classes_reductions_and_sample_weights():
    d = _data()
    sw = d["sw"]
    per = -np.log(np.clip(d["p"][np.arange(6), d["lab"]], EPS, 1 - EPS))
    cases = [
        (L.SparseCategoricalCrossentropy(), None, per.mean()),
        (L.SparseCategoricalCrossentropy(), sw, (per * sw).mean()),      # over the count, not sum(w)
        (L.SparseCategoricalCrossentropy(reduction="sum"), sw, (per * sw).sum()),
        (L.SparseCategoricalCrossentropy(reduction=None), sw, per * sw),
        (L.SparseCategoricalCrossentropy(reduction="none"), None, per),
        (L.SparseCategoricalCrossentropy(reduction="mean_with_sample_weight"), sw,
         (per * sw).sum() / sw.sum()),
    ]
    for loss, w, ref in cases:
        got = loss(d["lab"], d["p"], sample_weight=w)
        assert_close(got, np.asarray(ref, np.float32), **F32)
    mse = np.mean((d["yr"] - d["pr"]) ** 2, -1)
    assert_close(L.MeanSquaredError()(d["yr"], d["pr"], sample_weight=sw), np.float32((mse * sw).mean()), **F32)
    assert_close(L.MeanAbsoluteError()(d["yr"], d["pr"]), np.float32(np.abs(d["yr"] - d["pr"]).mean()), **F32)
    assert_close(L.Huber(delta=0.5)(d["yr"], d["pr"]), np.float32(np_huber(d["yr"], d["pr"], 0.5).mean()), **F32)
    assert_close(L.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(d["oh"], d["z"]),
                 np.float32(np_cce_logits(d["oh"], d["z"], 0.1).mean()), **F32)
    assert_close(L.BinaryCrossentropy(label_smoothing=0.1)(d["bt"], d["bp"], sample_weight=sw[:, None]),
                 np.float32((np_bce(d["bt"], d["bp"], 0.1) * sw).mean()), **F32)
    # (N,) labels against (N, 1) probabilities: ranks matched as Keras does
    assert_close(L.BinaryCrossentropy()(d["bt"][:, 0], d["bp"][:, :1]),
                 np.float32(np_bce(d["bt"][:, :1], d["bp"][:, :1]).mean()), **F32)
    # every reduction gives a scalar tensor, float32 by default (Keras's floatx)
    out = L.MeanSquaredError()(d["yr"].astype(np.float64), d["pr"].astype(np.float64))
    assert out.shape == () and out.dtype == fj.float32
    with pytest.raises(ValueError):
        L.MeanSquaredError(reduction="average")


def test_losses_under_jit_match_eager():
    d = _data()
    cases = _per_sample_cases(d)
    classes = [L.SparseCategoricalCrossentropy(), L.CategoricalCrossentropy(label_smoothing=0.1),
               L.BinaryCrossentropy(from_logits=True), L.MeanSquaredError(), L.Huber()]

    @fj.jit
    def all_losses(lab, p, oh, bt, bz, yr, pr, sw):
        return [classes[0](lab, p, sample_weight=sw), classes[1](oh, p),
                classes[2](bt, bz), classes[3](yr, pr, sample_weight=sw), classes[4](yr, pr),
                L.sparse_categorical_crossentropy(lab, p), L.huber(yr, pr, delta=0.7)]
    args = [d[k] for k in ("lab", "p", "oh", "bt", "bz", "yr", "pr", "sw")]
    t0 = fj.stats()["traces"]
    for n in (6, 4):        # a second batch size reuses the trace (sizes are symbolic)
        got = all_losses(*[a[:n] for a in args])
        eager = [classes[0](d["lab"][:n], d["p"][:n], sample_weight=d["sw"][:n]),
                 classes[1](d["oh"][:n], d["p"][:n]), classes[2](d["bt"][:n], d["bz"][:n]),
                 classes[3](d["yr"][:n], d["pr"][:n], sample_weight=d["sw"][:n]),
                 classes[4](d["yr"][:n], d["pr"][:n])]
        for g, e in zip(got, eager):
            assert_close(g, e.numpy(), **F32)
        assert_close(got[5], cases[0][2][:n].astype(np.float32), **F32)
        assert_close(got[6], cases[-1][2][:n].astype(np.float32), **F32)
    assert fj.stats()["traces"] - t0 == 1


def test_sparse_labels_out_of_range_raise():
    p = np.full((2, 3), 1 / 3, np.float32)
    with pytest.raises(Exception, match="out of range"):
        L.sparse_categorical_crossentropy(np.array([0, 3]), p)
    with pytest.raises(ValueError):
        L.sparse_categorical_crossentropy(np.zeros((2, 2)), p)      # not (N,) or (N, 1)


@pytest.mark.parametrize("name", ["cce", "bce", "huber", "scce_logits", "cce_logits_ls"])
def test_loss_gradients_match_float64_finite_differences(name):
    d = _data(np.float64)
    w = d["sw"]
    fns = {
        "cce": (lambda t: L.CategoricalCrossentropy(dtype="float64")(d["oh"], t, sample_weight=w), d["p"]),
        "bce": (lambda t: L.BinaryCrossentropy(label_smoothing=0.1, dtype="float64")(d["bt"], t), d["bp"]),
        "huber": (lambda t: L.Huber(delta=0.7, dtype="float64")(d["yr"], t, sample_weight=w), d["pr"]),
        "scce_logits": (lambda t: L.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")(d["lab"], t),
                        d["z"]),
        "cce_logits_ls": (lambda t: fj.reduce_sum(L.categorical_crossentropy(
            d["oh"], t, from_logits=True, label_smoothing=0.2) * w), d["z"]),
    }
    f, x = fns[name]
    x = x.copy()
    if name == "huber":
        x[0, 0] = d["yr"][0, 0] + 0.3        # both sides of the kink at |e| = delta
        x[0, 1] = d["yr"][0, 1] - 1.5
    num = finite_differences(lambda a: float(f(fj.constant(a)).numpy()), [x], 0)
    xt = fj.constant(x)
    with fj.GradientTape() as tape:
        tape.watch(xt)
        loss = f(xt)
    assert loss.dtype == fj.float64
    np.testing.assert_allclose(tape.gradient(loss, xt).numpy(), num, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------
# the logits shortcut
# ------------------------------------------------------------------------------------

def test_softmax_output_uses_its_logits_equal_where_nothing_saturates():
    d = _data()
    z = fj.constant(d["z"])
    p = A.softmax(z)
    via_logits = L.SparseCategoricalCrossentropy()(d["lab"], p)
    assert_close(via_logits, L.SparseCategoricalCrossentropy(from_logits=True)(d["lab"], z).numpy())
    assert_close(via_logits, L.SparseCategoricalCrossentropy()(d["lab"], p.numpy()).numpy(), **F32)
    assert_close(L.categorical_crossentropy(d["oh"], p, label_smoothing=0.1),
                 np_cce(d["oh"], d["p"], 0.1).astype(np.float32), **F32)
    s = A.sigmoid(fj.constant(d["bz"]))
    assert_close(L.BinaryCrossentropy()(d["bt"], s), np.float32(np_bce_logits(d["bt"], d["bz"]).mean()), **F32)
    assert_close(L.binary_crossentropy(d["bt"], s), np_bce(d["bt"], d["bp"]).astype(np.float32), **F32)


def test_logits_shortcut_stays_finite_where_probabilities_saturate():
    z = np.array([[40.0, 0.0, -40.0], [0.0, 80.0, 1.0]], np.float32)
    lab = np.array([2, 0])
    exact = -special.log_softmax(z.astype(np.float64), -1)[np.arange(2), lab]       # 80 and 80
    zt = fj.constant(z)
    with fj.GradientTape(persistent=True) as tape:
        tape.watch(zt)
        p = A.softmax(zt)
        shortcut = L.SparseCategoricalCrossentropy(reduction=None)(lab, p)
        plain = L.SparseCategoricalCrossentropy(reduction=None)(lab, fj.identity(p))
        sum_shortcut, sum_plain = fj.reduce_sum(shortcut), fj.reduce_sum(plain)
    assert_close(plain, np.full(2, -np.log(np.float32(1e-7)), np.float32), rtol=1e-6)   # clipped
    assert_close(shortcut, exact.astype(np.float32), rtol=1e-6)
    g = tape.gradient(sum_shortcut, zt).numpy()
    assert_close(g, (special.softmax(z.astype(np.float64), -1) - np.eye(3)[lab]).astype(np.float32), atol=1e-6)
    assert np.all(tape.gradient(sum_plain, zt).numpy() == 0)   # what the shortcut avoids
    # sigmoid: binary crossentropy from the logits, (N,) labels against (N, 1) outputs
    bz = np.array([[60.0], [-70.0]], np.float32)
    s = A.sigmoid(fj.constant(bz))
    got = L.BinaryCrossentropy(reduction=None)(np.array([0.0, 1.0]), s)
    assert_close(got, np.array([60.0, 70.0], np.float32), rtol=1e-6)


def test_remember_logits_from_layer_code_eager_and_jit():
    z = np.array([[30.0, -30.0, 0.0], [1.0, 2.0, 3.0]], np.float32)
    lab = np.array([1, 2])
    exact = np.float32(np.mean(-special.log_softmax(z.astype(np.float64), -1)[np.arange(2), lab]))

    def layer_then_loss(t):
        probs = L.remember_logits(fj.nn.softmax(t), t, "softmax")      # what a Dense layer does
        return L.get("sparse_categorical_crossentropy")(lab, probs)
    assert_close(layer_then_loss(fj.constant(z)), exact, rtol=1e-6)
    assert_close(fj.jit(layer_then_loss)(z), exact, rtol=1e-6)
    # a cast of the probabilities keeps the logits (the loss converts to its dtype)
    p64 = L.remember_logits(fj.nn.softmax(fj.constant(z.astype(np.float64))),
                            fj.constant(z.astype(np.float64)), "softmax")
    assert_close(L.SparseCategoricalCrossentropy()(lab, p64), exact, rtol=1e-6)
    # a softmax over another axis is not the loss's class axis: probabilities path
    p0 = A.softmax(fj.constant(z), axis=0)
    assert_close(L.categorical_crossentropy(np.eye(3)[lab], p0),
                 np_cce(np.eye(3)[lab], special.softmax(z, 0)).astype(np.float32), **F32)
    with pytest.raises(ValueError):
        L.remember_logits(fj.constant(z), fj.constant(z), "tanh")


def test_logits_registry_drops_dead_tensors():
    gc.collect()
    before = len(L._LOGITS)
    for _ in range(5):
        A.softmax(fj.constant(np.ones((2, 3), np.float32)))
    gc.collect()
    assert len(L._LOGITS) == before


def test_losses_get():
    assert isinstance(L.get("sparse_categorical_crossentropy"), L.Loss)
    assert L.get("mse").name == "mse" and L.get("mean_absolute_error").name == "mean_absolute_error"
    assert isinstance(L.get("SparseCategoricalCrossentropy"), L.SparseCategoricalCrossentropy)
    inst = L.Huber(delta=2.0)
    assert L.get(inst) is inst and L.get(None) is None
    assert isinstance(L.get(L.MeanSquaredError), L.MeanSquaredError)
    cfg = L.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1).get_config()
    assert cfg == {"name": "categorical_crossentropy", "reduction": "sum_over_batch_size",
                   "from_logits": True, "label_smoothing": 0.1, "axis": -1}
    back = L.get({"class_name": "CategoricalCrossentropy", "config": cfg})
    assert back.from_logits and back.label_smoothing == 0.1
    assert L.SparseCategoricalCrossentropy().name == "sparse_categorical_crossentropy"
    assert L.Huber().name == "huber_loss"

    def my_loss(y_true, y_pred):
        return fj.reduce_sum(fj.abs(y_true - y_pred), axis=-1)
    wrapped = L.get(my_loss)
    assert wrapped.name == "my_loss"
    y, p = np.ones((4, 2), np.float32), np.zeros((4, 2), np.float32)
    assert_close(wrapped(y, p), np.float32(2.0))        # the mean of the per-sample values
    # "crossentropy" picks binary / sparse / categorical from the shapes, as Keras's compile
    d = _data()
    ce = L.get("crossentropy")
    assert_close(ce(d["lab"], d["p"]), L.SparseCategoricalCrossentropy()(d["lab"], d["p"]).numpy())
    assert_close(ce(d["oh"], d["p"]), L.CategoricalCrossentropy()(d["oh"], d["p"]).numpy())
    assert_close(ce(d["bt"][:, 0], d["bp"][:, :1]), L.BinaryCrossentropy()(d["bt"][:, 0], d["bp"][:, :1]).numpy())
    with pytest.raises(ValueError, match="mean_sqared_error"):
        L.get("mean_sqared_error")


# ------------------------------------------------------------------------------------
# metrics: running values over several batches
# ------------------------------------------------------------------------------------

def _batches():
    r = np.random.default_rng(21)
    out = []
    for n in (5, 5, 3):
        z = r.normal(size=(n, 4)).astype(np.float32)
        z[0, :2] = [1.0, 1.0]            # a tie for argmax and top-k
        lab = r.integers(0, 4, n)
        bt = r.integers(0, 2, (n, 2)).astype(np.float32)
        bp = r.uniform(size=(n, 2)).astype(np.float32)
        yr, pr = r.normal(size=(n, 2)).astype(np.float32), r.normal(size=(n, 2)).astype(np.float32)
        sw = r.uniform(0, 2, n).astype(np.float32)
        out.append(dict(z=z, lab=lab, oh=np.eye(4, dtype=np.float32)[lab], bt=bt, bp=bp, yr=yr,
                        pr=pr, sw=sw))
    return out


def _np_rank_hits(lab, z, k):
    at = z[np.arange(len(lab)), lab][:, None]
    return (1 + (z > at).sum(-1)) <= k


def _np_metric_values(batches):
    """The running value after each batch, per metric, from NumPy."""
    acc = {k: [] for k in ("sacc", "cacc", "topk", "stopk", "bacc", "mse", "mae", "rmse", "prec",
                           "rec", "mean", "sum")}
    per = {k: ([], []) for k in acc}

    def add(k, values, weights):
        per[k][0].append(values)
        per[k][1].append(weights)
        v, w = np.concatenate(per[k][0]), np.concatenate(per[k][1])
        return (v * w).sum() / w.sum()
    tp = fp = fn = 0.0
    total = 0.0
    for b in batches:
        n, w1, sw = len(b["lab"]), np.ones(len(b["lab"])), b["sw"]
        pred = b["z"].argmax(-1)
        acc["sacc"].append(add("sacc", pred == b["lab"], sw))
        acc["cacc"].append(add("cacc", pred == b["lab"], w1))
        acc["topk"].append(add("topk", _np_rank_hits(b["lab"], b["z"], 2), w1))
        acc["stopk"].append(add("stopk", _np_rank_hits(b["lab"], b["z"], 2), sw))
        acc["bacc"].append(add("bacc", ((b["bp"] > 0.5) == b["bt"]).mean(-1), sw))
        acc["mse"].append(add("mse", ((b["yr"] - b["pr"]) ** 2).mean(-1), sw))
        acc["mae"].append(add("mae", np.abs(b["yr"] - b["pr"]).mean(-1), w1))
        acc["rmse"].append(np.sqrt(add("rmse", ((b["yr"] - b["pr"]) ** 2).mean(-1), sw)))
        pos, true = b["bp"] > 0.5, b["bt"] != 0
        ws = sw[:, None] * np.ones_like(b["bp"])
        tp += (ws * (pos & true)).sum()
        fp += (ws * (pos & ~true)).sum()
        fn += (ws * (~pos & true)).sum()
        acc["prec"].append(tp / (tp + fp))
        acc["rec"].append(tp / (tp + fn))
        acc["mean"].append(add("mean", b["yr"].mean(-1), sw))
        total += (b["yr"].sum(-1) * sw).sum()
        acc["sum"].append(total)
        assert n
    return acc


def _fresh_metrics():
    return {"sacc": M.SparseCategoricalAccuracy(), "cacc": M.CategoricalAccuracy(),
            "topk": M.TopKCategoricalAccuracy(k=2), "stopk": M.SparseTopKCategoricalAccuracy(k=2),
            "bacc": M.BinaryAccuracy(), "mse": M.MeanSquaredError(), "mae": M.MeanAbsoluteError(),
            "rmse": M.RootMeanSquaredError(), "prec": M.Precision(), "rec": M.Recall(),
            "mean": M.Mean(), "sum": M.Sum()}


def _update_all(ms, b):
    ms["sacc"].update_state(b["lab"], b["z"], sample_weight=b["sw"])
    ms["cacc"].update_state(b["oh"], b["z"])
    ms["topk"].update_state(b["oh"], b["z"])
    ms["stopk"].update_state(b["lab"][:, None], b["z"], sample_weight=b["sw"])
    ms["bacc"].update_state(b["bt"], b["bp"], sample_weight=b["sw"])
    ms["mse"].update_state(b["yr"], b["pr"], sample_weight=b["sw"])
    ms["mae"].update_state(b["yr"], b["pr"])
    ms["rmse"].update_state(b["yr"], b["pr"], sample_weight=b["sw"])
    ms["prec"].update_state(b["bt"], b["bp"], sample_weight=b["sw"])
    ms["rec"].update_state(b["bt"], b["bp"], sample_weight=b["sw"])
    ms["mean"].update_state(b["yr"], sample_weight=b["sw"])
    ms["sum"].update_state(b["yr"], sample_weight=b["sw"])
    return {k: m.result() for k, m in ms.items()}


def test_metrics_running_values_eager():
    batches = _batches()
    ref = _np_metric_values(batches)
    ms = _fresh_metrics()
    for i, b in enumerate(batches):
        got = _update_all(ms, b)
        for k in ms:
            assert_close(got[k], np.float32(ref[k][i]), **F32)
    for k, m in ms.items():
        assert m.dtype == "float32"
        for v in m.variables:
            assert v.dtype == fj.float32 and not v.trainable
        m.reset_state()
        assert float(m.result().numpy()) == 0.0
    _update_all(ms, batches[0])       # after a reset the running values start afresh
    for k in ms:
        assert_close(ms[k].result(), np.float32(ref[k][0]), **F32)


def test_metrics_update_inside_jit_compiles_into_the_step():
    batches = _batches()
    ref = _np_metric_values(batches)
    ms = _fresh_metrics()
    step = fj.jit(lambda b: _update_all(ms, b))
    t0 = fj.stats()["traces"]
    for i, b in enumerate(batches):       # the last batch is smaller: same trace
        got = step(b)
        for k in ms:
            assert_close(got[k], np.float32(ref[k][i]), **F32)
            assert_close(ms[k].result(), np.float32(ref[k][i]), **F32)    # and the state, eagerly
    assert fj.stats()["traces"] - t0 == 1
    for m in ms.values():
        m.reset_state()
    got = step(batches[0])
    for k in ms:
        assert_close(got[k], np.float32(ref[k][0]), **F32)


def test_metric_call_accuracy_variants_and_config():
    m = M.Mean()
    assert_close(m([1.0, 3.0, 5.0, 7.0]), np.float32(4.0))
    assert_close(m([2.0], sample_weight=[3.0]), np.float32(22.0 / 7.0))
    assert [v.name for v in m.variables] == ["mean/total:0", "mean/count:0"]
    assert_close(M.Accuracy()([1, 2, 3], [1, 2, 4]), np.float32(2 / 3))
    assert_close(M.BinaryAccuracy(threshold=0.7)([1, 0, 1], [0.8, 0.75, 0.6]), np.float32(1 / 3))
    # integral float labels of shape (N, 1)
    z = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    assert_close(M.SparseCategoricalAccuracy()(np.array([[1.0], [1.0], [1.0]]), z), np.float32(2 / 3))
    assert_close(M.Precision()([1, 0, 1, 1], [0.7, 0.6, 0.2, 0.9]), np.float32(2 / 3))
    assert_close(M.Recall(thresholds=0.65)([1, 0, 1, 1], [0.7, 0.6, 0.2, 0.9]), np.float32(2 / 3))
    assert_close(M.Precision()([0, 0], [0.1, 0.2]), np.float32(0.0))        # no positives: 0
    assert M.BinaryAccuracy(threshold=0.3).get_config() == {"name": "binary_accuracy", "dtype": "float32",
                                                            "threshold": 0.3}
    assert M.get({"class_name": "TopKCategoricalAccuracy", "config": {"k": 3}}).k == 3

    def errors(y_true, y_pred):
        return fj.abs(fj.convert_to_tensor(y_true) - y_pred)
    w = M.MeanMetricWrapper(errors)
    assert w.name == "errors"
    assert_close(w(np.array([1.0, 2.0], np.float32), np.array([0.0, 0.0], np.float32)), np.float32(1.5))


def test_resolve_for_compile():
    r = M.resolve
    assert isinstance(r("accuracy", "sparse_categorical_crossentropy"), M.SparseCategoricalAccuracy)
    assert isinstance(r("acc", L.CategoricalCrossentropy()), M.CategoricalAccuracy)
    assert isinstance(r("accuracy", L.binary_crossentropy), M.BinaryAccuracy)
    assert isinstance(r("accuracy", L.SparseCategoricalCrossentropy(from_logits=True)), M.SparseCategoricalAccuracy)
    assert r("acc", "sparse_categorical_crossentropy").name == "acc"
    assert r("accuracy", "categorical_crossentropy").name == "accuracy"
    # any other loss: chosen from the shapes, as Keras 3 does
    shape_acc = r("accuracy", "mse")
    z = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    assert_close(shape_acc(np.array([1, 1]), z), np.float32(0.5))                    # sparse
    shape_acc.reset_state()
    assert_close(shape_acc(np.array([[0, 1], [0, 1]], np.float32), z), np.float32(0.5))   # categorical
    shape_acc.reset_state()
    assert_close(shape_acc(np.array([[1.0], [0.0]]), np.array([[0.7], [0.6]], np.float32)), np.float32(0.5))
    # the crossentropy metric of the loss, with its from_logits; names as written
    ce = r("crossentropy", L.SparseCategoricalCrossentropy(from_logits=True))
    assert isinstance(ce, M.SparseCategoricalCrossentropy) and ce.name == "crossentropy"
    assert_close(ce(np.array([1, 0]), z), np.float32(-special.log_softmax(z, -1)[[0, 1], [1, 0]].mean()), **F32)
    m = r("mse", None)
    assert isinstance(m, M.MeanSquaredError) and m.name == "mse"
    assert r("sparse_categorical_crossentropy").name == "sparse_categorical_crossentropy"
    assert isinstance(r(M.Mean()), M.Mean)
    with pytest.raises(ValueError, match="accurasy"):
        r("accurasy", None)


# ------------------------------------------------------------------------------------
# together: a training step
# ------------------------------------------------------------------------------------

def test_jitted_training_step_with_loss_optimizer_and_metrics_equals_eager():
    """softmax -> sparse crossentropy (through the logits) -> Adam -> metrics: the jitted
    step gives the eager step's losses, weights and running metrics, batch after batch."""
    r = np.random.default_rng(2)
    x = r.normal(size=(8, 3)).astype(np.float32)
    y = r.integers(0, 4, 8)
    W0, b0 = I.GlorotUniform(seed=1)((3, 4)), I.Zeros()((4,))

    def make():
        W, b = fj.Variable(W0), fj.Variable(b0)
        opt = O.get("adam")
        opt.learning_rate = 0.1
        loss_fn = L.get("sparse_categorical_crossentropy")
        acc, mean_loss = M.resolve("accuracy", "sparse_categorical_crossentropy"), M.Mean(name="loss")

        def step(x, y):
            with fj.GradientTape() as tape:
                probs = A.softmax(fj.matmul(x, W) + b)
                loss = loss_fn(y, probs)
            opt.apply_gradients(zip(tape.gradient(loss, [W, b]), [W, b]))
            mean_loss.update_state(loss)
            acc.update_state(y, probs)
            return loss, mean_loss.result(), acc.result()
        return step, W
    eager, We = make()
    jitted, Wj = make()
    jitted = fj.jit(jitted)
    losses = []
    for _ in range(5):
        e, j = eager(fj.constant(x), y), jitted(x, y)
        for a, b in zip(j, e):
            assert_close(a, b.numpy(), rtol=1e-5, atol=1e-6)
        losses.append(float(e[0].numpy()))
    assert_close(Wj.numpy(), We.numpy(), rtol=1e-5, atol=1e-6)
    assert losses[-1] < 0.8 * losses[0]
