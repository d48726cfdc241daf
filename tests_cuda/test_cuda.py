"""The CUDA backend against the CPU backend: every case of the op/gradient matrix is
jitted on "/cpu:0" and on "/gpu:0" and must agree to float tolerance; plus device
placement, GPU-resident variables, interop, errors and an MLP trained on the GPU."""
import numpy as np
import pytest

import flowjit as fj
from flowjit.backends.cuda import selftest as ST
from flowjit.backends.cuda import runtime as RT
from flowjit.frontend import device as D


@pytest.mark.parametrize("name", list(ST.CASES))
def test_gpu_equals_cpu(name):
    ST.run_case(name)


def test_training_steps_equal_cpu():
    ST.check_training()


def test_out_of_range_gather_raises_and_names_the_op():
    ST.check_bad_index()


def test_scatter_add_gradient_and_bad_index_leave_variables_unchanged():
    with fj.device("/gpu:0"):
        v = fj.Variable(np.arange(8, dtype=np.float32).reshape(4, 2))

    @fj.jit
    def step(ids):
        with fj.GradientTape() as tape:
            loss = fj.reduce_sum(fj.gather(v, ids) ** 2)
        g = tape.gradient(loss, v)
        v.assign_sub(0.1 * g)
        return g

    g = step(np.array([1, 1, 3], np.int32)).numpy()
    expect = np.zeros((4, 2), np.float32)
    base = np.arange(8, dtype=np.float32).reshape(4, 2)
    expect[1] = 4 * base[1]
    expect[3] = 2 * base[3]
    np.testing.assert_allclose(g, expect, rtol=1e-6)
    before = v.numpy()
    with pytest.raises(fj.errors.OutOfRangeError, match="out of range"):
        step(np.array([0, 4], np.int32))
    np.testing.assert_array_equal(v.numpy(), before)


def test_variables_stay_resident_and_are_updated_in_place():
    with fj.device("/gpu:0"):
        v = fj.Variable(np.ones(5, np.float32), name="resident")
    assert v.device.endswith("GPU:0")
    assert D.is_device_array(v._buf)
    buf = v._buf

    @fj.jit
    def bump(x):
        v.assign_add(x)
        return fj.reduce_sum(v)

    for _ in range(3):
        s = bump(np.full(5, 2.0, np.float32))
    assert v._buf is buf                      # same device buffer, written by the kernel
    np.testing.assert_allclose(v.numpy(), np.full(5, 7.0))
    assert float(s.numpy()) == pytest.approx(35.0)
    v.assign(np.zeros(5, np.float32))         # eager assign writes device memory
    np.testing.assert_array_equal(v.numpy(), np.zeros(5))


def test_outputs_are_gpu_tensors_and_feed_back_without_host_copy():
    f = fj.jit(lambda x: x * 2.0 + 1.0)
    with fj.device("/gpu:0"):
        y = f(np.arange(6, dtype=np.float32).reshape(2, 3))
        assert isinstance(y, fj.Tensor) and y.device.endswith("GPU:0")
        assert y._host is None                 # nothing fetched yet
        z = f(y)                               # a device input: used in place
        assert y._host is None
    np.testing.assert_allclose(z.numpy(), (np.arange(6).reshape(2, 3) * 2 + 1) * 2 + 1)
    assert z.shape == (2, 3) and z.dtype == fj.float32
    np.testing.assert_allclose(np.asarray(y + 1.0), np.arange(6).reshape(2, 3) * 2 + 2)   # eager op


def test_device_array_inputs_are_accepted():
    dev = RT.to_device(np.arange(12, dtype=np.float32).reshape(3, 4))
    f = fj.jit(lambda x: fj.reduce_sum(x, axis=1))
    out = f(dev)                               # no fj.device block: runs where the data is
    assert out.device.endswith("GPU:0")
    np.testing.assert_allclose(out.numpy(), np.arange(12).reshape(3, 4).sum(1))
    with fj.device("/cpu:0"):                  # an explicit CPU placement copies it over
        np.testing.assert_allclose(f(dev).numpy(), np.arange(12).reshape(3, 4).sum(1))


def test_signature_includes_the_device():
    f = fj.jit(lambda x: x + 1.0)
    x = np.ones(3, np.float32)
    before = fj.stats()["traces"]
    f(x)
    with fj.device("/gpu:0"):
        f(x)
        f(x)
    f(x)
    assert fj.stats()["traces"] - before == 2


def test_batch_size_change_does_not_recompile_on_gpu():
    f = fj.jit(lambda x: fj.nn.softmax(x * 3.0))
    with fj.device("/gpu:0"):
        f(np.ones((4, 3), np.float32))
        before = fj.stats()["traces"]
        out = f(np.zeros((7, 3), np.float32))
    assert fj.stats()["traces"] == before
    np.testing.assert_allclose(out.numpy(), np.full((7, 3), 1 / 3), rtol=1e-6)


def test_log_device_placement_prints_each_kernel(capsys):
    f = fj.jit(lambda a, b: fj.nn.relu(a @ b) + 1.0)
    fj.config.log_device_placement = True
    try:
        with fj.device("/gpu:0"):
            f(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32))
            g = fj.jit(lambda a, b: (a @ b, fj.exp(a)))
            g(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32))
    finally:
        fj.config.log_device_placement = False
    out = capsys.readouterr().out
    # the relu and add run in the matmul's kernel (its only reader); a returned product
    # is a matmul of its own, the exp a fused loop
    assert "step 0: matmul + fused loop [relu add] -> /job:localhost/replica:0/task:0/device:GPU:0 (kernels k_" in out
    assert "matmul -> /job:localhost/replica:0/task:0/device:GPU:0 (kernels k_" in out
    assert "fused loop [exp] -> /job:localhost/replica:0/task:0/device:GPU:0" in out


def test_list_devices_and_missing_gpu(monkeypatch):
    assert [d.kind for d in fj.list_devices()][:2] == ["CPU", "GPU"]
    monkeypatch.setattr(D, "_gpu_count", lambda: 0)
    with pytest.raises(fj.errors.DeviceError, match="no CUDA GPU"):
        with fj.device("/gpu:0"):
            pass


def test_opaque_op_without_cuda_kernel_runs_on_host(monkeypatch):
    from flowjit.backends.cuda import kernels as K
    monkeypatch.delitem(K.LOWERINGS, "argmax")
    f = fj.jit(lambda x: fj.argmax(x * 1.0, axis=1))
    x = np.array([[1, 5, 2], [7, 0, 1]], np.float32)
    with fj.device("/gpu:0"):
        out = f(x)
    np.testing.assert_array_equal(out.numpy(), [1, 0])


def test_mlp_trained_with_jit_tape_and_optimizer_on_gpu():
    """What `examples/mlp_digits.py --device gpu` does: model and optimizer built inside
    `with fj.device("/gpu:0")`, @fj.jit step with GradientTape + Adam; the loss falls."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 8)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[(x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)]
    with fj.device("/gpu:0"):
        w1 = fj.Variable(fj.random.truncated_normal((8, 16), stddev=0.3, seed=1))
        b1 = fj.Variable(fj.zeros((16,)))
        w2 = fj.Variable(fj.random.truncated_normal((16, 3), stddev=0.3, seed=2))
        b2 = fj.Variable(fj.zeros((3,)))
        params = [w1, b1, w2, b2]
        opt = fj.optimizers.Adam(0.1)

        @fj.jit
        def train_step(x, y):
            with fj.GradientTape() as tape:
                logits = fj.nn.relu(x @ w1 + b1) @ w2 + b2
                loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits))
            opt.apply_gradients(zip(tape.gradient(loss, params), params))
            return loss

        @fj.jit
        def accuracy(x, y):
            hit = fj.equal(fj.argmax(fj.nn.relu(x @ w1 + b1) @ w2 + b2, 1), fj.argmax(y, 1))
            return fj.reduce_mean(fj.cast(hit, fj.float32))

        losses = [float(train_step(x, y).numpy()) for _ in range(12)]
        acc = float(accuracy(x, y).numpy())
    assert all(p.device.endswith("GPU:0") for p in params)
    assert losses[-1] < 0.5 * losses[0], losses
    assert acc > 0.8


def test_in_place_update_in_a_group_with_two_reduction_axes():
    # one loop group: the variable's new value (written over its buffer) and two
    # reductions over different axes, i.e. two kernels that both read the old value
    with fj.device("/gpu:0"):
        v = fj.Variable(np.arange(12, dtype=np.float32).reshape(3, 4))

    @fj.jit
    def step():
        new = v * 2.0
        v.assign(new)
        return fj.reduce_sum(new, axis=0), fj.reduce_sum(new, axis=1)

    a, b = step()
    base = np.arange(12, dtype=np.float32).reshape(3, 4) * 2
    np.testing.assert_allclose(a.numpy(), base.sum(0))
    np.testing.assert_allclose(b.numpy(), base.sum(1))
    np.testing.assert_allclose(v.numpy(), base)
    with fj.device("/gpu:0"):
        src = step.inspect().forward_source
    assert src.count("(column reduction)") + src.count("(row reduction)") == 2
