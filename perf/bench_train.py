"""Training-step benchmarks: one full step (forward + backward + parameter update) of
softmax regression, an MLP and an autoencoder, and a fused loss+gradient of an
elementwise function, each as

  flowjit   an `@fj.jit` step: Variables + GradientTape + optimizer inside the jitted
            function (as in examples/mlp_digits.py);
  numpy     a hand-written forward / backward / in-place update (the baseline column);
  torch     PyTorch eager with torch.optim, when importable;
  jax       a `jax.jit` step with jax.value_and_grad and a hand-written update (no
            optax), on the CPU, when importable.

All float32, fixed seeds, identical initial weights and the same sequence of batches
for every implementation. Before timing, each flowjit step is called WARMUP_CALLS times
(its first call traces and compiles the forward and backward functions; from call
`fj.config.compile_entry_after` (3) on, the entry function may be compiled too, where
its Python overhead matters), and its parameters and losses after those steps are
checked against NumPy's (rtol 1e-4); the torch and jax baselines are checked the same
way (a mismatch there skips that baseline, it does not fail the run). The fused
benchmark checks the loss and both gradients against NumPy's analytic gradient.

One row per baseline: ratio = baseline / flowjit step time, so > 1 means flowjit is
faster. The target on the torch and jax rows (ratio >= 1 on both) is "faster than the
best of PyTorch eager and JAX jit". The "compile s" column is the first call's wall
time; the notes give fj.stats()['compile_seconds'] for that call and for the whole
warm-up (which includes the entry-tier compile, where one happens).

Timing: all implementations in one process, taking turns in blocks, each block after
an untimed settling time (see median_step_times). On a small machine that other work
keeps busy, multi-threaded BLAS stalls (steps become multiples of a scheduler time
slice); rows then say "machine busy", and `python -m perf --threads 1` gives usable
ratios (it caps NumPy, Numba and torch; XLA keeps its own pool: see "cpu/wall" in the
notes, the cores each implementation kept busy while timed).
"""
import os
import statistics
import time

import numpy as np

import flowjit as fj
from perf.common import Result, StepTime, check_close, first_call_time, register

WARMUP_CALLS = 5          # >= fj.config.compile_entry_after + 2: both tiers have run
N_BATCHES = 4             # distinct batches cycled through by every implementation
MLP_COMPILE_TARGET_S = 3.0
N_FUSED = 4 * 1024 * 1024
N_FUSED_QUICK = 1024 * 1024


def _import_optional(cfg, label):
    """The torch / jax module, or None (and the skip recorded)."""
    try:
        return __import__(label)
    except ImportError as e:
        cfg.skip(label, f"not importable ({e})")
        return None


def _jax_info(jax):
    return f"jax {jax.__version__} jit on cpu"


def _err_line(e):
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _stats_delta(before):
    after = fj.stats()
    return {k: after[k] - before[k] for k in after}


# --------------------------------------------------------------------------------------
# timing: blocks of steps, implementations in round-robin
# --------------------------------------------------------------------------------------

def median_step_times(calls, rounds, min_block, settle_s=0.0, block_s=0.0, warm_s=0.0,
                      max_block=400):
    """({name: median seconds per step, a StepTime that also carries the mean}, timed
    steps per implementation,
    {name: process CPU seconds / wall seconds over its timed steps}) for (name, step_fn)
    pairs. The last is about how many cores an implementation kept busy (spinning
    thread pools included); it shows, e.g., that `--threads 1` does not cap XLA.

    The implementations take turns, `rounds` times, each round starting with the next
    one: each runs untimed steps for `settle_s` seconds (at least one), then timed steps
    for `block_s` seconds (at least `min_block`, at most `max_block`). Taking turns keeps
    the ratios fair when the load on a shared machine drifts. The settle time is there
    because each library has its own thread pool (NumPy's OpenBLAS, the SciPy OpenBLAS
    that flowjit's Numba code calls, Numba's threads, torch's OpenMP, XLA's) and an idle
    OpenBLAS pool keeps spinning for up to ~0.1 s after its last call: on a 2-core
    machine the next library's threads would then wait for a core, and that is not its
    step time.
    Before all that, `warm_s` seconds of untimed turns: right after set-up (compiles,
    the baselines' first calls) every step runs slower for a while."""
    now = time.perf_counter
    t_end = now() + warm_s
    while True:
        for _, fn in calls:
            fn()
        if now() >= t_end:
            break
    times = {name: [] for name, _ in calls}
    cpu = {name: 0.0 for name, _ in calls}
    for r in range(rounds):
        # each round starts one implementation further on, so none always runs right
        # after the same other one (whose thread pool may still be spinning down: in a
        # fixed order flowjit's default always followed JAX's turn)
        for name, fn in calls[r % len(calls):] + calls[:r % len(calls)]:
            t_end = now() + settle_s
            fn()
            while now() < t_end:
                fn()
            ts = times[name]
            c0 = time.process_time()
            t_blk = now()
            k = 0
            while k < max_block and (k < min_block or now() - t_blk < block_s):
                t0 = now()
                fn()
                ts.append(now() - t0)
                k += 1
            cpu[name] += time.process_time() - c0
    n = len(next(iter(times.values())))
    cores = {name: cpu[name] / max(sum(times[name]), 1e-12) for name in times}
    return ({name: StepTime(statistics.median(ts), statistics.fmean(ts)) for name, ts in times.items()},
            n, cores)


def busy_note():
    """'; machine busy: load 3.4 on 2 cpus' when other work competes for the cores.
    Multi-threaded BLAS then waits whole scheduler time slices at its barriers (steps
    become multiples of ~4-8 ms); `--threads 1` gives comparable numbers there."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    ncpu = os.cpu_count() or 1
    return f"; machine busy: load {load:.1f} on {ncpu} cpus" if load > ncpu - 0.5 else ""


def timed_steps(cfg, calls):
    """median_step_times with this run's budget: at least max(cfg.steps, 20) timed steps
    per implementation, in 3 (quick) / 5 (full) turns of at least 0.1 / 0.3 s each,
    after 0.1 / 0.15 s of settling; more steps where they are short.

    Where the run sets `cfg.flowjit_settings` ([(label, fj.config.threads value)], the
    contended mode), the flowjit step also takes its turns under each of those thread
    settings, between the others' turns: their times go to `cfg.setting_times` {label:
    StepTime}, so a setting is compared with the default under the same minutes of the
    busy processes' luck; with a ("one", 1) setting, `cfg.setting_times["paired"]` then
    holds the default-over-one-thread ratios of short paired turns (paired_ratios)."""
    rounds = 3 if cfg.quick else 5
    min_steps = max(cfg.steps, 20)
    settings = cfg.flowjit_settings or []
    own = dict(calls).get("flowjit")
    calls = _with_settings(calls, settings)
    t, n, cores = median_step_times(calls, rounds=rounds, min_block=-(-min_steps // rounds),
                                    settle_s=0.1 if cfg.quick else 0.15,
                                    block_s=0.1 if cfg.quick else 0.3,
                                    warm_s=0.2 if cfg.quick else 0.5)
    cfg.setting_times = {label: t.pop(f"flowjit ({label})") for label, _ in settings}
    if own is not None and ("one", 1) in settings:
        cfg.setting_times["paired"] = paired_ratios(own, _under_threads(own, 1), t["flowjit"],
                                                    seconds=1.5 if cfg.quick else 4.0)
    return t, n, cores


def paired_ratios(default, one, step_s, seconds, min_pairs=8, turn_s=0.02):
    """[default's step time / one thread's] for pairs of short turns, one right after
    the other (which goes first alternating), for `seconds` (at least `min_pairs`
    pairs). Beside busy processes a turn's steps depend on how the scheduler shares the
    cores just then, and that drifts within a second: the long turns of
    median_step_times then leave a ratio of two settings that do the same work at
    0.7-1.3 from one run to the next, where two turns a few milliseconds apart see the
    same luck. A turn is about `turn_s` of steps (at least one) after one untimed step:
    a changed thread setting samples the machine on its first step (threads.begin), a
    cost the default pays once per 50 ms in a run, not on every step."""
    per_turn = max(1, min(8, int(turn_s / max(step_s, 1e-6))))

    def turn(fn):
        fn()
        ts = []
        for _ in range(per_turn):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)
    out = []
    t_end = time.perf_counter() + seconds
    while len(out) < min_pairs or time.perf_counter() < t_end:
        if len(out) % 2:
            o, d = turn(one), turn(default)
        else:
            d, o = turn(default), turn(one)
        out.append(d / o)
    return out


def _with_settings(calls, settings):
    """calls with, after flowjit's, flowjit's step under each thread setting."""
    out = []
    for name, fn in calls:
        out.append((name, fn))
        if name == "flowjit":
            out += [(f"flowjit ({label})", _under_threads(fn, value)) for label, value in settings]
    return out


def _under_threads(fn, value):
    def call():
        saved = fj.config.threads
        fj.config.threads = value
        try:
            return fn()
        finally:
            fj.config.threads = saved
    return call


# --------------------------------------------------------------------------------------
# the dense models: sizes, activation per layer, loss, optimizer
# --------------------------------------------------------------------------------------

class Model:
    def __init__(self, key, title, sizes, acts, loss, batch, opt, lr, seed):
        self.key, self.title = key, title
        self.sizes, self.acts, self.loss, self.batch = sizes, acts, loss, batch
        self.opt, self.lr, self.seed = opt, lr, seed
        self.rho, self.eps = 0.9, 1e-7            # RMSprop: TF2 defaults

    def init_params(self):
        """[w1, b1, w2, b2, ...] float32, w ~ N(0, 1/fan_in), b ~ N(0, 0.01)."""
        rng = np.random.default_rng(self.seed)
        ps = []
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            ps.append((rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32))
            ps.append((rng.standard_normal(n_out) * 0.01).astype(np.float32))
        return ps

    def batches(self):
        """N_BATCHES (x, y) pairs: x uniform [0, 1) like pixel intensities, y one-hot
        labels (x itself for the autoencoder)."""
        rng = np.random.default_rng(self.seed + 1000)
        out = []
        for _ in range(N_BATCHES):
            x = rng.random((self.batch, self.sizes[0]), dtype=np.float32)
            if self.loss == "xent":
                y = np.eye(self.sizes[-1], dtype=np.float32)[rng.integers(0, self.sizes[-1], self.batch)]
            else:
                y = x
            out.append((x, y))
        return out


MODELS = [
    Model("softmax", "softmax reg 784-10 b100 SGD", (784, 10), (None,), "xent",
          100, "sgd", 0.5, seed=10),
    Model("mlp", "mlp 784-256-128-10 sigm b128 SGD", (784, 256, 128, 10),
          ("sigmoid", "sigmoid", None), "xent", 128, "sgd", 0.1, seed=20),
    Model("ae", "autoenc 784-256-64-256-784 b256 RMSprop", (784, 256, 64, 256, 784),
          ("sigmoid",) * 4, "mse", 256, "rmsprop", 0.01, seed=30),
]


class Cycler:
    """step() runs the wrapped step function on the next batch of the cycle."""

    def __init__(self, fn, batches):
        self.fn, self.batches, self.i = fn, batches, 0

    def __call__(self):
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        return self.fn(x, y)


# ---- flowjit ----

def build_flowjit(m, params0):
    """(step(x, y) -> loss tensor, params() -> list of arrays); a fresh jitted step
    with its own Variables and optimizer."""
    vs = [fj.Variable(p.copy(), name=f"{m.key}_p{i}") for i, p in enumerate(params0)]
    if m.opt == "sgd":
        opt = fj.optimizers.SGD(m.lr)
    else:
        opt = fj.optimizers.RMSprop(m.lr, rho=m.rho, epsilon=m.eps)
    n_layers = len(m.acts)

    @fj.jit
    def train_step(x, y):
        with fj.GradientTape() as tape:
            h = x
            for i in range(n_layers):
                h = fj.matmul(h, vs[2 * i]) + vs[2 * i + 1]
                if m.acts[i] == "sigmoid":
                    h = fj.sigmoid(h)
            if m.loss == "xent":
                loss = fj.reduce_mean(fj.nn.softmax_cross_entropy_with_logits(y, h))
            else:
                loss = fj.reduce_mean(fj.square(h - y))
        opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
        return loss

    return train_step, (lambda: [v.numpy() for v in vs]), (lambda l: float(l))


# ---- numpy (the baseline) ----

def _np_sigmoid(z):
    # float32 in, float32 out (NumPy 2 keeps Python scalars weak)
    return 1.0 / (1.0 + np.exp(-z))


def build_numpy(m, params0):
    ps = [p.copy() for p in params0]
    ms = [np.zeros_like(p) for p in ps]
    n_layers = len(m.acts)
    lr = np.float32(m.lr)
    rho, one_m_rho, eps = np.float32(m.rho), np.float32(1.0 - m.rho), np.float32(m.eps)

    def step(x, y):
        hs = [x]
        h = x
        for i in range(n_layers):
            h = h @ ps[2 * i] + ps[2 * i + 1]
            if m.acts[i] == "sigmoid":
                h = _np_sigmoid(h)
            hs.append(h)
        if m.loss == "xent":
            z = h - h.max(axis=1, keepdims=True)
            e = np.exp(z)
            s = e.sum(axis=1, keepdims=True)
            logp = z - np.log(s)
            loss = -np.mean(np.sum(y * logp, axis=1))
            dz = (e / s - y) * np.float32(1.0 / h.shape[0])
        else:
            d = h - y
            loss = np.mean(d * d)
            dz = d * np.float32(2.0 / d.size)
        grads = [None] * len(ps)
        for i in reversed(range(n_layers)):
            if m.acts[i] == "sigmoid":
                a = hs[i + 1]
                dz = dz * a * (1.0 - a)
            grads[2 * i] = hs[i].T @ dz
            grads[2 * i + 1] = dz.sum(axis=0)
            if i:
                dz = dz @ ps[2 * i].T
        for p, g, s in zip(ps, grads, ms):
            if m.opt == "sgd":
                p -= lr * g
            else:
                s *= rho
                s += one_m_rho * (g * g)
                p -= lr * g / (np.sqrt(s) + eps)
        return loss

    return step, (lambda: [p.copy() for p in ps]), float


# ---- torch eager ----

def build_torch(m, params0):
    import torch
    import torch.nn.functional as tF
    tp = [torch.tensor(p, requires_grad=True) for p in params0]
    if m.opt == "sgd":
        opt = torch.optim.SGD(tp, lr=m.lr)
    else:
        opt = torch.optim.RMSprop(tp, lr=m.lr, alpha=m.rho, eps=m.eps)
    n_layers = len(m.acts)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        h = x
        for i in range(n_layers):
            h = torch.addmm(tp[2 * i + 1], h, tp[2 * i])
            if m.acts[i] == "sigmoid":
                h = torch.sigmoid(h)
        if m.loss == "xent":
            loss = tF.cross_entropy(h, y)          # probability (one-hot) targets
        else:
            loss = tF.mse_loss(h, y)
        loss.backward()
        opt.step()
        return loss

    info = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    return (step, (lambda: [p.detach().numpy().copy() for p in tp]),
            (lambda l: float(l.detach())), info)


# ---- jax jit ----

def build_jax(m, params0):
    import jax
    import jax.numpy as jnp
    cpu = jax.devices("cpu")[0]
    n_layers = len(m.acts)
    lr, rho, eps = m.lr, m.rho, m.eps

    def loss_fn(ps, x, y):
        h = x
        for i in range(n_layers):
            h = h @ ps[2 * i] + ps[2 * i + 1]
            if m.acts[i] == "sigmoid":
                h = jax.nn.sigmoid(h)
        if m.loss == "xent":
            return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(h, axis=1), axis=1))
        return jnp.mean(jnp.square(h - y))

    @jax.jit
    def jstep(ps, ms, x, y):
        loss, gs = jax.value_and_grad(loss_fn)(ps, x, y)
        if m.opt == "sgd":
            ps = [p - lr * g for p, g in zip(ps, gs)]
        else:
            ms = [rho * s + (1.0 - rho) * g * g for s, g in zip(ms, gs)]
            ps = [p - lr * g / (jnp.sqrt(s) + eps) for p, g, s in zip(ps, gs, ms)]
        return ps, ms, loss

    state = {"ps": [jax.device_put(p, cpu) for p in params0],
             "ms": [jax.device_put(np.zeros_like(p), cpu) for p in params0]}
    placed = {}

    def step(x, y):
        # batches are committed to the CPU once (like torch.from_numpy, no per-step copy)
        key = id(x)
        if key not in placed:
            placed[key] = (jax.device_put(x, cpu), jax.device_put(y, cpu))
        jx, jy = placed[key]
        ps, ms, loss = jstep(state["ps"], state["ms"], jx, jy)
        jax.block_until_ready((ps, ms, loss))    # async dispatch: wait inside the timing
        state["ps"], state["ms"] = ps, ms
        return loss

    return step, (lambda: [np.asarray(p) for p in state["ps"]]), float, _jax_info(jax)


def _torch_batches(batches):
    import torch
    return [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]


# --------------------------------------------------------------------------------------
# correctness
# --------------------------------------------------------------------------------------

def _check_params(name, got, want, rtol, atol_frac):
    for i, (g, w) in enumerate(zip(got, want)):
        check_close(f"{name} param {i}", g, w, rtol=rtol,
                    atol=atol_frac * float(np.max(np.abs(w))))


def _check_losses(name, got, want, rtol):
    check_close(f"{name} losses", np.array(got, np.float64), np.array(want, np.float64),
                rtol=rtol, atol=rtol * max(abs(v) for v in want))


# --------------------------------------------------------------------------------------
# benchmarks 1-3
# --------------------------------------------------------------------------------------

def _bench_model(cfg, m):
    params0 = m.init_params()
    batches = m.batches()

    # flowjit: first call (trace + forward/backward compile), then the rest of the
    # warm-up (from its 3rd call on, the entry tier may be compiled).
    fj_step, fj_params, fj_loss = build_flowjit(m, params0)
    fj_call = Cycler(fj_step, batches)
    before = fj.stats()
    warm_process = before["compiles"] + before["disk_cache_hits"] > 0
    first_s, l0 = first_call_time(fj_call)
    st_first = _stats_delta(before)
    fj_losses = [fj_loss(l0)]
    t0 = time.perf_counter()
    for _ in range(WARMUP_CALLS - 1):
        fj_losses.append(fj_loss(fj_call()))
    rest_s = time.perf_counter() - t0
    st_warm = _stats_delta(before)

    np_step, np_params, np_loss = build_numpy(m, params0)
    np_call = Cycler(np_step, batches)
    np_losses = [np_loss(np_call()) for _ in range(WARMUP_CALLS)]
    want = np_params()
    _check_params(f"{m.key} flowjit vs numpy after {WARMUP_CALLS} steps", fj_params(), want,
                  rtol=1e-4, atol_frac=1e-5)
    _check_losses(f"{m.key} flowjit vs numpy", fj_losses, np_losses, rtol=1e-4)

    calls = [("flowjit", fj_call), ("numpy", np_call)]
    infos = {}
    for label, build, wrap in (("torch", build_torch, _torch_batches),
                               ("jax", build_jax, None)):
        if _import_optional(cfg, label) is None:
            continue
        try:
            step, params, to_float, info = build(m, params0)
            call = Cycler(step, wrap(batches) if wrap else batches)
            t0 = time.perf_counter()
            losses = [to_float(call())]
            base_first = time.perf_counter() - t0
            losses += [to_float(call()) for _ in range(WARMUP_CALLS - 1)]
            _check_params(f"{m.key} {label} vs numpy", params(), want, rtol=1e-4, atol_frac=1e-5)
            _check_losses(f"{m.key} {label} vs numpy", losses, np_losses, rtol=1e-4)
        except Exception as e:    # a broken optional baseline is skipped, not a flowjit failure
            cfg.skip(f"{label} ({m.key})", f"failed: {_err_line(e)}")
            continue
        calls.append((label, call))
        infos[label] = f"{info}; first call {base_first:.3f} s"

    busy = busy_note()
    t, n_timed, cores = timed_steps(cfg, calls)

    # The steps keep training during the timing: make sure nothing blew up.
    for name, vals in (("flowjit", fj_params()), ("numpy", np_params())):
        if not all(np.isfinite(v).all() for v in vals):
            raise AssertionError(f"{m.key}: {name} parameters not finite after timing")

    t_fj = t["flowjit"]
    compile_note = (f"first call {first_s:.2f} s (compile_seconds +{st_first['compile_seconds']:.2f}, "
                    f"compiles +{st_first['compiles']}); warm-up {WARMUP_CALLS} calls: "
                    f"compile_seconds +{st_warm['compile_seconds']:.2f}, "
                    f"compiles +{st_warm['compiles']}, calls 2-{WARMUP_CALLS} {rest_s:.2f} s")
    rows = [Result(f"train {m.title} vs numpy", t_fj, t["numpy"], compile_s=first_s,
                   notes=f"{n_timed} steps; cpu/wall flowjit {cores['flowjit']:.1f}, numpy "
                         f"{cores['numpy']:.1f}; " + compile_note + busy)]
    base = [k for k in ("torch", "jax") if k in t]
    if not base:
        rows[0].target, rows[0].ok = "faster than torch & jax", None
    for k in base:
        label = "torch eager" if k == "torch" else "jax jit"
        rows.append(Result(f"train {m.key} vs {label}", t_fj, t[k], compile_s=first_s,
                           target="ratio >= 1", ok=t[k] >= t_fj,
                           notes=f"{infos[k]}; cpu/wall {cores[k]:.1f}"))
    if m.key == "mlp":
        rows.append(Result("compile mlp train step (fwd+bwd) first call", first_s,
                           compile_s=st_first["compile_seconds"],
                           target=f"<= {MLP_COMPILE_TARGET_S:g} s",
                           ok=first_s <= MLP_COMPILE_TARGET_S,
                           notes=f"warm-up total compile_seconds "
                                 f"{st_warm['compile_seconds']:.2f} (incl. entry tier); "
                                 + ("in this process, after earlier compiles (Numba's "
                                    "one-time start-up not in it)" if warm_process else
                                    "first compile of this process (incl. Numba start-up)")))
    return rows


@register
def bench_train_softmax(cfg):
    return _bench_model(cfg, MODELS[0])


@register
def bench_train_mlp(cfg):
    return _bench_model(cfg, MODELS[1])


@register
def bench_train_autoencoder(cfg):
    return _bench_model(cfg, MODELS[2])


# --------------------------------------------------------------------------------------
# 4. fused loss + gradient: sum(tanh(x*y+1)*sigmoid(x) - exp(-y*y)), d/dx, d/dy
# --------------------------------------------------------------------------------------

def _fused_loss(x, y):
    return fj.reduce_sum(fj.tanh(x * y + 1.0) * fj.sigmoid(x) - fj.exp(-y * y))


def build_fused_flowjit():
    vg = fj.value_and_grad(_fused_loss, argnums=(0, 1))

    @fj.jit
    def fused_loss_grad(x, y):
        loss, (gx, gy) = vg(x, y)
        return loss, gx, gy

    return fused_loss_grad, (lambda r: (float(r[0]), r[1].numpy(), r[2].numpy()))


def fused_numpy(x, y):
    t = np.tanh(x * y + 1.0)
    s = 1.0 / (1.0 + np.exp(-x))
    e = np.exp(-y * y)
    ts = t * s
    loss = np.sum(ts - e, dtype=np.float64)
    a = (1.0 - t * t) * s
    gx = a * y + ts * (1.0 - s)
    gy = a * x + 2.0 * y * e
    return loss, gx, gy


def build_fused_torch():
    import torch

    def call(x, y):
        x = x.detach().requires_grad_(True)
        y = y.detach().requires_grad_(True)
        loss = (torch.tanh(x * y + 1.0) * torch.sigmoid(x) - torch.exp(-y * y)).sum()
        gx, gy = torch.autograd.grad(loss, (x, y))
        return loss.detach(), gx, gy
    return (call, (lambda r: (float(r[0]), r[1].numpy(), r[2].numpy())),
            f"torch {torch.__version__}, {torch.get_num_threads()} threads", torch.from_numpy)


def build_fused_jax():
    import jax
    import jax.numpy as jnp
    cpu = jax.devices("cpu")[0]

    def f(x, y):
        return jnp.sum(jnp.tanh(x * y + 1.0) * jax.nn.sigmoid(x) - jnp.exp(-y * y))
    vg = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

    def call(x, y):
        return jax.block_until_ready(vg(x, y))
    return (call, (lambda r: (float(r[0]), np.asarray(r[1][0]), np.asarray(r[1][1]))),
            _jax_info(jax), lambda a: jax.device_put(a, cpu))


def _check_fused(name, got, want):
    loss, gx, gy = got
    wl, wx, wy = want
    # float32 sums of millions of terms in different orders: the loss loosely
    check_close(f"{name} loss", np.float64(loss), wl, rtol=1e-3, atol=1e-4 * abs(wl))
    check_close(f"{name} d/dx", gx, wx, rtol=1e-4, atol=1e-5)
    check_close(f"{name} d/dy", gy, wy, rtol=1e-4, atol=1e-5)


@register
def bench_train_fused_grad(cfg):
    n = N_FUSED_QUICK if cfg.quick else N_FUSED
    rng = np.random.default_rng(40)
    x = rng.standard_normal(n, dtype=np.float32)
    y = rng.standard_normal(n, dtype=np.float32)
    want = fused_numpy(x, y)
    # the NumPy result is float32 except the loss: also check the analytic formula
    # itself once against float64
    w64 = fused_numpy(x.astype(np.float64), y.astype(np.float64))
    check_close("fused numpy f32 vs f64 d/dx", want[1], w64[1], rtol=1e-4, atol=1e-5)

    call, to_np = build_fused_flowjit()
    before = fj.stats()
    first_s, r = first_call_time(lambda: call(x, y))
    st_first = _stats_delta(before)
    _check_fused("fused flowjit (1st call)", to_np(r), want)
    t0 = time.perf_counter()
    for _ in range(WARMUP_CALLS - 1):
        r = call(x, y)
    rest_s = time.perf_counter() - t0
    st_warm = _stats_delta(before)
    _check_fused(f"fused flowjit (call {WARMUP_CALLS})", to_np(r), want)

    calls = [("flowjit", lambda: call(x, y)), ("numpy", lambda: fused_numpy(x, y))]
    infos = {}
    for label, build in (("torch", build_fused_torch), ("jax", build_fused_jax)):
        if _import_optional(cfg, label) is None:
            continue
        try:
            bcall, bto_np, info, place = build()
            bx, by = place(x), place(y)
            t0 = time.perf_counter()
            br = bcall(bx, by)
            base_first = time.perf_counter() - t0
            _check_fused(f"fused {label}", bto_np(br), want)
        except Exception as e:
            cfg.skip(f"{label} (fused)", f"failed: {_err_line(e)}")
            continue
        calls.append((label, (lambda f, a, b: (lambda: f(a, b)))(bcall, bx, by)))
        infos[label] = f"{info}; first call {base_first:.3f} s"

    busy = busy_note()
    t, n_timed, cores = timed_steps(cfg, calls)

    # bytes that must move at least: read x, y; write d/dx, d/dy
    nbytes = 4 * 4 * n

    def gbps(s):
        return nbytes / s / 1e9
    t_fj = t["flowjit"]
    size = f"{n // (1024 * 1024)}M"
    rows = [Result(f"train fused loss+grad 2x{size} f32 vs numpy", t_fj, t["numpy"],
                   gbps=gbps(t_fj), compile_s=first_s,
                   notes=f"{n_timed} steps; numpy {gbps(t['numpy']):.1f} GB/s; cpu/wall flowjit "
                         f"{cores['flowjit']:.1f}, numpy {cores['numpy']:.1f}; first call "
                         f"{first_s:.2f} s (compile_seconds +{st_first['compile_seconds']:.2f}); "
                         f"warm-up compile_seconds +{st_warm['compile_seconds']:.2f}, compiles "
                         f"+{st_warm['compiles']}, calls 2-{WARMUP_CALLS} {rest_s:.2f} s{busy}")]
    base = [k for k in ("torch", "jax") if k in t]
    if not base:
        rows[0].target, rows[0].ok = "faster than torch & jax", None
    for k in base:
        label = "torch eager" if k == "torch" else "jax jit"
        rows.append(Result(f"train fused {size} vs {label}", t_fj, t[k], gbps=gbps(t_fj),
                           compile_s=first_s, target="ratio >= 1", ok=t[k] >= t_fj,
                           notes=f"{infos[k]}; {k} {gbps(t[k]):.1f} GB/s, cpu/wall {cores[k]:.1f}"))
    return rows
