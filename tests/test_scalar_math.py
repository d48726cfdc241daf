"""The vectorisable exp/log/tanh/sigmoid/expm1/log1p used in fused loops: a few ulp
from NumPy over the whole range, with inf, nan, overflow, underflow, subnormals."""
import numpy as np
import pytest

import flowjit as fj
from flowjit.backends.cpu import scalar as S
from numba import njit

FUNCS = {
    "exp": (fj.exp, np.exp), "log": (fj.log, np.log), "tanh": (fj.tanh, np.tanh),
    "sigmoid": (fj.sigmoid, lambda x: np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))),
    "expm1": (fj.expm1, np.expm1), "log1p": (fj.log1p, np.log1p),
}
ULPS = {"exp": 2, "log": 2, "tanh": 4, "sigmoid": 4, "expm1": 3, "log1p": 3}


def inputs(name, dtype):
    rng = np.random.default_rng(7)
    fi = np.finfo(dtype)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, fi.tiny, fi.tiny / 8, fi.max, -fi.max,
               1.0, -1.0, 0.5, 1e-30, -1e-30]
    if name in ("log", "log1p"):
        xs = np.concatenate([np.exp(rng.uniform(-80 if dtype == np.float32 else -700,
                                                 80 if dtype == np.float32 else 700, 20000)),
                             rng.uniform(0, 4, 5000), rng.uniform(-1, 1, 2000)])
    else:
        lim = 110 if dtype == np.float32 else 760
        xs = np.concatenate([rng.uniform(-lim, lim, 20000), rng.standard_normal(5000) * 3,
                             rng.uniform(-1e-4, 1e-4, 1000)])
    xs = np.concatenate([xs, special, [-5.0, -1.5]])
    return xs.astype(dtype)


def ulp_error(actual, expected, dtype):
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(e)
    same = (a == e) | both_nan
    spacing = np.spacing(np.abs(e).astype(dtype)).astype(np.float64)
    spacing = np.maximum(spacing, np.finfo(dtype).smallest_subnormal)
    with np.errstate(invalid="ignore"):
        err = np.where(same, 0.0, np.abs(a - e) / spacing)
    return np.where(np.isfinite(err), err, np.inf)


@pytest.mark.parametrize("name", sorted(FUNCS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_accuracy(name, dtype):
    fn, ref = FUNCS[name]
    x = inputs(name, dtype)
    with np.errstate(all="ignore"):
        if dtype == np.float32:          # float32 reference from float64 NumPy, correctly rounded
            expected = ref(x.astype(np.float64)).astype(np.float32)
        else:
            expected = ref(x)
    got = fj.jit(lambda a: fn(a))(x).numpy()
    err = ulp_error(got, expected, dtype)
    worst = int(np.argmax(err))
    assert err.max() <= ULPS[name], (name, x[worst], got[worst], expected[worst], err.max())


def test_fused_chain_with_reduction_keeps_accuracy():
    # reductions are compiled with reassociation allowed; the math must not suffer
    x = np.linspace(-20, 20, 4001).astype(np.float32)
    got = fj.jit(lambda a: (fj.reduce_sum(fj.exp(a) * 0.0 + fj.tanh(a)), fj.exp(a)))(x)
    with np.errstate(all="ignore"):
        assert ulp_error(got[1].numpy(), np.exp(x.astype(np.float64)).astype(np.float32), np.float32).max() <= 2
    assert abs(float(got[0]) - np.tanh(x.astype(np.float64)).sum()) < 1e-3


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid"])
def test_accuracy_inside_a_reduction_kernel(name):
    # a loop with a reduction is compiled with reassociation; its float32 exp reduces
    # the argument with FMAs (or in float64 without FMA), which reassociation cannot
    # break; without FMA a plain elementwise loop uses the exact-order versions
    fn, ref = FUNCS[name]
    x = inputs(name, np.float32)
    with np.errstate(all="ignore"):
        expected = ref(x.astype(np.float64)).astype(np.float32)

    @fj.jit
    def both(a):
        y = fn(a)
        return y, fj.reduce_sum(y * 0.0)
    f = both.inspect(x)
    assert "reassoc" in f.forward_source and f"{name}_f32(" in f.forward_source
    got = both(x)[0].numpy()
    err = ulp_error(got, expected, np.float32)
    assert err.max() <= ULPS[name], (name, x[int(np.argmax(err))], err.max())
    plain = fj.jit(lambda a: fn(a)).inspect(x).forward_source
    ordered = f"{name}_f32" in S.ORDERED
    assert (f"{name}_f32_ordered(" in plain) == ordered


@pytest.mark.parametrize("variant, reassoc", [
    ("_exp_f32_fma", False), ("_exp_f32_fma", True), ("_exp_f32_wide", True), ("_exp_f32_split", False)])
def test_every_float32_exp_variant(variant, reassoc):
    # the code generator picks one by the host (FMA or not) and the kernel (reassociated
    # or not): every pairing it uses is checked here, whatever this machine has
    fn = getattr(S, variant)
    flags = {"nsz", "contract"} | ({"reassoc"} if reassoc else set())

    @njit(fastmath=flags, error_model="numpy")
    def run(a, out, bias):
        for i in range(a.shape[0]):
            out[i] = fn(a[i])
        acc = np.float32(0)       # a reduction in the same loop, as in a loss kernel
        for i in range(a.shape[0]):
            acc += out[i] * bias
        return acc

    x = inputs("exp", np.float32)
    out = np.empty_like(x)
    run(x, out, np.float32(0.0))
    with np.errstate(all="ignore"):
        expected = np.exp(x.astype(np.float64)).astype(np.float32)
    err = ulp_error(out, expected, np.float32)
    assert err.max() <= ULPS["exp"], (variant, x[int(np.argmax(err))], err.max())


def _expandable():
    from flowjit.backends.cpu import inline_math
    return [n for n in S.NAMES if not n.startswith("_") and inline_math._inline_dispatcher(getattr(S, n))]


@pytest.mark.parametrize("reassoc", [False, True])
def test_expanded_and_lowered_calls_compute_what_numbas_inlining_does(reassoc):
    """Kernels call the scalar functions as intrinsics that emit their IR (scalar_ir.py)
    or, for a function it cannot lower, get them written into their source
    (inline_math.py); neither is inlined by Numba. All three give the same bits for
    every function, in kernels with and without reassociation."""
    from flowjit.backends.cpu import inline_math, scalar_ir
    names = _expandable()
    assert {"exp_f32", "sigmoid_f32", "tanh_f32", "log1p_f64", "expm1_f64"} <= set(names)
    assert set(names) <= set(scalar_ir.LOWERED)
    flags = {"nsz", "contract"} | ({"reassoc"} if reassoc else set())
    for name in names:
        dtype = np.float32 if name.endswith("f32") else np.float64
        base = name.rsplit("_", 1)[0].replace("_ordered", "")
        x = inputs("log" if base.startswith("log") else "exp", dtype)
        src = ("from flowjit.backends.cpu.scalar import *\nimport numpy as np\n"
               f"def run(a, out):\n    for i in range(a.shape[0]):\n        y = {name}(a[i])\n"
               "        out[i] = y\n")
        expanded = inline_math.expand(src, lower=False)
        assert f"{name}(" not in expanded.replace(f"# y = {name}(", ""), expanded
        lowered = inline_math.expand(src)
        assert f"y = _fjx.{name}(a[i])" in lowered and "_s1_" not in lowered, lowered
        outs = []
        for text in (src, expanded, lowered):
            ns = {}
            exec(compile(text, f"<{name}>", "exec"), ns)
            run = njit(fastmath=flags, error_model="numpy")(ns["run"])
            out = np.empty_like(x)
            with np.errstate(all="ignore"):
                run(x, out)
            outs.append(out)
        for out in outs[1:]:
            _assert_same_bits(outs[0], out, name)


def _assert_same_bits(a, b, msg=""):
    """The same bits, zeros' signs included, except a NaN's sign and payload: which NaN
    an operation on a NaN gives is the CPU's choice (an AVX-512 Xeon gave tanh(NaN) + exp(NaN)
    with the sign bit set in one form of the code and clear in the other)."""
    def canonical(x):
        return np.where(np.isnan(x), np.array(np.nan, x.dtype), x).view(np.uint8)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=msg)
    np.testing.assert_array_equal(canonical(a), canonical(b), err_msg=msg)


def test_lowered_calls_nest_and_take_mixed_arguments():
    """A lowered call's argument may be another call or an expression of another float
    type (cast as Numba casts a call's argument); unsupported syntax stays expanded."""
    from flowjit.backends.cpu import inline_math, scalar_ir
    src = ("from flowjit.backends.cpu.scalar import *\nimport numpy as np\n"
           "def run(a, out):\n    for i in range(a.shape[0]):\n"
           "        y = tanh_f32(sigmoid_f32(a[i]) * np.float32(3.0)) + np.float32(exp_f64(np.float64(a[i])))\n"
           "        out[i] = y\n")
    x = inputs("exp", np.float32)
    outs = []
    for text in (src, inline_math.expand(src)):
        ns = {}
        exec(compile(text, "<nested>", "exec"), ns)
        out = np.empty_like(x)
        with np.errstate(all="ignore"):
            njit(fastmath={"nsz", "contract"}, error_model="numpy")(ns["run"])(x, out)
        outs.append(out)
    _assert_same_bits(outs[0], outs[1])
    assert not scalar_ir._supported(S.rand_truncated_normal_f64)      # a loop: not straight-line


def test_wide_vectors_reaches_the_machine_code_and_keeps_the_results():
    """wide_vectors() marks its function "prefer-vector-width"="512": where the CPU has
    AVX-512, the loop is vectorized with 512-bit registers; anywhere, the loop computes
    the same bits as without the call."""
    def body(wide):
        def run(a, out):
            if wide:
                S.wide_vectors()
            for i in range(a.shape[0]):
                out[i] = S.tanh_f32(a[i]) * S.sigmoid_f32(a[i])
        return njit(fastmath={"nsz", "contract"}, error_model="numpy")(run)
    x = inputs("tanh", np.float32)
    outs, fns = [], []
    for wide in (False, True):
        f = body(wide)
        out = np.empty_like(x)
        with np.errstate(all="ignore"):
            f(x, out)
        outs.append(out)
        fns.append(f)
    _assert_same_bits(outs[0], outs[1])
    sig = fns[1].signatures[0]
    assert '"prefer-vector-width"="512"' in fns[1].inspect_llvm(sig)
    assert '"prefer-vector-width"' not in fns[0].inspect_llvm(fns[0].signatures[0])
    if S.WIDE_VECTORS:
        assert "zmm" in fns[1].inspect_asm(sig)


def test_big_fused_loops_ask_for_wide_vectors_where_the_cpu_has_them():
    from flowjit.backends.cpu import codegen
    for n, wide in ((codegen.WIDE_MIN, S.WIDE_VECTORS), (4096, False)):
        # (a function of its own each: a traced program serves every size after its first)
        f = fj.jit(lambda a, b: fj.tanh(a * b + 1.0) * fj.sigmoid(a))
        a = np.linspace(-3, 3, n, dtype=np.float32)
        np.testing.assert_allclose(f(a, a).numpy(), np.tanh(a * a + 1) / (1 + np.exp(-a)), rtol=2e-6, atol=1e-7)
        src = f.inspect(a, a).forward_source
        assert "# fused loop" in src
        assert ("wide_vectors()" in src) == wide, n


def test_a_loop_bodys_math_kernel_asks_for_wide_vectors_from_fewer_elements():
    """A scan body's kernel runs once a step: from WIDE_MATH_MIN elements one calling
    tanh gets 512-bit vectors where the CPU has them, one of products and sums does not,
    and neither does the same tanh kernel outside a loop (below WIDE_MIN)."""
    from flowjit.backends.cpu import codegen
    rows, cols = 128, codegen.WIDE_MATH_MIN // 128
    assert rows * cols < codegen.WIDE_MIN
    rng = np.random.default_rng(0)
    c0 = rng.standard_normal((rows, cols)).astype(np.float32)
    xs = rng.standard_normal((2, rows, cols)).astype(np.float32)

    def looped(body):
        return fj.jit(lambda c, x: fj.scan(lambda c, x: (body(c, x), c), c, x)[0])
    math = looped(lambda c, x: fj.tanh(c * x + 1.0))
    plain = looped(lambda c, x: c * x + 1.0)
    once = fj.jit(lambda c, x: fj.tanh(c * x[0] + 1.0))
    want = c0.astype(np.float64)
    for x in xs:
        want = np.tanh(want * x + 1.0)
    np.testing.assert_allclose(math(c0, xs).numpy(), want, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(plain(c0, xs).numpy(), (c0 * xs[0] + 1.0) * xs[1] + 1.0, rtol=1e-6, atol=1e-6)
    for f, wide in ((math, S.WIDE_VECTORS), (plain, False), (once, False)):
        src = f.inspect(c0, xs).forward_source
        assert "# fused loop" in src
        assert ("wide_vectors()" in src) == wide, src
