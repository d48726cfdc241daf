"""A cold program's kernels compiled by forked children and this process together
(backends/cpu/split_compile.py): the same results to the bit and the same counters as
compiling them in this process alone; programs whose control flow reads values, and
children that fail, fall back to compiling here."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")

PROGRAM = textwrap.dedent("""
    import json, os, sys, numpy as np, flowjit as fj
    from flowjit.backends.cpu import split_compile as SC
    forked, parent = [], os.getpid()
    fork = SC._fork_children
    def counting(n, work):
        forked.append(n)
        return fork(n, work)
    SC._fork_children = counting
    if sys.argv[1] == "failing":        # every child dies before compiling anything
        compile_part = SC._compile
        def failing(part):
            if os.getpid() != parent:
                os._exit(3)
            return compile_part(part)
        SC._compile = failing
    rng = np.random.default_rng(0)
    w1 = fj.Variable(rng.standard_normal((12, 16)).astype(np.float32) * 0.3)
    w2 = fj.Variable(rng.standard_normal((16, 3)).astype(np.float32) * 0.3)
    opt = fj.optimizers.Adam(0.01)
    x = rng.standard_normal((32, 12)).astype(np.float32)
    y = rng.integers(0, 3, 32)

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            h = fj.tanh(x @ w1)
            loss = fj.reduce_mean(fj.nn.sparse_softmax_cross_entropy_with_logits(y, h @ w2))
        grads = tape.gradient(loss, [w1, w2])
        opt.apply_gradients(zip(grads, [w1, w2]))
        return loss

    @fj.jit
    def halved(x):                        # one program: a while loop whose trip count
        v = fj.reduce_sum(fj.tanh(x @ w1) ** 2)     # comes from a computed value
        return fj.while_loop(lambda i, v: v > 0.1, lambda i, v: (i + 1, v * 0.5), (0, v))[1]

    @fj.jit
    def printed(x):                       # one program with an op run for its effect
        v = fj.reduce_sum(fj.tanh(x @ w1) ** 2)
        fj.print(v)
        return v * 2.0
    f = {"while": halved, "print": printed}.get(sys.argv[1], step)
    losses = [float(f(x, y) if f is step else f(x)) for _ in range(3)]
    print(json.dumps({"losses": [l.hex() for l in losses], "w1": w1.numpy().tobytes().hex(),
                      "forked": forked, "stats": fj.stats()}))
""")


def run(tmp_path, name, processes, mode="plain"):
    env = dict(os.environ, FLOWJIT_CACHE_DIR=str(tmp_path / name), FLOWJIT_BACKGROUND_COMPILE="0",
               FLOWJIT_COMPILE_PROCESSES=str(processes),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBA_CACHE_DIR", None)
    p = subprocess.run([sys.executable, "-c", PROGRAM, mode], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_children_compile_what_this_process_would(tmp_path):
    alone = run(tmp_path, "alone", 1)
    split = run(tmp_path, "split", 2)
    # one queue for the forward's and the backward's kernels together
    assert alone["forked"] == [] and split["forked"] == [1]
    assert split["losses"] == alone["losses"] and split["w1"] == alone["w1"]
    for key in ("compiles", "disk_cache_hits", "traces", "calls_python_tier"):
        assert split["stats"][key] == alone["stats"][key], key
    assert split["stats"]["compiles"] > 0 and split["stats"]["disk_cache_hits"] == 0


def test_failed_children_leave_their_kernels_to_this_process(tmp_path):
    alone = run(tmp_path, "alone", 1)
    failing = run(tmp_path, "failing", 2, "failing")
    assert failing["forked"]
    assert failing["losses"] == alone["losses"] and failing["w1"] == alone["w1"]
    assert failing["stats"]["compiles"] == alone["stats"]["compiles"]


@pytest.mark.parametrize("mode", ["while", "print"])
def test_values_read_by_control_flow_or_effects_compile_here(tmp_path, mode):
    """A dry run would read garbage for a while loop's condition, and would print (or
    run an MPI collective) once more: those programs compile in this process."""
    out = run(tmp_path, mode, 2, mode)
    assert out["forked"] == []
    assert out["stats"]["compiles"] > 0


def test_dry_run_takes_one_step_of_a_loop_whatever_its_length(monkeypatch):
    """A scan's loop runs one step in the dry run (the calls of every later step are the
    same, with the same types), so it takes as long for 200 steps as for 3."""
    import numba
    import numpy as np

    import flowjit as fj
    from flowjit.backends.cpu import split_compile as SC
    seen = []
    ahead = SC.compile_ahead

    def capture(exe, args, runs_next=()):
        seen.append((exe, args))
        return ahead(exe, args, runs_next)
    monkeypatch.setattr(SC, "compile_ahead", capture)
    w = fj.Variable(np.full((4, 4), 0.1, np.float32))

    @fj.jit
    def run(xs):
        def cell(c, x):
            c = fj.tanh(fj.matmul(c, w) + x)
            return c, c * 2.0
        return fj.scan(cell, fj.zeros((2, 4)), xs)[1]
    rng = np.random.default_rng(0)
    run(rng.standard_normal((3, 2, 4)).astype(np.float32))
    exe, args = seen[-1]
    assert "for " in exe.py_src and "range(" in exe.py_src

    def dry(steps):
        full = [np.zeros((steps, 2, 4), np.float32)] + list(args[1:])
        jobs, typed = {}, []
        typeof = numba.typeof
        monkeypatch.setattr(numba, "typeof", lambda x: typed.append(x) or typeof(x))
        outs = SC._dry_run(exe, full, jobs)
        monkeypatch.setattr(numba, "typeof", typeof)
        return jobs, len(typed), outs
    (short, n_short, _), (long, n_long, outs) = dry(3), dry(200)
    assert set(short) == set(long) and n_short == n_long
    assert any(name.startswith("k_") for name, _ in short)
    assert outs[0].shape == (200, 2, 4) and outs[0].dtype == np.float32


def test_auto_processes_count_the_cores_idle_in_a_few_samples(monkeypatch):
    """"auto" takes the fewest other runnable threads over a few samples: a process
    caught exiting in one sample does not make the compile run alone, while a machine
    busy in every sample still gets no extra process."""
    from flowjit.backends.cpu import split_compile as SC, threads
    from flowjit.config import config
    monkeypatch.setattr(config, "compile_processes", "auto")
    monkeypatch.setattr(threads, "_cores", lambda: 2)
    monkeypatch.setattr(SC, "SAMPLE_GAP_S", 0.0)
    for samples, want in (([1, 0, 0], 2), ([0, 0, 0], 2), ([1, 1, 1], 1), ([2, 2, 1], 1), ([0, None, 0], 1)):
        it = iter(samples)
        monkeypatch.setattr(threads, "others_runnable", lambda: next(it))
        assert SC.processes() == want, samples
