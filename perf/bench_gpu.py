"""GPU benchmarks of the CUDA backend (no pytest; exits cleanly without a GPU).

    PYTHONPATH=. python perf/bench_gpu.py [--quick]

1. fused elementwise chain over 64M float32 (2 reads, 1 write) as a fraction of the
   device's copy bandwidth (a device-to-device copy measured with numba.cuda);
2. tiled matmul 4096^3 float32 in TFLOP/s, against cupy.matmul when CuPy is installed;
3. MLP 784-256-128-10 training step (Adam) at batch 1024, against PyTorch CUDA eager
   when torch with CUDA is installed.
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
    rows = []

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
    other = "cupy not installed"
    try:
        import cupy
        ca, cb = cupy.asarray(a), cupy.asarray(b)
        t_cp = timeit(lambda: cupy.matmul(ca, cb), cupy.cuda.Device().synchronize, max(3, reps // 2))
        tf_cp = 2 * m ** 3 / t_cp / 1e12
        other = f"cupy.matmul {tf_cp:.1f} TFLOP/s; ratio {tf / tf_cp:.0%}"
    except ImportError:
        pass
    rows.append((f"matmul {m}^3 f32", f"{t_mm * 1e3:.2f} ms, {tf:.2f} TFLOP/s (rel err {err:.1e})", other, ""))

    # 3. MLP training step
    batch, sizes = 1024, (784, 256, 128, 10)
    xb = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    yb = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    init = [(rng.standard_normal((i, o)) * np.sqrt(2.0 / i)).astype(np.float32) for i, o in zip(sizes[:-1], sizes[1:])]
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
        xd, yd = cuda.to_device(xb), cuda.to_device(yb)
        t_fj = timeit(lambda: step(xd, yd), sync, reps * 2, warmup=3)
    other = "torch with CUDA not installed"
    try:
        import torch
        if torch.cuda.is_available():
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
                logits = h @ tw[2] + tb[2]
                loss = torch.nn.functional.cross_entropy(logits, ty)
                loss.backward()
                topt.step()
            t_t = timeit(tstep, torch.cuda.synchronize, reps * 2, warmup=3)
            other = f"torch eager {t_t * 1e3:.3f} ms; flowjit/torch time {t_fj / t_t:.2f}x"
    except ImportError:
        pass
    rows.append(("MLP 784-256-128-10 Adam step, batch 1024", f"{t_fj * 1e3:.3f} ms", other, ""))

    for r in rows:
        print(" | ".join(x for x in r if x))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
