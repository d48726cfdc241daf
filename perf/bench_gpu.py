"""GPU benchmarks of the CUDA backend (no pytest; exits cleanly without a GPU).

    PYTHONPATH=. python perf/bench_gpu.py [--quick]

1. fused elementwise chain over 64M float32 (2 reads, 1 write) as a fraction of the
   device's copy bandwidth (a device-to-device copy measured with numba.cuda);
2. tiled matmul 4096^3 float32 in TFLOP/s (the big tiles runtime.matmul chooses, and the
   standard ones), against cupy.matmul when CuPy is installed and the device's SIMT
   float32 peak;
3. MLP 784-256-128-10 training step (Adam) at batch 1024, its kernels fused into a few
   cooperative launches with their arguments kept between launches (the default), with
   arguments marshalled on every launch, and launched one by one; launches per step;
4. perf/bench_conv.py's small CNN training step (Adam) at batch 256;
   3 and 4 against PyTorch CUDA eager when torch with CUDA is installed.
Timings synchronize the device; medians of repeated runs.
"""
import argparse
import statistics
import sys
import time

import numpy as np


def timeit(fn, sync, reps, warmup=2):
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def timed(fn, sync, reps, warmup=2):
    return (timeit(fn, sync, reps, warmup),)


def _launches(fj, step, *args):
    before = fj.stats()["kernel_launches"]
    step(*args)
    return fj.stats()["kernel_launches"] - before


def _flowjit_mlp(fj, init):
    with fj.device("/gpu:0"):
        params = []
        for w in init:
            params += [fj.Variable(w), fj.Variable(np.zeros(w.shape[1], np.float32))]
        opt = fj.optimizers.Adam(1e-3)

        @fj.jit
        def step(x, y):
            with fj.GradientTape() as tape:
                h = x
                for k in range(0, 4, 2):
                    h = fj.nn.relu(h @ params[k] + params[k + 1])
                logits = h @ params[4] + params[5]
                loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits))
            opt.apply_gradients(zip(tape.gradient(loss, params), params))
            return loss
    return step


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _torch_mlp(torch, init, xb, yb):
    dev = torch.device("cuda")
    tw = [torch.tensor(w, device=dev, requires_grad=True) for w in init]
    tb = [torch.zeros(w.shape[1], device=dev, requires_grad=True) for w in init]
    topt = torch.optim.Adam(tw + tb, lr=1e-3)
    tx, ty = torch.tensor(xb, device=dev), torch.tensor(yb, device=dev)

    def tstep():
        topt.zero_grad()
        h = tx
        for w, bb in zip(tw[:2], tb[:2]):
            h = torch.relu(h @ w + bb)
        loss = torch.nn.functional.cross_entropy(h @ tw[2] + tb[2], ty)
        loss.backward()
        topt.step()
    return tstep


def _torch_cnn(torch, BC, params0, xc, yc):
    """perf/bench_conv.py's CNN in PyTorch CUDA eager (NCHW, explicit SAME padding)."""
    import torch.nn.functional as tF
    dev = torch.device("cuda")
    tp = [torch.tensor(p.transpose(3, 2, 0, 1).copy() if p.ndim == 4 else p, device=dev, requires_grad=True)
          for p in params0]
    opt = torch.optim.Adam(tp, lr=BC.CNN_LR, betas=(BC.ADAM_B1, BC.ADAM_B2), eps=BC.ADAM_EPS)
    tx = torch.tensor(xc.transpose(0, 3, 1, 2).copy(), device=dev)
    ty = torch.tensor(yc, device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        h = tx
        for i, (k, _, _, st) in enumerate(BC.CNN_CONVS):
            _, t, b = BC.same_pads(h.shape[2], k, st)
            _, l, r = BC.same_pads(h.shape[3], k, st)
            h = tF.relu(tF.conv2d(tF.pad(h, (l, r, t, b)), tp[2 * i], tp[2 * i + 1], stride=st))
        h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
        h = tF.relu(torch.addmm(tp[7], h, tp[6]))
        loss = tF.cross_entropy(torch.addmm(tp[9], h, tp[8]), ty)
        loss.backward()
        opt.step()
    return step


MM_TILES = "64x64"
# FP32 lanes per multiprocessor by compute capability (CUDA programming guide's table)
_FP32_PER_SM = {(6, 0): 64, (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64}


def simt_fp32_peak(dev):
    """The device's float32 FMA peak without tensor cores, in TFLOP/s: multiprocessors x
    FP32 lanes x 2 flops x clock."""
    lanes = _FP32_PER_SM.get(tuple(dev.compute_capability), 128)
    return dev.MULTIPROCESSOR_COUNT * lanes * 2 * dev.CLOCK_RATE * 1e3 / 1e12


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    import flowjit as fj
    if not any(d.kind == "GPU" for d in fj.list_devices()):
        print("bench_gpu: no CUDA GPU visible to numba.cuda; nothing to measure")
        return 0
    from numba import cuda
    from flowjit.backends.cuda import runtime as RT
    if RT.SIM:
        print("bench_gpu: the CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1); timings would be meaningless")
        return 0
    sync = cuda.synchronize
    reps = 5 if args.quick else 20
    print(f"device: {cuda.get_current_device().name.decode() if isinstance(cuda.get_current_device().name, bytes) else cuda.get_current_device().name}")
    rows = _Printed()

    # 1. elementwise chain vs copy bandwidth
    n = (1 << 22) if args.quick else (1 << 26)
    rng = np.random.default_rng(0)
    x = cuda.to_device(rng.standard_normal(n, dtype=np.float32))
    y = cuda.to_device(rng.standard_normal(n, dtype=np.float32))
    dst = cuda.device_array(n, np.float32)
    t_copy = timeit(lambda: dst.copy_to_device(x), sync, reps)
    copy_bw = 2 * 4 * n / t_copy

    chain = fj.jit(lambda a, b: fj.maximum(a * 1.5 + b, 0.0) * b - a * 0.25 + 1.0)
    t_chain = timeit(lambda: chain(x, y), sync, reps)
    chain_bw = 3 * 4 * n / t_chain
    rows.append(("elementwise chain 64M f32" if not args.quick else f"elementwise chain {n} f32",
                 f"{t_chain * 1e3:.3f} ms, {chain_bw / 1e9:.0f} GB/s",
                 f"copy {copy_bw / 1e9:.0f} GB/s", f"{chain_bw / copy_bw:.0%} of copy bandwidth"))

    # 2. matmul
    m = 1024 if args.quick else 4096
    a = cuda.to_device(rng.standard_normal((m, m), dtype=np.float32))
    b = cuda.to_device(rng.standard_normal((m, m), dtype=np.float32))
    mm = fj.jit(lambda p, q: p @ q)
    out = mm(a, b)
    ref = a.copy_to_host()[:64] @ b.copy_to_host()
    err = np.abs(out.numpy()[:64] - ref).max() / np.abs(ref).max()
    t_mm = timeit(lambda: mm(a, b), sync, max(3, reps // 2))
    tf = 2 * m ** 3 / t_mm / 1e12
    big_min, RT.BIG_MIN = RT.BIG_MIN, (1 << 62,) * 3          # the standard tiles, same product
    try:
        t_std = timeit(lambda: mm(a, b), sync, max(3, reps // 2))
    finally:
        RT.BIG_MIN = big_min
    peak = simt_fp32_peak(cuda.get_current_device())
    other = "cupy not installed"
    try:
        import cupy
        ca, cb = cupy.asarray(a), cupy.asarray(b)
        t_cp = timeit(lambda: cupy.matmul(ca, cb), cupy.cuda.Device().synchronize, max(3, reps // 2))
        tf_cp = 2 * m ** 3 / t_cp / 1e12
        other = f"cupy.matmul {tf_cp:.1f} TFLOP/s; ratio {tf / tf_cp:.0%}"
    except ImportError:
        pass
    rows.append((f"matmul {m}^3 f32", f"{t_mm * 1e3:.2f} ms, {tf:.2f} TFLOP/s (rel err {err:.1e})", other,
                 f"{tf / peak:.0%} of the SIMT f32 peak {peak:.1f} TFLOP/s; "
                 f"{MM_TILES} tiles {2 * m ** 3 / t_std / 1e12:.2f} TFLOP/s"))

    # 3. MLP training step, with the step's kernels fused into few launches (the
    # default) and launched one at a time
    batch, sizes = 1024, (784, 256, 128, 10)
    xb = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    yb = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    init = [(rng.standard_normal((i, o)) * np.sqrt(2.0 / i)).astype(np.float32) for i, o in zip(sizes[:-1], sizes[1:])]
    xd, yd = cuda.to_device(xb), cuda.to_device(yb)
    t_fj = {}
    # (fused launches, arguments kept between launches): the default, then each off
    for how in ((True, True), (True, False), (False, True)):
        fj.config.cuda_fuse_launches, RT.PREPARED_LAUNCHES = how
        step = _flowjit_mlp(fj, init)
        t_fj[how] = timed(lambda: step(xd, yd), sync, reps * 2, warmup=3) + (_launches(fj, step, xd, yd),)
    fj.config.cuda_fuse_launches, RT.PREPARED_LAUNCHES = True, True
    other = "torch with CUDA not installed"
    torch = _torch_cuda()
    if torch is not None:
        t_t = timeit(_torch_mlp(torch, init, xb, yb), torch.cuda.synchronize, reps * 2, warmup=3)
        other = f"torch eager {t_t * 1e3:.3f} ms; flowjit/torch time {t_fj[True, True][0] / t_t:.2f}x"
    for (fuse, kept), (t, launches) in t_fj.items():
        how = ("fused launches" if fuse else "one launch per kernel") + \
            ("" if kept else ", arguments marshalled on every launch")
        rows.append((f"MLP 784-256-128-10 Adam step, batch 1024, {how}",
                     f"{t * 1e3:.3f} ms, {launches} launches", other if (fuse and kept) else "", ""))

    # 4. small CNN training step (perf/bench_conv.py's model) at batch 256
    from perf import bench_conv as BC
    params0 = BC.cnn_init()
    xc = rng.random((256, BC.CNN_SIDE, BC.CNN_SIDE, 1), dtype=np.float32)
    yc = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 256)]
    xcd, ycd = cuda.to_device(xc), cuda.to_device(yc)
    with fj.device("/gpu:0"):
        cnn_step = BC.build_flowjit_cnn(params0)[0]
    t_cnn = timeit(lambda: cnn_step(xcd, ycd), sync, reps * 2, warmup=3)
    launches = _launches(fj, cnn_step, xcd, ycd)
    other = "torch with CUDA not installed"
    if torch is not None:
        t_t = timeit(_torch_cnn(torch, BC, params0, xc, yc), torch.cuda.synchronize, reps * 2, warmup=3)
        other = f"torch eager {t_t * 1e3:.3f} ms; flowjit/torch time {t_cnn / t_t:.2f}x"
    rows.append(("small CNN Adam step, batch 256", f"{t_cnn * 1e3:.3f} ms, {launches} launches", other, ""))

    # 5. LSTM training step (perf/bench_rnn.py's model): the scan a loop of the host
    # entry launching the body's kernels each step
    from perf import bench_rnn as BR
    lstm_rows(fj, BR, sync, reps, rows, torch)
    return 0


class _Printed(list):
    """Rows printed as they are added: a part that fails or runs out of time later keeps
    the rows measured before it."""

    def append(self, row):
        super().append(row)
        print(" | ".join(x for x in row if x), flush=True)


def lstm_rows(fj, BR, sync, reps, rows, torch=None):
    """perf/bench_rnn.py's LSTM step (batch 64, 50 steps, input 64, hidden 256, Adam) on
    the GPU: the first call (compiling), its losses against the CPU's over three steps,
    the step time, launches per step; PyTorch CUDA's nn.LSTM where installed."""
    from numba import cuda
    params0, data = BR.init_params(), BR.batches()
    with fj.device("/cpu:0"):
        cpu_step, _ = BR.build_flowjit(params0)
        want = [float(cpu_step(x, y)) for x, y in data[:3]]
    on_gpu = [(cuda.to_device(x), cuda.to_device(y)) for x, y in data]
    with fj.device("/gpu:0"):
        step, _ = BR.build_flowjit(params0)
    t0 = time.perf_counter()
    got = [float(np.asarray(step(*on_gpu[0])))]
    first = time.perf_counter() - t0
    got += [float(np.asarray(step(*d))) for d in on_gpu[1:3]]
    err = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(got, want))
    k = {"i": 0}

    def cycling():
        k["i"] += 1
        return step(*on_gpu[k["i"] % len(on_gpu)])
    t = timeit(cycling, sync, reps * 2, warmup=2)
    launches = _launches(fj, step, *on_gpu[0])
    other = "torch with CUDA not installed"
    if torch is not None:
        t_t = timeit(_torch_lstm(torch, BR, params0, data), torch.cuda.synchronize, reps * 2, warmup=3)
        other = f"torch eager nn.LSTM {t_t * 1e3:.3f} ms; flowjit/torch time {t / t_t:.2f}x"
    rows.append((f"LSTM 1x{BR.H} b{BR.B} T{BR.T} in{BR.I} Adam step",
                 f"{t * 1e3:.3f} ms, {launches} launches; first call {first:.2f} s; "
                 f"losses vs the CPU's: rel err {err:.1e}", other, ""))


def _torch_lstm(torch, BR, params0, data):
    """perf/bench_rnn.py's PyTorch model on CUDA, the batches placed there first."""
    dev = torch.device("cuda")
    tstep, _ = BR.build_torch(params0, device=dev)
    placed = [(torch.tensor(x, device=dev), torch.tensor(y, device=dev)) for x, y in data]
    k = {"i": 0}

    def step():
        k["i"] += 1
        tstep(*placed[k["i"] % len(placed)])
    return step


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
