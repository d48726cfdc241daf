"""A compiled GPU step launches its kernels as the phases of one cooperative kernel
(backends/cuda/fused_launch.py): launch counts of the MLP and small CNN training steps,
results equal to one launch per kernel (bitwise: the same kernels run in the same order)
and to the CPU, and the entry rewrite itself (runs end at device copies, names rebound
after a launch keep the value the launch saw, zero-filled buffers)."""
import numpy as np
import pytest

import flowjit as fj
from flowjit.backends.cuda import fused_launch, runtime as RT
from flowjit.backends.cuda.kernels import kernel_def, named

from test_conv_cuda import cnn_training


def mlp_training(device, steps=3, sizes=(20, 16, 12, 10), batch=32):
    """A sigmoid MLP's Adam training step (the issue's launch-count case, small):
    (losses, final parameters, kernel launches of the last step)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], batch)]
    with fj.device(device):
        params = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            params += [fj.Variable(rng.normal(scale=0.3, size=(a, b)).astype(np.float32)),
                       fj.Variable(np.zeros(b, np.float32))]
        opt = fj.optimizers.Adam(0.01)

        @fj.jit
        def step(x, y):
            with fj.GradientTape() as tape:
                h = x
                for i in range(0, len(params) - 2, 2):
                    h = fj.sigmoid(h @ params[i] + params[i + 1])
                logits = h @ params[-2] + params[-1]
                loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits))
            opt.apply_gradients(zip(tape.gradient(loss, params), params))
            return loss

        losses = []
        for _ in range(steps):
            before = fj.stats()["kernel_launches"]
            losses.append(float(step(x, y).numpy()))
            launches = fj.stats()["kernel_launches"] - before
    return losses, [p.numpy() for p in params], launches


@pytest.fixture
def separate_launches(monkeypatch):
    """Programs compiled inside the test launch each kernel on its own."""
    monkeypatch.setattr(fj.config, "cuda_fuse_launches", False)


def test_mlp_adam_step_takes_few_launches_and_computes_the_same(monkeypatch):
    lf, wf, fused = mlp_training("/gpu:0")
    monkeypatch.setattr(fj.config, "cuda_fuse_launches", False)
    ls, ws, separate = mlp_training("/gpu:0")
    print(f"MLP Adam step: {separate} launches one kernel at a time, {fused} fused")
    assert fused <= 12 < separate
    assert lf == ls
    for a, b in zip(ws, wf):
        np.testing.assert_array_equal(b, a)
    lc, wc, _ = mlp_training("/cpu:0")
    np.testing.assert_allclose(lf, lc, rtol=1e-5)
    for a, b in zip(wc, wf):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    assert lf[-1] < lf[0]


def test_small_cnn_step_takes_few_launches(monkeypatch):
    def launches_of(**kw):
        before = fj.stats()["kernel_launches"]
        out = cnn_training("/gpu:0", steps=1)
        return out, fj.stats()["kernel_launches"] - before
    (lf, wf, _, _), fused = launches_of()
    monkeypatch.setattr(fj.config, "cuda_fuse_launches", False)
    (ls, ws, _, _), separate = launches_of()
    print(f"small CNN Adam step: {separate} launches one kernel at a time, {fused} fused")
    assert fused <= 6 < separate
    assert lf == ls
    for a, b in zip(ws, wf):
        np.testing.assert_array_equal(b, a)


def reductions(x, y, p, idx):
    """Reductions split over two blocks (x: one long row) and not (y), and a gather
    whose gradient scatters into a zero-filled buffer, in one step."""
    with fj.GradientTape() as tape:
        tape.watch(p)
        g = fj.reduce_sum(fj.gather(p, idx) * 2.0)
    return fj.reduce_sum(x * x), fj.reduce_sum(y, axis=1), fj.reduce_max(x), tape.gradient(g, p)


@pytest.mark.parametrize("fuse", [True, False])
def test_split_reductions_and_zero_fill_in_one_launch(monkeypatch, fuse):
    monkeypatch.setattr(fj.config, "cuda_fuse_launches", fuse)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(100).astype(np.float32)       # one row of 100 > 4 * TPB: split
    y = rng.standard_normal((3, 5)).astype(np.float32)
    p = rng.standard_normal((6, 2)).astype(np.float32)
    idx = np.array([1, 4, 1, 0], np.int32)
    with fj.device("/gpu:0"):
        f = fj.jit(reductions)
        out = [np.asarray(t.numpy()) for t in f(x, y, p, idx)]
        ins = f.inspect(x, y, p, idx)
        src = ins.forward_source + ins.backward_source
    assert ("RT.coop_grid" in src) == fuse
    np.testing.assert_allclose(out[0], np.sum(x.astype(np.float64) ** 2), rtol=1e-5)
    np.testing.assert_allclose(out[1], y.sum(axis=1), rtol=1e-5, atol=1e-6)
    assert out[2] == x.max()
    want = np.zeros_like(p)
    np.add.at(want, idx, 2.0)
    np.testing.assert_array_equal(out[3], want)


def test_cooperative_launches_unavailable_keeps_one_launch_per_kernel(monkeypatch):
    monkeypatch.setattr(RT, "_cooperative", False)
    with fj.device("/gpu:0"):
        f = fj.jit(lambda a: fj.reduce_sum(fj.exp(a) * 2.0, axis=0) + 1.0)
        a = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
        src = f.inspect(a).forward_source
        np.testing.assert_allclose(f(a).numpy(), (np.exp(a) * 2).sum(0) + 1, rtol=1e-5)
    assert "RT.coop_grid" not in src and "grid_.sync()" not in src


# -- the entry rewrite on its own -------------------------------------------------------------
def kernel(body):
    return named(kernel_def("a, b", body), "test kernel")


def test_rewrite_runs_end_at_device_copies_and_keep_rebound_values():
    ka, sa = kernel("    b[0] = a[0]\n")
    kb, sb = kernel("    b[0] = a[0] + 1\n")
    entry = f"""def ENTRY(a0, err):
    v1 = RT.empty(4, np.float32)
    _ns = 2
    {ka}[RT.grid(4), RT.TPB](a0, np.int64(_ns))
    if _ns > 1:
        {kb}[RT.grid(4), RT.TPB](v1, np.int64(_ns))
    _ns = 1
    {ka}[RT.grid(4), RT.TPB](v1, np.int64(_ns))
    v2 = RT.copy(v1)
    {kb}[RT.grid(4), RT.TPB](v2, v1)
    v3 = RT.zeros(4, np.float32)
    return (v1, v2, v3)
"""
    body, kernels = fused_launch.fuse_launches(entry, {ka: sa, kb: sb})
    lines = [line.strip() for line in body.splitlines()]
    fused = [i for i, line in enumerate(lines) if "RT.coop_grid" in line]
    copy = lines.index("v2 = RT.copy(v1)")
    # a run ends at the device copy: three launches before it, the launch after it and
    # the zero fill of RT.zeros after that
    assert len(fused) == 2 and fused[0] < copy < fused[1]
    assert "v3 = RT.empty(4, np.float32)" in lines and lines[-1].startswith("return")
    # the two np.int64(_ns) arguments are different temporaries: _ns was rebound in between
    temps = [line.split(" = ", 1) for line in lines if line.startswith("_f")]
    assert len([t for t, e in temps if e == "np.int64(_ns)"]) == 2
    assert any(e == "int(_ns > 1)" for _, e in temps)
    first = lines[fused[0]].split("[", 1)[0]
    src = kernels[first]
    assert src.count("grid_.sync()") == 2 and f"def d_{ka}(" in src and f"def d_{kb}(" in src
    assert ka not in kernels and kb not in kernels      # launched through fused kernels only


def test_rewrite_splits_a_run_whose_parameters_exceed_the_limit(monkeypatch):
    ka, sa = kernel("    b[0] = a[0]\n")
    monkeypatch.setattr(fused_launch, "PARAM_BYTES", 200)        # 56 bytes per array
    entry = "def ENTRY(a0, err):\n" + "".join(
        f"    {ka}[RT.grid(4), RT.TPB](a0, v{k})\n" for k in range(6)) + "    return (a0,)\n"
    body, kernels = fused_launch.fuse_launches(entry, {ka: sa})
    launches = [line for line in body.splitlines() if "RT.coop_grid" in line]
    assert len(launches) == 3                    # (a0, v0, v1), (a0, v2, v3), (a0, v4, v5)
    for line in launches:
        args = line.split("](", 1)[1]
        assert args.count(",") + 1 <= 200 // 56


def test_rewrite_splits_a_run_whose_shared_memory_exceeds_the_limit(monkeypatch):
    ka, sa = kernel("    s = cuda.shared.array(64, np.float64)\n    s[0] = a[0]\n    b[0] = s[0]\n")
    kb, sb = kernel("    t = cuda.shared.array((4, 16), np.float32)\n    t[0, 0] = a[0]\n    b[0] = t[0, 0]\n")
    kc, sc = kernel("    u = cuda.shared.array(64, np.float64)\n    u[1] = a[0]\n    b[0] = u[1]\n")
    assert fused_launch._shared_bytes(sa) == fused_launch._shared_bytes(sb) == 512
    monkeypatch.setattr(fused_launch, "SHARED_BYTES", 1024)
    entry = "def ENTRY(a0, err):\n" + "".join(
        f"    {k}[RT.grid(4), RT.TPB](a0, a0)\n" for k in (ka, ka, kb, kc, ka)) + "    return (a0,)\n"
    body, kernels = fused_launch.fuse_launches(entry, {ka: sa, kb: sb, kc: sc})
    # a kernel's arrays are shared by all its calls: ka ka kb fit 1024 bytes, then kc ka
    assert sum("RT.coop_grid" in line for line in body.splitlines()) == 2
    # the grid/block configurations of fused launches are not computed at all
    assert "RT.grid(4)" not in body


def test_rewrite_ends_a_run_where_the_host_reads_a_device_element():
    ka, sa = kernel("    b[0] = a[0]\n")
    entry = f"""def ENTRY(a0, k0, err):
    v1 = RT.empty(4, np.float32)
    {ka}[RT.grid(4), RT.TPB](a0, v1)
    {ka}[RT.grid(4), RT.TPB](v1, np.int64(k0[0]))
    s = np.float32(v1[0])
    {ka}[RT.grid(4), RT.TPB](v1, s)
    {ka}[RT.grid(4), RT.TPB](v1, a0)
    return (v1,)
"""
    body, _ = fused_launch.fuse_launches(entry, {ka: sa})
    lines = [line.strip() for line in body.splitlines()]
    fused = [i for i, line in enumerate(lines) if "RT.coop_grid" in line]
    # k0 is a parameter (an rng key on the host): its element joins the run; v1's ends it
    read = lines.index("s = np.float32(v1[0])")
    assert len(fused) == 2 and fused[0] < read < fused[1]


def test_a_variable_updated_in_place_from_a_matmul_that_reads_it():
    # the update v - 0.1 * (v @ x) is computed into v's own buffer; it must not run in
    # the matmul's kernel, whose other tiles still read v (16 x 16: several tiles)
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((16, 16)).astype(np.float32)
    x = rng.standard_normal((16, 16)).astype(np.float32)
    with fj.device("/gpu:0"):
        v = fj.Variable(w0.copy())

        @fj.jit
        def step(x):
            v.assign(v - 0.1 * (v @ x))
        step(x)
        got = v.numpy()
    np.testing.assert_allclose(got, w0 - 0.1 * (w0 @ x), rtol=1e-5, atol=1e-5)


def test_backward_runs_bias_gradients_and_activation_gradients_inside_the_matmuls(capsys):
    # the MLP's backward: each hidden layer's activation gradient runs in the kernel of
    # the matmul computing its input (dh = g @ W^T), each bias gradient in the weight
    # gradient's (h^T @ g, whose tiles read every row of g); values: the MLP test above
    fj.config.log_device_placement = True
    try:
        mlp_training("/gpu:0", steps=1)
    finally:
        fj.config.log_device_placement = False
    log = capsys.readouterr().out
    assert log.count("matmul + fused loop [multiply subtract multiply] ->") == 2, log
    assert log.count("matmul + bias gradient %") == 3, log
