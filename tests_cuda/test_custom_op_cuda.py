"""fj.custom_op on the GPU: an elementwise op fuses into CUDA kernels as a device
function; an opaque op runs its reference on the host, and the placement log says so."""
import math

import numpy as np

import flowjit as fj


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
X = np.array([-3.0, -0.5, 0.0, 2.0, 40.0], np.float32)
SEG = np.array([0, 1, 0, 2, 1], np.int32)


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
