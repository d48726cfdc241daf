"""An entry's loops over steps as functions of their own (backends/cpu/entry_loops.py):
what each takes and returns, read from the generated text; the Python tier calling them
compiled after its first calls (in this process, or from a child's disk cache), with
the same results as interpreted, for zero steps, a new length and a gradient."""
import numpy as np
import pytest

import flowjit as fj
from flowjit.backends.cpu import background, entry_loops
from flowjit.backends.cpu.backend import CpuExecutable

from conftest import assert_close


def test_split_loops_params_and_results():
    lines = ["d0 = a0.shape[0]",
             "c = a1.copy()",
             "y = alloc(0, (d0,), np.float32)",
             "unused = 3",
             "for t in range(d0):",
             "    x = a0[t]",
             "    k(x, c, y)",
             "    c = y + t",
             "z = c * 2",
             "return (z, y, )"]
    out, loops = entry_loops.split_loops(["a0", "a1"], lines)
    (loop,) = loops
    assert loop.params == ["d0", "a0", "c", "y"] and loop.results == ["c"]
    assert out[4] == f"(c, ) = {entry_loops.NAME}_loop0(d0, a0, c, y)"
    assert out[:4] == lines[:4] and out[5:] == lines[8:]
    src = loop.source("e", "@deco\n")
    assert src.startswith("@deco\ndef e_loop0(d0, a0, c, y):\n    for t in range(d0):\n")
    assert src.endswith("        c = y + t\n    return (c, )\n")


def test_a_loop_whose_result_may_be_unset_stays_inline():
    lines = ["for t in range(a0):", "    last = t", "return (last, )"]
    out, loops = entry_loops.split_loops(["a0"], lines)
    assert loops == [] and out == lines


def test_a_result_the_loop_never_reads_is_passed_in():
    """Written in the loop, read after it, not read inside: after zero steps the entry
    must see the value it had before, so it is a parameter too."""
    lines = ["s = a0.copy()", "for t in range(a1):", "    s = a0 * t", "return (s, )"]
    _, (loop,) = entry_loops.split_loops(["a0", "a1"], lines)
    assert loop.params == ["a1", "a0", "s"] and loop.results == ["s"]


def rnn_step(T=6, B=3, I=4, H=5, seed=0):
    rng = np.random.default_rng(seed)
    W = fj.Variable((rng.standard_normal((I + H, H)) * 0.4).astype(np.float32))
    xs = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = np.zeros((B, H), np.float32)

    def loss_and_grad(h0, xs):
        with fj.GradientTape() as tape:
            def cell(h, x):
                h = fj.tanh(fj.matmul(fj.concat([x, h], 1), W))
                return h, fj.reduce_sum(h)
            h, sums = fj.scan(cell, h0, xs)
            loss = fj.reduce_sum(sums) + fj.reduce_sum(h * h)
        return loss, tape.gradient(loss, W)
    return loss_and_grad, h0, xs


def executables():
    import gc
    return [o for o in gc.get_objects() if isinstance(o, CpuExecutable) and o.loop_names]


@pytest.fixture
def python_tier(monkeypatch, tmp_path):
    """Entries stay in the Python tier (a share of interpreting above 1 is never reached),
    as a big program's do (backend.estimate_python_share); an empty disk cache, so no
    entry compiled by an earlier run loads instead."""
    monkeypatch.setattr(fj.config, "entry_overhead_share", 1.5)
    monkeypatch.setenv("FLOWJIT_CACHE_DIR", str(tmp_path))


@pytest.fixture
def synchronous(monkeypatch, python_tier):
    monkeypatch.setattr(fj.config, "background_compile", False)


def test_loops_run_compiled_with_the_interpreted_results(synchronous):
    fn, h0, xs = rnn_step()
    eager = [np.asarray(t) for t in fn(fj.convert_to_tensor(h0), fj.convert_to_tensor(xs))]
    f = fj.jit(fn)
    calls = fj.config.compile_entry_after + 2
    outs = [[o.numpy() for o in f(h0, xs)] for _ in range(calls)]
    c, _ = f._lookup((h0, xs), {})
    for stage in c.stages:
        exe = stage.exe
        assert exe.loop_names and exe.run == exe._run_python_only
        for name in exe.loop_names:      # the Python tier now calls the compiled loops
            assert exe._py_ns[name] is getattr(exe._module, name)
            assert getattr(exe._module, name).signatures
    for got in outs:                     # first (interpreted) and last (compiled) calls alike
        for g, e, w in zip(got, outs[0], eager):
            np.testing.assert_array_equal(g, e)
            assert_close(g, w, rtol=1e-5, atol=1e-6)
    # zero steps and a new length: the same loop functions, no new trace
    fj.reset_stats()
    for T in (0, 3):
        got = [o.numpy() for o in f(h0, xs[:T])]
        want = fn(fj.convert_to_tensor(h0), fj.convert_to_tensor(xs[:T]))
        for g, w in zip(got, want):
            # (after zero steps eager mode finds no path to the weight: no gradient)
            assert_close(g, np.zeros_like(g) if w is None else np.asarray(w), rtol=1e-5, atol=1e-6)
    assert fj.stats()["traces"] == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="background compiles need POSIX")
def test_loops_compile_in_a_child_and_load_from_its_cache(monkeypatch, python_tier):
    monkeypatch.setattr(fj.config, "background_compile", True)
    fn, h0, xs = rnn_step(T=4, B=2, I=3, H=3, seed=1)
    f = fj.jit(fn)
    first = [o.numpy() for o in f(h0, xs)]
    exes = None
    for _ in range(400):          # a child compiles the loops while calls go on
        got = [o.numpy() for o in f(h0, xs)]
        for g, e in zip(got, first):      # (the first call ran tier 0: NumPy's rounding)
            assert_close(g, e, rtol=1e-5, atol=1e-6)
        c, _ = f._lookup((h0, xs), {})
        exes = [s.exe for s in c.stages]
        if all(e.pending is None and e.run == e._run_python_only and e.calls > fj.config.compile_entry_after
               for e in exes if e.loop_names):
            break
        background._running and background._running[0].proc and background._running[0].proc.wait(60)
    for exe in exes:
        for name in exe.loop_names:
            assert exe._py_ns[name] is getattr(exe._module, name)
    got = [o.numpy() for o in f(h0, xs)]
    for g, e in zip(got, first):
        assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="shared out by forking")
def test_a_steps_later_compile_is_shared_out_on_idle_cores(synchronous, monkeypatch):
    """Compiling synchronously, the later compile (the loop functions, and the compiled
    versions of the Python stand-ins) of a training step's forward and backward goes to
    one queue that forked children share (split_compile.compile_later); the calls then
    load what they saved and give the interpreted calls' results to the bit."""
    from flowjit.backends.cpu import split_compile
    monkeypatch.setattr(fj.config, "compile_processes", 2)
    queued = []
    real = split_compile.compile_later

    def recording(jobs):
        queued.append([(exe.entry_name, name) for exe, name, _ in jobs])
        return real(jobs)
    monkeypatch.setattr(split_compile, "compile_later", recording)
    fn, h0, xs = rnn_step(T=5, B=3, I=4, H=5, seed=2)
    f = fj.jit(fn)
    outs = [[o.numpy() for o in f(h0, xs)] for _ in range(fj.config.compile_entry_after + 2)]
    exes = [s.exe for s in f._lookup((h0, xs), {})[0].stages]
    loops = {(e.entry_name, name) for e in exes for name in e.loop_names}
    assert len(loops) >= 2 and any(loops <= set(q) for q in queued), (loops, queued)
    for exe in exes:
        for name in exe.loop_names:
            assert exe._py_ns[name] is getattr(exe._module, name) and getattr(exe._module, name).signatures
    for got in outs[1:]:
        for g, e in zip(got, outs[0]):
            np.testing.assert_array_equal(g, e)
