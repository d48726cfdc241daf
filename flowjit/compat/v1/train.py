"""`tf.train`: TF1's optimizers, global step helpers, learning-rate decay, `Saver`.

Each optimizer's `apply_gradients` builds one graph op; running it computes every
update from the gradient values with TF1's formula (below, per class), reading and
assigning the session's variables, so under `fj.jit` the updates are compiled effects
of the plan's backward function. Slots (`W/Adam`, `W/Momentum`, ...) are ordinary TF1
variables created by `apply_gradients`/`minimize`, so `global_variables_initializer()`
(called after `minimize`, as in TF1) initializes them and each Session has its own.
Where TF1's formula is the one `fj.optimizers` already implements (plain gradient
descent, Adagrad without epsilon, Adadelta), that code does the update."""
import glob
import json
import os
import re

import numpy as np

from ... import dtypes as D
from ...frontend import api as F
from ...frontend import optimizers as fjopt
from ... import train as fj_train
from ...runtime import process
from ...errors import CheckpointError, InvalidArgumentError
from .errors import FailedPreconditionError, NotFoundError, UnimplementedError
from .graph import GraphKeys, Tensor, get_default_graph, make_op
from .gradients import gradients
from .variables import Variable, trainable_variables
from . import ops as O
from . import cluster as _cluster


class Optimizer:
    """TF1's optimizer interface: `compute_gradients`, `apply_gradients`, `minimize`."""

    GATE_NONE, GATE_OP, GATE_GRAPH = 0, 1, 2
    _slot_specs = ()          # (slot name, initial value or callable(optimizer))

    def __init__(self, use_locking, name):
        self._name = name
        self._slots = {}      # (slot name, var) -> slot Variable
        self._non_slots = {}

    def get_name(self):
        return self._name

    def compute_gradients(self, loss, var_list=None, gate_gradients=GATE_OP, aggregation_method=None,
                          colocate_gradients_with_ops=False, grad_loss=None):
        if callable(loss) and not isinstance(loss, Tensor):
            raise TypeError("TF1 compute_gradients takes a loss tensor (eager callables are TF2)")
        if not isinstance(loss, Tensor):
            raise TypeError(f"compute_gradients: loss must be a tf.Tensor, got {loss!r}")
        if var_list is None:
            var_list = trainable_variables()
        var_list = list(var_list)
        if not var_list:
            raise ValueError("No variables to optimize.")
        grads = gradients(loss, var_list, grad_ys=grad_loss)
        return list(zip(grads, var_list))

    def minimize(self, loss, global_step=None, var_list=None, gate_gradients=GATE_OP,
                 aggregation_method=None, colocate_gradients_with_ops=False, name=None, grad_loss=None):
        gvs = self.compute_gradients(loss, var_list, grad_loss=grad_loss)
        if not [v for g, v in gvs if g is not None]:
            raise ValueError(
                f"No gradients provided for any variable, check your graph for ops that do not "
                f"support gradients, between variables {[v.name for _, v in gvs]} and loss {loss}.")
        return self.apply_gradients(gvs, global_step=global_step, name=name)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        pairs = list(grads_and_vars)
        if not pairs:
            raise ValueError("No variables provided.")
        for g, v in pairs:
            if not isinstance(v, Variable):
                raise TypeError(f"apply_gradients: {v!r} is not a tf.Variable")
        if all(g is None for g, _ in pairs):
            raise ValueError(f"No gradients provided for any variable: {[v.name for _, v in pairs]}.")
        pairs = [(O.convert_to_tensor(g, v.dtype), v) for g, v in pairs if g is not None]
        for g, v in pairs:
            if not v.shape.is_compatible_with(g.shape):
                raise ValueError(f"apply_gradients: gradient {g.name} has shape {g.shape}, "
                                 f"variable {v.op.name} {v.shape}")
        g0 = pairs[0][1].graph
        with g0.as_default():
            self._create_slots([v for _, v in pairs])
            self._create_non_slots(pairs[0][1].dtype)
        lr = self._learning_rate
        inputs = [g for g, _ in pairs] + ([lr] if isinstance(lr, Tensor) else [])
        reads = [v for _, v in pairs] + [s for (_, v), s in self._slots.items()
                                          if any(v is p for _, p in pairs)]
        reads += list(self._non_slots.values())
        if global_step is not None:
            reads.append(global_step)
        variables = [v for _, v in pairs]

        def compute(ev, *vals):
            gvals = vals[:len(variables)]
            lr_val = vals[len(variables)] if isinstance(lr, Tensor) else float(lr)
            for gv, var in zip(gvals, variables):
                fv = ev.variable(var)
                lr_v = F.cast(lr_val, fv.dtype) if not isinstance(lr_val, float) else lr_val
                slots = {n: ev.variable(self._slots[(n, var)]) for n, _ in self._slot_specs}
                self._apply_dense(ev, gv, fv, lr_v, slots)
            self._finish(ev)
            if global_step is not None:
                ev.variable(global_step).assign_add(np.asarray(1, global_step.dtype.np))
            return []

        op = make_op("ApplyGradients", compute, inputs, name=name, default_name=self._name,
                     stateful=True, out_specs=[], graph=g0, attrs={"reads": reads})
        return op

    # -- slots --------------------------------------------------------------------------------
    def _create_slots(self, var_list):
        g = var_list[0].graph
        for var in var_list:
            for slot, init in self._slot_specs:
                if (slot, var) in self._slots:
                    continue
                value = init(self) if callable(init) else init
                with g.name_scope(None), g.control_dependencies(None):
                    k = [s for s, _ in self._slot_specs].index(slot)
                    sname = f"{var.op.name}/{self._name}" + ("" if k == 0 else f"_{k}")
                    s = Variable(np.full(var.shape.as_list(), value, var.dtype.np), trainable=False,
                                 name=sname)
                self._slots[(slot, var)] = s

    def _create_non_slots(self, dtype):
        pass

    def _finish(self, ev):
        pass

    def get_slot(self, var, name):
        return self._slots.get((name, var))

    def get_slot_names(self):
        return [s for s, _ in self._slot_specs]

    def variables(self):
        return list(self._non_slots.values()) + list(self._slots.values())


def _reused(fj_opt, ev, g, fv, lr, slots):
    """Run an `fj.optimizers` update rule on this session's variable and slots."""
    for name, s in slots.items():
        fj_opt._slots[(id(fv), name)] = (fv, s)
    fj_opt._update(g, fv, lr)


class GradientDescentOptimizer(Optimizer):
    """var -= learning_rate * grad  (fj.optimizers.SGD's rule with momentum 0)."""

    def __init__(self, learning_rate, use_locking=False, name="GradientDescent"):
        super().__init__(use_locking, name)
        self._learning_rate = learning_rate
        self._fj = fjopt.SGD(0.0)

    def _apply_dense(self, ev, g, fv, lr, slots):
        _reused(self._fj, ev, g, fv, lr, slots)


class MomentumOptimizer(Optimizer):
    """accum = momentum * accum + grad; var -= lr * accum, or with use_nesterov
    var -= lr * grad + lr * momentum * accum (accum already updated). Slot 'momentum'
    starts at 0. (TF2's SGD keeps lr inside its momentum slot instead.)"""
    _slot_specs = (("momentum", 0.0),)

    def __init__(self, learning_rate, momentum, use_locking=False, name="Momentum", use_nesterov=False):
        super().__init__(use_locking, name)
        self._learning_rate, self._momentum, self._nesterov = learning_rate, momentum, use_nesterov

    def _apply_dense(self, ev, g, fv, lr, slots):
        acc = slots["momentum"]
        acc_new = acc * self._momentum + g
        acc.assign(acc_new)
        if self._nesterov:
            fv.assign_sub(g * lr + acc_new * self._momentum * lr)
        else:
            fv.assign_sub(acc_new * lr)


class AdamOptimizer(Optimizer):
    """TF1 defaults lr=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8. With beta1_power and
    beta2_power (non-slot variables starting at beta1, beta2):
    lr_t = lr * sqrt(1 - beta2_power) / (1 - beta1_power); m = beta1*m + (1-beta1)*g;
    v = beta2*v + (1-beta2)*g*g; var -= lr_t * m / (sqrt(v) + epsilon); after all
    variables, beta1_power *= beta1 and beta2_power *= beta2. Slots 'm', 'v' start at 0."""
    _slot_specs = (("m", 0.0), ("v", 0.0))

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8, use_locking=False,
                 name="Adam"):
        super().__init__(use_locking, name)
        self._learning_rate, self._beta1, self._beta2, self._epsilon = learning_rate, beta1, beta2, epsilon

    def _create_non_slots(self, dtype):
        # as in TF1: float variables of the first variable's dtype
        if self._non_slots:
            return
        g = get_default_graph()
        with g.name_scope(None), g.control_dependencies(None):
            self._non_slots["beta1_power"] = Variable(np.asarray(self._beta1, dtype.np), trainable=False,
                                                      name="beta1_power")
            self._non_slots["beta2_power"] = Variable(np.asarray(self._beta2, dtype.np), trainable=False,
                                                      name="beta2_power")

    def _apply_dense(self, ev, g, fv, lr, slots):
        b1p = F.cast(ev.variable(self._non_slots["beta1_power"]).read_value(), fv.dtype)
        b2p = F.cast(ev.variable(self._non_slots["beta2_power"]).read_value(), fv.dtype)
        m, v = slots["m"], slots["v"]
        lr_t = lr * F.sqrt(1.0 - b2p) / (1.0 - b1p)
        m_new = m * self._beta1 + g * (1.0 - self._beta1)
        v_new = v * self._beta2 + g * g * (1.0 - self._beta2)
        m.assign(m_new)
        v.assign(v_new)
        fv.assign_sub(lr_t * m_new / (F.sqrt(v_new) + self._epsilon))

    def _finish(self, ev):
        for key, beta in (("beta1_power", self._beta1), ("beta2_power", self._beta2)):
            p = ev.variable(self._non_slots[key])
            p.assign(p.read_value() * beta)


class AdagradOptimizer(Optimizer):
    """accum += g*g (accum starts at initial_accumulator_value=0.1);
    var -= lr * g / sqrt(accum): fj.optimizers.Adagrad's rule with epsilon 0 (TF1
    adds no epsilon)."""
    _slot_specs = (("accumulator", lambda self: self._initial),)

    def __init__(self, learning_rate, initial_accumulator_value=0.1, use_locking=False, name="Adagrad"):
        super().__init__(use_locking, name)
        if initial_accumulator_value <= 0.0:
            raise ValueError(f"initial_accumulator_value must be positive: {initial_accumulator_value}")
        self._learning_rate, self._initial = learning_rate, initial_accumulator_value
        self._fj = fjopt.Adagrad(0.0, initial_accumulator_value, epsilon=0.0)

    def _apply_dense(self, ev, g, fv, lr, slots):
        _reused(self._fj, ev, g, fv, lr, slots)


class AdadeltaOptimizer(Optimizer):
    """TF1 defaults lr=0.001, rho=0.95, epsilon=1e-8. ag = rho*ag + (1-rho)*g*g;
    upd = sqrt(av + eps) / sqrt(ag + eps) * g; av = rho*av + (1-rho)*upd*upd;
    var -= lr * upd (fj.optimizers.Adadelta's rule). Slots start at 0."""
    _slot_specs = (("accumulated_grad", 0.0), ("accumulated_var", 0.0))

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-8, use_locking=False, name="Adadelta"):
        super().__init__(use_locking, name)
        self._learning_rate = learning_rate
        self._fj = fjopt.Adadelta(0.0, rho, epsilon)

    def _apply_dense(self, ev, g, fv, lr, slots):
        _reused(self._fj, ev, g, fv, lr, slots)


class RMSPropOptimizer(Optimizer):
    """TF1 defaults decay=0.9, momentum=0.0, epsilon=1e-10, centered=False.
    ms = decay*ms + (1-decay)*g*g (ms starts at 1, as in TF1); centered:
    mg = decay*mg + (1-decay)*g and denom = ms - mg*mg, else denom = ms;
    mom = momentum*mom + lr*g/sqrt(denom + epsilon); var -= mom. TF1 uses this form
    even with momentum 0 (epsilon inside the sqrt), unlike TF2's RMSprop."""

    def __init__(self, learning_rate, decay=0.9, momentum=0.0, epsilon=1e-10, use_locking=False,
                 centered=False, name="RMSProp"):
        super().__init__(use_locking, name)
        self._learning_rate, self._decay, self._momentum = learning_rate, decay, momentum
        self._epsilon, self._centered = epsilon, centered
        # TF1's slot order (names W/RMSProp, W/RMSProp_1, ...): rms, mg if centered, momentum
        self._slot_specs = (("rms", 1.0),) + ((("mg", 0.0),) if centered else ()) + (("momentum", 0.0),)

    def _apply_dense(self, ev, g, fv, lr, slots):
        d = self._decay
        ms = slots["rms"]
        ms_new = ms * d + g * g * (1.0 - d)
        ms.assign(ms_new)
        denom = ms_new
        if self._centered:
            mg = slots["mg"]
            mg_new = mg * d + g * (1.0 - d)
            mg.assign(mg_new)
            denom = ms_new - mg_new * mg_new
        mom = slots["momentum"]
        mom_new = mom * self._momentum + g * lr / F.sqrt(denom + self._epsilon)
        mom.assign(mom_new)
        fv.assign_sub(mom_new)


# --- global step and schedules -----------------------------------------------------------------
def get_global_step(graph=None):
    g = graph or get_default_graph()
    steps = g.get_collection(GraphKeys.GLOBAL_STEP)
    if steps:
        return steps[0]
    # as TF1: a global variable named "global_step" (tf.Variable(0, name="global_step"))
    named = [v for v in g.get_collection(GraphKeys.GLOBAL_VARIABLES) if v.op.name == "global_step"]
    return named[0] if named else None


def create_global_step(graph=None):
    g = graph or get_default_graph()
    if get_global_step(g) is not None:
        raise ValueError("global_step already exists.")
    with g.as_default(), g.name_scope(None):
        v = Variable(np.int64(0), trainable=False, name="global_step",
                     collections=[GraphKeys.GLOBAL_VARIABLES, GraphKeys.GLOBAL_STEP])
    return v


def get_or_create_global_step(graph=None):
    return get_global_step(graph) or create_global_step(graph)


def exponential_decay(learning_rate, global_step, decay_steps, decay_rate, staircase=False, name=None):
    """learning_rate * decay_rate ** (global_step / decay_steps), the exponent floored
    if staircase."""
    def fn(step):
        p = F.cast(step, D.float32) / float(decay_steps)
        if staircase:
            p = F.floor(p)
        return F.pow(F.constant(float(decay_rate), D.float32), p) * float(learning_rate)
    return O.apply("ExponentialDecay", fn, (global_step,), name=name)


# --- checkpoints -------------------------------------------------------------------------------
_STATE_FILE = "checkpoint"


class CheckpointState:
    """What the `checkpoint` state file of a directory says (TF1's CheckpointState)."""

    def __init__(self, model_checkpoint_path, all_model_checkpoint_paths):
        self.model_checkpoint_path = model_checkpoint_path
        self.all_model_checkpoint_paths = list(all_model_checkpoint_paths)

    def __repr__(self):
        return (f"CheckpointState(model_checkpoint_path={self.model_checkpoint_path!r}, "
                f"all_model_checkpoint_paths={self.all_model_checkpoint_paths!r})")


def _state_text(latest, paths):
    lines = [f"model_checkpoint_path: {json.dumps(latest)}"]
    lines += [f"all_model_checkpoint_paths: {json.dumps(p)}" for p in paths]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _update_state(directory, latest, paths, latest_filename=None):
    """Rewrite the state file atomically; paths inside `directory` are written relative
    to it (TF1's save_relative_paths), so a moved directory still resolves."""
    def rel(p):
        return os.path.relpath(p, directory) if os.path.dirname(os.path.abspath(p)) == \
            os.path.abspath(directory) else p
    text = _state_text(rel(latest), [rel(p) for p in paths])
    state_name = latest_filename or _STATE_FILE
    fj_train._remove_stale_temps(directory, re.escape(state_name))    # left by killed saves
    fj_train._atomic_write(os.path.join(directory, latest_filename or _STATE_FILE), lambda f: f.write(text))


_MAX_STATE_BYTES = 16 << 20


def _state_path(checkpoint_dir, value, fname, key):
    """The checkpoint prefix a state-file line names, which must lie in the state file's
    own directory (a stranger's state file must not make restore, or pruning, touch
    anything else): a bare name, or an absolute path into that directory."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise CheckpointError(f"{fname}: field {key}: {value!r} is not a checkpoint path")
    base = os.path.basename(value)
    inside = (fj_train._plain_name(value) if not os.path.isabs(value) else
              fj_train._plain_name(base) and
              os.path.realpath(os.path.dirname(value)) == os.path.realpath(checkpoint_dir))
    if not inside:
        raise CheckpointError(f"{fname}: field {key}: {value!r} is outside {checkpoint_dir!r}; a "
                              f"checkpoint state file may only name checkpoints in its own directory")
    return os.path.join(checkpoint_dir, base)


def get_checkpoint_state(checkpoint_dir, latest_filename=None):
    """The `CheckpointState` of `checkpoint_dir` (paths joined to the directory), or None
    when it has no state file; a `CheckpointError` naming the file, line and field for a
    malformed one, or one naming a checkpoint outside the directory."""
    checkpoint_dir = os.fspath(checkpoint_dir)
    fname = os.path.join(checkpoint_dir, latest_filename or _STATE_FILE)
    try:
        f = fj_train._open_regular(fname)
    except FileNotFoundError:
        return None
    with f:
        raw = fj_train._read_small(f, _MAX_STATE_BYTES, fname)
    try:
        text = raw.decode("utf-8")
    except ValueError as e:
        raise CheckpointError(f"{fname}: not a checkpoint state file ({e})") from None
    latest, paths = None, []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        try:
            value = json.loads(value.strip()) if sep else None
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, str) or key not in ("model_checkpoint_path", "all_model_checkpoint_paths"):
            raise CheckpointError(f"{fname}, line {n}: not a checkpoint state line: {line[:100]!r}")
        value = _state_path(checkpoint_dir, value, f"{fname}, line {n}", key)
        if key == "model_checkpoint_path":
            latest = value
        else:
            paths.append(value)
    if latest is None:
        raise CheckpointError(f"{fname}: field model_checkpoint_path: missing")
    return CheckpointState(latest, paths)


def checkpoint_exists(checkpoint_prefix):
    return os.path.isfile(fj_train._prefix(os.fspath(checkpoint_prefix)) + fj_train._INDEX_SUFFIX)


def latest_checkpoint(checkpoint_dir, latest_filename=None):
    """The prefix of the newest checkpoint a Saver recorded in `checkpoint_dir`'s state
    file, or None (no state file, or its checkpoint is gone), as in TF1."""
    state = get_checkpoint_state(checkpoint_dir, latest_filename)
    if state is None or not checkpoint_exists(state.model_checkpoint_path):
        return None
    return state.model_checkpoint_path


def _delete_checkpoint(prefix):
    if not process.writes_files():        # another rank writes (and prunes) the checkpoints
        return
    # the index first: it is the commit point, so a half-deleted checkpoint never "exists"
    for f in [prefix + fj_train._INDEX_SUFFIX] + glob.glob(glob.escape(prefix) + ".data-*.npz"):
        try:
            os.remove(f)
        except FileNotFoundError:
            pass


class Saver:
    """`tf.train.Saver(var_list=None, max_to_keep=5)`: saves the session's values of
    `var_list` (default: all global variables, optimizer slots included, as in TF1)
    keyed by their TF1 names (`W:0` is saved as `W`) with `fj.train.save_arrays` (`.npz`
    + a JSON index, atomic commit, no pickle), and keeps a `checkpoint` state file in
    the directory like TF1 for `latest_checkpoint`. At most `max_to_keep` checkpoints
    of this Saver are kept (None or 0: all are kept, the state file lists the last).
    `restore(sess, path)` checks every name, shape and dtype before assigning anything
    and initializes the variables it restores (no initializer run is needed)."""

    def __init__(self, var_list=None, reshape=False, sharded=False, max_to_keep=5,
                 keep_checkpoint_every_n_hours=10000.0, name=None, restore_sequentially=False,
                 saver_def=None, builder=None, defer_build=False, allow_empty=False,
                 write_version=2, pad_step_number=False, save_relative_paths=False, filename=None):
        if reshape:
            raise UnimplementedError("tf.train.Saver(reshape=True) is not supported by flowjit.compat.v1")
        if var_list is None:
            var_list = get_default_graph().get_collection(GraphKeys.GLOBAL_VARIABLES)
        if isinstance(var_list, dict):
            named = dict(var_list)
        else:
            named = {}
            for v in var_list:
                if not isinstance(v, Variable):
                    raise TypeError(f"tf.train.Saver: {v!r} is not a tf.Variable")
                if v.op.name in named:
                    raise ValueError(f"tf.train.Saver: at least two variables have the same name: {v.op.name}")
                named[v.op.name] = v
        for k, v in named.items():
            if not isinstance(v, Variable):
                raise TypeError(f"tf.train.Saver: {k!r} maps to {v!r}, which is not a tf.Variable")
        if not named and not allow_empty:
            raise ValueError("No variables to save")
        graphs = {v.graph for v in named.values()}
        self._graph = graphs.pop() if len(graphs) == 1 else get_default_graph()
        if graphs:
            raise ValueError("tf.train.Saver: the variables belong to more than one graph")
        self._vars = named
        self._max_to_keep = max_to_keep
        self._pad = pad_step_number
        self._last = []                # prefixes this Saver saved, oldest first

    @property
    def last_checkpoints(self):
        return list(self._last)

    def set_last_checkpoints(self, last_checkpoints):
        self._last = list(last_checkpoints)

    def recover_last_checkpoints(self, checkpoint_paths):
        self._last = [p for p in checkpoint_paths if checkpoint_exists(p)]

    def _check_session(self, sess, what):
        if sess.graph is not self._graph:
            raise ValueError(f"Saver.{what}: the session runs another graph than the Saver's variables'")

    def save(self, sess, save_path, global_step=None, latest_filename=None, meta_graph_suffix="meta",
             write_meta_graph=True, write_state=True, strip_default_attrs=False, save_debug_info=False):
        """Save the variables' values in `sess` at prefix `save_path` (`save_path-<step>`
        with `global_step`, an int or a tensor); returns the prefix."""
        self._check_session(sess, "save")
        save_path = os.fspath(save_path)
        directory = os.path.dirname(save_path)
        # a killed save leaves temp files under a step no later save reuses: clear every
        # one of this base name whose writer is dead (the state file's: _update_state)
        fj_train._remove_stale_temps(directory, re.escape(os.path.basename(save_path)) + r"(?:-\d+)?" +
                                     fj_train._FILE_RE)
        if global_step is not None:
            if isinstance(global_step, Tensor):
                global_step = sess.run(global_step)
            step = int(np.asarray(global_step))
            save_path = f"{save_path}-{step:08d}" if self._pad else f"{save_path}-{step}"
        arrays = {}
        _cluster.refresh(sess, self._vars.values())     # ps variables: their owners' values now
        for name, v in self._vars.items():
            fv = sess._vars.get(v)
            if fv is None:
                raise FailedPreconditionError(
                    f"Saver.save: variable {v.op.name} (created at {v.op._src}) is not initialized in "
                    f"this session; run tf.global_variables_initializer() first")
            arrays[name] = fv.numpy()
        prefix = fj_train.save_arrays(save_path, arrays, metadata={"kind": "tf.train.Saver"})
        if prefix in self._last:
            self._last.remove(prefix)
        self._last.append(prefix)
        pruned = []
        if self._max_to_keep:
            while len(self._last) > self._max_to_keep:
                pruned.append(self._last.pop(0))
        # commit order: the new checkpoint (committed by its index), then the state file
        # naming it, and only then delete pruned ones; a kill at any point leaves the state
        # naming a complete checkpoint, the previous one or this one
        if write_state:
            _update_state(directory or ".", prefix, self._last if self._max_to_keep else [prefix],
                          latest_filename)
        for old in pruned:
            _delete_checkpoint(old)
        return prefix

    def restore(self, sess, save_path):
        """Assign the saved values to the variables in `sess` (all or nothing): every
        variable must be in the checkpoint with its shape and dtype."""
        self._check_session(sess, "restore")
        if save_path is None:
            raise ValueError("Can't load save_path when it is None.")
        save_path = os.fspath(save_path)
        if not checkpoint_exists(save_path):
            raise ValueError(f"The passed save_path is not a valid checkpoint: {save_path}")
        saved = fj_train.list_arrays(save_path)
        for name, v in self._vars.items():
            if name not in saved:
                raise NotFoundError(f"Saver.restore: key {name} (variable {v.op.name}) not found in "
                                    f"checkpoint {save_path} (it holds {', '.join(sorted(saved))})")
            shape, dtype = saved[name]
            want = tuple(v.shape.as_list())
            if shape != want or dtype != v.dtype.np:
                raise InvalidArgumentError(
                    f"Saver.restore: variable {v.op.name} (created at {v.op._src}) is {v.dtype.name}"
                    f"{list(want)} but checkpoint {save_path} holds {name} as {dtype}{list(shape)}")
        arrays = fj_train.load_arrays(save_path)
        for name, v in self._vars.items():
            fv = sess._vars.get(v)
            if fv is None:
                fv = sess._new_variable(v)
            fv.assign(arrays[name])
        # a worker of a TF1 cluster: the ps variables' owners get the restored values
        _cluster.write_values(sess, [(v, arrays[name]) for name, v in self._vars.items()])




from .queues import Coordinator, start_queue_runners  # noqa: E402,F401
from .cluster import ClusterSpec, Server, SyncReplicasOptimizer, replica_device_setter  # noqa: E402,F401
from .monitored import MonitoredTrainingSession, StopAtStepHook, Supervisor, Scaffold  # noqa: E402,F401
from . import queues as _queues  # noqa: E402


_FROM_ESTIMATOR = ("SessionRunHook", "SessionRunArgs", "SessionRunContext", "SessionRunValues",
                   "CheckpointSaverListener", "NanLossDuringTrainingError")


def __getattr__(name):
    if name in _FROM_ESTIMATOR:          # TF1 has these under tf.train too (estimator imports train)
        from . import estimator
        return getattr(estimator, name)
    raise _queues.refused("tf.train", name)
