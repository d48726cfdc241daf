"""Optimizers, learning-rate schedules and Variables, eager and under `@fj.jit`.

Every optimizer is checked against a NumPy re-implementation of TensorFlow 2's update
rule (the `tf.keras.optimizers` / `ResourceApply*` kernels, computed in the variable's
dtype like TF does) on a quadratic loss over a matrix and a vector variable."""
import numpy as np
import pytest

import flowjit as fj
from conftest import assert_close

O = fj.optimizers


@pytest.fixture(autouse=True)
def _python_entry_tier(request, monkeypatch):
    """Compiling a step's njit entry function costs seconds per signature; the tests
    decorated with `entry_tier` exercise it, the others stay on the (kernel-compiled)
    Python entry tier to keep the file fast."""
    if not getattr(request.function, "entry_tier", False):
        monkeypatch.setattr(fj.config, "compile_entry_after", 10**9)


def entry_tier(fn):
    fn.entry_tier = True
    return fn

# ------------------------------------------------------------------------------------
# NumPy references of TF2's update rules
# ------------------------------------------------------------------------------------


class RefOptimizer:
    """Per-variable state in the variable's dtype; `step(ws, gs, lr)` updates ws in place."""

    def __init__(self, kind, **kw):
        self.kind, self.kw, self.t, self.state = kind, kw, 0, {}

    def step(self, ws, gs, lr=None):
        self.t += 1
        for i, (w, g) in enumerate(zip(ws, gs)):
            st = self.state.setdefault(i, {})
            ws[i] = getattr(self, "_" + self.kind)(w, g, st, w.dtype.type,
                                                   lr if lr is not None else self.kw["learning_rate"])

    def _sgd(self, w, g, st, c, lr):
        mom, nesterov = self.kw.get("momentum", 0.0), self.kw.get("nesterov", False)
        if not mom:
            return w - c(lr) * g
        m = st.get("m", np.zeros_like(w))
        m = c(mom) * m - c(lr) * g
        st["m"] = m
        if nesterov:
            return w + (c(mom) * m - c(lr) * g)
        return w + m

    def _adam(self, w, g, st, c, lr):
        b1, b2, eps = self.kw.get("beta_1", 0.9), self.kw.get("beta_2", 0.999), self.kw.get("epsilon", 1e-7)
        t = c(self.t)
        lr_t = c(lr) * np.sqrt(c(1) - c(b2) ** t) / (c(1) - c(b1) ** t)
        m = c(b1) * st.get("m", np.zeros_like(w)) + c(1 - b1) * g
        v = c(b2) * st.get("v", np.zeros_like(w)) + c(1 - b2) * g * g
        st["m"], st["v"] = m, v
        return w - lr_t * m / (np.sqrt(v) + c(eps))

    def _adagrad(self, w, g, st, c, lr):
        init, eps = self.kw.get("initial_accumulator_value", 0.1), self.kw.get("epsilon", 1e-7)
        acc = st.get("acc", np.full_like(w, init)) + g * g
        st["acc"] = acc
        return w - c(lr) * g / (np.sqrt(acc) + c(eps))

    def _adadelta(self, w, g, st, c, lr):
        rho, eps = self.kw.get("rho", 0.95), self.kw.get("epsilon", 1e-7)
        ag = c(rho) * st.get("ag", np.zeros_like(w)) + c(1 - rho) * g * g
        av = st.get("av", np.zeros_like(w))
        upd = np.sqrt(av + c(eps)) / np.sqrt(ag + c(eps)) * g
        st["ag"], st["av"] = ag, c(rho) * av + c(1 - rho) * upd * upd
        return w - c(lr) * upd

    def _rmsprop(self, w, g, st, c, lr):
        rho, mom = self.kw.get("rho", 0.9), self.kw.get("momentum", 0.0)
        eps, centered = self.kw.get("epsilon", 1e-7), self.kw.get("centered", False)
        ms = c(rho) * st.get("ms", np.zeros_like(w)) + c(1 - rho) * g * g
        st["ms"] = ms
        denom = ms
        if centered:
            mg = c(rho) * st.get("mg", np.zeros_like(w)) + c(1 - rho) * g
            st["mg"] = mg
            denom = ms - mg * mg
        if mom:     # ResourceApply(Centered)RMSProp: eps inside the sqrt
            m = c(mom) * st.get("mom", np.zeros_like(w)) + c(lr) * g / np.sqrt(denom + c(eps))
            st["mom"] = m
            return w - m
        return w - c(lr) * g / (np.sqrt(denom) + c(eps))


# name: (flowjit class, kwargs, reference kind, number of slots per variable)
CONFIGS = {
    "sgd": (O.SGD, dict(learning_rate=0.1), "sgd", 0),
    "sgd_momentum": (O.SGD, dict(learning_rate=0.1, momentum=0.9), "sgd", 1),
    "sgd_nesterov": (O.SGD, dict(learning_rate=0.1, momentum=0.9, nesterov=True), "sgd", 1),
    "adam": (O.Adam, dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-3), "adam", 2),
    "adagrad": (O.Adagrad, dict(learning_rate=0.1, initial_accumulator_value=0.5, epsilon=1e-4),
                "adagrad", 1),
    "adadelta": (O.Adadelta, dict(learning_rate=1.0, rho=0.9, epsilon=1e-4), "adadelta", 2),
    "rmsprop": (O.RMSprop, dict(learning_rate=0.01, rho=0.8, epsilon=1e-4), "rmsprop", 1),
    "rmsprop_momentum": (O.RMSprop, dict(learning_rate=0.01, momentum=0.5), "rmsprop", 2),
    "rmsprop_centered": (O.RMSprop, dict(learning_rate=0.01, centered=True, epsilon=1e-4),
                         "rmsprop", 2),
    "rmsprop_centered_momentum": (O.RMSprop, dict(learning_rate=0.01, rho=0.8, momentum=0.5,
                                                  centered=True), "rmsprop", 3),
}

STEPS = 5


def _problem(dtype):
    """Initial values of W (3x2) and b (2,) and the quadratic loss' coefficients:
    loss = sum(P/2 W^2 + Q W) + sum(p/2 b^2 + q b), so dloss/dW = P*W + Q exactly."""
    r = np.random.default_rng(7)
    W0 = r.uniform(-2, 2, (3, 2)).astype(dtype)
    b0 = r.uniform(-2, 2, (2,)).astype(dtype)
    coef = [r.uniform(0.5, 1.5, (3, 2)), r.uniform(-1, 1, (3, 2)),
            r.uniform(0.5, 1.5, (2,)), r.uniform(-1, 1, (2,))]
    return W0, b0, [c.astype(dtype) for c in coef]


def _np_grads(ws, coef):
    P, Q, p, q = coef
    return [P * ws[0] + Q, p * ws[1] + q]


def _fj_loss(W, b, P, Q, p, q):
    P, Q, p, q = (fj.convert_to_tensor(c) for c in (P, Q, p, q))
    return (fj.reduce_sum(0.5 * P * fj.square(W) + Q * W)
            + fj.reduce_sum(0.5 * p * fj.square(b) + q * b))


def _reference(name, dtype, steps=STEPS):
    _, kw, kind, _ = CONFIGS[name]
    W0, b0, coef = _problem(dtype)
    ref, ws, out = RefOptimizer(kind, **kw), [W0.copy(), b0.copy()], []
    for _ in range(steps):
        ref.step(ws, _np_grads(ws, coef))
        out.append([w.copy() for w in ws])
    return out


def _check_state(opt, nslots, step, variables):
    assert len(opt.variables()) == 1 + 2 * nslots
    assert int(opt.iterations.numpy()) == step
    for v in variables:
        assert v.dtype in (fj.float32, fj.float64)


def _tol(dtype):
    return dict(rtol=2e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_eager_apply_gradients_matches_tf2_rule(name):
    cls, kw, _, nslots = CONFIGS[name]
    W0, b0, coef = _problem(np.float32)
    W, b = fj.Variable(W0, name="W"), fj.Variable(b0, name="b")
    opt = cls(**kw)
    expected = _reference(name, np.float32)
    for k in range(STEPS):
        grads = _np_grads([W.numpy(), b.numpy()], coef)
        res = opt.apply_gradients(zip([fj.constant(g) for g in grads], [W, b]))
        assert res is not None
        _check_state(opt, nslots, k + 1, [W, b])
        slots_after_first = opt.variables() if k == 0 else slots_after_first
        assert all(a is b_ for a, b_ in zip(opt.variables(), slots_after_first))
        assert_close(W.numpy(), expected[k][0], **_tol(np.float32))
        assert_close(b.numpy(), expected[k][1], **_tol(np.float32))


@pytest.mark.parametrize("name", ["sgd_nesterov", "adam", "adadelta", "rmsprop_centered_momentum"])
def test_eager_minimize_matches_tf2_rule(name):
    cls, kw, _, nslots = CONFIGS[name]
    W0, b0, coef = _problem(np.float32)
    W, b = fj.Variable(W0), fj.Variable(b0)
    opt = cls(**kw)
    expected = _reference(name, np.float32)
    for k in range(STEPS):
        opt.minimize(lambda: _fj_loss(W, b, *coef), var_list=[W, b])
        _check_state(opt, nslots, k + 1, [W, b])
        assert_close(W.numpy(), expected[k][0], **_tol(np.float32))
        assert_close(b.numpy(), expected[k][1], **_tol(np.float32))


def _jit_train(name, dtype, use_minimize=False):
    cls, kw, _, nslots = CONFIGS[name]
    W0, b0, coef = _problem(dtype)
    W, b = fj.Variable(W0), fj.Variable(b0)
    opt = cls(**kw)

    @fj.jit
    def step(P, Q, p, q):
        if use_minimize:
            opt.minimize(lambda: _fj_loss(W, b, P, Q, p, q), [W, b])
            return _fj_loss(W, b, P, Q, p, q)
        with fj.GradientTape() as tape:
            loss = _fj_loss(W, b, P, Q, p, q)
        grads = tape.gradient(loss, [W, b])
        opt.apply_gradients(zip(grads, [W, b]))
        return loss

    expected = _reference(name, dtype)
    t0 = fj.stats()["traces"]
    ws = [W0.copy(), b0.copy()]
    for k in range(STEPS):
        loss = step(*coef)
        P, Q, p, q = coef
        if not use_minimize:     # the loss at the variables before the step
            ref_loss = np.sum(0.5 * P * ws[0] ** 2 + Q * ws[0]) + np.sum(0.5 * p * ws[1] ** 2 + q * ws[1])
            assert_close(loss, np.asarray(ref_loss, dtype), rtol=1e-5 if dtype == np.float32 else 1e-12)
        ws = expected[k]
        _check_state(opt, nslots, k + 1, [W, b])
        assert_close(W.numpy(), expected[k][0], **_tol(dtype))
        assert_close(b.numpy(), expected[k][1], **_tol(dtype))
    assert fj.stats()["traces"] - t0 == 1
    for v in opt.variables()[1:]:
        assert v.dtype == W.dtype


@pytest.mark.parametrize("name", list(CONFIGS))
def test_jit_train_step_matches_tf2_rule(name):
    _jit_train(name, np.float32)


@pytest.mark.parametrize("name", ["adam", "rmsprop_centered_momentum"])
def test_float64_eager_and_jit(name):
    cls, kw, _, nslots = CONFIGS[name]
    W0, b0, coef = _problem(np.float64)
    W, b = fj.Variable(W0), fj.Variable(b0)
    assert W.dtype == fj.float64
    opt = cls(**kw)
    expected = _reference(name, np.float64)
    for k in range(STEPS):
        grads = _np_grads([W.numpy(), b.numpy()], coef)
        opt.apply_gradients(zip([fj.constant(g) for g in grads], [W, b]))
        assert W.numpy().dtype == np.float64
        assert_close(W.numpy(), expected[k][0], **_tol(np.float64))
        assert_close(b.numpy(), expected[k][1], **_tol(np.float64))
    _check_state(opt, nslots, STEPS, [W, b])
    _jit_train(name, np.float64)


@entry_tier
def test_jit_minimize_matches_tf2_rule():
    _jit_train("sgd_momentum", np.float32, use_minimize=True)


def test_eager_steps_then_jit_steps_continue_the_same_state():
    """Slots made eagerly are reused by the jitted step; the step count carries on."""
    cls, kw, _, nslots = CONFIGS["adam"]
    W0, b0, coef = _problem(np.float32)
    W, b = fj.Variable(W0), fj.Variable(b0)
    opt = cls(**kw)
    for _ in range(2):
        opt.minimize(lambda: _fj_loss(W, b, *coef), [W, b])
    slots = opt.variables()

    @fj.jit
    def step(P, Q, p, q):
        with fj.GradientTape() as tape:
            loss = _fj_loss(W, b, P, Q, p, q)
        opt.apply_gradients(zip(tape.gradient(loss, [W, b]), [W, b]))
    for _ in range(3):
        step(*coef)
    assert [id(v) for v in opt.variables()] == [id(v) for v in slots]
    _check_state(opt, nslots, 5, [W, b])
    expected = _reference("adam", np.float32)[-1]
    assert_close(W.numpy(), expected[0])
    assert_close(b.numpy(), expected[1])


@pytest.mark.parametrize("cls, kind", [(O.SGD, "sgd"), (O.Adam, "adam"), (O.Adagrad, "adagrad"),
                                       (O.Adadelta, "adadelta"), (O.RMSprop, "rmsprop")])
def test_defaults_are_tf2s(cls, kind):
    """TF2 defaults: SGD lr 0.01; Adam lr 1e-3, betas 0.9/0.999, eps 1e-7; Adagrad lr 1e-3,
    initial accumulator 0.1, eps 1e-7; Adadelta lr 1e-3, rho 0.95, eps 1e-7; RMSprop
    lr 1e-3, rho 0.9, momentum 0, eps 1e-7, not centered."""
    defaults_lr = {"sgd": 0.01}.get(kind, 0.001)
    # tiny gradients make epsilon matter
    W0 = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    g = np.array([[1e-4, -3e-3], [2e-6, 0.5]], np.float32)
    W = fj.Variable(W0)
    opt = cls()
    ref, ws = RefOptimizer(kind, learning_rate=defaults_lr), [W0.copy()]
    for _ in range(3):
        opt.apply_gradients([(fj.constant(g), W)])
        ref.step(ws, [g])
        assert_close(W.numpy(), ws[0])


def test_none_gradients_are_skipped_and_numpy_gradients_accepted():
    a, b = fj.Variable(np.ones(2, np.float32)), fj.Variable(np.ones(3, np.float32))
    opt = O.SGD(0.5, momentum=0.5)
    opt.apply_gradients([(None, a), (np.full(3, 2.0, np.float32), b)])
    assert_close(a.numpy(), np.ones(2, np.float32))
    assert_close(b.numpy(), np.zeros(3, np.float32))
    assert int(opt.iterations.numpy()) == 1
    assert len(opt.variables()) == 2                    # no momentum slot for `a`


def test_apply_gradients_with_only_none_gradients_raises():
    a = fj.Variable(np.ones(2, np.float32))
    opt = O.SGD(0.1)
    with pytest.raises(ValueError):
        opt.apply_gradients([(None, a)])
    assert int(opt.iterations.numpy()) == 0


def test_adam_amsgrad_is_implemented_or_refused():
    W0 = np.array([1.0, -1.0], np.float32)
    grads = [np.array([1.0, 0.1], np.float32), np.array([0.01, 0.01], np.float32)] * 2
    try:
        opt = O.Adam(0.1, amsgrad=True)
    except (NotImplementedError, ValueError, TypeError):
        return
    W = fj.Variable(W0)
    w, m, v, vhat = W0.copy(), np.zeros(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32)
    for t, g in enumerate(grads, 1):
        opt.apply_gradients([(fj.constant(g), W)])
        lr_t = np.float32(0.1) * np.sqrt(1 - np.float32(0.999) ** t) / (1 - np.float32(0.9) ** t)
        m = np.float32(0.9) * m + np.float32(0.1) * g
        v = np.float32(0.999) * v + np.float32(0.001) * g * g
        vhat = np.maximum(vhat, v)
        w = w - lr_t * m / (np.sqrt(vhat) + np.float32(1e-7))
    assert_close(W.numpy(), w)


def test_changing_learning_rate_after_jit_takes_effect():
    w = fj.Variable(np.ones(2, np.float32))
    opt = O.SGD(0.1)

    @fj.jit
    def step():
        opt.apply_gradients([(fj.ones((2,)), w)])
    step()
    opt.learning_rate = 0.5
    step()
    assert_close(w.numpy(), np.full(2, 0.4, np.float32))


# ------------------------------------------------------------------------------------
# learning-rate schedules
# ------------------------------------------------------------------------------------

def _np_exp_decay(step, lr0, steps, rate, staircase):
    p = np.float32(step) / np.float32(steps)
    if staircase:
        p = np.floor(p)
    return np.float32(lr0) * np.float32(rate) ** p


def _np_piecewise(step, boundaries, values):
    for b, v in zip(boundaries, values):
        if step <= b:
            return np.float32(v)
    return np.float32(values[-1])


def _schedules():
    S = O.schedules
    return [
        (S.ExponentialDecay(0.5, decay_steps=3, decay_rate=0.5),
         lambda s: _np_exp_decay(s, 0.5, 3, 0.5, False)),
        (S.ExponentialDecay(0.5, decay_steps=3, decay_rate=0.5, staircase=True),
         lambda s: _np_exp_decay(s, 0.5, 3, 0.5, True)),
        (S.PiecewiseConstantDecay([1, 3], [0.5, 0.2, 0.05]),
         lambda s: _np_piecewise(s, [1, 3], [0.5, 0.2, 0.05])),
    ]


def test_schedules_called_directly():
    for sched, ref in _schedules():
        for step in range(8):
            assert_close(np.asarray(sched(step)), ref(step), rtol=1e-6)
            assert_close(np.asarray(sched(fj.constant(np.int64(step)))), ref(step), rtol=1e-6)
    # boundaries are inclusive: values[i] while step <= boundaries[i]
    pw = O.schedules.PiecewiseConstantDecay([1, 3], [0.5, 0.2, 0.05])
    assert [float(np.asarray(pw(s))) for s in range(5)] == pytest.approx([0.5, 0.5, 0.2, 0.2, 0.05])
    with pytest.raises(ValueError):
        O.schedules.PiecewiseConstantDecay([1, 3], [0.5, 0.2])


def _sgd_with_schedule_reference(ref_lr, steps, w0, g):
    w, out = w0.copy(), []
    for k in range(steps):      # the schedule sees the step count before the update
        w = w - ref_lr(k) * g
        out.append(w.copy())
    return out


def test_schedules_as_sgd_learning_rate_eager():
    w0 = np.array([1.0, -2.0, 3.0], np.float32)
    g = np.array([0.5, 1.0, -2.0], np.float32)
    for sched, ref_lr in _schedules():
        w = fj.Variable(w0)
        opt = O.SGD(learning_rate=sched)
        expected = _sgd_with_schedule_reference(ref_lr, 6, w0, g)
        for k in range(6):
            opt.apply_gradients([(fj.constant(g), w)])
            assert_close(w.numpy(), expected[k])
        assert int(opt.iterations.numpy()) == 6


def test_schedules_as_sgd_learning_rate_jit():
    w0 = np.array([1.0, -2.0, 3.0], np.float32)
    g = np.array([0.5, 1.0, -2.0], np.float32)
    scheds = _schedules()
    ws = [fj.Variable(w0) for _ in scheds]
    opts = [O.SGD(learning_rate=s) for s, _ in scheds]
    wd = fj.Variable(w0.astype(np.float64))             # a float64 variable, float32 schedule
    optd = O.SGD(learning_rate=scheds[0][0])

    @fj.jit
    def step(grad):
        for w, opt in zip(ws, opts):
            opt.apply_gradients([(grad, w)])
        optd.apply_gradients([(fj.cast(grad, fj.float64), wd)])
    t0 = fj.stats()["traces"]
    refs = [_sgd_with_schedule_reference(r, 6, w0, g) for _, r in scheds]
    for k in range(6):
        step(g)
        for w, ref in zip(ws, refs):
            assert_close(w.numpy(), ref[k])
    assert fj.stats()["traces"] - t0 == 1
    lr = [np.float64(scheds[0][1](k)) for k in range(6)]
    assert_close(wd.numpy(), w0.astype(np.float64) - sum(lr) * g.astype(np.float64), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------
# Variables
# ------------------------------------------------------------------------------------

def test_variable_eager_assign_ops():
    v = fj.Variable(np.array([1.0, 2.0], np.float32), name="v")
    assert v.shape == (2,) and v.dtype == fj.float32 and v.name.startswith("v")
    v.assign(np.array([3.0, 4.0], np.float32))
    assert_close(v.numpy(), np.array([3.0, 4.0], np.float32))
    v.assign_add(fj.constant([1.0, 1.0]))
    assert_close(v.numpy(), np.array([4.0, 5.0], np.float32))
    v.assign_sub(np.array([0.5, 2.0], np.float32))
    assert_close(v.numpy(), np.array([3.5, 3.0], np.float32))
    assert_close(np.asarray(v * 2.0), np.array([7.0, 6.0], np.float32))
    # the numpy() copy is not a view of the variable
    a = v.numpy()
    a[:] = 0
    assert_close(v.numpy(), np.array([3.5, 3.0], np.float32))
    d = fj.Variable([1.0, 2.0], dtype=fj.float64)
    d.assign_add([0.25, 0.25])
    assert d.dtype == fj.float64 and d.numpy().dtype == np.float64
    assert_close(d.numpy(), np.array([1.25, 2.25]))
    i = fj.Variable(np.int32(5))
    i.assign_add(3)
    assert i.numpy() == 8 and i.numpy().dtype == np.int32


def test_variable_assign_inside_jit_in_program_order():
    v = fj.Variable(np.zeros(3, np.float32))
    w = fj.Variable(np.ones(3, np.float32))
    c = fj.Variable(np.int64(0))

    @fj.jit
    def f(x):
        v.assign(x)
        y = v * 2.0                 # reads the value just assigned
        v.assign_add(1.0)
        w.assign_sub(v)             # reads x + 1
        c.assign_add(np.int64(1))
        return y, v.read_value()
    x = np.array([1.0, 2.0, 3.0], np.float32)
    y, vv = f(x)
    assert_close(y, 2 * x)
    assert_close(vv, x + 1)
    assert_close(v.numpy(), x + 1)
    assert_close(w.numpy(), 1 - (x + 1))
    y, vv = f(x * 2)
    assert_close(y, 4 * x)
    assert_close(w.numpy(), 1 - (x + 1) - (2 * x + 1))
    assert c.numpy() == 2


@entry_tier
def test_jitted_step_called_1000_times_traces_once():
    c = fj.Variable(np.float32(0.0))
    acc = fj.Variable(np.zeros(2, np.float64))

    @fj.jit
    def step(x):
        c.assign_add(1.0)
        acc.assign_add(x)
        return c.read_value()
    x = np.array([1.0, 0.5])
    t0, comp0 = fj.stats()["traces"], fj.stats()["compiles"]
    for _ in range(1000):
        out = step(x)
    assert fj.stats()["traces"] - t0 == 1
    assert float(np.asarray(out)) == 1000.0
    assert c.numpy() == 1000.0
    assert_close(acc.numpy(), np.array([1000.0, 500.0]))
    # compiling happens a bounded number of times (kernels + the njit entry), not per call
    assert fj.stats()["compiles"] - comp0 < 20


def test_failed_jitted_step_leaves_every_variable_unchanged():
    v = fj.Variable(np.ones(3, np.float32))
    table = fj.Variable(np.arange(8, dtype=np.float32).reshape(4, 2))
    opt = O.SGD(0.1, momentum=0.9)

    @fj.jit
    def step(idx):
        v.assign_sub(fj.ones((3,)))
        with fj.GradientTape() as tape:
            rows = fj.gather(table, idx)
            loss = fj.reduce_sum(rows * rows)
        opt.apply_gradients(zip(tape.gradient(loss, [table]), [table]))
        return loss

    good = np.array([0, 2], np.int32)
    step(good)
    snapshot = [x.numpy() for x in [v, table] + opt.variables()]
    for bad in (np.array([0, 4], np.int32), np.array([-1, 1], np.int32), np.array([100], np.int32)):
        with pytest.raises(IndexError, match="gather"):
            step(bad)
        after = [x.numpy() for x in [v, table] + opt.variables()]
        for a, b in zip(after, snapshot):
            np.testing.assert_array_equal(a, b)
    # and the step still works afterwards
    step(good)
    assert int(opt.iterations.numpy()) == 2
    assert_close(v.numpy(), np.full(3, -1.0, np.float32))


def test_failed_forward_only_jitted_step_leaves_variables_unchanged():
    v = fj.Variable(np.zeros(2, np.float64))
    params = np.arange(5, dtype=np.float64)

    @fj.jit
    def step(idx):
        v.assign_sub(fj.constant([1.0, 2.0], fj.float64))
        return fj.gather(params, idx)
    assert_close(step(np.array([4], np.int64)), np.array([4.0]))
    with pytest.raises(fj.errors.OutOfRangeError):
        step(np.array([5], np.int64))
    assert_close(v.numpy(), np.array([-1.0, -2.0]))


def test_wrong_shape_or_dtype_assign_is_a_clear_error():
    v = fj.Variable(np.zeros((2, 3), np.float32), name="weights")
    with pytest.raises(ValueError, match=r"weights.*\(3,\).*\(2, 3\)|weights.*\(2, 3\).*\(3,\)"):
        v.assign(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        v.assign_add(np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match="int32"):
        v.assign(fj.zeros((2, 3), fj.int32))
    with pytest.raises(TypeError, match="float64"):
        v.assign_sub(fj.zeros((2, 3), fj.float64))
    iv = fj.Variable(np.int32(1))
    with pytest.raises(TypeError):
        iv.assign(1.5)
    np.testing.assert_array_equal(v.numpy(), np.zeros((2, 3), np.float32))

    @fj.jit
    def bad_shape(x):
        v.assign(x)
    with pytest.raises(ValueError, match="weights"):
        bad_shape(np.ones((3,), np.float32))

    @fj.jit
    def bad_dtype(x):
        v.assign(x)
    with pytest.raises(TypeError, match="weights"):
        bad_dtype(np.ones((2, 3), np.float64))
    np.testing.assert_array_equal(v.numpy(), np.zeros((2, 3), np.float32))


def test_numpy_array_on_the_left_of_a_variable_gives_a_tensor():
    W = fj.Variable(np.array([1.0, 2.0], np.float32))
    P = np.array([3.0, 5.0], np.float32)
    with fj.GradientTape() as tape:
        y = P * W
        loss = fj.reduce_sum(y)
    assert isinstance(y, fj.Tensor)
    assert_close(tape.gradient(loss, W), P)
    g = fj.jit(lambda: P * W + W)
    assert_close(g(), np.array([4.0, 12.0], np.float32))


def test_jit_assign_with_runtime_shape_mismatch_is_an_error_and_atomic():
    a = fj.Variable(np.zeros(2, np.float32))
    v = fj.Variable(np.zeros((2, 3), np.float32), name="weights")

    @fj.jit
    def f(x, y):
        a.assign(x)
        v.assign(y)
    f(np.ones(2, np.float32), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="weights"):
        f(np.full(2, 5, np.float32), np.ones((3, 5), np.float32))
    np.testing.assert_array_equal(a.numpy(), np.ones(2, np.float32))     # unchanged
    with pytest.raises(ValueError, match="weights"):
        f(np.ones(2, np.float32), np.arange(6, dtype=np.float32).reshape(3, 2))
    np.testing.assert_array_equal(v.numpy(), np.ones((2, 3), np.float32))
