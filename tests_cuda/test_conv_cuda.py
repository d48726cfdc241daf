"""conv2d, its backprops and the 2-D pools on the GPU (backends/cuda/conv_kernels.py)
against the CPU backend, tiny shapes: values and GradientTape gradients for SAME, VALID
and explicit padding, strides, dilations, NHWC and NCHW, max-pool ties and NaNs; and a
small CNN's training step whose every op runs on the device (the placement log shows
no NumPy on the host)."""
import re

import numpy as np
import pytest

import flowjit as fj

GPU = "/job:localhost/replica:0/task:0/device:GPU:0"
HOST = "NumPy on the host"
R = np.random.default_rng(11)


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


def run(device, fn, *args):
    with fj.device(device):
        return [np.asarray(t.numpy()) for t in fj.jit(fn)(*args)]


def gpu_equals_cpu(capsys, fn, *args, rtol=1e-4, atol=1e-5):
    """fn jitted on the GPU (placement logged) and on the CPU must agree; returns the
    GPU's results and the placement log, which must not show a host fallback."""
    fj.config.log_device_placement = True
    try:
        gpu = run("/gpu:0", fn, *args)
    finally:
        fj.config.log_device_placement = False
    log = capsys.readouterr().out
    assert HOST not in log, log
    cpu = run("/cpu:0", fn, *args)
    assert len(gpu) == len(cpu)
    for k, (a, b) in enumerate(zip(cpu, gpu)):
        assert a.shape == b.shape and a.dtype == b.dtype, (k, a.shape, b.shape)
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"result {k}")
    return gpu, log


def nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def on_gpu(log, *ops):
    """Each op has a kernel on the GPU: its own, or one that also runs the elementwise
    loop reading its result ("conv2d + fused loop [add relu]")."""
    for op in ops:
        assert re.search(rf"\b{op}( \+ fused loop \[[a-z_ ]+\])? -> {re.escape(GPU)} \(kernels k_", log), (op, log)


# (input NHWC, filter HWIO, strides, padding, dilations); NHWC and NCHW each
CONV = {
    "same_s1_3x3": ((2, 6, 7, 3), (3, 3, 3, 4), 1, "SAME", 1),
    "valid_s2_3x3": ((2, 6, 7, 3), (3, 3, 3, 2), 2, "VALID", 1),
    "same_s2_2x2": ((2, 5, 5, 2), (2, 2, 2, 3), 2, "SAME", 1),
    "valid_dil2_3x3": ((2, 6, 7, 2), (3, 3, 2, 3), 1, "VALID", 2),
    "same_dil2_2x2": ((2, 5, 5, 3), (2, 2, 3, 2), 1, "SAME", 2),
    "valid_s3_unused_rows": ((2, 6, 7, 2), (2, 2, 2, 3), 3, "VALID", 1),
    "same_s21_dil12": ((2, 6, 7, 2), (3, 2, 2, 3), (2, 1), "SAME", (1, 2)),
    "explicit_pads": ((2, 5, 6, 2), (3, 3, 2, 3), (2, 1), ((1, 2), (0, 1)), 1),
}


def conv_fn(strides, padding, dilations, fmt):
    if not isinstance(padding, str):     # explicit: [[0, 0], [top, bottom], [left, right], [0, 0]]
        hw = [list(p) for p in padding]
        padding = [[0, 0], [0, 0]] + hw if fmt == "NCHW" else [[0, 0]] + hw + [[0, 0]]

    def f(x, w):
        with fj.GradientTape() as tape:
            tape.watch([x, w])
            y = fj.nn.conv2d(x, w, strides, padding, data_format=fmt, dilations=dilations)
            loss = fj.reduce_sum(fj.sin(y))          # dy = cos(y): no two entries alike
        dx, dw = tape.gradient(loss, [x, w])
        return y, dx, dw
    return f


@pytest.mark.parametrize("fmt", ["NHWC", "NCHW"])
@pytest.mark.parametrize("case", list(CONV))
def test_conv2d_and_its_gradients(capsys, case, fmt):
    xs, ws, strides, padding, dilations = CONV[case]
    x, w = f32(*xs), f32(*ws)
    if fmt == "NCHW":
        x = nchw(x)
    _, log = gpu_equals_cpu(capsys, conv_fn(strides, padding, dilations, fmt), x, w)
    on_gpu(log, "conv2d", "conv2d_backprop_input", "conv2d_backprop_filter")


def test_conv2d_float64():
    x, w = R.standard_normal((2, 5, 6, 2)), R.standard_normal((3, 2, 2, 3))
    f = conv_fn(2, "SAME", 1, "NHWC")
    for a, b in zip(run("/cpu:0", f, x, w), run("/gpu:0", f, x, w)):
        assert b.dtype == np.float64
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def test_conv2d_transpose_and_second_derivatives(capsys):
    # conv2d_transpose is conv2d_backprop_input on its own; the gradient of a gradient
    # runs the backprops' gradients (conv2d and the backprops again)
    x, w, wt = f32(2, 5, 5, 2), f32(3, 3, 2, 3), f32(2, 2, 4, 3)

    def f(x, w, wt):
        y = fj.nn.conv2d_transpose(fj.nn.conv2d(x, w, 1, "SAME"), wt, [2, 10, 10, 4], 2, "SAME")
        with fj.GradientTape() as outer:
            outer.watch(w)
            with fj.GradientTape() as inner:
                inner.watch([x, w])
                loss = fj.reduce_sum(fj.square(fj.nn.conv2d(x, w, 2, "VALID")))
            dx = inner.gradient(loss, x)
            penalty = fj.reduce_sum(dx * dx)
        return y, dx, outer.gradient(penalty, w)
    _, log = gpu_equals_cpu(capsys, f, x, w, wt)
    on_gpu(log, "conv2d", "conv2d_backprop_input", "conv2d_backprop_filter")


# (input NHWC, ksize, strides, padding); NHWC and NCHW, max and avg each
POOL = {
    "2x2_s2_same": ((2, 5, 5, 3), 2, 2, "SAME"),
    "3x3_s2_same": ((2, 6, 7, 2), 3, 2, "SAME"),
    "3x3_s1_valid": ((2, 6, 7, 2), 3, 1, "VALID"),
    "2x2_s1_same": ((2, 5, 5, 2), 2, 1, "SAME"),
    "3x2_s23_valid": ((2, 7, 7, 2), (3, 2), (2, 3), "VALID"),
    "2x3_s12_same": ((2, 6, 7, 3), (2, 3), (1, 2), "SAME"),
}


def pool_fn(kind, ksize, strides, padding, fmt):
    pool = fj.nn.max_pool2d if kind == "max" else fj.nn.avg_pool2d

    def f(x):
        with fj.GradientTape() as tape:
            tape.watch(x)
            y = pool(x, ksize, strides, padding, data_format=fmt)
            loss = fj.reduce_sum(fj.sin(y))
        return y, tape.gradient(loss, x)
    return f


@pytest.mark.parametrize("fmt", ["NHWC", "NCHW"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", list(POOL))
def test_pool_and_its_gradient(capsys, case, kind, fmt):
    xs, ksize, strides, padding = POOL[case]
    x = f32(*xs)
    if fmt == "NCHW":
        x = nchw(x)
    _, log = gpu_equals_cpu(capsys, pool_fn(kind, ksize, strides, padding, fmt), x)
    on_gpu(log, f"{kind}_pool2d", f"{kind}_pool2d_grad")


def test_max_pool_gradient_goes_to_the_first_maximum(capsys):
    # small integers: overlapping windows full of ties. Integer weights keep every
    # gradient sum exact, so GPU, CPU and the NumPy reference (eager, on the host,
    # which says which element is first) must agree exactly
    x = R.integers(0, 3, (2, 6, 7, 2)).astype(np.float32)
    r = R.integers(1, 5, (2, 6, 7, 2)).astype(np.float32)

    def f(x, r):
        with fj.GradientTape() as tape:
            tape.watch(x)
            y = fj.nn.max_pool2d(x, 3, 1, "SAME")
            loss = fj.reduce_sum(y * r)
        return y, tape.gradient(loss, x)
    (y, dx), _ = gpu_equals_cpu(capsys, f, x, r, rtol=0, atol=0)
    eager = f(fj.constant(x), fj.constant(r))
    np.testing.assert_array_equal(y, eager[0].numpy())
    np.testing.assert_array_equal(dx, eager[1].numpy())
    assert (dx == 0).sum() > 0 and dx.sum() == r.sum()       # ties: each window's g to one element


def test_max_pool_nan_wins_and_takes_the_gradient(capsys):
    x = f32(2, 5, 5, 2)
    x[0, 1, 1, 0] = x[0, 2, 3, 0] = x[1, 4, 4, 1] = np.nan

    def f(x):
        with fj.GradientTape() as tape:
            tape.watch(x)
            y = fj.nn.max_pool2d(x, 2, 2, "SAME")
            loss = fj.reduce_sum(y * 3.0)          # d loss / dy = 3 even where y is NaN
        return y, tape.gradient(loss, x)
    (y, dx), _ = gpu_equals_cpu(capsys, f, x)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 1, 1, 0]) and np.isnan(y[1, 2, 2, 1])
    assert dx[0, 1, 1, 0] == 3 and dx[0, 0, 0, 0] == 0 and dx[1, 4, 4, 1] == 3   # the NaN took it


def test_avg_pool_counts_only_elements_inside_the_input():
    x = np.ones((1, 5, 5, 1), np.float32)
    f = pool_fn("avg", 3, 2, "SAME", "NHWC")
    y, dx = run("/gpu:0", f, x)
    np.testing.assert_allclose(y, np.ones((1, 3, 3, 1)), rtol=1e-6)   # padding is not averaged in
    cpu = run("/cpu:0", f, x)
    np.testing.assert_allclose(dx, cpu[1], rtol=1e-6)


# -- a small CNN's training step: conv 3x3 -> relu -> max-pool 2x2 -> dense, Adam ----------
def cnn_training(device, steps=3):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 8, 1)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 2, 1, 2]]
    with fj.device(device):
        params = [fj.Variable(rng.normal(scale=0.3, size=(3, 3, 1, 4)).astype(np.float32)),
                  fj.Variable(np.full(4, 0.1, np.float32)),
                  fj.Variable(rng.normal(scale=0.3, size=(64, 3)).astype(np.float32)),
                  fj.Variable(np.zeros(3, np.float32))]
        opt = fj.optimizers.Adam(0.01)

        @fj.jit
        def step(x, y):
            with fj.GradientTape() as tape:
                h = fj.nn.relu(fj.nn.conv2d(x, params[0], 1, "SAME") + params[1])
                h = fj.reshape(fj.nn.max_pool2d(h, 2, 2, "SAME"), [-1, 64])
                logits = h @ params[2] + params[3]
                loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits))
            opt.apply_gradients(zip(tape.gradient(loss, params), params))
            return loss

        losses = [float(step(x, y).numpy()) for _ in range(steps)]
        ins = step.inspect(x, y)
    return losses, [p.numpy() for p in params], [p.device for p in params], ins


def test_cnn_training_step_runs_every_op_on_the_gpu(capsys):
    fj.config.log_device_placement = True
    try:
        launches = fj.stats()["kernel_launches"]
        lg, wg, placed, ins = cnn_training("/gpu:0")
        launches = fj.stats()["kernel_launches"] - launches
    finally:
        fj.config.log_device_placement = False
    log = capsys.readouterr().out
    assert HOST not in log, log
    on_gpu(log, "conv2d", "max_pool2d", "max_pool2d_grad", "conv2d_backprop_filter", "matmul")
    assert "conv2d + fused loop [add relu] ->" in log      # the bias and relu in conv2d's kernel
    assert "RT_host_op" not in ins.forward_source + ins.backward_source
    assert all(p.endswith("GPU:0") for p in placed), placed
    assert launches > 0
    lc, wc, _, _ = cnn_training("/cpu:0")
    np.testing.assert_allclose(lg, lc, rtol=1e-4, atol=1e-5)
    for a, b in zip(wc, wg):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert lg[-1] < lg[0], lg
