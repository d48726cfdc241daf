"""`flowjit.keras.optimizers` against NumPy re-implementations of Keras 3's update rules
(computed in float32 as Keras does), eagerly and inside a jitted training step;
learning-rate schedules; gradient clipping; weight decay; lookup by name."""
import math
import warnings

import numpy as np
import pytest

import flowjit as fj
from conftest import assert_close
from flowjit.keras import optimizers as O

F32 = dict(rtol=3e-6, atol=1e-6)
STEPS = 4


@pytest.fixture(autouse=True)
def _python_entry_tier(monkeypatch):
    # jitted steps stay on the kernel-compiled Python entry tier (see test_optimizers.py)
    monkeypatch.setattr(fj.config, "compile_entry_after", 10**9)


# ------------------------------------------------------------------------------------
# NumPy references of Keras 3's update rules
# ------------------------------------------------------------------------------------
f32 = np.float32


class Ref:
    """One Keras 3 optimizer on a list of float32 arrays; `step(ws, gs)` updates ws."""

    def __init__(self, kind, learning_rate, **kw):
        self.kind, self.lr, self.kw, self.t, self.st = kind, learning_rate, kw, 0, {}
        self.u_product = f32(1.0)

    def lr_at(self, t):
        return f32(self.lr(t)) if callable(self.lr) else f32(self.lr)

    def step(self, ws, gs):
        lr = self.lr_at(self.t)
        t = f32(self.t + 1)
        gs = self._clip(gs)
        wd = self.kw.get("weight_decay")
        if wd:
            ws[:] = [w - w * f32(wd) * lr for w in ws]
        if self.kind == "nadam":
            b1 = self.kw.get("beta_1", 0.9)
            self.u_product = self.u_product * f32(b1) * (f32(1) - f32(0.5) * f32(0.96) ** t)
        for i, (w, g) in enumerate(zip(ws, gs)):
            ws[i] = getattr(self, "_" + self.kind)(w, g, self.st.setdefault(i, {}), lr, t)
        self.t += 1

    def _clip(self, gs):
        k = self.kw
        if k.get("clipnorm"):
            c = f32(k["clipnorm"])
            return [g * c / np.maximum(np.sqrt(np.sum(g * g)), c) for g in gs]
        if k.get("global_clipnorm"):
            c = f32(k["global_clipnorm"])
            norm = np.sqrt(sum(np.sum(g * g) for g in gs))
            return [g * (c / np.maximum(norm, c)) for g in gs]
        if k.get("clipvalue"):
            c = f32(k["clipvalue"])
            return [np.clip(g, -c, c) for g in gs]
        return gs

    def _sgd(self, w, g, st, lr, t):
        mom = self.kw.get("momentum", 0.0)
        if not mom:
            return w - g * lr
        m = st["m"] = st.get("m", np.zeros_like(w)) * f32(mom) - g * lr
        return w + (m * f32(mom) - g * lr if self.kw.get("nesterov") else m)

    def _adam(self, w, g, st, lr, t):
        b1, b2 = self.kw.get("beta_1", 0.9), self.kw.get("beta_2", 0.999)
        eps = self.kw.get("epsilon", 1e-7)
        alpha = lr * np.sqrt(f32(1) - f32(b2) ** t) / (f32(1) - f32(b1) ** t)
        m = st["m"] = st.get("m", np.zeros_like(w)) + (g - st.get("m", 0)) * f32(1 - b1)
        v = st["v"] = st.get("v", np.zeros_like(w)) + (g * g - st.get("v", 0)) * f32(1 - b2)
        if self.kw.get("amsgrad"):
            v = st["vh"] = np.maximum(st.get("vh", np.zeros_like(w)), v)
        return w - m * alpha / (np.sqrt(v) + f32(eps))

    def _rmsprop(self, w, g, st, lr, t):
        rho, mom = self.kw.get("rho", 0.9), self.kw.get("momentum", 0.0)
        eps = f32(self.kw.get("epsilon", 1e-7))
        v = st["v"] = f32(rho) * st.get("v", np.zeros_like(w)) + f32(1 - rho) * g * g
        if self.kw.get("centered"):
            a = st["a"] = f32(rho) * st.get("a", np.zeros_like(w)) + f32(1 - rho) * g
            denom = v - a * a + eps          # Keras 3: epsilon inside the square root
        else:
            denom = v + eps
        inc = lr * g / np.sqrt(denom)
        if mom:
            inc = st["m"] = f32(mom) * st.get("m", np.zeros_like(w)) + inc
        return w - inc

    def _adagrad(self, w, g, st, lr, t):
        acc = st["acc"] = st.get("acc", np.full_like(w, self.kw.get("initial_accumulator_value", 0.1))) + g * g
        return w - lr * g / np.sqrt(acc + f32(self.kw.get("epsilon", 1e-7)))

    def _adadelta(self, w, g, st, lr, t):
        rho, eps = self.kw.get("rho", 0.95), f32(self.kw.get("epsilon", 1e-7))
        ag = st["ag"] = f32(rho) * st.get("ag", np.zeros_like(w)) + f32(1 - rho) * g * g
        ad = st.get("ad", np.zeros_like(w))
        delta = -(np.sqrt(ad + eps) * g / np.sqrt(ag + eps))
        st["ad"] = f32(rho) * ad + f32(1 - rho) * delta * delta
        return w + lr * delta

    def _adamax(self, w, g, st, lr, t):
        b1, b2 = self.kw.get("beta_1", 0.9), self.kw.get("beta_2", 0.999)
        m = st["m"] = st.get("m", np.zeros_like(w)) + (g - st.get("m", 0)) * f32(1 - b1)
        u = st["u"] = np.maximum(f32(b2) * st.get("u", np.zeros_like(w)), np.abs(g))
        return w - lr * m / ((f32(1) - f32(b1) ** t) * (u + f32(self.kw.get("epsilon", 1e-7))))

    def _nadam(self, w, g, st, lr, t):
        b1, b2 = f32(self.kw.get("beta_1", 0.9)), f32(self.kw.get("beta_2", 0.999))
        u_t = b1 * (f32(1) - f32(0.5) * f32(0.96) ** t)
        u_t1 = b1 * (f32(1) - f32(0.5) * f32(0.96) ** (t + f32(1)))
        up, up1 = self.u_product, self.u_product * u_t1
        m = st["m"] = st.get("m", np.zeros_like(w)) + (g - st.get("m", 0)) * (f32(1) - b1)
        v = st["v"] = st.get("v", np.zeros_like(w)) + (g * g - st.get("v", 0)) * (f32(1) - b2)
        m_hat = u_t1 * m / (f32(1) - up1) + (f32(1) - u_t) * g / (f32(1) - up)
        v_hat = v / (f32(1) - b2 ** t)
        return w - m_hat * lr / (np.sqrt(v_hat) + f32(self.kw.get("epsilon", 1e-7)))


# name: (class, kwargs, reference kind)
CONFIGS = {
    "sgd": (O.SGD, dict(learning_rate=0.1), "sgd"),
    "sgd_momentum": (O.SGD, dict(learning_rate=0.1, momentum=0.9), "sgd"),
    "sgd_nesterov": (O.SGD, dict(learning_rate=0.1, momentum=0.9, nesterov=True), "sgd"),
    "adam": (O.Adam, dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-3), "adam"),
    "adam_amsgrad": (O.Adam, dict(learning_rate=0.05, amsgrad=True), "adam"),
    "adamw": (O.AdamW, dict(learning_rate=0.05, weight_decay=0.1), "adam"),
    "rmsprop": (O.RMSprop, dict(learning_rate=0.01, rho=0.8, epsilon=1e-4), "rmsprop"),
    "rmsprop_centered_momentum": (O.RMSprop, dict(learning_rate=0.01, momentum=0.5, centered=True),
                                  "rmsprop"),
    "adagrad": (O.Adagrad, dict(learning_rate=0.1, initial_accumulator_value=0.5, epsilon=1e-4), "adagrad"),
    "adadelta": (O.Adadelta, dict(learning_rate=1.0, rho=0.9, epsilon=1e-4), "adadelta"),
    "adamax": (O.Adamax, dict(learning_rate=0.05), "adamax"),
    "nadam": (O.Nadam, dict(learning_rate=0.05), "nadam"),
}


def _problem():
    """W (3x2), b (2,) and loss = sum(P/2 W^2 + Q W) + sum(b^2), so dW = P*W + Q, db = 2b."""
    r = np.random.default_rng(7)
    W0 = r.uniform(-2, 2, (3, 2)).astype(f32)
    b0 = r.uniform(-2, 2, (2,)).astype(f32)
    return W0, b0, r.uniform(0.5, 1.5, (3, 2)).astype(f32), r.uniform(-1, 1, (3, 2)).astype(f32)


def _np_grads(ws, P, Q):
    return [P * ws[0] + Q, f32(2) * ws[1]]


def _reference(kind, kw, steps=STEPS):
    W0, b0, P, Q = _problem()
    kw = dict(kw)
    lr = kw.pop("learning_rate")
    ref, ws, out = Ref(kind, lr, **kw), [W0.copy(), b0.copy()], []
    for _ in range(steps):
        ref.step(ws, _np_grads(ws, P, Q))
        out.append([w.copy() for w in ws])
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_eager_apply_gradients_matches_keras3_rule(name):
    cls, kw, kind = CONFIGS[name]
    W0, b0, P, Q = _problem()
    W, b = fj.Variable(W0), fj.Variable(b0)
    opt = cls(**kw)
    expected = _reference(kind, kw)
    for k in range(STEPS):
        res = opt.apply_gradients(zip([fj.constant(g) for g in _np_grads([W.numpy(), b.numpy()], P, Q)],
                                      [W, b]))
        assert int(res.numpy()) == k + 1
        assert_close(W.numpy(), expected[k][0], **F32)
        assert_close(b.numpy(), expected[k][1], **F32)


def _loss(W, b, P, Q):
    return fj.reduce_sum(0.5 * P * fj.square(W) + Q * W) + fj.reduce_sum(fj.square(b))


@pytest.mark.parametrize("name", ["sgd_nesterov", "adam", "adamw", "rmsprop_centered_momentum",
                                  "adagrad", "adadelta", "adamax", "nadam"])
def test_jit_train_step_matches_keras3_rule(name):
    cls, kw, kind = CONFIGS[name]
    W0, b0, P, Q = _problem()
    W, b = fj.Variable(W0), fj.Variable(b0)
    opt = cls(**kw)

    @fj.jit
    def step(P, Q):
        with fj.GradientTape() as tape:
            loss = _loss(W, b, P, Q)
        opt.apply_gradients(zip(tape.gradient(loss, [W, b]), [W, b]))
        return loss
    expected = _reference(kind, kw)
    t0 = fj.stats()["traces"]
    for k in range(STEPS):
        step(P, Q)
        assert_close(W.numpy(), expected[k][0], **F32)
        assert_close(b.numpy(), expected[k][1], **F32)
    assert fj.stats()["traces"] - t0 == 1
    assert int(opt.iterations.numpy()) == STEPS


@pytest.mark.parametrize("cls, kind, slots", [
    (O.SGD, "sgd", 0), (O.Adam, "adam", 2), (O.AdamW, "adam", 2), (O.RMSprop, "rmsprop", 1),
    (O.Adagrad, "adagrad", 1), (O.Adadelta, "adadelta", 2), (O.Adamax, "adamax", 2),
    (O.Nadam, "nadam", 2)])
def test_defaults_and_names_are_keras3s(cls, kind, slots):
    """Keras 3 defaults: SGD lr 0.01, the others 1e-3; epsilon 1e-7 (tiny gradients make
    it matter); AdamW weight_decay 0.004; names as Keras's auto_name."""
    W0 = np.array([[1.0, -2.0], [0.5, 3.0]], f32)
    g = np.array([[1e-4, -3e-3], [2e-6, 0.5]], f32)
    W = fj.Variable(W0)
    opt = cls()
    extra = {"weight_decay": 0.004} if cls is O.AdamW else {}
    ref, ws = Ref(kind, 0.01 if cls is O.SGD else 0.001, **extra), [W0.copy()]
    for _ in range(3):
        opt.apply_gradients([(fj.constant(g), W)])
        ref.step(ws, [g])
        assert_close(W.numpy(), ws[0], **F32)
    names = {O.SGD: "sgd", O.Adam: "adam", O.AdamW: "adam_w", O.RMSprop: "rm_sprop",
             O.Adagrad: "adagrad", O.Adadelta: "adadelta", O.Adamax: "adamax", O.Nadam: "nadam"}
    assert opt.name == names[cls]
    # iterations, the learning rate, the slots (and Nadam's momentum-schedule product)
    assert len(opt.variables) == 2 + slots + (cls is O.Nadam)
    assert opt.variables() == opt.variables      # also callable, like fj.optimizers'
    assert opt.learning_rate == pytest.approx(0.01 if cls is O.SGD else 0.001)


# ------------------------------------------------------------------------------------
# clipping, weight decay, constraints, apply()
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("clip", [dict(clipnorm=0.5), dict(global_clipnorm=0.5), dict(clipvalue=0.3),
                                  dict(global_clipnorm=100.0)])
def test_gradient_clipping(clip):
    W0, b0, P, Q = _problem()
    kw = dict(learning_rate=0.1, momentum=0.5, **clip)
    W, b = fj.Variable(W0), fj.Variable(b0)
    opt = O.SGD(**kw)
    expected = _reference("sgd", kw)

    @fj.jit
    def step(P, Q):
        with fj.GradientTape() as tape:
            loss = _loss(W, b, P, Q)
        opt.apply(tape.gradient(loss, [W, b]), [W, b])
    for k in range(STEPS):
        if k < 2:
            opt.apply([fj.constant(g) for g in _np_grads([W.numpy(), b.numpy()], P, Q)], [W, b])
        else:       # eager steps, then jitted ones continue the same state
            step(P, Q)
        assert_close(W.numpy(), expected[k][0], **F32)
        assert_close(b.numpy(), expected[k][1], **F32)
    with pytest.raises(ValueError):
        O.SGD(clipnorm=1.0, clipvalue=1.0)


def test_weight_decay_exclusion_and_constraints():
    W0, b0, P, Q = _problem()
    W, b = fj.Variable(W0, name="kernel"), fj.Variable(b0, name="bias")
    opt = O.SGD(learning_rate=0.1, weight_decay=0.05)
    opt.exclude_from_weight_decay(var_names=["bias"])
    W.constraint = lambda v: fj.clip_by_value(v, -1.0, 1.0)
    g = _np_grads([W0, b0], P, Q)
    opt.apply_gradients(zip([fj.constant(x) for x in g], [W, b]))
    lr, wd = f32(0.1), f32(0.05)
    assert_close(W.numpy(), np.clip((W0 - W0 * wd * lr) - g[0] * lr, -1, 1), **F32)
    assert_close(b.numpy(), b0 - g[1] * lr, **F32)


def test_apply_without_variables_none_gradients_and_dtypes():
    a, b = fj.Variable(np.ones(2, f32)), fj.Variable(np.ones(3, f32))
    opt = O.SGD(0.5, momentum=0.5)
    with pytest.raises(ValueError):
        opt.apply([fj.ones((2,)), fj.ones((3,))])          # not built yet
    opt.build([a, b])
    assert len(opt.variables) == 4                           # momentum slots made by build
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        opt.apply([None, np.full(3, 2.0, np.float64)])      # NumPy float64: cast, as Keras
    assert_close(a.numpy(), np.ones(2, f32))
    assert_close(b.numpy(), np.zeros(3, f32))
    with pytest.raises(ValueError, match="No gradients"):
        opt.apply_gradients([(None, a)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.apply([fj.ones((2,)), fj.ones((3,))])
    assert int(opt.iterations.numpy()) == 2
    w64 = fj.Variable(np.array([1.0, 2.0]))
    O.Adam(0.1).apply_gradients([(fj.constant(np.array([0.5, -0.5])), w64)])
    assert w64.dtype == fj.float64
    g = np.array([0.5, -0.5])       # one Adam step in float64 (the rate is Keras's float32 0.1)
    m, v = (1 - 0.9) * g, (1 - 0.999) * g * g
    alpha = np.float64(f32(0.1)) * np.sqrt(1 - 0.999) / (1 - 0.9)
    assert_close(w64.numpy(), np.array([1.0, 2.0]) - m * alpha / (np.sqrt(v) + 1e-7), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------
# learning rates and schedules
# ------------------------------------------------------------------------------------

def _np_schedules():
    def cos(step, lr0=0.5, steps=4, alpha=0.1, target=None, warm=0):
        if target is None:
            s = min(step, steps)
            return lr0 * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * s / steps)) + alpha)
        s = min(step, steps + warm)
        if s < warm:
            return (target - lr0) * s / warm + lr0
        return target * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * (s - warm) / steps)) + alpha)

    def pw(step, bounds=(1, 3), values=(0.5, 0.2, 0.05)):
        for b, v in zip(bounds, values):
            if step <= b:
                return v
        return values[-1]
    S = O.schedules
    return [
        (S.ExponentialDecay(0.5, decay_steps=3, decay_rate=0.5), lambda s: 0.5 * 0.5 ** (s / 3)),
        (S.ExponentialDecay(0.5, 3, 0.5, staircase=True), lambda s: 0.5 * 0.5 ** (s // 3)),
        (S.PiecewiseConstantDecay([1, 3], [0.5, 0.2, 0.05]), pw),
        (S.InverseTimeDecay(0.5, decay_steps=2, decay_rate=0.5), lambda s: 0.5 / (1 + 0.5 * s / 2)),
        (S.InverseTimeDecay(0.5, 2, 0.5, staircase=True), lambda s: 0.5 / (1 + 0.5 * (s // 2))),
        (S.CosineDecay(0.5, decay_steps=4, alpha=0.1), cos),
        (S.CosineDecay(0.5, 4, alpha=0.1, warmup_target=1.0, warmup_steps=2),
         lambda s: cos(s, target=1.0, warm=2)),
    ]


def test_schedules_called_directly():
    for sched, ref in _np_schedules():
        for step in range(9):
            want = f32(ref(step))
            assert_close(sched(step), want, rtol=1e-6)
            assert_close(sched(fj.constant(np.int64(step))), want, rtol=1e-6)
        assert type(sched).from_config(sched.get_config()).get_config() == sched.get_config()
    with pytest.raises(ValueError):
        O.schedules.PiecewiseConstantDecay([1, 3], [0.5, 0.2])


@pytest.mark.parametrize("which", [0, 2, 6])
def test_schedule_as_learning_rate_eager_and_jit(which):
    sched, ref = _np_schedules()[which]
    w0, g = np.array([1.0, -2.0, 3.0], f32), np.array([0.5, 1.0, -2.0], f32)
    expected, w = [], w0.copy()
    for k in range(6):            # the schedule sees the step count before the update
        w = w - g * f32(ref(k))
        expected.append(w.copy())
    for jit in (False, True):
        v = fj.Variable(w0)
        opt = O.SGD(learning_rate=sched)

        def step():
            opt.apply_gradients([(fj.constant(g), v)])
        step = fj.jit(step) if jit else step
        for k in range(6):
            step()
            assert_close(v.numpy(), expected[k], **F32)
        assert opt.learning_rate == pytest.approx(float(f32(ref(6))), rel=1e-6)


def test_learning_rate_setter_callable_and_config():
    w = fj.Variable(np.ones(2, f32))
    opt = O.SGD(0.1)

    @fj.jit
    def step():
        opt.apply_gradients([(fj.ones((2,)), w)])
    step()
    t0 = fj.stats()["traces"]
    opt.learning_rate = 0.5                  # a variable: no retrace
    step()
    assert fj.stats()["traces"] == t0
    assert_close(w.numpy(), np.full(2, 0.4, f32))
    opt2 = O.SGD(learning_rate=lambda: 0.25)    # a plain callable takes no argument (Keras)
    v = fj.Variable(np.ones(2, f32))
    opt2.apply_gradients([(fj.ones((2,)), v)])
    assert_close(v.numpy(), np.full(2, 0.75, f32))
    sched_opt = O.Adam(O.schedules.ExponentialDecay(0.1, 10, 0.5))
    with pytest.raises(TypeError):
        sched_opt.learning_rate = 0.1
    cfg = sched_opt.get_config()
    assert cfg["learning_rate"]["class_name"] == "ExponentialDecay"
    back = O.Adam.from_config(cfg)
    assert isinstance(back._lr_value, O.schedules.ExponentialDecay)
    assert O.SGD(0.1, momentum=0.9).get_config() == {
        "name": "sgd", "learning_rate": pytest.approx(0.1), "weight_decay": None, "clipnorm": None,
        "global_clipnorm": None, "clipvalue": None, "momentum": 0.9, "nesterov": False}


def test_get():
    for name, cls in [("sgd", O.SGD), ("adam", O.Adam), ("adamw", O.AdamW), ("RMSprop", O.RMSprop),
                      ("adagrad", O.Adagrad), ("adadelta", O.Adadelta), ("adamax", O.Adamax),
                      ("nadam", O.Nadam)]:
        assert type(O.get(name)) is cls
    inst = O.Adam(0.2)
    assert O.get(inst) is inst
    opt = O.get({"class_name": "SGD", "config": {"learning_rate": 0.3, "momentum": 0.5}})
    assert opt.momentum == 0.5 and opt.learning_rate == pytest.approx(0.3)
    assert isinstance(O.get(O.Nadam), O.Nadam)
    with pytest.raises(ValueError, match="adamm"):
        O.get("adamm")
    with pytest.raises(ValueError):
        O.SGD(momentum=1.5)
    with pytest.raises(ValueError, match="not recognized"):
        O.Adam(betta_1=0.5)
