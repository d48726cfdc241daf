"""`fj.optimizers`: TF2's update rules and defaults. Under `@fj.jit` the updates are
ops on the gradients, so they land in the backward function and fuse into its loops;
slot variables are created once, on the first `apply_gradients`."""
import numpy as np

from .. import dtypes as D
from . import api as F
from .autodiff import GradientTape
from ..errors import DTypeError, ShapeError
from ..ir.shapes import concrete_sizes
from .tensor import Tensor, user_src
from .variables import Variable, transaction


class Optimizer:
    def __init__(self, learning_rate, name):
        self.name = name
        self.iterations = Variable(np.int64(0), name=f"{name}/iter", trainable=False)
        self._slots = {}
        self._lr_var = None
        self.learning_rate = learning_rate

    @property
    def learning_rate(self):
        return float(self._lr_var.numpy()) if self._lr_value is None else self._lr_value

    @learning_rate.setter
    def learning_rate(self, lr):
        # a number lives in a variable (as in TF2), so changing it needs no retrace
        if callable(lr) or isinstance(lr, Tensor):
            self._lr_value = lr
            return
        self._lr_value = None
        if self._lr_var is None:
            self._lr_var = Variable(np.float64(lr), name=f"{self.name}/learning_rate", trainable=False)
        else:
            self._lr_var.assign(np.float64(lr))

    def add_slot(self, var, slot_name, initial=0.0):
        key = (id(var), slot_name)
        if key not in self._slots:
            self._slots[key] = (var, Variable(np.full(var.shape, initial, var.dtype.np),
                                              name=f"{var.name.split(':')[0]}/{slot_name}",
                                              trainable=False))
        return self._slots[key][1]

    def get_slot(self, var, slot_name):
        return self._slots[(id(var), slot_name)][1]

    def variables(self):
        return [self.iterations] + [v for _, v in self._slots.values()]

    def _lr(self, dtype):
        lr = self._lr_value
        if lr is None:
            return F.cast(self._lr_var.read_value(), dtype)
        if callable(lr):
            lr = lr(self.iterations.read_value())
        if isinstance(lr, (int, float)):
            return float(lr)
        return F.cast(lr, dtype)

    def apply_gradients(self, grads_and_vars):
        pairs = list(grads_and_vars)
        if pairs and all(g is None for g, _ in pairs):
            raise ValueError("No gradients provided for any variable: "
                             + ", ".join(v.name for _, v in pairs))
        # every gradient is checked before the first write, and the writes are applied
        # together (a transaction eagerly, the compiled step under jit)
        pairs = [(self._checked(g, v), v) for g, v in pairs if g is not None]
        with transaction():
            for g, v in pairs:
                self._update(g, v, self._lr(v.dtype))
            self.iterations.assign_add(np.int64(1))
        return self.iterations

    def _checked(self, g, v):
        """The gradient for variable v as a tensor of v's dtype and shape, or an error
        naming the variable (a NumPy array of another dtype is not cast silently)."""
        if isinstance(g, (np.ndarray, np.generic)) and D.as_dtype(np.asarray(g).dtype) is not v.dtype:
            raise DTypeError(f"{self.name}.apply_gradients (at {user_src()}): the gradient for "
                             f"{v.name} has dtype {np.asarray(g).dtype}, the variable {v.dtype.name}")
        if not isinstance(g, Tensor):
            g = F.convert_to_tensor(g, v.dtype)
        if g.dtype is not v.dtype:
            raise DTypeError(f"{self.name}.apply_gradients (at {user_src()}): the gradient for "
                             f"{v.name} has dtype {g.dtype.name}, the variable {v.dtype.name}")
        gs = tuple(g.shape)
        if len(gs) != len(v.shape) or any(a != b for a, b in zip(gs, v.shape)):
            with concrete_sizes():
                raise ShapeError(f"{self.name}.apply_gradients (at {user_src()}): the gradient "
                                 f"for {v.name} has shape {g.shape!r}, the variable {v.shape!r}")
        return g

    def minimize(self, loss, var_list, tape=None):
        with GradientTape() as t:
            value = loss() if callable(loss) else loss
        if not callable(loss) and tape is None:
            raise ValueError("minimize(loss_tensor) needs the tape that recorded it (tape=...); "
                             "or pass a zero-argument function")
        grads = (tape or t).gradient(value, var_list)
        return self.apply_gradients(zip(grads, var_list))

    def _step_float(self, dtype):
        return F.cast(self.iterations.read_value() + np.int64(1), dtype)


class SGD(Optimizer):
    """momentum 0: v -= lr*g.  Otherwise m = momentum*m - lr*g and v += m, or with
    nesterov v += momentum*m - lr*g (m already updated)."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name="SGD"):
        super().__init__(learning_rate, name)
        self.momentum, self.nesterov = momentum, nesterov

    def _update(self, g, v, lr):
        if not self.momentum:
            v.assign_sub(g * lr)
            return
        m = self.add_slot(v, "momentum")
        m_new = m * self.momentum - g * lr
        m.assign(m_new)
        v.assign_add(m_new * self.momentum - g * lr if self.nesterov else m_new)


class Adam(Optimizer):
    """t = iterations + 1; lr_t = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t);
    m = beta_1*m + (1-beta_1)*g; v = beta_2*v + (1-beta_2)*g*g;
    var -= lr_t * m / (sqrt(v) + epsilon)  (amsgrad: vhat = max(vhat, v) replaces v)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 name="Adam"):
        super().__init__(learning_rate, name)
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = beta_1, beta_2, epsilon, amsgrad

    def _update(self, g, v, lr):
        m = self.add_slot(v, "m")
        s = self.add_slot(v, "v")
        t = self._step_float(v.dtype)
        b1 = F.constant(self.beta_1, v.dtype)
        b2 = F.constant(self.beta_2, v.dtype)
        lr_t = lr * F.sqrt(1.0 - F.pow(b2, t)) / (1.0 - F.pow(b1, t))
        m_new = m * self.beta_1 + g * (1.0 - self.beta_1)
        s_new = s * self.beta_2 + g * g * (1.0 - self.beta_2)
        m.assign(m_new)
        s.assign(s_new)
        if self.amsgrad:       # AMSGrad: divide by the running maximum of v
            vhat = self.add_slot(v, "vhat")
            s_new = F.maximum(vhat, s_new)
            vhat.assign(s_new)
        v.assign_sub(lr_t * m_new / (F.sqrt(s_new) + self.epsilon))


class Adagrad(Optimizer):
    """acc += g*g (acc starts at initial_accumulator_value); var -= lr*g/(sqrt(acc)+epsilon)."""

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, name="Adagrad"):
        super().__init__(learning_rate, name)
        self.initial, self.epsilon = initial_accumulator_value, epsilon

    def _update(self, g, v, lr):
        acc = self.add_slot(v, "accumulator", self.initial)
        a_new = acc + g * g
        acc.assign(a_new)
        v.assign_sub(g * lr / (F.sqrt(a_new) + self.epsilon))


class Adadelta(Optimizer):
    """ag = rho*ag + (1-rho)*g*g; upd = sqrt(av + eps)/sqrt(ag + eps) * g;
    av = rho*av + (1-rho)*upd*upd; var -= lr*upd."""

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, name="Adadelta"):
        super().__init__(learning_rate, name)
        self.rho, self.epsilon = rho, epsilon

    def _update(self, g, v, lr):
        ag = self.add_slot(v, "accumulated_grad")
        av = self.add_slot(v, "accumulated_var")
        ag_new = ag * self.rho + g * g * (1.0 - self.rho)
        upd = F.sqrt(av + self.epsilon) / F.sqrt(ag_new + self.epsilon) * g
        ag.assign(ag_new)
        av.assign(av * self.rho + upd * upd * (1.0 - self.rho))
        v.assign_sub(upd * lr)


class RMSprop(Optimizer):
    """ms = rho*ms + (1-rho)*g*g; centered: mg = rho*mg + (1-rho)*g, denom = ms - mg*mg,
    else denom = ms. momentum 0: var -= lr*g/(sqrt(denom)+epsilon); otherwise
    mom = momentum*mom + lr*g/sqrt(denom + epsilon), var -= mom."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 name="RMSprop"):
        super().__init__(learning_rate, name)
        self.rho, self.momentum, self.epsilon, self.centered = rho, momentum, epsilon, centered

    def _update(self, g, v, lr):
        ms = self.add_slot(v, "rms")
        ms_new = ms * self.rho + g * g * (1.0 - self.rho)
        ms.assign(ms_new)
        denom = ms_new
        if self.centered:
            mg = self.add_slot(v, "mg")
            mg_new = mg * self.rho + g * (1.0 - self.rho)
            mg.assign(mg_new)
            denom = ms_new - mg_new * mg_new
        if self.momentum:
            mom = self.add_slot(v, "momentum")
            mom_new = mom * self.momentum + g * lr / F.sqrt(denom + self.epsilon)
            mom.assign(mom_new)
            v.assign_sub(mom_new)
        else:
            v.assign_sub(g * lr / (F.sqrt(denom) + self.epsilon))


class _Schedules:
    class ExponentialDecay:
        """lr0 * decay_rate ** (step / decay_steps), the exponent floored if staircase."""

        def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
            self.lr0, self.steps, self.rate, self.staircase = (initial_learning_rate, decay_steps,
                                                               decay_rate, staircase)

        def __call__(self, step):
            p = F.cast(step, D.float32) / float(self.steps)
            if self.staircase:
                p = F.floor(p)
            return F.pow(F.constant(self.rate, D.float32), p) * self.lr0

    class PiecewiseConstantDecay:
        """values[i] while step <= boundaries[i] (values[-1] after the last boundary)."""

        def __init__(self, boundaries, values):
            if len(values) != len(boundaries) + 1:
                raise ValueError("PiecewiseConstantDecay needs len(values) == len(boundaries) + 1")
            self.boundaries, self.values = list(boundaries), list(values)

        def __call__(self, step):
            s = F.cast(step, D.float32)
            out = F.constant(self.values[-1], D.float32)
            for b, v in reversed(list(zip(self.boundaries, self.values[:-1]))):
                out = F.where(s <= float(b), F.constant(v, D.float32), out)
            return out


schedules = _Schedules
