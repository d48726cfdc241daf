"""`python -m perf --contend K`: the training benchmarks beside K busy processes that
the run starts itself, each row next to the same row on the quiet machine.

A learner's laptop or a shared CI runner is rarely quiet. flowjit's parallel work runs
on a help-first pool (the caller never waits for a descheduled worker), and by default
fewer workers help while other processes want the cores (backends/cpu/threads.py).
In one process: a quiet pass; then, beside K busy processes, ROUNDS passes in which
flowjit's step takes its turns under three settings, between the baselines' turns:
flowjit's default ("auto"); every thread of the pool working (the count fixed, no
adapting: what help-first alone gives); flowjit on one thread (what the default must
never be slower than). Baselines (NumPy, and PyTorch / JAX where installed) take their
turns in the same round-robin (bench_train.timed_steps), so every figure of a row comes
from the same minutes of the busy processes' luck. After each row's turns, the default
and one thread alternate in short turns for a few seconds (bench_train.paired_ratios):
the ratio of two turns a few milliseconds apart, where the long turns' luck differs.
The tables end with a verdict line a benchmark (`verdicts`). The busy processes are plain Python
loops with a deadline of their own (they stop even if this process dies) and are
killed at the end."""
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

from perf import common

TRAINING = ("bench_train_softmax", "bench_train_mlp", "bench_train_autoencoder",
            "bench_train_fused_grad", "bench_conv_cnn_step", "bench_train_lstm")
# a busy loop with a deadline of its own, that also ends when its parent does (killed
# runs leave no spinner behind)
SPIN = ("import os, sys, time\nt, parent = float(sys.argv[1]), os.getppid()\n"
        "while time.time() < t and os.getppid() == parent:\n    pass\n")
MAX_SECONDS = 1800
ROUNDS = 3


@contextmanager
def busy(k):
    """K processes spinning on a core each, until the block ends (at most MAX_SECONDS)."""
    deadline = time.time() + MAX_SECONDS
    procs = [subprocess.Popen([sys.executable, "-c", SPIN, str(deadline)]) for _ in range(k)]
    try:
        time.sleep(0.5)              # let them start running
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _run(benches, cfg):
    """{row name: Result}, each with `settings`: {label: StepTime} of flowjit's step under
    the run's thread settings (empty in the quiet pass)."""
    rows = {}
    for bench in benches:
        print(f"[perf]   {bench.__name__} ...", file=sys.stderr, flush=True)
        cfg.setting_times = {}
        for r in bench(cfg):
            if r.flowjit_s and r.baseline_s:          # rows with a baseline to compare
                r.settings = dict(cfg.setting_times)
                r.bench = bench.__name__
                rows[r.name] = r
    return rows


def run(cfg, k, only):
    """The passes; returns (table text, rows as dicts). Beside the busy processes, ROUNDS
    passes, flowjit's settings taking turns inside each (timed_steps); each row keeps the
    median of its passes."""
    from flowjit.backends.cpu import threads
    benches = [b for b in common.REGISTRY if b.__name__ in TRAINING
               and (not only or any(s in b.__name__ for s in only))]
    cfg.cold_processes = False          # (the LSTM's cold-compile rows have no baseline)
    print("[perf] quiet pass", file=sys.stderr, flush=True)
    quiet = _run(benches, cfg)
    passes = []
    cfg.flowjit_settings = [("all", threads.state["size"] or threads._cores()), ("one", 1)]
    with busy(k):
        try:
            for r in range(ROUNDS):
                print(f"[perf] beside {k} busy processes, pass {r + 1}/{ROUNDS}", file=sys.stderr, flush=True)
                passes.append(_run(benches, cfg))
        finally:
            cfg.flowjit_settings = None
    return table(quiet, passes, k)


def _values(runs, name, get):
    return [v for v in (get(rows[name]) for rows in runs if name in rows) if v is not None]


def _median_of(runs, name, get):
    vals = _values(runs, name, get)
    return statistics.median(vals) if vals else None


def _mean_of(runs, name, get):
    """The mean step time over every pass (each pass's mean, weighted alike)."""
    vals = [v for v in (getattr(x, "mean", None) for x in _values(runs, name, get)) if v is not None]
    return statistics.fmean(vals) if vals else None


def _ms(s):
    return "-" if s is None else f"{s * 1e3:.2f} ms"


def _ratio(a, b):
    return "-" if not (a and b) else f"{a / b:.2f}"


def paired(passes, name):
    """(median, 2.5th and 97.5th percentiles of the median over resamples, pair count)
    of the default-over-one-thread ratios of every pass's paired turns
    (bench_train.paired_ratios), or None."""
    import numpy as np
    r = np.array([x for rows in passes if name in rows for x in rows[name].settings.get("paired", [])])
    if not r.size:
        return None
    rng = np.random.default_rng(0)
    boot = np.median(rng.choice(r, (2000, r.size)), axis=1)
    return float(np.median(r)), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)), int(r.size)


def _paired_cell(p):
    return "-" if p is None else f"{p[0]:.3f} ({p[1]:.3f}-{p[2]:.3f}, {p[3]})"


def table(quiet, passes, k):
    """Two tables: medians of steps, then means (a run's time per step, which counts
    the time slices the busy processes take; see common.StepTime). The last column,
    the same in both, is the median ratio of the default to one thread over short
    paired turns, with its 95% interval and the number of pairs."""
    cells, out = {"median": [], "mean": []}, []
    for name, q in quiet.items():
        got = {}
        pr = paired(passes, name)
        for stat, of in (("median", _median_of), ("mean", _mean_of)):
            c = of(passes, name, lambda r: r.flowjit_s)
            b = of(passes, name, lambda r: r.baseline_s)
            a = of(passes, name, lambda r: r.settings.get("all"))
            o = of(passes, name, lambda r: r.settings.get("one"))
            qf = q.flowjit_s if stat == "median" else getattr(q.flowjit_s, "mean", None)
            qb = q.baseline_s if stat == "median" else getattr(q.baseline_s, "mean", None)
            cells[stat].append([name, _ms(qf), _ms(qb), _ratio(qb, qf), _ms(c), _ms(b),
                                _ratio(b, c), _ms(a), _ms(o), _ratio(c, o), _paired_cell(pr)])
            got[stat] = dict(quiet_flowjit_s=qf, quiet_baseline_s=qb, contended_flowjit_s=c,
                             contended_baseline_s=b, contended_all_threads_s=a,
                             contended_one_thread_s=o)
        out.append(dict(name=name, **got["median"], mean={k2: v and float(v) for k2, v in got["mean"].items()},
                        paired_default_over_one=pr and dict(zip(("median", "low", "high", "pairs"), pr))))
    head = ["benchmark", "quiet flowjit", "quiet baseline", "quiet ratio",
            f"K={k} flowjit", f"K={k} baseline", f"K={k} ratio", f"K={k} all threads",
            f"K={k} 1 thread", "flowjit / 1 thread", "paired turns: flowjit / 1 thread"]
    text = []
    for stat in ("median", "mean"):
        rows = cells[stat]
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        lines = [" | ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
                 for r in [head] + rows]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        text.append(f"{stat} step times:\n" + "\n".join(lines))
    text.append(verdicts(quiet, passes, k))
    return "\n\n".join(text), out


def _peer(name):
    return name.rsplit(" vs ", 1)[-1]


def verdicts(quiet, passes, k):
    """One line a benchmark: flowjit against the fastest peer beside the K busy
    processes, by the mean step (a run's wall time is steps x the mean, so it is the
    throughput a user gets; it counts the steps a descheduled thread stalls, which the
    median leaves out) with the median beside it; then the default against one thread
    from the paired turns."""
    groups = {}
    for name, q in quiet.items():
        groups.setdefault(getattr(q, "bench", name), []).append(name)
    lines = [f"verdicts beside {k} busy processes (target: flowjit's mean step no longer than "
             f"the fastest peer's; the default no slower than one thread):"]
    for bench, names in groups.items():
        cells = []
        for stat, of in (("mean", _mean_of), ("median", _median_of)):
            c = of(passes, names[0], lambda r: r.flowjit_s)
            peers = [(of(passes, n, lambda r: r.baseline_s), _peer(n)) for n in names]
            peers = [p for p in peers if p[0]]
            if not (c and peers):
                continue
            best, who = min(peers)
            mark = (" ok" if best >= c else " MISS") if stat == "mean" else ""
            cells.append(f"by {stat} {best / c:.2f}x the fastest peer ({who}){mark}")
        pr = paired(passes, names[0])
        if pr is not None:
            med, low, high, _ = pr
            how = "ok" if low <= 1.0 else f"{(low - 1) * 100:.1f}-{(high - 1) * 100:.1f}% slower"
            cells.append(f"default / one thread {med:.3f} ({low:.3f}-{high:.3f}) {how}")
        lines.append(f"- {bench.removeprefix('bench_')}: " + "; ".join(cells))
    return "\n".join(lines)
