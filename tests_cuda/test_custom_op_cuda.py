"""fj.custom_op on the GPU: an elementwise op fuses into CUDA kernels as a device
function; an opaque op with a cuda_kernel launches it on the device, one without runs
its reference on the host, and the placement log says so."""
import math

import numpy as np
import pytest
from numba import cuda

import flowjit as fj

GPU = "/job:localhost/replica:0/task:0/device:GPU:0"


def _softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def _segsum(x, seg, out, num):
    for i in range(num):
        out[i] = 0
    for i in range(x.shape[0]):
        out[seg[i]] += x[i]


softplus = fj.custom_op("gpu_softplus", shape_fn=lambda s, d: (s[0], d[0]), cpu_kernel=_softplus,
                        elementwise=True, grad=lambda i, o, g: [g * fj.sigmoid(i[0])])
segsum = fj.custom_op("gpu_segsum", shape_fn=lambda s, d, num: ((num,), d[0]), cpu_kernel=_segsum,
                      grad=lambda i, o, g, num: [fj.gather(g, i[1]), None])


def _segsum_cuda(x, seg, out, num):
    j = cuda.grid(1)
    if j < num:
        acc = 0.0
        for i in range(x.shape[0]):
            if seg[i] == j:
                acc += x[i]
        out[j] = acc


def _segsum_ref(x, seg, num):
    return np.bincount(seg, weights=x, minlength=num).astype(x.dtype)


segsum_k = fj.custom_op("gpu_segsum_k", shape_fn=lambda s, d, num: ((num,), d[0]), cpu_kernel=_segsum,
                        cuda_kernel=_segsum_cuda, reference=_segsum_ref,
                        grad=lambda i, o, g, num: [fj.gather(g, i[1]), None])


# a row-wise cumulative sum times `scale`, and the reversed one (its gradient)
def _cumsum_rows(x, out, scale):
    for r in range(x.shape[0]):
        acc = 0.0
        for c in range(x.shape[1]):
            acc += x[r, c]
            out[r, c] = acc * scale


def _cumsum_rows_cuda(x, out, scale):
    t = cuda.grid(1)
    if t < out.size:
        r, c = t // out.shape[1], t % out.shape[1]
        acc = 0.0
        for k in range(c + 1):
            acc += x[r, k]
        out[r, c] = acc * scale


def _rcumsum_rows(x, out, scale):
    for r in range(x.shape[0]):
        acc = 0.0
        for c in range(x.shape[1] - 1, -1, -1):
            acc += x[r, c]
            out[r, c] = acc * scale


def _rcumsum_rows_cuda(x, out, scale):
    t = cuda.grid(1)
    if t < out.size:
        r, c = t // out.shape[1], t % out.shape[1]
        acc = 0.0
        for k in range(c, out.shape[1]):
            acc += x[r, k]
        out[r, c] = acc * scale


def _rcumsum_ref(x, scale):
    return (scale * np.cumsum(x[:, ::-1], axis=1)[:, ::-1]).astype(x.dtype)


def _same(s, d, scale):
    return s[0], d[0]


rcumsum = fj.custom_op("gpu_rcumsum_rows", shape_fn=_same, cpu_kernel=_rcumsum_rows,
                       cuda_kernel=_rcumsum_rows_cuda, reference=_rcumsum_ref)
cumsum = fj.custom_op("gpu_cumsum_rows", shape_fn=_same, cpu_kernel=_cumsum_rows,
                      cuda_kernel=_cumsum_rows_cuda,
                      reference=lambda x, scale: (scale * np.cumsum(x, axis=1)).astype(x.dtype),
                      grad=lambda i, o, g, scale: [rcumsum(g, scale=scale)])

X = np.array([-3.0, -0.5, 0.0, 2.0, 40.0], np.float32)
SEG = np.array([0, 1, 0, 2, 1], np.int32)
M = np.array([[1.0, -2.0, 0.5, 3.0], [0.0, 4.0, -1.5, 2.0], [2.5, 1.0, 1.0, -3.0]], np.float32)
W = np.array([[0.5, 1.0, -1.0, 2.0], [3.0, -0.5, 1.5, 1.0], [-2.0, 0.25, 1.0, 4.0]], np.float32)


def _on_gpu(fn, *args):
    """fn's result under jit on the GPU, with the placement log on (it prints to stdout)."""
    fj.config.log_device_placement = True
    try:
        with fj.device("/gpu:0"):
            return np.asarray(fj.jit(fn)(*args).numpy())
    finally:
        fj.config.log_device_placement = False


def _launches():
    return fj.stats()["kernel_launches"]


def _both(fn, *args):
    outs = []
    for dev in ("/cpu:0", "/gpu:0"):
        with fj.device(dev):
            outs.append(np.asarray(fj.jit(fn)(*args).numpy()))
    return outs


def test_elementwise_custom_op_fuses_on_the_gpu(capsys):
    fj.config.log_device_placement = True
    try:
        cpu, gpu = _both(lambda x: fj.reduce_sum(softplus(x * 2.0) + 1.0), X)
    finally:
        fj.config.log_device_placement = False
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5)
    log = capsys.readouterr().out
    assert "fused loop [multiply gpu_softplus add reduce_sum] -> /job:localhost/replica:0/task:0/device:GPU:0" in log


def test_opaque_custom_op_and_gradients_on_the_gpu(capsys):
    fj.config.log_device_placement = True
    try:
        cpu, gpu = _both(lambda x, s: segsum(softplus(x), s, num=3), X, SEG)
    finally:
        fj.config.log_device_placement = False
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5)
    assert "gpu_segsum (no CUDA kernel: NumPy on the host)" in capsys.readouterr().out
    cpu, gpu = _both(fj.grad(lambda x, s: fj.reduce_sum(segsum(softplus(x), s, num=3) ** 2)), X, SEG)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5)


def test_opaque_custom_op_launches_its_cuda_kernel(capsys):
    gpu = _on_gpu(lambda x, s: segsum_k(x * 2.0, s, num=3), X, SEG)
    log = capsys.readouterr().out
    np.testing.assert_allclose(gpu, _segsum_ref(X * 2.0, SEG, 3), rtol=1e-6)
    assert f"gpu_segsum_k -> {GPU} (kernels k_" in log
    assert "no CUDA kernel" not in log


def test_the_launch_is_counted_and_the_host_fallback_launches_nothing():
    with fj.device("/gpu:0"):
        on_gpu = fj.jit(lambda x, s: segsum_k(x, s, num=3))
        on_host = fj.jit(lambda x, s: segsum(x, s, num=3))
        on_gpu(X, SEG), on_host(X, SEG)                  # compiled
        before = _launches()
        np.testing.assert_allclose(on_gpu(X, SEG).numpy(), _segsum_ref(X, SEG, 3), rtol=1e-6)
        after_gpu = _launches()
        np.testing.assert_allclose(on_host(X, SEG).numpy(), _segsum_ref(X, SEG, 3), rtol=1e-6)
    assert (after_gpu - before, _launches() - after_gpu) == (1, 0)


@pytest.mark.parametrize("scale", [0.5, -2.0])
def test_attributes_reach_the_kernel_and_arrays_have_their_logical_shape(scale, capsys):
    gpu = _on_gpu(lambda x: cumsum(x, scale=scale), M)
    log = capsys.readouterr().out
    np.testing.assert_allclose(gpu, scale * np.cumsum(M, axis=1), rtol=1e-6)
    assert f"gpu_cumsum_rows -> {GPU} (kernels k_" in log


def test_gradient_through_cuda_kernels(capsys):
    loss = fj.grad(lambda x, w: fj.reduce_sum(cumsum(x, scale=0.5) * w))
    gpu = _on_gpu(loss, M, W)
    log = capsys.readouterr().out
    np.testing.assert_allclose(gpu, _rcumsum_ref(W, 0.5), rtol=1e-6)     # d/dx of sum(0.5 cumsum(x) w)
    np.testing.assert_allclose(gpu, _both(loss, M, W)[0], rtol=1e-6)
    assert f"gpu_rcumsum_rows -> {GPU} (kernels k_" in log
    assert "no CUDA kernel" not in log


def _takes_no_scale(x, out):
    pass


bad = fj.custom_op("gpu_bad_params", shape_fn=_same, cpu_kernel=_cumsum_rows, cuda_kernel=_takes_no_scale)


def test_a_cuda_kernel_without_the_attributes_parameters_is_a_compile_error():
    with fj.device("/gpu:0"), pytest.raises(fj.errors.CompileError, match="gpu_bad_params.*scale"):
        fj.jit(lambda x: bad(x, scale=1.0))(M)
