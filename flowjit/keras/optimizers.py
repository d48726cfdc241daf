"""`keras.optimizers`: Keras 3's optimizers on `fj.optimizers.Optimizer` (its slot
variables, its step counter, its all-or-nothing eager transaction).

Keras 3's update rules differ from TF2's (which `fj.optimizers` implements) in places:
Adagrad and RMSprop divide by sqrt(accumulator + epsilon), not sqrt(accumulator) +
epsilon; Adam updates its moments as m += (g - m)(1 - beta_1). Each `update_step` below
is Keras 3's formula, op for op. Every update is an `fj` op assigning an `fj.Variable`,
so under `@fj.jit` the whole step (clipping, weight decay, the updates, constraints)
compiles into the training step. The learning rate is a float32 variable (changing it
needs no retrace) or a schedule evaluated at the step count, as in Keras."""
import math
import re
import warnings

import numpy as np

import flowjit as fj
from .identifiers import from_config_dict, from_name
from flowjit.frontend.optimizers import Optimizer as _FjOptimizer, schedules as _fj_schedules
from flowjit.frontend.variables import transaction


# --- learning-rate schedules ------------------------------------------------------------
class LearningRateSchedule:
    """`schedule(step)` -> the learning rate (a float32 tensor) at optimizer step `step`."""

    def __call__(self, step):
        raise NotImplementedError(f"{type(self).__name__}.__call__(step)")

    def get_config(self):
        raise NotImplementedError(f"{type(self).__name__}.get_config()")

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _step(step):
    s = step if isinstance(step, fj.Tensor) else fj.convert_to_tensor(np.asarray(step))
    return fj.cast(s, fj.float32)


def _f32(x):
    return fj.constant(x, fj.float32)


class ExponentialDecay(LearningRateSchedule):
    """lr0 * decay_rate ** (step / decay_steps), the exponent floored if staircase."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.decay_rate, self.staircase, self.name = decay_rate, staircase, name

    def __call__(self, step):
        p = _step(step) / _f32(self.decay_steps)
        if self.staircase:
            p = fj.floor(p)
        return _f32(self.initial_learning_rate) * fj.pow(_f32(self.decay_rate), p)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] while step <= boundaries[0], values[i] while boundaries[i-1] < step <=
    boundaries[i], values[-1] after the last boundary."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if len(boundaries) != len(values) - 1:
            raise ValueError(f"The length of boundaries should be 1 less than the length of "
                             f"values. Received: boundaries={boundaries} of length "
                             f"{len(boundaries)}, and values={values} of length {len(values)}.")
        self.boundaries, self.values, self.name = list(boundaries), list(values), name

    def __call__(self, step):
        s = step if isinstance(step, fj.Tensor) else fj.convert_to_tensor(np.asarray(step))
        # Keras casts the boundaries to the step's dtype (an integer count)
        b = [int(x) if s.dtype.is_integer else float(x) for x in self.boundaries]
        bt = [fj.constant(x, s.dtype) for x in b]
        out = _f32(self.values[0]) * fj.cast(s <= bt[0], fj.float32)
        out = out + _f32(self.values[-1]) * fj.cast(s > bt[-1], fj.float32)
        for lo, hi, v in zip(bt[:-1], bt[1:], self.values[1:-1]):
            out = out + _f32(v) * fj.cast(fj.logical_and(s > lo, s <= hi), fj.float32)
        return out

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class InverseTimeDecay(LearningRateSchedule):
    """lr0 / (1 + decay_rate * step / decay_steps), the ratio floored if staircase."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="InverseTimeDecay"):
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.decay_rate, self.staircase, self.name = decay_rate, staircase, name

    def __call__(self, step):
        p = _step(step) / _f32(self.decay_steps)
        if self.staircase:
            p = fj.floor(p)
        return _f32(self.initial_learning_rate) / (1.0 + _f32(self.decay_rate) * p)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Optional linear warmup from lr0 to warmup_target over warmup_steps, then a cosine
    from the peak down to peak * alpha over decay_steps, flat afterwards."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        if decay_steps <= 0:
            raise ValueError(f"Argument `decay_steps` must be > 0. Received: decay_steps={decay_steps}")
        self.initial_learning_rate, self.decay_steps, self.alpha = initial_learning_rate, decay_steps, alpha
        self.name, self.warmup_target, self.warmup_steps = name, warmup_target, warmup_steps

    def _decay(self, step, peak):
        frac = step / _f32(self.decay_steps)
        cosine = 0.5 * (1.0 + fj.cos(_f32(math.pi) * frac))
        return peak * ((1.0 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        s = _step(step)
        lr0, steps = _f32(self.initial_learning_rate), _f32(self.decay_steps)
        if self.warmup_target is None:
            return self._decay(fj.minimum(s, steps), lr0)
        target, warm = _f32(self.warmup_target), _f32(self.warmup_steps)
        s = fj.minimum(s, steps + warm)
        # both branches are finite, so a select stands in for Keras's ops.cond
        warmup = (target - lr0) * (s / warm) + lr0
        return fj.where(s < warm, warmup, self._decay(s - warm, target))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


class schedules:       # keras.optimizers.schedules.<Name>
    LearningRateSchedule = LearningRateSchedule
    ExponentialDecay = ExponentialDecay
    PiecewiseConstantDecay = PiecewiseConstantDecay
    InverseTimeDecay = InverseTimeDecay
    CosineDecay = CosineDecay


_SCHEDULE_TYPES = (LearningRateSchedule, _fj_schedules.ExponentialDecay,
                   _fj_schedules.PiecewiseConstantDecay)


# --- the base class -----------------------------------------------------------------------
class _VariableList(list):
    """Keras's `optimizer.variables` is a list; fj's is a method: this is both."""

    def __call__(self):
        return self


def _snake(name):
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)).lower()


class Optimizer(_FjOptimizer):
    """Keras 3's optimizer: subclasses define `update_step(gradient, variable,
    learning_rate)` and the slots they keep (`_slot_specs`)."""

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        kwargs.pop("ema_momentum", None)
        kwargs.pop("ema_overwrite_frequency", None)
        for k in ("use_ema", "loss_scale_factor", "gradient_accumulation_steps"):
            if kwargs.pop(k, None):
                raise NotImplementedError(f"{type(self).__name__}: {k} is not supported")
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {kwargs}")
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(f"Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be "
                             f"set. Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                             f"global_clipnorm={global_clipnorm}")
        super().__init__(learning_rate, name or _snake(type(self).__name__))
        self.weight_decay, self.clipnorm = weight_decay, clipnorm
        self.clipvalue, self.global_clipnorm = clipvalue, global_clipnorm
        self.built = False
        self._trainable_variables = []
        self._no_decay_ids, self._no_decay_pattern = set(), None

    # -- the learning rate: a float32 variable (as Keras's), a schedule, or a callable --
    @property
    def learning_rate(self):
        """The current rate: a float eagerly, a float32 tensor inside a trace."""
        lr = self._lr()
        return lr if lr.is_traced else float(lr.numpy())

    @learning_rate.setter
    def learning_rate(self, lr):
        if isinstance(lr, _SCHEDULE_TYPES) or callable(lr):
            self._lr_value = lr
            return
        if getattr(self, "_lr_value", None) is not None:
            raise TypeError("This optimizer was created with a learning rate schedule; it "
                            "cannot be set to a float")
        self._lr_value = None
        value = np.float32(lr)
        if self._lr_var is None:
            self._lr_var = fj.Variable(value, name=f"{self.name}/learning_rate", trainable=False)
        else:
            self._lr_var.assign(value)

    def _lr(self, dtype=None):
        """The rate for this step, float32 (a schedule sees the step count before the
        update; any other callable takes no argument, as in Keras)."""
        lr = self._lr_value
        if lr is None:
            return self._lr_var.read_value()
        lr = lr(self.iterations.read_value()) if isinstance(lr, _SCHEDULE_TYPES) else lr()
        return fj.cast(lr if isinstance(lr, fj.Tensor) else fj.convert_to_tensor(np.float32(lr)),
                       fj.float32)

    # -- slots ---------------------------------------------------------------------------
    def _slot_specs(self):
        """(name, initial value) of each slot a variable gets."""
        return []

    def _slot(self, var, name):
        initial = dict(self._slot_specs())[name]
        return self.add_slot(var, name, initial)

    def build(self, var_list):
        """Create the slots of every variable now (they are otherwise made at the first
        update, which is also fine under @fj.jit)."""
        for v in var_list:
            if all(v is not w for w in self._trainable_variables):
                self._trainable_variables.append(v)
            for name, initial in self._slot_specs():
                self.add_slot(v, name, initial)
        self.built = True

    @property
    def variables(self):
        out = [self.iterations] + ([self._lr_var] if self._lr_var is not None else [])
        return _VariableList(out + [v for _, v in self._slots.values()] + self._extra_variables())

    def _extra_variables(self):
        return []

    # -- Keras's helpers for update_step ---------------------------------------------------
    def assign(self, variable, value):
        variable.assign(value)

    def assign_add(self, variable, value):
        variable.assign_add(value)

    def assign_sub(self, variable, value):
        variable.assign_sub(value)

    def update_step(self, gradient, variable, learning_rate):
        raise NotImplementedError(f"{type(self).__name__}.update_step")

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        self._no_decay_ids = {id(v) for v in (var_list or [])}
        self._no_decay_pattern = re.compile("|".join(set(var_names))) if var_names else None

    def _use_weight_decay(self, v):
        if id(v) in self._no_decay_ids:
            return False
        return not (self._no_decay_pattern and self._no_decay_pattern.search(v.name))

    # -- applying ----------------------------------------------------------------------
    def apply_gradients(self, grads_and_vars):
        grads, variables = zip(*grads_and_vars)
        self.apply(grads, variables)
        return self.iterations

    def apply(self, grads, trainable_variables=None):
        """One step: clip the gradients, decay the weights, update (Keras's order), apply
        the variables' constraints, count the step. Eagerly all writes land together."""
        grads = list(grads)
        if trainable_variables is None:
            if not self.built:
                raise ValueError("When passing `grads` without `variables`, the optimizer must "
                                 "already be built on a list of variables (optimizer.build).")
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if len(grads) != len(trainable_variables):
            raise ValueError(f"{self.name}: {len(grads)} gradients for "
                             f"{len(trainable_variables)} variables")
        if not grads:
            return
        if not self.built:
            self.build(trainable_variables)
        pairs = [(g, v) for g, v in zip(grads, trainable_variables) if g is not None]
        if not pairs:
            raise ValueError("No gradients provided for any variable: "
                             + ", ".join(v.name for v in trainable_variables))
        if len(pairs) < len(grads):
            missing = [v.name for g, v in zip(grads, trainable_variables) if g is None]
            warnings.warn(f"Gradients do not exist for variables {missing} when minimizing "
                          f"the loss.", stacklevel=2)
        variables = [v for _, v in pairs]
        grads = self._clip_gradients([self._checked(g, v) for g, v in pairs])
        with transaction():
            lr = self._lr()
            if self.weight_decay:
                for v in variables:
                    if self._use_weight_decay(v):
                        lr_v = fj.cast(lr, v.dtype)
                        wd = fj.constant(self.weight_decay, v.dtype)
                        v.assign(v - v * wd * lr_v)
            self._backend_update_step(grads, variables, lr)
            for v in variables:
                constraint = getattr(v, "constraint", None)
                if constraint is not None:
                    v.assign(constraint(v))
            self.iterations.assign_add(np.int64(1))
        return self.iterations

    def _backend_update_step(self, grads, variables, learning_rate):
        for g, v in zip(grads, variables):
            self.update_step(g, v, learning_rate)

    def _checked(self, g, v):
        # Keras casts each gradient to its variable's dtype; shapes are still checked
        if not isinstance(g, fj.Tensor):
            g = g.read_value() if isinstance(g, fj.Variable) else fj.convert_to_tensor(np.asarray(g))
        if g.dtype != v.dtype and g.dtype.is_floating and v.dtype.is_floating:
            g = fj.cast(g, v.dtype)
        return super()._checked(g, v)

    def _clip_gradients(self, grads):
        if self.clipnorm and self.clipnorm > 0:        # each gradient to norm <= clipnorm
            return [g * self.clipnorm / fj.maximum(fj.sqrt(fj.reduce_sum(g * g)), self.clipnorm)
                    for g in grads]
        if self.global_clipnorm and self.global_clipnorm > 0:
            return fj.clip_by_global_norm(grads, self.global_clipnorm)[0]
        if self.clipvalue and self.clipvalue > 0:
            return [fj.clip_by_value(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def _local_step(self, dtype, offset=1):
        return fj.cast(self.iterations.read_value() + np.int64(offset), dtype)

    def get_config(self):
        lr = self._lr_value
        if lr is None:
            lr = float(self._lr_var.numpy())
        elif isinstance(lr, LearningRateSchedule):
            lr = {"class_name": type(lr).__name__, "config": lr.get_config()}
        return {"name": self.name, "learning_rate": lr, "weight_decay": self.weight_decay,
                "clipnorm": self.clipnorm, "global_clipnorm": self.global_clipnorm,
                "clipvalue": self.clipvalue}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        lr = config.get("learning_rate")
        if isinstance(lr, dict):
            config["learning_rate"] = getattr(schedules, lr["class_name"]).from_config(lr["config"])
        return cls(**config)


# --- the optimizers ---------------------------------------------------------------------
class SGD(Optimizer):
    """m = momentum*m - lr*g; var += m, or with nesterov var += momentum*m - lr*g;
    without momentum var -= lr*g."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name=None, **kwargs):
        if not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise ValueError("`momentum` must be a float between [0, 1].")
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name,
                         **kwargs)
        self.momentum, self.nesterov = float(momentum), nesterov

    def _slot_specs(self):
        return [("momentum", 0.0)] if self.momentum != 0 else []

    def update_step(self, gradient, variable, learning_rate):
        lr = fj.cast(learning_rate, variable.dtype)
        if self.momentum == 0:
            variable.assign_sub(gradient * lr)
            return
        m = self._slot(variable, "momentum")
        mom = fj.constant(self.momentum, variable.dtype)
        m_new = m * mom - gradient * lr
        m.assign(m_new)
        variable.assign_add(m_new * mom - gradient * lr if self.nesterov else m_new)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """alpha = lr*sqrt(1-beta_2^t)/(1-beta_1^t); m += (g-m)(1-beta_1);
    v += (g^2-v)(1-beta_2); var -= m*alpha/(sqrt(v)+epsilon) (amsgrad: v -> max of v)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name,
                         **kwargs)
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = beta_1, beta_2, epsilon, amsgrad

    def _slot_specs(self):
        return [("momentum", 0.0), ("velocity", 0.0)] + ([("velocity_hat", 0.0)] if self.amsgrad else [])

    def update_step(self, gradient, variable, learning_rate):
        dt = variable.dtype
        lr = fj.cast(learning_rate, dt)
        t = self._local_step(dt)
        b1_power = fj.pow(fj.constant(self.beta_1, dt), t)
        b2_power = fj.pow(fj.constant(self.beta_2, dt), t)
        m, v = self._slot(variable, "momentum"), self._slot(variable, "velocity")
        alpha = lr * fj.sqrt(1.0 - b2_power) / (1.0 - b1_power)
        m_new = m + (gradient - m) * (1 - self.beta_1)
        v_new = v + (fj.square(gradient) - v) * (1 - self.beta_2)
        m.assign(m_new)
        v.assign(v_new)
        if self.amsgrad:
            v_hat = self._slot(variable, "velocity_hat")
            v_new = fj.maximum(v_hat, v_new)
            v_hat.assign(v_new)
        variable.assign_sub(m_new * alpha / (fj.sqrt(v_new) + self.epsilon))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay: var -= var*weight_decay*lr before each update."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: weight_decay=None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay, clipnorm,
                         clipvalue, global_clipnorm, name, **kwargs)


class RMSprop(Optimizer):
    """v = rho*v + (1-rho)*g^2; centered: a = rho*a + (1-rho)*g, denom = v - a^2 + eps,
    else denom = v + eps; step = lr*g/sqrt(denom); with momentum m = momentum*m + step,
    var -= m, else var -= step."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name,
                         **kwargs)
        self.rho, self.momentum, self.epsilon, self.centered = rho, momentum, epsilon, centered

    def _slot_specs(self):
        return ([("velocity", 0.0)] + ([("momentum", 0.0)] if self.momentum > 0 else [])
                + ([("average_gradient", 0.0)] if self.centered else []))

    def update_step(self, gradient, variable, learning_rate):
        lr = fj.cast(learning_rate, variable.dtype)
        rho = self.rho
        vel = self._slot(variable, "velocity")
        vel_new = rho * vel + (1 - rho) * fj.square(gradient)
        vel.assign(vel_new)
        if self.centered:
            avg = self._slot(variable, "average_gradient")
            avg_new = rho * avg + (1 - rho) * gradient
            avg.assign(avg_new)
            denominator = vel_new - fj.square(avg_new) + self.epsilon
        else:
            denominator = vel_new + self.epsilon
        increment = lr * gradient / fj.sqrt(denominator)
        if self.momentum > 0:
            mom = self._slot(variable, "momentum")
            mom_new = self.momentum * mom + increment
            mom.assign(mom_new)
            variable.assign_sub(mom_new)
        else:
            variable.assign_sub(increment)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


class Adagrad(Optimizer):
    """acc += g^2 (from initial_accumulator_value); var -= lr*g/sqrt(acc + epsilon)."""

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name,
                         **kwargs)
        self.initial_accumulator_value, self.epsilon = initial_accumulator_value, epsilon

    def _slot_specs(self):
        return [("accumulator", self.initial_accumulator_value)]

    def update_step(self, gradient, variable, learning_rate):
        lr = fj.cast(learning_rate, variable.dtype)
        acc = self._slot(variable, "accumulator")
        acc_new = acc + fj.square(gradient)
        acc.assign(acc_new)
        variable.assign_sub(lr * gradient / fj.sqrt(acc_new + self.epsilon))

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


class Adadelta(Optimizer):
    """ag = rho*ag + (1-rho)*g^2; delta = -sqrt(ad + eps)*g/sqrt(ag + eps);
    ad = rho*ad + (1-rho)*delta^2; var += lr*delta."""

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name,
                         **kwargs)
        self.rho, self.epsilon = rho, epsilon

    def _slot_specs(self):
        return [("accumulated_grad", 0.0), ("accumulated_delta_var", 0.0)]

    def update_step(self, gradient, variable, learning_rate):
        lr = fj.cast(learning_rate, variable.dtype)
        rho = self.rho
        ag = self._slot(variable, "accumulated_grad")
        ad = self._slot(variable, "accumulated_delta_var")
        ag_new = rho * ag + (1 - rho) * fj.square(gradient)
        ag.assign(ag_new)
        delta = -(fj.sqrt(ad + self.epsilon) * gradient / fj.sqrt(ag_new + self.epsilon))
        ad.assign(rho * ad + (1 - rho) * fj.square(delta))
        variable.assign_add(lr * delta)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


class Adamax(Optimizer):
    """m += (g-m)(1-beta_1); u = max(beta_2*u, |g|);
    var -= lr*m/((1-beta_1^t)(u + epsilon))."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name,
                         **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def _slot_specs(self):
        return [("m", 0.0), ("u", 0.0)]

    def update_step(self, gradient, variable, learning_rate):
        dt = variable.dtype
        lr = fj.cast(learning_rate, dt)
        b1_power = fj.pow(fj.constant(self.beta_1, dt), self._local_step(dt))
        m, u = self._slot(variable, "m"), self._slot(variable, "u")
        m_new = m + (gradient - m) * (1 - self.beta_1)
        u_new = fj.maximum(self.beta_2 * u, fj.abs(gradient))
        m.assign(m_new)
        u.assign(u_new)
        variable.assign_sub(lr * m_new / ((1 - b1_power) * (u_new + self.epsilon)))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class Nadam(Optimizer):
    """Adam with Nesterov momentum and Keras's momentum schedule
    u_t = beta_1 (1 - 0.5 * 0.96^t), whose running product is a variable of its own."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name,
                         **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self._u_product = None

    def _slot_specs(self):
        return [("momentum", 0.0), ("velocity", 0.0)]

    def build(self, var_list):
        if self._u_product is None:
            dt = var_list[0].dtype if var_list else fj.float32
            self._u_product = fj.Variable(np.ones((), dt.np), name=f"{self.name}/u_product",
                                          trainable=False)
        super().build(var_list)

    def _extra_variables(self):
        return [self._u_product] if self._u_product is not None else []

    def _backend_update_step(self, grads, variables, learning_rate):
        # the product of the momentum schedule advances once per step, before the updates
        u = self._u_product
        decay_t = fj.pow(fj.constant(0.96, u.dtype), self._local_step(u.dtype))
        u.assign(u * self.beta_1 * (1.0 - 0.5 * decay_t))
        super()._backend_update_step(grads, variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        dt = variable.dtype
        lr = fj.cast(learning_rate, dt)
        t, t1 = self._local_step(dt), self._local_step(dt, 2)
        decay = fj.constant(0.96, dt)
        beta_1, beta_2 = fj.constant(self.beta_1, dt), fj.constant(self.beta_2, dt)
        u_t = beta_1 * (1.0 - 0.5 * fj.pow(decay, t))
        u_t_1 = beta_1 * (1.0 - 0.5 * fj.pow(decay, t1))
        u_product_t = fj.cast(self._u_product.read_value(), dt)
        u_product_t_1 = u_product_t * u_t_1
        beta_2_power = fj.pow(beta_2, t)
        m, v = self._slot(variable, "momentum"), self._slot(variable, "velocity")
        m_new = m + (gradient - m) * (1 - beta_1)
        v_new = v + (fj.square(gradient) - v) * (1 - beta_2)
        m.assign(m_new)
        v.assign(v_new)
        m_hat = u_t_1 * m_new / (1 - u_product_t_1) + (1 - u_t) * gradient / (1 - u_product_t)
        v_hat = v_new / (1 - beta_2_power)
        variable.assign_sub(m_hat * lr / (fj.sqrt(v_hat) + self.epsilon))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


# --- lookup ---------------------------------------------------------------------------
_CLASSES = {c.__name__.lower(): c for c in (SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta, Adamax,
                                            Nadam)}


def get(identifier):
    """An optimizer from a name ("adam", case-insensitive, with Keras's defaults), a dict
    {"class_name": ..., "config": {...}}, a class or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        return from_config_dict(identifier, _CLASSES, "optimizer", key=lambda n: str(n).lower())
    if isinstance(identifier, str):
        return from_name(identifier, _CLASSES, "optimizer", key=str.lower)
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        return identifier()
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")


def serialize(optimizer):
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def deserialize(config):
    return get(config)
