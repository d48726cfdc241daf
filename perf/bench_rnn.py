"""LSTM training step: one layer, hidden 256, batch 64, sequence 50, input 64, a dense
softmax head on the last hidden state, Adam. flowjit (`fj.nn.lstm`: one compiled loop
over time) against JAX (`lax.scan`, written the same way: the input projection for all
steps as one matmul before the loop) and PyTorch eager (`nn.LSTM`) where installed, in
the same run, taking turns.

Compile rows: the step's first call in a fresh process with an empty cache, compiling
synchronously, at sequence length 50 and 200 (the loop is compiled once whatever its
trip count, so the two should match): a row's time is the first call's minus a warm
step's (the step's own run), its compile column the whole first call."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from perf.bench_train import _err_line, _import_optional, _jax_info, timed_steps
from perf.common import Result, first_call_time, register

B, T, I, H, C = 64, 50, 64, 256, 10
LR = 1e-3
COLD_RUNS = 3              # cold processes per compile row
COMPILE_TARGET_S = 3.0
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def init_params(seed=0):
    rng = np.random.default_rng(seed)
    lim = np.sqrt(6.0 / (I + H + 4 * H))
    return [rng.uniform(-lim, lim, (I + H, 4 * H)).astype(np.float32), np.zeros(4 * H, np.float32),
            (rng.standard_normal((H, C)) * 0.05).astype(np.float32), np.zeros(C, np.float32)]


def batches(t=T, n=4, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.standard_normal((B, t, I)).astype(np.float32)
        y = np.eye(C, dtype=np.float32)[rng.integers(0, C, B)]
        out.append((x, y))
    return out


def build_flowjit(params0):
    import flowjit as fj
    vs = [fj.Variable(p) for p in params0]
    opt = fj.optimizers.Adam(LR)

    @fj.jit
    def step(x, y):
        K, b, Wo, bo = vs
        with fj.GradientTape() as tape:
            _, (c, h) = fj.nn.lstm(x, K, b)
            logits = fj.matmul(h, Wo) + bo
            loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits))
        opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
        return loss
    return step, (lambda: [v.numpy() for v in vs])


def build_jax(params0):
    import jax
    import jax.numpy as jnp
    cpu = jax.devices("cpu")[0]
    b1, b2, eps = 0.9, 0.999, 1e-7

    def loss_fn(ps, x, y):
        K, b, Wo, bo = ps
        xs = jnp.transpose(x, (1, 0, 2))
        proj = (xs.reshape(-1, I) @ K[:I] + b).reshape(xs.shape[0], B, 4 * H)
        Kh = K[I:]

        def cell(carry, p):
            c, h = carry
            i, j, f, o = jnp.split(p + h @ Kh, 4, axis=1)
            c = c * jax.nn.sigmoid(f + 1.0) + jax.nn.sigmoid(i) * jnp.tanh(j)
            h = jnp.tanh(c) * jax.nn.sigmoid(o)
            return (c, h), None
        zero = jnp.zeros((B, H), jnp.float32)
        (c, h), _ = jax.lax.scan(cell, (zero, zero), proj)
        logits = h @ Wo + bo
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits, axis=1), axis=1))

    @jax.jit
    def jstep(ps, ms, vs, t, x, y):
        loss, gs = jax.value_and_grad(loss_fn)(ps, x, y)
        t = t + 1.0
        lr_t = LR * jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        ms = [b1 * m + (1.0 - b1) * g for m, g in zip(ms, gs)]
        vs = [b2 * v + (1.0 - b2) * g * g for v, g in zip(vs, gs)]
        ps = [p - lr_t * m / (jnp.sqrt(v) + eps) for p, m, v in zip(ps, ms, vs)]
        return ps, ms, vs, t, loss

    z = [jax.device_put(np.zeros_like(p), cpu) for p in params0]
    state = {"ps": [jax.device_put(p, cpu) for p in params0], "ms": z, "vs": list(z),
             "t": jax.device_put(np.float32(0), cpu)}
    placed = {}

    def step(x, y):
        key = id(x)
        if key not in placed:
            placed[key] = (jax.device_put(x, cpu), jax.device_put(y, cpu))
        jx, jy = placed[key]
        out = jstep(state["ps"], state["ms"], state["vs"], state["t"], jx, jy)
        jax.block_until_ready(out)
        state["ps"], state["ms"], state["vs"], state["t"], loss = out
        return loss
    return step, (lambda: [np.asarray(p) for p in state["ps"]]), _jax_info(jax)


def build_torch(params0, device="cpu"):
    """The step in PyTorch eager on `device`; it takes NumPy batches (on the CPU, zero
    copy) or tensors already on the device."""
    import torch
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, batch_first=True)
    head = torch.nn.Linear(H, C)
    K, b, Wo, bo = params0
    with torch.no_grad():
        # TF's i, j, f, o over concat([x, h]) -> torch's i, f, g, o over x and h apart
        i, j, f, o = np.split(K, 4, axis=1)
        bi, bj, bf, bo_ = np.split(b, 4)
        k = np.concatenate([i, f, j, o], axis=1)
        lstm.weight_ih_l0.copy_(torch.from_numpy(k[:I].T.copy()))
        lstm.weight_hh_l0.copy_(torch.from_numpy(k[I:].T.copy()))
        lstm.bias_ih_l0.copy_(torch.from_numpy(np.concatenate([bi, bf + 1.0, bj, bo_])))
        lstm.bias_hh_l0.zero_()
        head.weight.copy_(torch.from_numpy(Wo.T.copy()))
        head.bias.copy_(torch.from_numpy(bo))
    lstm, head = lstm.to(device), head.to(device)
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=LR, eps=1e-7)

    def step(x, y):
        tx = x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
        ty = y if isinstance(y, torch.Tensor) else torch.from_numpy(y)
        opt.zero_grad()
        _, (h, _) = lstm(tx)
        loss = -(ty * torch.log_softmax(head(h[0]), dim=1)).sum(1).mean()
        loss.backward()
        opt.step()
        return loss
    return step, f"torch {torch.__version__} eager, {torch.get_num_threads()} threads"


@register
def bench_train_lstm(cfg):
    params0 = init_params()
    data = batches()
    k = {"i": 0}

    def cycling(fn):
        def call():
            x, y = data[k["i"] % len(data)]
            k["i"] += 1
            return fn(x, y)
        return call
    fstep, fparams = build_flowjit(params0)
    first_s, loss0 = first_call_time(lambda: fstep(*data[0]))
    losses = [float(loss0)] + [float(fstep(*data[i % len(data)])) for i in range(1, 5)]
    calls, infos = [("flowjit", cycling(fstep))], {}
    jax = _import_optional(cfg, "jax")
    if jax is not None:
        try:
            jstep, _, info = build_jax(params0)
            jl = [float(jstep(*data[i % len(data)])) for i in range(5)]
            if not np.allclose(jl, losses, rtol=2e-3, atol=2e-4):
                raise AssertionError(f"losses differ: flowjit {losses}, jax {jl}")
            calls.append(("jax", cycling(jstep)))
            infos["jax"] = info
        except Exception as e:        # a broken optional baseline is skipped
            cfg.skip("jax (lstm)", f"failed: {_err_line(e)}")
    if _import_optional(cfg, "torch") is not None:
        try:
            tstep, info = build_torch(params0)
            _torch_at_its_best()
            tl = [float(tstep(*data[i % len(data)])) for i in range(5)]
            if not np.allclose(tl, losses, rtol=2e-3, atol=2e-4):
                raise AssertionError(f"losses differ: flowjit {losses}, torch {tl}")
            calls.append(("torch", cycling(tstep)))
            infos["torch"] = info
        except Exception as e:
            cfg.skip("torch (lstm)", f"failed: {_err_line(e)}")
    t, n_timed, cores = timed_steps(cfg, calls)
    if not all(np.isfinite(p).all() for p in fparams()):
        raise AssertionError("lstm: flowjit parameters not finite after timing")
    rows = []
    for key in ("torch", "jax"):
        if key in t:
            label = "torch eager" if key == "torch" else "jax jit"
            rows.append(Result(f"train lstm 1x{H} b{B} T{T} in{I} Adam vs {label}", t["flowjit"], t[key],
                               compile_s=first_s, target="ratio >= 1", ok=t[key] >= t["flowjit"],
                               notes=f"{n_timed} steps; {infos[key]}; cpu/wall flowjit "
                                     f"{cores['flowjit']:.1f}, {key} {cores[key]:.1f}"))
    if not rows:
        rows.append(Result(f"train lstm 1x{H} b{B} T{T} in{I} Adam", t["flowjit"], compile_s=first_s,
                           target="faster than torch & jax", notes=f"{n_timed} steps; no peer installed"))
    if not cfg.cold_processes:
        return rows
    for seq in (T, 4 * T):
        # the compile time: what the first call takes beyond a warm step (its own run,
        # four times longer at T=200 than at T=50); the median of COLD_RUNS processes,
        # as one swung by up to 40% here from run to run (2.4-3.7 s for the same code)
        runs = sorted((c["first_s"] - c["step_s"], i, c)
                      for i, c in enumerate(_compile_child(seq) for _ in range(COLD_RUNS)))
        compile_s, _, child = runs[len(runs) // 2]
        rows.append(Result(f"compile lstm train step: cold process, T={seq}", compile_s,
                           compile_s=child["first_s"],
                           target=f"<= {COMPILE_TARGET_S:g} s", ok=compile_s <= COMPILE_TARGET_S,
                           notes=f"empty cache, synchronous compile, median of {len(runs)} processes "
                                 f"({', '.join(f'{r[0]:.2f}' for r in runs)} s); that one's first call {child['first_s']:.2f} s "
                                 f"minus a warm step {child['step_s']:.2f} s; the loop functions then "
                                 f"compile on call 4: {child['loops_s']:.2f} s more; compile_seconds "
                                 f"{child['stats']['compile_seconds']:.2f}; compiles={child['stats']['compiles']}; "
                                 f"compiling processes the machine allowed just before: {child['processes']}"))
    child = _compile_child(T, background=True)
    rows.append(Result(f"first lstm train step: cold process, T={T}, default", child["first_s"],
                       notes="empty cache, background compile on (what a user gets): the first steps "
                             "run tier 0 while the kernels compile in a child process"))
    return rows


def _torch_at_its_best():
    """PyTorch's LSTM step here runs in one of two speeds, 37-41 ms or 50-58 ms, and
    which one depends on the process's past: a full `python -m perf` run, whose fused
    loss+grad row runs big torch autograd computations before this row, measured the
    fast one three times out of three, `--only train_lstm` the slow one five times out
    of five. Twenty loss+gradients of 4M-element tensors (that row's) first took a
    fresh process from 53.6 to 37.5 ms and from 60 to 45 ms (at 64K elements: no
    change; allocating and freeing 16 MB tensors alone: none), and in `--only
    train_lstm` once out of two. The cause is in torch's or the allocator's state, not
    found; the row does this so that torch's best state is as likely as in the full
    run."""
    import torch
    x = torch.rand(4 << 20)
    y = torch.rand(4 << 20)
    for _ in range(20):
        xr, yr = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        loss = (torch.tanh(xr * yr + 1.0) * torch.sigmoid(xr) - torch.exp(-yr * yr)).sum()
        torch.autograd.grad(loss, (xr, yr))


def _compile_child(seq, background=False):
    d = tempfile.mkdtemp(prefix="flowjit-perf-lstm-")
    try:
        env = dict(os.environ, FLOWJIT_CACHE_DIR=d, FLOWJIT_BACKGROUND_COMPILE="1" if background else "0")
        env.pop("FLOWJIT_CACHE", None)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
        p = subprocess.run([sys.executable, "-m", "perf.bench_rnn", str(seq)], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"lstm compile child failed:\n{p.stderr[-3000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":          # the compile child: first call of the step at T = argv[1]
    import flowjit as fj
    seq = int(sys.argv[1])
    step, _ = build_flowjit(init_params())
    x, y = batches(t=seq, n=1)[0]
    # how many processes a cold compile may use (split_compile.processes samples the
    # machine the same way just after): one where something else runs, and then the
    # kernels compile one after another: 4.0 s against 2.7 s on 2 cores for T=50
    from flowjit.backends.cpu import split_compile
    procs = split_compile.processes()
    s, _ = first_call_time(lambda: float(step(x, y)))
    stats = fj.stats()
    # the Python tier compiles its loop functions on a later call (backend.py: the third
    # notes their types, the next compiles them); warm steps are the last three calls
    later = [first_call_time(lambda: float(step(x, y)))[0] for _ in range(7)]
    warm = sorted(later[-3:])[1]
    print(json.dumps({"first_s": s, "step_s": warm, "loops_s": sum(max(t - warm, 0.0) for t in later[:-3]),
                      "stats": stats, "processes": procs}))
