"""Convolution benchmarks:

1. the "small CNN" training step of the classic talk (batch 64, 28x28x1; conv 5x5/1 x16,
   conv 5x5/2 x8, conv 4x4/2 x12, all SAME + ReLU, dense 588-200 ReLU, dense 200-10,
   softmax cross-entropy, Adam), one full step (forward, backward, update);
2. one conv2d layer forward + backward (batch 32, 28x28x32 -> 64 channels, 3x3, SAME):
   the output, and the gradients with respect to input and filters for a given
   upstream gradient.

Each as
  flowjit   an `@fj.jit` function (the step with Variables + GradientTape + Adam);
  numpy     im2col + matmul by hand (the baseline column; col2im as one strided add per
            filter tap);
  torch     PyTorch eager (NCHW, TF's asymmetric SAME padding done with F.pad), when
            importable;
  jax       `jax.jit` with lax.conv_general_dilated (NHWC/HWIO, 'SAME' as TF), when
            importable.

All float32, same initial weights and batches. Before timing, each implementation's
losses over the warm-up steps (step) or its outputs (layer) are checked against
NumPy's (a mismatch fails the run for flowjit, skips a baseline). Timing as in
bench_train: implementations take turns in blocks, medians; see its notes on thread
pools and `--threads 1` on a busy machine.
"""
import time

import numpy as np

import flowjit as fj
from perf.bench_train import (WARMUP_CALLS, Cycler, _err_line, _import_optional, _jax_info,
                              _stats_delta, busy_note, timed_steps)
from perf.common import Result, check_close, first_call_time, register

# (kernel size, in channels, out channels, stride); TF SAME padding everywhere
CNN_CONVS = ((5, 1, 16, 1), (5, 16, 8, 2), (4, 8, 12, 2))
CNN_BATCH, CNN_SIDE, CNN_HIDDEN, CNN_LR = 64, 28, 200, 1e-3
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-7
LAYER = dict(batch=32, side=28, cin=32, cout=64, k=3)


def same_pads(n, k, s):
    """TF SAME: (output size, pad before, pad after)."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


def cnn_init(seed=50):
    rng = np.random.default_rng(seed)
    ps = []
    side = CNN_SIDE
    for k, ci, co, s in CNN_CONVS:
        ps.append((rng.standard_normal((k, k, ci, co)) * np.sqrt(2.0 / (k * k * ci))).astype(np.float32))
        ps.append(np.full(co, 0.01, np.float32))
        side = -(-side // s)
    feat = side * side * CNN_CONVS[-1][2]
    for n_in, n_out in ((feat, CNN_HIDDEN), (CNN_HIDDEN, 10)):
        ps.append((rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32))
        ps.append(np.zeros(n_out, np.float32))
    return ps


def cnn_batches(seed=51, n=4):
    rng = np.random.default_rng(seed)
    return [(rng.random((CNN_BATCH, CNN_SIDE, CNN_SIDE, 1), dtype=np.float32),
             np.eye(10, dtype=np.float32)[rng.integers(0, 10, CNN_BATCH)]) for _ in range(n)]


# ---- flowjit ----
def build_flowjit_cnn(params0):
    vs = [fj.Variable(p.copy(), name=f"cnn_p{i}") for i, p in enumerate(params0)]
    opt = fj.optimizers.Adam(CNN_LR, beta_1=ADAM_B1, beta_2=ADAM_B2, epsilon=ADAM_EPS)

    @fj.jit
    def cnn_step(x, y):
        with fj.GradientTape() as tape:
            h = x
            for i, (_, _, _, s) in enumerate(CNN_CONVS):
                h = fj.nn.relu(fj.nn.conv2d(h, vs[2 * i], s, "SAME") + vs[2 * i + 1])
            h = fj.reshape(h, [-1, vs[6].shape[0]])
            h = fj.nn.relu(h @ vs[6] + vs[7])
            logits = h @ vs[8] + vs[9]
            loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, logits))
        opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
        return loss

    return cnn_step, (lambda: [v.numpy() for v in vs]), float


# ---- numpy: im2col by hand ----
def np_pad(x, k, s):
    _, h, w, _ = x.shape
    oh, t, b = same_pads(h, k, s)
    ow, l, r = same_pads(w, k, s)
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0))), oh, ow


def np_im2col(xp, k, s, oh, ow):
    """[N*OH*OW, k*k*C] rows in (i, j, c) order (HWIO filters reshape to match)."""
    n, c = xp.shape[0], xp.shape[3]
    cols = np.empty((n, oh, ow, k, k, c), xp.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, :, i, j, :] = xp[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :]
    return cols.reshape(n * oh * ow, k * k * c)


def np_col2im(dcol, xp_shape, k, s, oh, ow):
    n, c = xp_shape[0], xp_shape[3]
    d = dcol.reshape(n, oh, ow, k, k, c)
    dxp = np.zeros(xp_shape, dcol.dtype)
    for i in range(k):
        for j in range(k):
            dxp[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :] += d[:, :, :, i, j, :]
    return dxp


def np_conv_fwd(x, w, s):
    k, co = w.shape[0], w.shape[3]
    xp, oh, ow = np_pad(x, k, s)
    col = np_im2col(xp, k, s, oh, ow)
    return (col @ w.reshape(-1, co)).reshape(x.shape[0], oh, ow, co), (col, xp.shape, oh, ow)


def np_conv_bwd(g, x, w, s, cache, need_dx=True):
    col, xp_shape, oh, ow = cache
    k, co = w.shape[0], w.shape[3]
    g2 = g.reshape(-1, co)
    dw = (col.T @ g2).reshape(w.shape)
    if not need_dx:
        return None, dw
    dxp = np_col2im(g2 @ w.reshape(-1, co).T, xp_shape, k, s, oh, ow)
    _, h, wd, _ = x.shape
    _, t, _ = same_pads(h, k, s)
    _, l, _ = same_pads(wd, k, s)
    return dxp[:, t:t + h, l:l + wd], dw


def build_numpy_cnn(params0):
    ps = [p.copy() for p in params0]
    ms = [np.zeros_like(p) for p in ps]
    vs = [np.zeros_like(p) for p in ps]
    t = [0]

    def step(x, y):
        acts, caches = [x], []
        h = x
        for i, (_, _, _, s) in enumerate(CNN_CONVS):
            z, cache = np_conv_fwd(h, ps[2 * i], s)
            h = np.maximum(z + ps[2 * i + 1], 0)
            acts.append(h)
            caches.append(cache)
        flat = h.reshape(h.shape[0], -1)
        h1 = np.maximum(flat @ ps[6] + ps[7], 0)
        logits = h1 @ ps[8] + ps[9]
        zl = logits - logits.max(1, keepdims=True)
        e = np.exp(zl)
        se = e.sum(1, keepdims=True)
        loss = -np.mean(np.sum(y * (zl - np.log(se)), 1))
        dl = (e / se - y) / np.float32(x.shape[0])
        grads = [None] * len(ps)
        grads[8], grads[9] = h1.T @ dl, dl.sum(0)
        dh1 = (dl @ ps[8].T) * (h1 > 0)
        grads[6], grads[7] = flat.T @ dh1, dh1.sum(0)
        dh = (dh1 @ ps[6].T).reshape(h.shape)
        for i in reversed(range(len(CNN_CONVS))):
            dz = dh * (acts[i + 1] > 0)
            grads[2 * i + 1] = dz.sum((0, 1, 2))
            dh, grads[2 * i] = np_conv_bwd(dz, acts[i], ps[2 * i], CNN_CONVS[i][3], caches[i],
                                           need_dx=i > 0)
        t[0] += 1
        lr = CNN_LR * np.sqrt(1 - ADAM_B2 ** t[0]) / (1 - ADAM_B1 ** t[0])
        for p, g, m, v in zip(ps, grads, ms, vs):
            m *= ADAM_B1
            m += (1 - ADAM_B1) * g
            v *= ADAM_B2
            v += (1 - ADAM_B2) * (g * g)
            p -= (lr * m / (np.sqrt(v) + ADAM_EPS)).astype(np.float32)
        return loss

    return step, (lambda: [p.copy() for p in ps]), float


# ---- torch eager ----
def build_torch_cnn(params0):
    import torch
    import torch.nn.functional as tF
    tp = []
    for i, p in enumerate(params0):
        a = torch.tensor(p)
        if a.dim() == 4:
            a = a.permute(3, 2, 0, 1).contiguous()          # HWIO -> OIHW
        tp.append(a.requires_grad_(True))
    opt = torch.optim.Adam(tp, lr=CNN_LR, betas=(ADAM_B1, ADAM_B2), eps=ADAM_EPS)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        h = x
        for i, (k, _, _, s) in enumerate(CNN_CONVS):
            _, t, b = same_pads(h.shape[2], k, s)
            _, l, r = same_pads(h.shape[3], k, s)
            h = tF.relu(tF.conv2d(tF.pad(h, (l, r, t, b)), tp[2 * i], tp[2 * i + 1], stride=s))
        h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)   # NHWC order, as flowjit's
        h = tF.relu(torch.addmm(tp[7], h, tp[6]))
        loss = tF.cross_entropy(torch.addmm(tp[9], h, tp[8]), y)
        loss.backward()
        opt.step()
        return loss

    def params():
        out = []
        for a in tp:
            a = a.detach()
            out.append((a.permute(2, 3, 1, 0) if a.dim() == 4 else a).numpy().copy())
        return out

    info = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    return step, params, (lambda l: float(l.detach())), info


def torch_cnn_batches(batches):
    import torch
    return [(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)) for x, y in batches]


# ---- jax jit ----
def build_jax_cnn(params0):
    import jax
    import jax.numpy as jnp
    cpu = jax.devices("cpu")[0]

    def loss_fn(ps, x, y):
        h = x
        for i, (_, _, _, s) in enumerate(CNN_CONVS):
            h = jax.lax.conv_general_dilated(h, ps[2 * i], (s, s), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jax.nn.relu(h + ps[2 * i + 1])
        h = jax.nn.relu(h.reshape(h.shape[0], -1) @ ps[6] + ps[7])
        logits = h @ ps[8] + ps[9]
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits, axis=1), axis=1))

    @jax.jit
    def jstep(ps, ms, vs, t, x, y):
        loss, gs = jax.value_and_grad(loss_fn)(ps, x, y)
        t = t + 1
        lr = CNN_LR * jnp.sqrt(1 - ADAM_B2 ** t) / (1 - ADAM_B1 ** t)
        ms = [ADAM_B1 * m + (1 - ADAM_B1) * g for m, g in zip(ms, gs)]
        vs = [ADAM_B2 * v + (1 - ADAM_B2) * g * g for v, g in zip(vs, gs)]
        ps = [p - lr * m / (jnp.sqrt(v) + ADAM_EPS) for p, m, v in zip(ps, ms, vs)]
        return ps, ms, vs, t, loss

    state = {"ps": [jax.device_put(p, cpu) for p in params0],
             "ms": [jax.device_put(np.zeros_like(p), cpu) for p in params0],
             "vs": [jax.device_put(np.zeros_like(p), cpu) for p in params0],
             "t": jax.device_put(np.float32(0), cpu)}
    placed = {}

    def step(x, y):
        key = id(x)
        if key not in placed:
            placed[key] = (jax.device_put(x, cpu), jax.device_put(y, cpu))
        out = jstep(state["ps"], state["ms"], state["vs"], state["t"], *placed[key])
        jax.block_until_ready(out)
        state["ps"], state["ms"], state["vs"], state["t"], loss = out
        return loss

    return step, (lambda: [np.asarray(p) for p in state["ps"]]), float, _jax_info(jax)


def _timed_rows(cfg, title, key, calls, infos, first_s, notes, t_check=None):
    busy = busy_note()
    t, n_timed, cores = timed_steps(cfg, calls)
    if t_check:
        t_check()
    t_fj = t["flowjit"]
    rows = [Result(f"{title} vs numpy im2col", t_fj, t["numpy"], compile_s=first_s,
                   notes=f"{n_timed} steps; cpu/wall flowjit {cores['flowjit']:.1f}, numpy "
                         f"{cores['numpy']:.1f}; {notes}{busy}")]
    base = [k for k in ("torch", "jax") if k in t]
    if base:
        best = min(t[k] for k in base)
        rows.append(Result(f"{key} vs best of " + " / ".join(base), t_fj, best,
                           target="ratio >= 1", ok=best >= t_fj,
                           notes="; ".join(f"{k} {t[k] * 1e3:.2f} ms ({infos[k]}; cpu/wall "
                                           f"{cores[k]:.1f})" for k in base)))
    else:
        rows[0].target, rows[0].ok = "faster than torch & jax", None
    for k in base:
        label = "torch eager" if k == "torch" else "jax jit"
        rows.append(Result(f"{key} vs {label}", t_fj, t[k], notes=infos[k]))
    return rows


@register
def bench_conv_cnn_step(cfg):
    params0 = cnn_init()
    batches = cnn_batches()
    fj_step, fj_params, fj_loss = build_flowjit_cnn(params0)
    fj_call = Cycler(fj_step, batches)
    before = fj.stats()
    first_s, l0 = first_call_time(fj_call)
    st_first = _stats_delta(before)
    fj_losses = [fj_loss(l0)] + [fj_loss(fj_call()) for _ in range(WARMUP_CALLS - 1)]
    st_warm = _stats_delta(before)

    np_step, np_params, np_loss = build_numpy_cnn(params0)
    np_call = Cycler(np_step, batches)
    np_losses = [np_loss(np_call()) for _ in range(WARMUP_CALLS)]
    # float32 sums in different orders, amplified by Adam's normalised steps: the losses
    # over the warm-up steps agree to about 1e-4 when everything is right
    check_close("cnn flowjit vs numpy losses", np.array(fj_losses), np.array(np_losses),
                rtol=2e-3, atol=1e-4)

    calls = [("flowjit", fj_call), ("numpy", np_call)]
    infos = {}
    for label, build, wrap in (("torch", build_torch_cnn, torch_cnn_batches), ("jax", build_jax_cnn, None)):
        if _import_optional(cfg, label) is None:
            continue
        try:
            step, params, to_float, info = build(params0)
            call = Cycler(step, wrap(batches) if wrap else batches)
            t0 = time.perf_counter()
            losses = [to_float(call())]
            base_first = time.perf_counter() - t0
            losses += [to_float(call()) for _ in range(WARMUP_CALLS - 1)]
            check_close(f"cnn {label} vs numpy losses", np.array(losses), np.array(np_losses),
                        rtol=2e-3, atol=1e-4)
        except Exception as e:
            cfg.skip(f"{label} (cnn)", f"failed: {_err_line(e)}")
            continue
        calls.append((label, call))
        infos[label] = f"{info}; first call {base_first:.2f} s"

    def finite():
        if not all(np.isfinite(p).all() for p in fj_params()):
            raise AssertionError("cnn: flowjit parameters not finite after timing")
    notes = (f"first call {first_s:.2f} s (compile_seconds +{st_first['compile_seconds']:.2f}, "
             f"compiles +{st_first['compiles']}); warm-up compile_seconds "
             f"+{st_warm['compile_seconds']:.2f}")
    return _timed_rows(cfg, "train small CNN b64 28x28 Adam", "train small CNN", calls, infos,
                       first_s, notes, finite)


# --------------------------------------------------------------------------------------
# 2. one conv2d layer, forward + backward
# --------------------------------------------------------------------------------------
def _layer_inputs(seed=60):
    L = LAYER
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((L["batch"], L["side"], L["side"], L["cin"])).astype(np.float32)
    w = (rng.standard_normal((L["k"], L["k"], L["cin"], L["cout"])) * 0.1).astype(np.float32)
    g = rng.standard_normal((L["batch"], L["side"], L["side"], L["cout"])).astype(np.float32)
    return x, w, g


def build_flowjit_layer():
    @fj.jit
    def conv_fwd_bwd(x, w, g):
        with fj.GradientTape() as tape:
            tape.watch(x)
            tape.watch(w)
            y = fj.nn.conv2d(x, w, 1, "SAME")
        dx, dw = tape.gradient(y, [x, w], output_gradients=g)
        return y, dx, dw
    return conv_fwd_bwd, (lambda r: [t.numpy() for t in r])


def numpy_layer(x, w, g):
    y, cache = np_conv_fwd(x, w, 1)
    dx, dw = np_conv_bwd(g, x, w, 1, cache)
    return y, dx, dw


def build_torch_layer():
    import torch
    import torch.nn.functional as tF
    k = LAYER["k"]

    def call(x, w, g):
        x = x.detach().requires_grad_(True)
        w = w.detach().requires_grad_(True)
        y = tF.conv2d(x, w, padding=k // 2)
        dx, dw = torch.autograd.grad(y, (x, w), g)
        return y.detach(), dx, dw

    def place(x, w, g):
        return (torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                torch.from_numpy(w.transpose(3, 2, 0, 1).copy()),
                torch.from_numpy(g.transpose(0, 3, 1, 2).copy()))

    def to_np(r):
        y, dx, dw = (a.numpy() for a in r)
        return [y.transpose(0, 2, 3, 1), dx.transpose(0, 2, 3, 1), dw.transpose(2, 3, 1, 0)]
    return call, place, to_np, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def build_jax_layer():
    import jax
    cpu = jax.devices("cpu")[0]

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    @jax.jit
    def fwd_bwd(x, w, g):
        y, vjp = jax.vjp(conv, x, w)
        dx, dw = vjp(g)
        return y, dx, dw

    def call(x, w, g):
        return jax.block_until_ready(fwd_bwd(x, w, g))
    return (call, lambda *a: tuple(jax.device_put(v, cpu) for v in a),
            lambda r: [np.asarray(a) for a in r], _jax_info(jax))


def _check_layer(name, got, want):
    for part, a, b in zip(("y", "dx", "dw"), got, want):
        check_close(f"{name} {part}", a, b, rtol=1e-3, atol=1e-3 * float(np.abs(b).max()))


@register
def bench_conv_layer(cfg):
    x, w, g = _layer_inputs()
    want = numpy_layer(x, w, g)
    fn, to_np = build_flowjit_layer()
    before = fj.stats()
    first_s, r = first_call_time(lambda: fn(x, w, g))
    st_first = _stats_delta(before)
    _check_layer("conv layer flowjit", to_np(r), want)
    for _ in range(WARMUP_CALLS - 1):
        r = fn(x, w, g)
    _check_layer("conv layer flowjit (warm)", to_np(r), want)

    calls = [("flowjit", lambda: fn(x, w, g)), ("numpy", lambda: numpy_layer(x, w, g))]
    infos = {}
    for label, build in (("torch", build_torch_layer), ("jax", build_jax_layer)):
        if _import_optional(cfg, label) is None:
            continue
        try:
            call, place, bto_np, info = build()
            args = place(x, w, g)
            t0 = time.perf_counter()
            br = call(*args)
            base_first = time.perf_counter() - t0
            _check_layer(f"conv layer {label}", bto_np(br), want)
        except Exception as e:
            cfg.skip(f"{label} (conv layer)", f"failed: {_err_line(e)}")
            continue
        calls.append((label, (lambda c, a: (lambda: c(*a)))(call, args)))
        infos[label] = f"{info}; first call {base_first:.2f} s"
    L = LAYER
    flops = 3 * 2 * L["batch"] * L["side"] ** 2 * L["k"] ** 2 * L["cin"] * L["cout"]
    notes = (f"{flops / 1e9:.2f} GFLOP per call; first call {first_s:.2f} s (compile_seconds "
             f"+{st_first['compile_seconds']:.2f})")
    rows = _timed_rows(cfg, "conv2d fwd+bwd b32 28x28 32->64 3x3", "conv2d fwd+bwd", calls, infos,
                       first_s, notes)
    rows[0].notes += f"; flowjit {flops / rows[0].flowjit_s / 1e9:.1f} GFLOP/s"
    return rows
