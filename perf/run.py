"""Benchmark runner: `python -m perf [--quick] [--json PATH] [--only SUBSTR]`
(or `python perf/run.py ...`).

Prints one table: benchmark | flowjit median | baseline median | ratio | GB/s |
compile s | target | notes. ratio = baseline / flowjit, so > 1 means flowjit is
faster. Medians over `--steps` timed steps after warm-up; times from
time.perf_counter. Target misses are reported, not fatal (timings on shared CI
machines are noisy); the exit status is 1 only when a benchmark crashed or gave a
wrong result.
"""
import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback

if __package__ in (None, ""):
    # `python perf/run.py`: sys.path[0] is perf/, so put the repo root first to make
    # `import perf` and (when not installed) `import flowjit` work.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# steady-state rows time the compiled tier: entries compile at once, in this process
# (a cold-start row that wants the background compile sets this in its child's env)
os.environ.setdefault("FLOWJIT_BACKGROUND_COMPILE", "0")

from perf import common  # noqa: E402

# Modules whose @register'ed functions make up the run, in this order.
BENCH_MODULES = ["perf.bench_core", "perf.bench_train", "perf.bench_rnn", "perf.bench_conv", "perf.bench_compat",
                 "perf.bench_keras", "perf.bench_distributed", "perf.bench_cold"]

COLUMNS = ["benchmark", "flowjit", "baseline", "ratio", "GB/s", "compile s", "target", "notes"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="few repetitions (CI mode, < 60 s on 2 cores)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per measurement (default 50, 7 with --quick; "
                        "millisecond-scale kernels always get at least 20)")
    p.add_argument("--only", metavar="SUBSTR", action="append", default=[],
                   help="run only benchmarks whose function name contains SUBSTR (repeatable)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="cap Numba and BLAS threads at N (default: their own defaults). "
                        "On a small shared machine, N=1 avoids thread pools waiting on a "
                        "core that another process holds")
    p.add_argument("--contend", type=int, default=None, metavar="K",
                   help="contended mode: the training benchmarks quiet, then beside K busy "
                        "processes this run starts (and stops): flowjit's default threads, all threads "
                        "working (no adapting), one thread, taking turns; one table side by side")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="flowjit disk cache for this process (default: a fresh temporary dir, "
                        "so first-call times are cold compiles, not disk loads)")
    return p.parse_args(argv)


THREAD_ENV = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(n):
    """Cap thread pools at n. The environment variables reach pools not created yet
    (and the compile-latency child processes); numba.set_num_threads and threadpoolctl
    cover libraries that are already loaded."""
    for k in THREAD_ENV:
        os.environ[k] = str(n)
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        import threadpoolctl
    except ImportError:
        return
    # Kept for the whole process: the limiter object is deliberately never restored.
    threadpoolctl.threadpool_limits(n)


def thread_info():
    """'numba 2 (omp), BLAS 2+2' style summary for the header."""
    import numba
    parts = [f"numba threads {numba.get_num_threads()}"]
    try:
        import threadpoolctl
        pools = threadpoolctl.threadpool_info()
        parts.append("BLAS/OpenMP pools " + ", ".join(
            f"{p['internal_api']}:{p['num_threads']}" for p in pools))
    except ImportError:
        pass
    from flowjit import config
    from flowjit.backends.cpu import blas, pool
    parts.append(f"flowjit threads {config.threads}")
    parts.append("parallel loops on flowjit's pool" if pool.available() else "parallel loops on prange")
    parts.append(blas.state["why"] or "GEMMs not started")
    return ", ".join(parts)


def format_table(rows):
    cells = []
    for r in rows:
        ratio = r.ratio
        cells.append([
            r.name,
            common.fmt_time(r.flowjit_s),
            common.fmt_time(r.baseline_s),
            "-" if ratio is None else f"{ratio:.2f}x",
            "-" if r.gbps is None else f"{r.gbps:.1f}",
            "-" if r.compile_s is None else f"{r.compile_s:.3f}",
            common.target_cell(r),
            r.notes,
        ])
    widths = [max(len(c[i]) for c in cells + [COLUMNS]) for i in range(len(COLUMNS))]

    def line(c):
        # Left-align names and free text, right-align numbers.
        return " | ".join(x.ljust(w) if i in (0, 6, 7) else x.rjust(w)
                          for i, (x, w) in enumerate(zip(c, widths))).rstrip()
    out = [line(COLUMNS), "-+-".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    return "\n".join(out)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    steps = args.steps or (7 if args.quick else 50)
    cfg = common.Config(quick=args.quick, steps=steps, warmup=2 if args.quick else 5)

    # The cache dir is read when flowjit first compiles, so setting it here (before any
    # benchmark runs) is enough even though flowjit may already be imported.
    tmp_cache = None
    saved_cache_env = os.environ.get("FLOWJIT_CACHE_DIR")
    if args.cache_dir:
        os.environ["FLOWJIT_CACHE_DIR"] = args.cache_dir
    else:
        tmp_cache = tempfile.mkdtemp(prefix="flowjit-perf-")
        os.environ["FLOWJIT_CACHE_DIR"] = tmp_cache

    if args.threads:
        limit_threads(args.threads)

    t_start = time.perf_counter()
    if args.contend is not None:
        return _contended(args, cfg, tmp_cache, saved_cache_env, t_start)
    try:
        for m in BENCH_MODULES:
            importlib.import_module(m)
        benches = [b for b in common.REGISTRY
                   if not args.only or any(s in b.__name__ for s in args.only)]
        rows, failed = [], []
        for bench in benches:
            print(f"[perf] {bench.__name__} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                rows.extend(bench(cfg))
            except Exception as e:  # keep going: one broken benchmark must not hide the rest
                traceback.print_exc()
                failed.append(bench.__name__)
                rows.append(common.Result(bench.__name__, notes=f"ERROR {type(e).__name__}: "
                                          f"{str(e).splitlines()[0] if str(e) else ''}"))
            print(f"[perf]   done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    finally:
        _restore_cache(tmp_cache, saved_cache_env)
    total = time.perf_counter() - t_start

    import numba
    import numpy as np
    mode = "quick" if args.quick else "full"
    print(f"\nflowjit benchmarks ({mode}: medians over {steps} steps, at least 20 for "
          f"millisecond kernels; ratio = baseline/flowjit, >1 means flowjit faster)")
    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"{os.cpu_count()} cpus, {thread_info()}\n")
    print(format_table(rows))
    print()
    if cfg.skipped:
        print("skipped baselines: " + "; ".join(cfg.skipped))
    misses = [r.name for r in rows if r.ok is False]
    print(f"targets missed: {len(misses)}" + (f" ({', '.join(misses)})" if misses else ""))
    if failed:
        print(f"FAILED benchmarks: {', '.join(failed)}")
    print(f"total {total:.1f} s")

    if args.json:
        payload = {
            "mode": mode, "steps": steps, "total_seconds": total,
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "cpus": os.cpu_count(),
            "numba_threads": numba.get_num_threads(), "threads": thread_info(),
            "skipped": cfg.skipped, "failed": failed,
            "results": [r.as_dict() for r in rows],
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 1 if failed else 0


def _restore_cache(tmp_cache, saved_cache_env):
    """Drop the run's temporary cache and leave the environment as found (main() may be
    called from other code)."""
    if tmp_cache:
        shutil.rmtree(tmp_cache, ignore_errors=True)
    if saved_cache_env is None:
        os.environ.pop("FLOWJIT_CACHE_DIR", None)
    else:
        os.environ["FLOWJIT_CACHE_DIR"] = saved_cache_env


def _contended(args, cfg, tmp_cache, saved_cache_env, t_start):
    from perf import contend
    try:
        for m in BENCH_MODULES:
            importlib.import_module(m)
        text, rows = contend.run(cfg, args.contend, args.only)
    finally:
        _restore_cache(tmp_cache, saved_cache_env)
    print(f"\nflowjit training benchmarks, quiet and beside {args.contend} busy processes "
          f"(at least {cfg.steps} steps a pass; ratio = baseline/flowjit; flowjit / 1 thread "
          f"<= 1 means the default was no slower than one fixed thread; the median of "
          f"steps misses the time slices the busy processes take, the mean counts them; "
          f"paired turns: the median over pairs of short turns of the two, one right after "
          f"the other, with its 95% interval and the pair count)")
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, {thread_info()}\n")
    print(text)
    if cfg.skipped:
        print("\nskipped baselines: " + "; ".join(cfg.skipped))
    print(f"total {time.perf_counter() - t_start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": "contend", "k": args.contend, "steps": cfg.steps, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
