"""GPU checks without pytest: every case runs jitted on "/cpu:0" and on "/gpu:0" and
the results must agree to float tolerance.

    python -m flowjit.backends.cuda.selftest          # on a machine with a GPU
    NUMBA_ENABLE_CUDASIM=1 python -m flowjit.backends.cuda.selftest   # simulator

The same cases are the body of the pytest suite in tests_cuda/ (which adds the
placement, error and training tests). Shapes are tiny so the simulator stays fast.
"""
import sys
import time
import traceback

import numpy as np

import flowjit as fj

R = np.random.default_rng(7)


def f32(*shape, lo=-2.0, hi=2.0):
    return R.uniform(lo, hi, shape).astype(np.float32)


def f64(*shape):
    return R.uniform(-2.0, 2.0, shape)


# -- cases: name -> (function, inputs); each function is jitted once per device ----------
def _unary(x):
    a = fj.abs(x) + 0.5
    return [fj.exp(x), fj.log(a), fj.sqrt(a), fj.rsqrt(a), fj.tanh(x), fj.sigmoid(x), fj.sin(x),
            fj.cos(x), fj.floor(x), fj.ceil(x), fj.abs(x), fj.sign(x), -x, fj.square(x),
            fj.expm1(x), fj.log1p(a), fj.nn.relu(x), fj.nn.elu(x), fj.nn.leaky_relu(x),
            fj.nn.relu6(x * 4.0)]


def _binary(x, y):
    return [x + y, x - y, x * y, x / y, fj.pow(fj.abs(x) + 0.1, y), fj.maximum(x, y),
            fj.minimum(x, y), fj.floordiv(x, y), fj.floormod(x, y),
            fj.cast(x < y, fj.float32), fj.where(x > y, x, y * 2.0),
            fj.cast(fj.logical_and(x > 0.0, y > 0.0), fj.int32), fj.clip_by_value(x, -0.5, 0.5)]


def _ints(i, j):
    return [i + j, i * j, i - j, fj.maximum(i, j), i // (fj.abs(j) + 1), fj.cast(i, fj.float32) * 0.5,
            fj.reduce_sum(i, axis=1), fj.reduce_max(j), fj.argmax(fj.cast(i, fj.float32), axis=1)]


def _reductions(x):
    out = []
    for axis in (None, 0, 1, 2, (0, 2), (1, 2)):
        for kd in (False, True):
            out.append(fj.reduce_sum(x, axis=axis, keepdims=kd))
        out.append(fj.reduce_mean(x, axis=axis))
        out.append(fj.reduce_max(x, axis=axis, keepdims=True))
        out.append(fj.reduce_min(x, axis=axis))
    out += [fj.reduce_prod(x * 0.5, axis=1), fj.argmax(x, axis=2), fj.argmin(x, axis=0)]
    return out


def _two_axis_sets(x):
    e = fj.exp(x)
    return [fj.reduce_sum(e, axis=0), fj.reduce_sum(e, axis=1), e * 2.0]


def _long_row(x):                  # one row longer than a block: split + final pass
    return [fj.reduce_sum(x), fj.reduce_max(x), fj.reduce_sum(x * x, axis=1)]


def _rowwise(logits, labels, ids):
    return [fj.nn.softmax(logits), fj.nn.log_softmax(logits),
            fj.nn.softmax_cross_entropy_with_logits(labels, logits),
            fj.nn.sparse_softmax_cross_entropy_with_logits(ids, logits),
            fj.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits),
            fj.nn.l2_loss(logits)]


def _matmul(a, b, bt, c3, d3, d1):
    return [a @ b, fj.matmul(a, bt, transpose_b=True), fj.matmul(b, a, transpose_a=True, transpose_b=True),
            fj.matmul(b, fj.transpose(a), transpose_a=True),
            c3 @ d3, fj.matmul(c3, d1), fj.nn.relu(a @ b + 1.0)]


def _big_matmul(a, b, at):
    return [a @ b, fj.matmul(at, b, transpose_a=True)]


def _big_matmul_inputs():
    """Sizes that take runtime.matmul's big tiles on this device (the simulator's
    thresholds are small; a GPU's need enough 128x128 tiles to fill it twice)."""
    from . import runtime as RT
    m, k = (40, 36) if RT.SIM else (2304, 256)
    a = f32(m, k, lo=-0.1, hi=0.1)
    return [a, f32(k, m + 8, lo=-0.1, hi=0.1), np.ascontiguousarray(a.T)]


def _sampling(x, w, b, labels, keys):
    """Sampling ops without elementwise form: argsort (shuffle; NaN keys sort last, ties
    keep their order), the candidate samplers, and the losses built on them."""
    ids, true_ec, sampled_ec = fj.nn.log_uniform_candidate_sampler(labels, 1, 6, True, 12, seed=3)
    uids, _, uec = fj.nn.uniform_candidate_sampler(labels, 1, 5, False, 7, seed=4)
    h = fj.tanh(x)
    with fj.GradientTape() as tape:
        tape.watch([w, h])
        nce = fj.reduce_mean(fj.nn.nce_loss(w, b, labels, h, 4, 12, seed=5))
        ssm = fj.reduce_mean(fj.nn.sampled_softmax_loss(w, b, labels, h, 4, 12, seed=6))
        loss = nce + ssm
    return [fj.random.shuffle(x, seed=7), fj.random.shuffle_with_keys(x[:, 0], keys), ids, true_ec,
            sampled_ec, uids, uec, nce, ssm] + tape.gradient(loss, [w, h])


def _sampling_inputs():
    keys = np.array([0.5, np.nan, -1.0, 0.5, 2.0, np.nan, -1.0], np.float64)
    return [f32(7, 3), f32(12, 3), f32(12), R.integers(0, 12, (7, 1)).astype(np.int64), keys]


def _int_pow(i, e):
    return [i ** e, (i + 1) ** (e * 2)]


def _int_matmul(i, j):
    return [i @ j]


def _shapes(x, y):
    return [fj.transpose(x, (2, 0, 1)), x[:, 1:, ::2], x[1, :, 2], fj.pad(y, [[1, 2], [0, 1]]),
            fj.pad(y, [[1, 1], [2, 2]], mode="REFLECT"), fj.concat([y, y * 2.0], axis=1),
            fj.stack([y, y], axis=0), fj.split(y, 2, axis=1)[1], fj.tile(y, [2, 1]),
            fj.reshape(x, (6, 4)) * 2.0, fj.expand_dims(y, 1) + 1.0, fj.transpose(y) + y[0, 0],
            y[::-1, ::-2]]


def _gather(p, idx, idx2):
    return [fj.gather(p, idx), fj.gather(p, idx2, axis=1), fj.one_hot(idx, 5), p[:, 2]]


def _random(x):
    return [fj.random.normal((5, 3), seed=3) + x, fj.random.uniform((5, 3), seed=4),
            fj.random.truncated_normal((5, 3), seed=5), fj.nn.dropout(x, 0.5, seed=6)]


def _grads(x, w, b, labels, ids):
    with fj.GradientTape() as tape:
        tape.watch([x, w, b])
        h = fj.tanh(x @ w + b)
        z = fj.concat([h, fj.sigmoid(h)], axis=1)
        loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(labels, z[:, :4])) + \
            fj.reduce_sum(fj.gather(fj.exp(z), ids)) * 0.1 + fj.reduce_max(fj.abs(x)) + \
            fj.reduce_prod(fj.pad(b, [[1, 0]], constant_values=1.0) * 0.9)
    return [loss] + list(tape.gradient(loss, [x, w, b]))


def _grads64(x, y):
    with fj.GradientTape() as tape:
        tape.watch([x, y])
        loss = fj.reduce_sum(fj.log1p(fj.exp(x * y)) / (1.0 + y * y) + fj.sqrt(fj.abs(x) + 1.0))
    return [loss] + list(tape.gradient(loss, [x, y]))


def _conv_pool(x, w):
    # every conv and pool op and gradient (conv_kernels.py): SAME/VALID, strides,
    # a dilation, NCHW
    with fj.GradientTape() as tape:
        tape.watch([x, w])
        y = fj.nn.relu(fj.nn.conv2d(x, w, 2, "SAME"))
        z = fj.nn.conv2d(fj.transpose(x, (0, 3, 1, 2)), w, 1, "VALID", data_format="NCHW", dilations=2)
        m = fj.nn.max_pool2d(y, 3, 2, "SAME")
        a = fj.nn.avg_pool2d(z, 2, 1, "VALID", data_format="NCHW")
        loss = fj.reduce_sum(m * m) + fj.reduce_sum(fj.sin(a))
    # a bias and relu that only read the convolution: they run in conv2d's kernel
    e = fj.nn.relu(fj.nn.conv2d(x, w, 1, "SAME") + 0.1)
    return [y, z, m, a, loss, e] + list(tape.gradient(loss, [x, w]))


CASES = {
    "unary": (_unary, lambda: [f32(3, 5)]),
    "unary_f64": (_unary, lambda: [f64(3, 5)]),
    "binary_broadcast": (_binary, lambda: [f32(3, 4), f32(4, lo=0.5, hi=2.0)]),
    "ints": (_ints, lambda: [R.integers(-5, 5, (3, 4)).astype(np.int32),
                             R.integers(-5, 5, (3, 4)).astype(np.int32)]),
    "reductions": (_reductions, lambda: [f32(3, 4, 5)]),
    "two_axis_sets": (_two_axis_sets, lambda: [f32(4, 6)]),
    "long_row": (_long_row, lambda: [f32(1, 150)]),
    "rowwise_losses": (_rowwise, lambda: [f32(4, 5), np.eye(5, dtype=np.float32)[[0, 3, 1, 4]],
                                          np.array([0, 3, 1, 4], np.int32)]),
    "matmul": (_matmul, lambda: [f32(5, 7), f32(7, 6), f32(6, 7), f32(3, 5, 7), f32(3, 7, 2), f32(7, 4)]),
    "matmul_big_tiles": (_big_matmul, _big_matmul_inputs),
    "sampling": (_sampling, _sampling_inputs),
    "int_pow": (_int_pow, lambda: [R.integers(-3, 4, (3, 4)).astype(np.int64),
                                   R.integers(0, 4, (3, 4)).astype(np.int64)]),
    "matmul_int": (_int_matmul, lambda: [R.integers(-3, 3, (2, 4, 3)).astype(np.int64),
                                         R.integers(-3, 3, (2, 3, 5)).astype(np.int64)]),
    "shapes": (_shapes, lambda: [f32(2, 3, 4), f32(4, 6)]),
    "gather": (_gather, lambda: [f32(4, 5), np.array([3, 0, 3, 1], np.int32), np.array([[4, 0], [1, 1]], np.int64)]),
    "random": (_random, lambda: [f32(5, 3)]),
    "gradients": (_grads, lambda: [f32(4, 3), f32(3, 4), f32(4), np.eye(4, dtype=np.float32)[[1, 0, 3, 2]],
                                   np.array([2, 0, 2], np.int32)]),
    "gradients_f64": (_grads64, lambda: [f64(3, 4), f64(4)]),
    "conv_pool": (_conv_pool, lambda: [f32(2, 6, 7, 3), f32(3, 3, 3, 4)]),
}


def tolerance(dtype):
    return (1e-4, 1e-5) if dtype == np.float32 else (1e-10, 1e-12)


def compare(name, cpu, gpu):
    assert len(cpu) == len(gpu), name
    for k, (a, b) in enumerate(zip(cpu, gpu)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, (name, k, a.shape, b.shape, a.dtype, b.dtype)
        if a.dtype.kind in "biu":
            np.testing.assert_array_equal(b, a, err_msg=f"{name}[{k}]")
        else:
            rtol, atol = tolerance(a.dtype)
            np.testing.assert_allclose(b, a, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{name}[{k}]")


def run_case(name):
    fn, make = CASES[name]
    inputs = make()
    jf = fj.jit(fn)
    with fj.device("/cpu:0"):
        cpu = [t.numpy() for t in jf(*inputs)]
    with fj.device("/gpu:0"):
        out = jf(*inputs)
        assert all(t.device.endswith("GPU:0") for t in out), name
        gpu = [t.numpy() for t in out]
    compare(name, cpu, gpu)


# -- training: an MLP with GPU-resident variables, one step at a time -----------------
def mlp_training(device, steps=3, opt="adam", batch=8, sizes=(12, 16, 5)):
    """Loss per step and final weights of an MLP trained on `device` (fixed data)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, sizes[0])).astype(np.float32)
    y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], batch)]
    with fj.device(device):
        params = []
        for k, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
            params.append(fj.Variable(rng.normal(scale=0.3, size=(m, n)).astype(np.float32), name=f"w{k}"))
            params.append(fj.Variable(np.zeros(n, np.float32), name=f"b{k}"))
        optimizer = fj.optimizers.Adam(0.01) if opt == "adam" else fj.optimizers.SGD(0.1, momentum=0.9)

        @fj.jit
        def step(x, y):
            with fj.GradientTape() as tape:
                h = x
                for k in range(0, len(params) - 2, 2):
                    h = fj.nn.relu(h @ params[k] + params[k + 1])
                logits = h @ params[-2] + params[-1]
                loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits))
            optimizer.apply_gradients(zip(tape.gradient(loss, params), params))
            return loss

        losses = [float(step(x, y).numpy()) for _ in range(steps)]
        placed = [p.device for p in params]
    return losses, [p.numpy() for p in params], placed


def check_training():
    for opt in ("adam", "sgd"):
        lc, wc, _ = mlp_training("/cpu:0", opt=opt)
        lg, wg, placed = mlp_training("/gpu:0", opt=opt)
        assert all(p.endswith("GPU:0") for p in placed), placed
        np.testing.assert_allclose(lg, lc, rtol=1e-4, atol=1e-5)
        for a, b in zip(wc, wg):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def check_bad_index():
    jf = fj.jit(lambda p, i: fj.gather(p, i))
    with fj.device("/gpu:0"):
        try:
            jf(np.ones((3, 2), np.float32), np.array([0, 7], np.int32))
        except fj.errors.OutOfRangeError as e:
            assert "gather" in str(e) and "7" in str(e), str(e)
        else:
            raise AssertionError("out-of-range gather index on the GPU did not raise")


def main(argv=None):
    from .runtime import SIM
    if SIM:      # simulated threads: a short GIL switch interval speeds barriers up
        sys.setswitchinterval(1e-5)
    names = list(CASES) + ["training", "bad_index"]
    devices = fj.list_devices()
    print("devices:", ", ".join(d.name for d in devices))
    if not any(d.kind == "GPU" for d in devices):
        print("no CUDA GPU visible to numba.cuda; nothing to check (set NUMBA_ENABLE_CUDASIM=1 "
              "for the simulator)")
        return 0
    failed = 0
    for name in names:
        t0 = time.perf_counter()
        try:
            if name == "training":
                check_training()
            elif name == "bad_index":
                check_bad_index()
            else:
                run_case(name)
            print(f"ok    {name:18s} {time.perf_counter() - t0:6.2f}s")
        except Exception:
            failed += 1
            print(f"FAIL  {name}")
            traceback.print_exc()
    print(f"{len(names) - failed}/{len(names)} GPU checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
