"""Memory safety through traced sizes, errors with real sizes, aliasing, and steps that
change all of their state or none of it (also under Ctrl-C)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import flowjit as fj
from flowjit.errors import DTypeError, ShapeError

f32 = np.float32


# --- sizes baked into a trace are guards, not assumptions ----------------------------
def test_split_sizes_guard_a_smaller_input():
    f = fj.jit(lambda x: fj.reduce_sum(fj.split(x, [1, 7])[1]))
    assert float(f(np.ones(8, f32))) == 7.0
    with pytest.raises(ShapeError, match=r"split .*\[1, 7\].* 2"):
        f(np.ones(2, f32))
    assert float(f(np.ones(8, f32))) == 7.0          # the valid signature still works


@pytest.mark.parametrize("n", [5, 6, 3])
def test_split_sizes_that_do_not_add_up_raise_in_both_tiers(n):
    f = fj.jit(lambda x: fj.split(x, [2, 2]))
    assert [t.numpy().tolist() for t in f(np.arange(4, dtype=f32))] == [[0, 1], [2, 3]]
    with pytest.raises(ShapeError, match=f"add up to {n}"):
        f(np.arange(n, dtype=f32))
    with pytest.raises(ShapeError, match=f"add up to {n}"):
        fj.split(np.arange(n, dtype=f32), [2, 2])


def test_static_slices_guard_the_input_size():
    f = fj.jit(lambda x: x[1:3] * 2.0)
    np.testing.assert_array_equal(f(np.arange(5, dtype=f32)).numpy(), [2, 4])
    np.testing.assert_array_equal(f(np.arange(2, dtype=f32)).numpy(), [2])   # NumPy's clipping
    g = fj.jit(lambda x: x[:, 3])
    assert g(np.ones((2, 4), f32)).shape == (2,)
    with pytest.raises(IndexError, match="size 3"):
        g(np.ones((2, 3), f32))


def test_the_slice_op_checks_its_bounds():
    from flowjit.frontend.tensor import apply_op, convert
    with pytest.raises(ShapeError, match="out of range for dimension 0 of size 4"):
        apply_op("slice", [convert(np.ones(4, f32))], {"spec": (("range", 2, 1, 3),)})
    with pytest.raises(ShapeError, match="out of range"):
        apply_op("slice", [convert(np.ones(4, f32))], {"spec": (("index", 4),)})


def test_symbolic_slices_need_no_guard_per_size():
    f = fj.jit(lambda x: x[1:] - x[:-1])
    for n in (3, 7, 20):
        np.testing.assert_array_equal(f(np.arange(n, dtype=f32)).numpy(), np.ones(n - 1))
    assert len(f._cache) == 1 and len(next(iter(f._cache.values()))) == 1


def test_conv_on_a_new_spatial_size_retraces():
    w = np.ones((3, 3, 1, 2), f32)
    f = fj.jit(lambda x: fj.nn.conv2d(x, w, 1, "VALID"))
    for hw in (6, 5, 8):
        x = np.random.rand(2, hw, hw, 1).astype(f32)
        np.testing.assert_allclose(f(x).numpy(), fj.nn.conv2d(x, w, 1, "VALID").numpy(), rtol=1e-5)


# --- errors under jit show the call's sizes -------------------------------------------
A34, B52 = np.ones((3, 4), f32), np.ones((5, 2), f32)
SIZE_ERRORS = [
    ("matmul", lambda a, b: a @ b, (A34, B52), "(3, 4) @ (5, 2)"),
    ("broadcast", lambda a, b: a + b, (A34, B52), "(3, 4) and (5, 2)"),
    ("concat", lambda a, b: fj.concat([a, b], 0), (A34, B52), "(3, 4)"),
    ("stack", lambda a, b: fj.stack([a, b]), (A34, B52), "(5, 2)"),
    ("reshape", lambda a, b: fj.reshape(a, [5, 5]), (A34, B52), "(3, 4)"),
    ("squeeze", lambda a, b: fj.squeeze(a, 0), (A34, B52), "(3, 4)"),
    ("tile", lambda a, b: fj.tile(a, [2]), (A34, B52), "(3, 4)"),
    ("conv2d rank", lambda a, b: fj.nn.conv2d(a, b, 1, "VALID"), (A34, B52), "(3, 4)"),
    ("pool rank", lambda a, b: fj.nn.max_pool2d(a, 2, 2, "VALID"), (A34, B52), "(3, 4)"),
    ("conv2d channels", lambda a, b: fj.nn.conv2d(a, b, 1, "VALID"),
     (np.ones((2, 6, 6, 3), f32), np.ones((3, 3, 2, 4), f32)), "3"),
]


@pytest.mark.parametrize("name,fn,args,sizes", SIZE_ERRORS, ids=[c[0] for c in SIZE_ERRORS])
def test_shape_errors_under_jit_show_concrete_sizes(name, fn, args, sizes):
    with pytest.raises(ValueError) as jit_err:          # ShapeError or InvalidArgumentError
        fj.jit(fn)(*args)
    msg = str(jit_err.value)
    assert sizes in msg, msg
    assert "test_reliability.py" in msg                       # the user's line
    head = msg.split("[")[0]
    assert "d0_" not in head and "d1_" not in head, msg      # symbols only in brackets
    with pytest.raises(ValueError) as eager_err:
        fn(*(fj.constant(a) for a in args))
    assert sizes in str(eager_err.value)


# --- the jit boundary converts what eager mode converts --------------------------------
def test_lists_are_arrays_at_the_jit_boundary():
    assert float(fj.jit(lambda x: fj.reduce_sum(x))([1.0, 2.0])) == 3.0
    np.testing.assert_array_equal(fj.jit(lambda x: x * 2.0)([[1.0, 2.0], [3.0, 4.0]]).numpy(),
                                  [[2, 4], [6, 8]])
    assert fj.jit(lambda x, n: x * n)([1.0, 2.0], 3).numpy().tolist() == [3, 6]
    with pytest.raises(TypeError, match="ragged"):
        fj.jit(lambda x: x)([[1.0, 2.0], [3.0]])


def test_a_list_of_tensors_is_packed():
    f = fj.jit(lambda x, y: fj.reduce_sum([x, y * 2.0], axis=0))
    np.testing.assert_array_equal(f(np.ones(2, f32), np.ones(2, f32)).numpy(), [3, 3])


def test_integers_that_do_not_fit_are_rejected():
    big = np.array([2**63 + 5], np.uint64)
    with pytest.raises(DTypeError, match="does not fit"):
        fj.constant(big)
    with pytest.raises(DTypeError, match="does not fit"):
        fj.jit(lambda x: x + 1)(big)
    assert fj.jit(lambda x: x + 1)(np.array([3], np.uint64)).numpy().tolist() == [4]


def test_variable_assign_of_another_dtype_raises():
    v = fj.Variable(np.ones(3, f32))
    with pytest.raises(DTypeError, match="float64"):
        v.assign(np.ones(3, np.float64))
    v.assign([1, 2, 3])                                     # Python numbers take its dtype
    assert v.numpy().dtype == f32 and v.numpy().tolist() == [1, 2, 3]


# --- aliasing: inputs, constants and returned values never change behind your back ----
def test_variable_from_constant_does_not_share_its_buffer():
    c = fj.constant([1.0, 2.0])
    v = fj.Variable(c)
    v.assign_add([1.0, 1.0])
    assert c.numpy().tolist() == [1, 2]


def test_constant_copies_the_callers_array():
    a = np.ones(3, f32)
    c = fj.constant(a)
    a[0] = 5
    assert c.numpy().tolist() == [1, 1, 1]


def test_closed_over_arrays_are_captured_at_trace_time():
    w = np.ones(3, f32)
    f = fj.jit(lambda x: x * w)
    assert f(np.ones(3, f32)).numpy().tolist() == [1, 1, 1]
    w[0] = 5
    assert f(np.ones(3, f32)).numpy().tolist() == [1, 1, 1]


def test_returned_values_do_not_alias_variables():
    v = fj.Variable(np.zeros(3, f32))

    @fj.jit
    def step(x):
        v.assign_add(x)
        return v.read_value(), fj.reshape(v, [3, 1])

    outs = [step(np.ones(3, f32)) for _ in range(3)]
    assert [o[0].numpy()[0] for o in outs] == [1, 2, 3]
    assert [o[1].numpy()[0, 0] for o in outs] == [1, 2, 3]


def test_an_input_that_was_a_returned_value_is_read_before_the_update():
    v = fj.Variable(np.full(3, 2, f32))
    read = fj.jit(lambda: v.read_value())
    a = read().numpy()

    @fj.jit
    def step(x):
        v.assign(v * 7.0)
        return fj.reduce_sum(x) + 0.0

    assert float(step(a)) == 6.0
    assert a.tolist() == [2, 2, 2] and v.numpy().tolist() == [14, 14, 14]


# --- a failed step changes nothing ----------------------------------------------------
@pytest.mark.parametrize("jitted", [False, True])
def test_apply_gradients_checks_every_gradient_before_writing(jitted):
    v1, v2 = fj.Variable(np.ones(3, f32)), fj.Variable(np.ones(3, f32))
    opt = fj.optimizers.Adam(0.1)
    good = np.ones(3, f32)

    def apply(g2):
        return opt.apply_gradients([(good, v1), (g2, v2)])
    run = fj.jit(apply) if jitted else apply
    with pytest.raises(ShapeError, match=r"shape \(4,\)"):
        run(np.ones(4, f32))
    with pytest.raises(DTypeError, match="float64"):
        run(np.ones(3, np.float64))
    assert v1.numpy().tolist() == [1, 1, 1] and v2.numpy().tolist() == [1, 1, 1]
    assert int(opt.iterations.numpy()) == 0
    assert all(np.all(s.numpy() == 0) for s in opt.variables()[1:])
    run(good)
    assert int(opt.iterations.numpy()) == 1 and v1.numpy()[0] < 1


INTERRUPT_CHILD = textwrap.dedent("""
    import os, random, signal, threading
    import numpy as np
    import flowjit as fj

    MODE, RUNS, HIDDEN = os.environ["MODE"], int(os.environ["RUNS"]), int(os.environ["HIDDEN"])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 64)).astype(np.float32)
    Y = rng.standard_normal((32, 8)).astype(np.float32)

    def make():
        w1 = fj.Variable(np.full((64, HIDDEN), 0.01, np.float32))
        w2 = fj.Variable(np.full((HIDDEN, 8), 0.01, np.float32))
        opt = fj.optimizers.Adam(1e-3)

        def step():
            with fj.GradientTape() as tape:
                loss = fj.reduce_mean(fj.square(fj.tanh(X @ w1) @ w2 - Y))
            opt.apply_gradients(zip(tape.gradient(loss, [w1, w2]), [w1, w2]))
        return [w1, w2], opt, (fj.jit(step) if MODE == "jit" else step)

    def state(vs, opt):
        return [v.numpy() for v in vs] + [s.numpy() for s in opt.variables()]

    odd, interrupts = [], 0
    for run in range(RUNS):
        vs, opt, step = make()
        ref_vs, ref_opt, ref_step = make()
        for _ in range(4):                       # compiled (the entry too) before any timer
            step(); ref_step()
        for j in range(5):
            delay = random.Random(run * 10 + j).uniform(0.0, 0.01)
            timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
            try:
                timer.start()
                while True:
                    step()
            except KeyboardInterrupt:
                interrupts += 1
            except BaseException as e:           # anything else is a failure
                odd.append(f"run {run}: {type(e).__name__}: {e}")
            timer.join()
            k = int(opt.iterations.numpy())
            while int(ref_opt.iterations.numpy()) < k:
                ref_step()
            if not all(np.array_equal(a, b) for a, b in zip(state(vs, opt), state(ref_vs, ref_opt))):
                odd.append(f"run {run}: half-applied step after {k} iterations")
                break
        step(); ref_step()                       # the next call works
        if not all(np.array_equal(a, b) for a, b in zip(state(vs, opt), state(ref_vs, ref_opt))):
            odd.append(f"run {run}: the step after the interrupt differs")
    print("INTERRUPTS", interrupts, "ODD", odd)
""")


@pytest.mark.parametrize("mode,hidden,runs", [("jit", 8, 20), ("jit", 256, 20), ("eager", 16, 4)])
def test_ctrl_c_leaves_a_step_applied_completely_or_not_at_all(mode, hidden, runs):
    env = dict(os.environ, MODE=mode, RUNS=str(runs), HIDDEN=str(hidden))
    out = subprocess.run([sys.executable, "-c", INTERRUPT_CHILD], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"INTERRUPTS {runs * 5} ODD []" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]


# --- TF1 details ------------------------------------------------------------------------
def test_tf1_split_of_a_none_dim_has_one_output_per_size():
    import flowjit.compat.v1 as tf
    with tf.Graph().as_default():
        x = tf.placeholder(tf.float32, [None])
        a, b = tf.split(x, [2, 4])
        thirds = tf.split(x, 3)
        assert a.shape.as_list() == [2] and b.shape.as_list() == [4] and len(thirds) == 3
        with tf.Session() as sess:
            va, vb = sess.run([a, b], {x: np.arange(6, dtype=f32)})
            assert va.tolist() == [0, 1] and vb.tolist() == [2, 3, 4, 5]
            assert [t.tolist() for t in sess.run(thirds, {x: np.arange(6, dtype=f32)})] == \
                [[0, 1], [2, 3], [4, 5]]
            with pytest.raises(ShapeError, match="add up to 5"):
                sess.run(a, {x: np.arange(5, dtype=f32)})


@pytest.mark.parametrize("jitted", [False, True])
def test_batched_gather_reports_the_index_the_user_wrote(jitted):
    p = np.arange(6, dtype=f32).reshape(2, 3)
    gather = (lambda p, i: fj.gather(p, i, batch_dims=1))
    run = fj.jit(gather) if jitted else gather
    assert run(p, np.array([[0, 2], [1, 0]])).numpy().tolist() == [[0, 2], [4, 3]]
    for bad, shown in (([[0, 3], [1, 1]], "index 3 "), ([[0, 1], [-1, 1]], "index -1 ")):
        with pytest.raises(IndexError, match=shown + r"is out of range \[0, 3\)"):
            run(p, np.array(bad))


def test_tf1_batched_gather_defaults_its_axis_to_batch_dims():
    import flowjit.compat.v1 as tf
    with tf.Graph().as_default():
        x = tf.placeholder(tf.float32, [None, 3])
        i = tf.placeholder(tf.int64, [None, 2])
        g = tf.gather(x, i, batch_dims=1)
        with tf.Session() as sess:
            p = np.arange(6, dtype=f32).reshape(2, 3)
            assert sess.run(g, {x: p, i: [[0, 2], [1, 0]]}).tolist() == [[0, 2], [4, 3]]
            with pytest.raises(IndexError, match=r"index 3 is out of range \[0, 3\)"):
                sess.run(g, {x: p, i: [[0, 3], [1, 1]]})
