"""Shared pieces of the benchmark runner: the registry, the run configuration, the
result row and the timing helpers.

Adding a benchmark: write `def bench_x(cfg) -> list[Result]` in any module listed in
`perf.run.BENCH_MODULES` and decorate it with `@register`.
"""
import statistics
import time
from dataclasses import asdict, dataclass, field

REGISTRY = []


def register(fn):
    """Add a benchmark function to the run (in definition order)."""
    REGISTRY.append(fn)
    return fn


@dataclass
class Config:
    quick: bool
    steps: int            # timed steps per measurement (median taken over them)
    warmup: int           # untimed calls before timing (the first one compiles)
    skipped: list = field(default_factory=list)   # optional baselines that were not run
    cold_processes: bool = True   # rows timing a fresh process's first call (off beside busy ones)
    # the contended mode's flowjit thread settings [(label, fj.config.threads value)],
    # timed in turns with the default, and their last times {label: StepTime}
    # (bench_train.timed_steps)
    flowjit_settings: list = None
    setting_times: dict = field(default_factory=dict)

    def skip(self, what, why):
        msg = f"{what}: {why}"
        if msg not in self.skipped:
            self.skipped.append(msg)


class StepTime(float):
    """A median step time in seconds that also carries `mean`, the mean of the same
    steps. Beside busy processes the two disagree: a step of a few milliseconds usually
    runs inside one scheduler time slice, so the median misses the slices the other
    processes take, while the mean (the time a run of steps takes, per step) counts them."""

    def __new__(cls, median, mean=None):
        obj = super().__new__(cls, median)
        obj.mean = float(median) if mean is None else float(mean)
        return obj


@dataclass
class Result:
    """One table row. Times are seconds; None prints as '-'."""
    name: str
    flowjit_s: float = None
    baseline_s: float = None
    gbps: float = None          # flowjit bandwidth (or the reference kernel's, for its row)
    compile_s: float = None     # first-call time (trace + compile) of the flowjit function
    target: str = ""            # e.g. "ratio >= 4"
    ok: bool = None             # target met? None when the row has no target
    notes: str = ""

    @property
    def ratio(self):
        """baseline / flowjit: > 1 means flowjit is faster."""
        if self.flowjit_s and self.baseline_s:
            return self.baseline_s / self.flowjit_s
        return None

    def as_dict(self):
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


def median_time(fn, steps, warmup=1, number=1):
    """Median seconds per call of `fn()` over `steps` timed batches of `number` calls.

    Batching (number > 1) is for calls so short that perf_counter's own cost and
    scheduling jitter would dominate a single call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def median_times_interleaved(calls, steps, warmup=1):
    """{name: median seconds per call} for (name, fn) pairs timed in round-robin, so
    that load changes on a shared machine hit all of them alike and their ratios stay
    meaningful even when absolute times drift. A name may appear several times in
    `calls` (e.g. to put the same cache-flushing call before each of two others)."""
    for _, fn in calls:
        for _ in range(warmup):
            fn()
    times = {name: [] for name, _ in calls}
    for _ in range(steps):
        for name, fn in calls:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def first_call_time(fn):
    """(seconds, result) of one call: for a jitted function's first call this is the
    trace + compile latency a user sees."""
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def check_close(name, got, want, rtol=1e-3, atol=1e-4):
    """Benchmarks of wrong results are meaningless: fail loudly instead."""
    import numpy as np
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
        err = np.max(np.abs(got.astype(np.float64) - want)) if got.shape == want.shape else "shape"
        raise AssertionError(f"{name}: flowjit result differs from the baseline "
                             f"(shapes {got.shape} vs {want.shape}, max abs err {err})")


def fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


def target_cell(r):
    if not r.target:
        return ""
    mark = {True: "ok", False: "MISS", None: "?"}[r.ok]
    return f"{r.target}: {mark}"
