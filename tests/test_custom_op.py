"""fj.custom_op: a user's op through the same registry as the built-ins (SPEC "custom ops")."""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import flowjit as fj
from flowjit.errors import CompileError, ShapeError


def same_shape(shapes, dtypes):
    return shapes[0], dtypes[0]


def softplus_kernel(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def softplus_ref(x):
    return np.logaddexp(0, x).astype(x.dtype)


softplus = fj.custom_op("test_softplus", shape_fn=same_shape, cpu_kernel=softplus_kernel,
                        grad=lambda ins, out, g: [g * fj.sigmoid(ins[0])], elementwise=True)


def scaled_kernel(x, y, scale):
    return (x - y) * scale


scaled_diff = fj.custom_op(          # x has the full shape, y broadcasts against it
    "test_scaled_diff", elementwise=True, cpu_kernel=scaled_kernel,
    shape_fn=lambda shapes, dtypes, scale: (shapes[0], dtypes[0]),
    grad=lambda ins, out, g, scale: [g * scale, -g * scale])


def segment_sum_kernel(x, seg, out, num):
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = 0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[seg[i], j] += x[i, j]


def segment_sum_ref(x, seg, num):
    out = np.zeros((num, x.shape[1]), x.dtype)
    np.add.at(out, seg, x)
    return out


segment_sum = fj.custom_op(
    "test_segment_sum", cpu_kernel=segment_sum_kernel, reference=segment_sum_ref,
    shape_fn=lambda shapes, dtypes, num: ((num, shapes[0][1]), dtypes[0]),
    grad=lambda ins, out, g, num: [fj.gather(g, ins[1]), None])

X = np.array([-30.0, -3.0, -0.5, 0.0, 0.5, 2.0, 40.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_custom_op_eager_and_jit_match_numpy(dtype):
    x = X.astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(softplus(x).numpy(), softplus_ref(x), rtol=tol)
    out = fj.jit(lambda x: softplus(x * 2.0) - 1.0)(x)
    assert out.dtype.np == dtype
    np.testing.assert_allclose(out.numpy(), softplus_ref(x * 2) - 1, rtol=tol, atol=tol)


def test_elementwise_custom_op_fuses_into_one_loop():
    f = fj.jit(lambda x: fj.reduce_sum(softplus(x * 2.0) + 1.0))
    x = X.astype(np.float32)
    np.testing.assert_allclose(float(f(x)), np.sum(softplus_ref(x * 2) + 1), rtol=1e-6)
    ins = f.inspect(x)
    assert ins.num_fused_loops == 1 and ins.steps == ["loop"], ins.fusion_groups
    assert "test_softplus" in ins.fusion_groups


def test_elementwise_custom_op_with_attributes_and_broadcasting():
    x, y = np.arange(6.0).reshape(2, 3), np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(scaled_diff(x, y, scale=0.5).numpy(), (x - y) * 0.5)
    f = fj.jit(lambda x, y: scaled_diff(x, y, scale=2.0))
    np.testing.assert_allclose(f(x, y).numpy(), (x - y) * 2.0)
    g = fj.jit(fj.grad(lambda x, y: fj.reduce_sum(scaled_diff(x, y, scale=2.0) ** 2), argnums=(0, 1)))
    gx, gy = g(x, y)
    np.testing.assert_allclose(gx.numpy(), 8 * (x - y))
    np.testing.assert_allclose(gy.numpy(), -8 * (x - y).sum(0))


def _finite_difference(f, x, eps=1e-6):
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        out[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return out


def test_elementwise_custom_op_gradient_matches_finite_differences():
    x = X[1:-1].copy()
    loss = lambda x: fj.reduce_sum(softplus(x) * fj.constant(np.arange(1.0, 6.0)))
    analytic = fj.jit(fj.grad(loss))(x).numpy()
    numeric = _finite_difference(lambda v: float(loss(v)), x)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fj.grad(loss)(x).numpy(), analytic, rtol=1e-12)


def test_opaque_custom_op_runs_its_kernel_under_jit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3))
    seg = np.array([0, 2, 0, 1, 2, 2], np.int32)
    np.testing.assert_allclose(segment_sum(x, seg, num=3).numpy(), segment_sum_ref(x, seg, 3))
    f = fj.jit(lambda x, s: segment_sum(fj.tanh(x), s, num=4) * 2.0)
    np.testing.assert_allclose(f(x, seg).numpy(), 2 * segment_sum_ref(np.tanh(x), seg, 4), rtol=1e-12)
    assert "test_segment_sum" in f.inspect(x, seg).fusion_groups


def test_opaque_custom_op_gradient_matches_finite_differences_under_jit():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 2))
    seg = np.array([1, 0, 1, 2, 0], np.int32)
    w = rng.standard_normal((3, 2))
    loss = lambda x, s: fj.reduce_sum(segment_sum(fj.sin(x), s, num=3) * w)
    analytic = fj.jit(fj.grad(loss))(x, seg).numpy()
    numeric = _finite_difference(lambda v: float(loss(v, seg)), x)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_custom_op_in_a_tf1_program():
    import flowjit.compat.v1 as tf
    with tf.Graph().as_default():
        x = tf.placeholder(tf.float32, [None])
        w = tf.Variable(tf.ones([4]))
        y = tf.reduce_sum(softplus(x * w))
        assert softplus(x).op.type == "test_softplus"
        train = tf.train.GradientDescentOptimizer(0.1).minimize(y)
        xv = np.array([-3.0, -0.5, 0.0, 2.0], np.float32)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            np.testing.assert_allclose(sess.run(y, {x: xv}), softplus_ref(xv).sum(), rtol=1e-6)
            sess.run(train, {x: xv})
            expected = 1 - 0.1 * xv / (1 + np.exp(-xv))
            np.testing.assert_allclose(sess.run(w), expected, rtol=1e-6)


def test_a_bad_shape_function_names_the_op_and_the_line():
    bad = fj.custom_op("test_bad_shape", shape_fn=lambda shapes, dtypes: (shapes[3], dtypes[0]),
                       cpu_kernel=softplus_kernel, elementwise=True)
    for run in (bad, fj.jit(lambda x: bad(x) + 1.0)):
        with pytest.raises(ShapeError) as e:
            run(np.ones(3, np.float32))
        msg = str(e.value)
        assert "test_bad_shape" in msg and "IndexError" in msg and "test_custom_op.py" in msg
        assert "(3,)" in msg
    nonsense = fj.custom_op("test_shape_not_a_pair", shape_fn=lambda shapes, dtypes: 7,
                            cpu_kernel=softplus_kernel, elementwise=True)
    with pytest.raises(TypeError, match="must return \\(shape, dtype\\)"):
        nonsense(np.ones(3, np.float32))


def test_a_kernel_numba_cannot_compile_names_the_op():
    def kernel(x):
        return not_defined_anywhere(x)  # noqa: F821
    bad = fj.custom_op("test_bad_kernel", shape_fn=same_shape, cpu_kernel=kernel, elementwise=True)
    with pytest.raises(CompileError, match=r"custom op 'test_bad_kernel'.*test_custom_op.py"):
        fj.jit(lambda x: bad(x) * 2.0)(np.ones(3, np.float32))


def test_registration_errors():
    with pytest.raises(ValueError, match="already registered"):
        fj.custom_op("exp", shape_fn=same_shape, cpu_kernel=softplus_kernel, elementwise=True)
    with pytest.raises(ValueError, match="identifier"):
        fj.custom_op("not a name", shape_fn=same_shape, cpu_kernel=softplus_kernel)
    with pytest.raises(TypeError, match="attribute"):
        scaled_diff(np.ones(2), np.ones(2), scale=[1, 2])
    wrong = fj.custom_op("test_wrong_grad", shape_fn=same_shape, cpu_kernel=softplus_kernel,
                         elementwise=True, grad=lambda ins, out, g: [g, g])
    with pytest.raises(ValueError, match="2 cotangents for 1 inputs"):
        fj.grad(lambda x: fj.reduce_sum(wrong(x)))(np.ones(2))


CACHE_CHILD = textwrap.dedent("""
    import math, sys
    import numpy as np
    import flowjit as fj

    def kernel(x):
        return math.log1p(math.exp(-abs(x))) + max(x, 0.0) + OFFSET

    def seg_kernel(x, seg, out, num):
        for i in range(num):
            out[i] = 0
        for i in range(x.shape[0]):
            out[seg[i]] += x[i]

    sp = fj.custom_op("cached_softplus", shape_fn=lambda s, d: (s[0], d[0]), cpu_kernel=kernel,
                      elementwise=True, grad=lambda i, o, g: [g * fj.sigmoid(i[0])])
    seg = fj.custom_op("cached_segsum", shape_fn=lambda s, d, num: ((num,), d[0]),
                       cpu_kernel=seg_kernel, grad=lambda i, o, g, num: [fj.gather(g, i[1]), None])
    x = np.linspace(-2, 2, 7).astype(np.float32)
    s = np.array([0, 1, 0, 1, 2, 2, 0], np.int32)
    f = fj.jit(lambda x, s: fj.reduce_sum(seg(sp(x) * 2.0, s, num=3)))
    g = fj.jit(fj.grad(lambda x, s: fj.reduce_sum(seg(sp(x), s, num=3) ** 2)))
    print("RESULT", float(f(x, s)), g(x, s).numpy().sum(), "COMPILES", fj.stats()["compiles"])
""")


def test_custom_ops_survive_the_disk_cache(tmp_path):
    env = dict(os.environ, FLOWJIT_CACHE_DIR=str(tmp_path / "cache"))

    def run(offset):
        src = CACHE_CHILD.replace("OFFSET", offset)
        out = subprocess.run([sys.executable, "-c", src], env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")][0].split()
        return float(line[1]), float(line[2]), int(line[4])

    first = run("0.0")
    assert first[2] > 0
    second = run("0.0")
    assert second[:2] == first[:2] and second[2] == 0      # a second process compiles nothing
    edited = run("1.0")                                    # an edited kernel is compiled anew
    assert edited[2] > 0 and edited[0] == pytest.approx(first[0] + 2 * 7, rel=1e-5)
