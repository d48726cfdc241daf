"""`tf.estimator`: TF 1.15's `Estimator` driven by a `model_fn`, on the compiled session.

Each `train`, `evaluate` and `predict` call builds a fresh graph (as TF1 does): the
global step, the input_fn's tensors, the model_fn's `EstimatorSpec`, a `tf.train.Saver`;
then a `tf.Session` restores the newest checkpoint of `model_dir` (or initializes the
variables) and runs one step per batch. A step is one `Session.run` of the same
fetches (`[train_op, loss, global_step]`; the metrics' update ops; the predictions)
with the same fed tensors, so it is one plan compiled once by `fj.jit` and every step
after the first runs compiled code (the last, smaller batch too: a fed batch size is a
symbolic size of the compiled plan).

Input: `tf.estimator.inputs.numpy_input_fn` gives placeholders with a batch dim of None
and registers a batch feeder on the graph (collection `INPUT_FEEDERS`); the estimator
feeds the next batch to each step and stops at the end of the data (TF1's
`OutOfRangeError`). An input_fn may also return a `tf.data` Dataset (or graph tensors
of one, e.g. `iterator.get_next()`): its elements are fed by the Session's data hook.

Checkpoints are the Saver's `model_dir/model.ckpt-<global step>` with a `checkpoint`
state file: at the start of training, every `save_checkpoints_steps` steps (or
`save_checkpoints_secs` seconds, 600 by default) and at the end, so a later `train`
(of this or of a new Estimator on the same model_dir) continues the global step.

Log lines follow TF1's (`loss = 0.69, step = 1`) on the Python logger "tensorflow" at
INFO level, silent unless the program enables it (`logging.basicConfig(level=INFO)`,
or `logging.getLogger("tensorflow").setLevel(logging.INFO)` with a handler).

Canned estimators (DNNClassifier, LinearRegressor, ...) are not provided: using one
raises `tf.errors.UnimplementedError` that suggests a model_fn.
"""
import collections
import copy
import datetime
import inspect
import logging
import os
import sys
import tempfile
import time
import types

import numpy as np

from ... import dtypes as D
from ... import train as fj_train
from . import metrics as _metrics
from . import train as _train
from .errors import OutOfRangeError, UnimplementedError, UnimplementedName, missing
from .graph import Graph, Operation, Tensor, get_default_graph
from .placeholders import placeholder
from .random_ops import set_random_seed
from .session import Session
from .variables import global_variables_initializer, local_variables_initializer

_log = logging.getLogger("tensorflow")

INPUT_FEEDERS = "flowjit_estimator_input_feeders"   # graph collection of numpy_input_fn feeders
_CKPT_NAME = "model.ckpt"


class ModeKeys:
    """The mode a model_fn is called in."""
    TRAIN = "train"
    EVAL = "eval"
    PREDICT = "infer"


_MODES = (ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT)
LOSS_METRIC_KEY = "loss"
AVERAGE_LOSS_METRIC_KEY = "average_loss"


class NanLossDuringTrainingError(RuntimeError):
    """The training loss became NaN (TF1's tf.train.NanLossDuringTrainingError)."""

    def __str__(self):
        return "NaN loss during training."


# --- EstimatorSpec ---------------------------------------------------------------------------
def _check_tensor(x, what, graph, allow_op=False):
    ok = isinstance(x, Tensor) or (allow_op and isinstance(x, Operation))
    if not ok:
        raise TypeError(f"{what} must be {'Operation or ' if allow_op else ''}Tensor, given: {x!r}")
    if x.graph is not graph:
        raise ValueError(f"{what} must be from the default graph. Possible causes of this error "
                         f"include: 1) {what} was created outside the context of the default graph; "
                         f"2) the object passed through to EstimatorSpec was not created in the most "
                         f"recent call to model_fn. {what} = {x!r}")
    return x


class EstimatorSpec(collections.namedtuple("EstimatorSpec", [
        "mode", "predictions", "loss", "train_op", "eval_metric_ops", "export_outputs",
        "training_chief_hooks", "training_hooks", "scaffold", "evaluation_hooks", "prediction_hooks"])):
    """What a model_fn returns, checked as TF1 checks it: TRAIN needs `loss` and
    `train_op`, EVAL `loss`, PREDICT `predictions`; `loss` is a scalar tensor,
    `predictions` a tensor or a dict of tensors, `eval_metric_ops` a dict of
    (value tensor, update op) pairs, all of the default graph."""

    def __new__(cls, mode, predictions=None, loss=None, train_op=None, eval_metric_ops=None,
                export_outputs=None, training_chief_hooks=None, training_hooks=None, scaffold=None,
                evaluation_hooks=None, prediction_hooks=None):
        if mode not in _MODES:
            raise ValueError(f"mode={mode!r} not recognized; expected one of {list(_MODES)}")
        g = get_default_graph()
        if loss is not None:
            loss = _check_tensor(loss, "loss", g)
            n = loss.shape.num_elements()
            if n not in (None, 1):
                raise ValueError(f"Loss must be scalar, given: {loss}")
            if loss.shape.ndims not in (None, 0):
                from .ops import reshape
                loss = reshape(loss, [])
        elif mode in (ModeKeys.TRAIN, ModeKeys.EVAL):
            raise ValueError("Missing loss.")
        if predictions is not None:
            if isinstance(predictions, dict):
                predictions = {k: _check_tensor(v, f"predictions[{k}]", g) for k, v in predictions.items()}
            else:
                predictions = _check_tensor(predictions, "predictions", g)
        elif mode == ModeKeys.PREDICT:
            raise ValueError("Missing predictions.")
        else:
            predictions = {}
        if train_op is not None:
            train_op = _check_tensor(train_op, "train_op", g, allow_op=True)
        elif mode == ModeKeys.TRAIN:
            raise ValueError("Missing train_op.")
        if eval_metric_ops is None:
            eval_metric_ops = {}
        else:
            if not isinstance(eval_metric_ops, dict):
                raise TypeError(f"eval_metric_ops must be a dict, given: {eval_metric_ops!r}")
            checked = {}
            for k, v in eval_metric_ops.items():
                if not isinstance(v, tuple) or len(v) != 2:
                    raise TypeError(f"Values of eval_metric_ops must be (metric_value, update_op) tuples, "
                                    f"given: {v!r} for key: {k}")
                checked[k] = (_check_tensor(v[0], f"eval_metric_ops[{k}][0]", g),
                              _check_tensor(v[1], f"eval_metric_ops[{k}][1]", g, allow_op=True))
            eval_metric_ops = checked
        hooks = [tuple(h or ()) for h in (training_chief_hooks, training_hooks, evaluation_hooks,
                                          prediction_hooks)]
        return super().__new__(cls, mode, predictions, loss, train_op, eval_metric_ops, export_outputs,
                               *hooks[:2], scaffold, *hooks[2:])


# --- RunConfig -------------------------------------------------------------------------------
_USE_DEFAULT = object()


class RunConfig:
    """The Estimator's run settings (read-only; `replace(**changes)` gives a copy).
    flowjit uses model_dir, tf_random_seed, save_checkpoints_steps/_secs,
    keep_checkpoint_max, log_step_count_steps and session_config; the others are kept
    for code that reads them back. Runs are local: one chief worker, no parameter
    servers."""

    _KEYS = ("model_dir", "tf_random_seed", "save_summary_steps", "save_checkpoints_steps",
             "save_checkpoints_secs", "session_config", "keep_checkpoint_max",
             "keep_checkpoint_every_n_hours", "log_step_count_steps", "train_distribute", "device_fn",
             "protocol", "eval_distribute", "experimental_distribute", "experimental_max_worker_delay",
             "session_creation_timeout_secs")

    def __init__(self, model_dir=None, tf_random_seed=None, save_summary_steps=100,
                 save_checkpoints_steps=_USE_DEFAULT, save_checkpoints_secs=_USE_DEFAULT,
                 session_config=None, keep_checkpoint_max=5, keep_checkpoint_every_n_hours=10000,
                 log_step_count_steps=100, train_distribute=None, device_fn=None, protocol=None,
                 eval_distribute=None, experimental_distribute=None, experimental_max_worker_delay=None,
                 session_creation_timeout_secs=7200):
        steps_given = save_checkpoints_steps not in (_USE_DEFAULT, None)
        secs_given = save_checkpoints_secs not in (_USE_DEFAULT, None)
        if steps_given and secs_given:
            raise ValueError("Can not provide both save_checkpoints_secs and save_checkpoints_steps.")
        if save_checkpoints_steps is _USE_DEFAULT and save_checkpoints_secs is _USE_DEFAULT:
            save_checkpoints_steps, save_checkpoints_secs = None, 600
        if save_checkpoints_steps is _USE_DEFAULT:
            save_checkpoints_steps = None
        if save_checkpoints_secs is _USE_DEFAULT:
            save_checkpoints_secs = None
        for what, v in (("save_checkpoints_steps", save_checkpoints_steps),
                        ("save_checkpoints_secs", save_checkpoints_secs),
                        ("log_step_count_steps", log_step_count_steps),
                        ("keep_checkpoint_max", keep_checkpoint_max)):
            if v is not None and (not isinstance(v, (int, float, np.integer, np.floating)) or v < 0):
                raise ValueError(f"{what} must be >= 0, given: {v!r}")
        if tf_random_seed is not None and not isinstance(tf_random_seed, (int, np.integer)):
            raise ValueError(f"tf_random_seed must be an integer, given: {tf_random_seed!r}")
        self._values = dict(
            model_dir=None if model_dir is None else os.fspath(model_dir), tf_random_seed=tf_random_seed,
            save_summary_steps=save_summary_steps, save_checkpoints_steps=save_checkpoints_steps,
            save_checkpoints_secs=save_checkpoints_secs, session_config=session_config,
            keep_checkpoint_max=keep_checkpoint_max,
            keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours,
            log_step_count_steps=log_step_count_steps, train_distribute=train_distribute,
            device_fn=device_fn, protocol=protocol, eval_distribute=eval_distribute,
            experimental_distribute=experimental_distribute,
            experimental_max_worker_delay=experimental_max_worker_delay,
            session_creation_timeout_secs=session_creation_timeout_secs)

    def __getattr__(self, name):
        values = self.__dict__.get("_values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(f"'RunConfig' object has no attribute {name!r}")

    def replace(self, **kwargs):
        unknown = set(kwargs) - set(self._KEYS)
        if unknown:
            raise ValueError(f"Replacing {sorted(unknown)} is not supported. Allowed properties are "
                             f"{sorted(self._KEYS)}.")
        values = dict(self._values)
        if "save_checkpoints_steps" in kwargs and "save_checkpoints_secs" not in kwargs:
            values["save_checkpoints_secs"] = None if kwargs["save_checkpoints_steps"] else \
                values["save_checkpoints_secs"]
        if "save_checkpoints_secs" in kwargs and "save_checkpoints_steps" not in kwargs:
            values["save_checkpoints_steps"] = None if kwargs["save_checkpoints_secs"] else \
                values["save_checkpoints_steps"]
        values.update(kwargs)
        return RunConfig(**values)

    # a local run: one chief worker
    is_chief = True
    master = ""
    evaluation_master = ""
    num_ps_replicas = 0
    num_worker_replicas = 1
    task_type = "worker"
    task_id = 0
    global_id_in_cluster = 0
    cluster_spec = None
    service = None

    def __repr__(self):
        return "RunConfig(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"


# --- session run hooks ---------------------------------------------------------------------------
class SessionRunArgs(collections.namedtuple("SessionRunArgs", ["fetches", "feed_dict", "options"])):
    """What a hook's `before_run` adds to a step: fetches (and feeds)."""

    def __new__(cls, fetches, feed_dict=None, options=None):
        return super().__new__(cls, fetches, feed_dict, options)


SessionRunValues = collections.namedtuple("SessionRunValues", ["results", "options", "run_metadata"])


class SessionRunContext:
    """The step a hook sees: `original_args`, `session`, `request_stop()`."""

    def __init__(self, original_args, session):
        self._original_args = original_args
        self._session = session
        self._stop_requested = False

    @property
    def original_args(self):
        return self._original_args

    @property
    def session(self):
        return self._session

    @property
    def stop_requested(self):
        return self._stop_requested

    def request_stop(self):
        self._stop_requested = True


class SessionRunHook:
    """TF1's hook interface; the estimator calls `begin()` after the graph is built,
    `after_create_session(session, coord)`, `before_run(run_context)` /
    `after_run(run_context, run_values)` around every step, and `end(session)`."""

    def begin(self):
        pass

    def after_create_session(self, session, coord):
        pass

    def before_run(self, run_context):
        return None

    def after_run(self, run_context, run_values):
        pass

    def end(self, session):
        pass


class CheckpointSaverListener:
    """Called around the checkpoints `train` writes (TF1's saving_listeners)."""

    def begin(self):
        pass

    def before_save(self, session, global_step_value):
        pass

    def after_save(self, session, global_step_value):
        pass

    def end(self, session, global_step_value):
        pass


class _Hooks:
    def __init__(self, hooks):
        self.hooks = list(hooks)
        for h in self.hooks:
            if not hasattr(h, "before_run") or not hasattr(h, "after_run"):
                raise TypeError(f"hooks must be SessionRunHook instances, given: {h!r}")

    def begin(self):
        for h in self.hooks:
            h.begin()

    def after_create_session(self, sess):
        for h in self.hooks:
            h.after_create_session(sess, None)

    def run(self, sess, fetches, feed):
        """sess.run(fetches, feed) with the hooks' extra fetches; (results, stop requested)."""
        if not self.hooks:
            return sess.run(fetches, feed), False
        ctx = SessionRunContext(SessionRunArgs(fetches, feed), sess)
        extra, feed = [], dict(feed or {})
        for h in self.hooks:
            a = h.before_run(ctx)
            if a is not None and a.feed_dict:
                for k in a.feed_dict:
                    if k in feed:
                        raise RuntimeError(f"Same tensor is fed by a SessionRunHook and user. {k}")
                feed.update(a.feed_dict)
            extra.append(a.fetches if a is not None and a.fetches is not None else [])
        out, hook_out = sess.run([fetches, extra], feed or None)
        for h, r in zip(self.hooks, hook_out):
            h.after_run(ctx, SessionRunValues(results=r, options=None, run_metadata=None))
        return out, ctx.stop_requested

    def end(self, sess):
        for h in self.hooks:
            h.end(sess)


# --- the Estimator -----------------------------------------------------------------------------------
def _fn_args(fn):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in sig.parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


class Estimator:
    """`tf.estimator.Estimator(model_fn, model_dir=None, config=None, params=None)`.

    `model_fn(features, labels, mode, params, config)` (it may leave out any argument but
    `features`) builds the model in the estimator's graph and returns an
    `EstimatorSpec`. `model_dir` (or `config.model_dir`) holds the checkpoints; without
    one a temporary directory is made, as in TF1."""

    def __init__(self, model_fn, model_dir=None, config=None, params=None, warm_start_from=None):
        if not callable(model_fn):
            raise ValueError(f"model_fn must be provided to Estimator, given: {model_fn!r}")
        args = _fn_args(model_fn)
        if args and "features" not in args:
            raise ValueError(f"model_fn ({model_fn}) must include features argument.")
        if params is not None and args and "params" not in args:
            raise ValueError(f"model_fn ({model_fn}) does not include params argument, but params "
                             f"({params}) is passed to Estimator.")
        if warm_start_from is not None:
            raise UnimplementedError("Estimator(warm_start_from=...) is not supported by flowjit.compat.v1; "
                                     "restore the variables in the model_fn or train from a copy of the "
                                     "checkpoint directory")
        if config is None:
            config = RunConfig()
        elif not isinstance(config, RunConfig):
            raise ValueError(f"config must be an instance of `RunConfig`, but provided {config}.")
        if model_dir is not None:
            model_dir = os.fspath(model_dir)
            if config.model_dir is not None and os.path.abspath(config.model_dir) != os.path.abspath(model_dir):
                raise ValueError(f"model_dir are set both in constructor and `RunConfig`, but with "
                                 f"different values. In constructor: '{model_dir}', in `RunConfig`: "
                                 f"'{config.model_dir}' ")
        model_dir = model_dir or config.model_dir
        if model_dir is None:
            model_dir = tempfile.mkdtemp()
            _log.info("Using temporary folder as model directory: %s", model_dir)
        self._model_dir = model_dir
        self._config = config.replace(model_dir=model_dir)
        self._params = copy.deepcopy(params) if params is not None else {}
        self._model_fn = model_fn
        _log.info("Using config: %s", self._config)

    @property
    def model_dir(self):
        return self._model_dir

    @property
    def config(self):
        return self._config

    @property
    def params(self):
        return copy.deepcopy(self._params)

    @property
    def model_fn(self):
        def public_model_fn(features, labels, mode, config):
            return self._call_model_fn(features, labels, mode, config)
        return public_model_fn

    # -- checkpoints ------------------------------------------------------------------------
    def latest_checkpoint(self):
        """The prefix of the newest checkpoint in model_dir, or None."""
        return _train.latest_checkpoint(self._model_dir)

    def _checkpoint(self):
        path = self.latest_checkpoint()
        if path is None:
            raise ValueError(f"Could not find trained model in model_dir: {self._model_dir}.")
        return path

    def get_variable_names(self):
        """The names of the variables in the newest checkpoint."""
        return sorted(fj_train.list_arrays(self._checkpoint()))

    def get_variable_value(self, name):
        """The value of variable `name` in the newest checkpoint."""
        arrays = fj_train.load_arrays(self._checkpoint())
        if name not in arrays:
            from .errors import NotFoundError
            raise NotFoundError(f"Key {name} not found in checkpoint {self._checkpoint()}")
        return arrays[name]

    def _checkpoint_step(self):
        path = self.latest_checkpoint()
        if path is None:
            return None
        arrays = fj_train.load_arrays(path)
        step = arrays.get("global_step")
        return None if step is None else int(step)

    def export_saved_model(self, *args, **kwargs):
        raise UnimplementedError("Estimator.export_saved_model is not supported by flowjit.compat.v1: "
                                 "it writes TensorFlow SavedModels; the checkpoints in model_dir hold "
                                 "the trained variables")

    export_savedmodel = export_saved_model

    def experimental_export_all_saved_models(self, *args, **kwargs):
        return self.export_saved_model()

    # -- graph building ---------------------------------------------------------------------
    def _call_input_fn(self, input_fn, mode):
        if not callable(input_fn):
            raise ValueError(f"input_fn must be callable, given: {input_fn!r}")
        args = _fn_args(input_fn)
        kwargs = {}
        if "mode" in args:
            kwargs["mode"] = mode
        if "params" in args:
            kwargs["params"] = self.params
        if "config" in args:
            kwargs["config"] = self._config
        result = input_fn(**kwargs)
        data = _data_module()
        if data is not None and isinstance(result, data.DatasetV2):
            result = data.make_one_shot_iterator(result).get_next()
        if isinstance(result, (tuple, list)):
            if len(result) != 2:
                raise ValueError(f"input_fn should return (features, labels) as a len 2 tuple, or "
                                 f"features, or a tf.data Dataset; given a {type(result).__name__} of "
                                 f"length {len(result)}")
            return tuple(result)
        return result, None

    def _call_model_fn(self, features, labels, mode, config=None):
        args = _fn_args(self._model_fn)
        kwargs = {}
        if "labels" in args:
            kwargs["labels"] = labels
        elif labels is not None:
            raise ValueError("model_fn does not take labels, but input_fn returns labels.")
        if "mode" in args:
            kwargs["mode"] = mode
        if "params" in args:
            kwargs["params"] = self.params
        if "config" in args:
            kwargs["config"] = config or self._config
        _log.info("Calling model_fn.")
        spec = self._model_fn(features=features, **kwargs)
        _log.info("Done calling model_fn.")
        if not isinstance(spec, EstimatorSpec):
            raise ValueError(f"model_fn should return an EstimatorSpec, given: {type(spec).__name__}")
        return spec

    def _build(self, input_fn, mode):
        g = Graph()
        with g.as_default():
            if self._config.tf_random_seed is not None:
                set_random_seed(self._config.tf_random_seed)
            global_step = _train.get_or_create_global_step(g)
            features, labels = self._call_input_fn(input_fn, mode)
            if mode == ModeKeys.PREDICT:
                labels = None
            spec = self._call_model_fn(features, labels, mode)
        return g, global_step, spec

    def _finalize(self, g, hooks, listeners=()):
        """The Saver and the initializers, the hooks' begin(), then the graph is final."""
        with g.as_default():
            saver = _train.Saver(max_to_keep=self._config.keep_checkpoint_max, sharded=True)
            init = global_variables_initializer()
            local_init = local_variables_initializer()
            hooks.begin()
            for li in listeners:
                li.begin()
        g.finalize()
        _log.info("Graph was finalized.")
        return saver, (init, local_init)

    def _session(self, g, checkpoint_path, saver, inits, what):
        sess = Session(graph=g, config=self._config.session_config)
        try:
            path = checkpoint_path or self.latest_checkpoint()
            if path:
                _log.info("Restoring parameters from %s", path)
                saver.restore(sess, path)
                if checkpoint_path is None:
                    # this Saver prunes the older checkpoints too (TF1's SessionManager)
                    state = _train.get_checkpoint_state(self._model_dir)
                    saver.recover_last_checkpoints(state.all_model_checkpoint_paths)
            else:
                if what != ModeKeys.TRAIN:
                    _log.info("Could not find trained model in model_dir: %s, running initialization "
                              "to %s.", self._model_dir, "evaluate" if what == ModeKeys.EVAL else "predict")
                sess.run(inits[0])
            _log.info("Running local_init_op.")
            sess.run(inits[1])
            _log.info("Done running local_init_op.")
        except BaseException:
            sess.close()
            raise
        return sess

    # -- train ------------------------------------------------------------------------------
    def train(self, input_fn, hooks=None, steps=None, max_steps=None, saving_listeners=None):
        """Train until the input ends, `steps` more steps, or the global step reaches
        `max_steps`; checkpoints in model_dir; returns self."""
        if steps is not None and max_steps is not None:
            raise ValueError("Can not provide both steps and max_steps.")
        if steps is not None and steps <= 0:
            raise ValueError(f"Must specify steps > 0, given: {steps}")
        if max_steps is not None and max_steps <= 0:
            raise ValueError(f"Must specify max_steps > 0, given: {max_steps}")
        if max_steps is not None:
            start = self._checkpoint_step()
            if start is not None and max_steps <= start:
                _log.info("Skipping training since max_steps has already saved.")
                return self
        g, global_step, spec = self._build(input_fn, ModeKeys.TRAIN)
        hooks = _Hooks(list(hooks or ()) + list(spec.training_hooks) + list(spec.training_chief_hooks))
        listeners = list(saving_listeners or ())
        saver, inits = self._finalize(g, hooks, listeners)
        feeders = g.get_collection(INPUT_FEEDERS)
        sess = self._session(g, None, saver, inits, ModeKeys.TRAIN)
        prefix = os.path.join(self._model_dir, _CKPT_NAME)
        loss = None
        try:
            with g.as_default():      # (hooks may look things up in the default graph)
                loss = self._train_loop(sess, global_step, spec, hooks, listeners, feeders, saver,
                                        prefix, steps, max_steps)
        finally:
            sess.close()
        if loss is not None:
            _log.info("Loss for final step: %s.", loss)
        return self

    def _train_loop(self, sess, global_step, spec, hooks, listeners, feeders, saver, prefix, steps,
                    max_steps):
        cfg = self._config
        loss = None
        hooks.after_create_session(sess)
        step = int(sess.run(global_step))
        start_step = last_saved = step

        def save(step):
            _log.info("Saving checkpoints for %d into %s.", step, prefix)
            for li in listeners:
                li.before_save(sess, step)
            saver.save(sess, prefix, global_step=step)
            for li in listeners:
                li.after_save(sess, step)
            return step, time.time()

        # TF1 saves the state it starts from (a restored one is already saved)
        latest = self.latest_checkpoint()
        if latest is None or os.path.basename(latest) != f"{_CKPT_NAME}-{step}":
            last_saved, last_time = save(step)
        else:
            last_time = time.time()
        fetches = [spec.train_op, spec.loss, global_step]
        every = cfg.log_step_count_steps
        n_run, moved, warned = 0, False, False
        t_log, step_log = time.time(), step
        while True:
            if max_steps is not None and step >= max_steps:
                break
            if steps is not None and (step - start_step >= steps or (not moved and n_run >= steps)):
                break
            try:
                feed = _next_feed(feeders)
                (_, loss, new_step), stop = hooks.run(sess, fetches, feed)
            except OutOfRangeError:
                break
            n_run += 1
            if not np.isfinite(loss):
                raise NanLossDuringTrainingError()
            new_step = int(new_step)
            if new_step != step:
                moved = True
            elif not warned:
                warned = True
                _log.warning("It seems that global step (tf.train.get_global_step) has not been "
                             "increased. Current value (could be stable): %d. You could increase the "
                             "global step by passing tf.train.get_global_step() to "
                             "Optimizer.apply_gradients or Optimizer.minimize.", new_step)
            step = new_step
            if every and (n_run == 1 or n_run % every == 0):
                now = time.time()
                if n_run == 1:
                    _log.info("loss = %s, step = %d", loss, step)
                else:
                    _log.info("global_step/sec: %g", (step - step_log) / max(now - t_log, 1e-9))
                    _log.info("loss = %s, step = %d (%.3f sec)", loss, step, now - t_log)
                t_log, step_log = now, step
            if step != last_saved and (
                    (cfg.save_checkpoints_steps and step - last_saved >= cfg.save_checkpoints_steps) or
                    (cfg.save_checkpoints_secs and time.time() - last_time >= cfg.save_checkpoints_secs)):
                last_saved, last_time = save(step)
            if stop:
                break
        if step != last_saved:
            last_saved, last_time = save(step)
        hooks.end(sess)
        for li in listeners:
            li.end(sess, step)
        return loss

    # -- evaluate ----------------------------------------------------------------------------
    def evaluate(self, input_fn, steps=None, hooks=None, checkpoint_path=None, name=None):
        """Run the metrics' update ops over the input (or `steps` batches); a dict of
        each metric's value, "loss" (the mean of the batches' losses) and "global_step"."""
        if steps is not None and steps <= 0:
            raise ValueError(f"Must specify steps > 0, given: {steps}")
        g, global_step, spec = self._build(input_fn, ModeKeys.EVAL)
        with g.as_default():
            metrics = dict(spec.eval_metric_ops)
            if LOSS_METRIC_KEY in metrics:
                raise ValueError(f'Metric with name "{LOSS_METRIC_KEY}" is not allowed, because Estimator '
                                 f'already defines a default metric with the same name.')
            metrics[LOSS_METRIC_KEY] = _metrics.mean(spec.loss)
        hooks = _Hooks(list(hooks or ()) + list(spec.evaluation_hooks))
        saver, inits = self._finalize(g, hooks)
        feeders = g.get_collection(INPUT_FEEDERS)
        sess = self._session(g, checkpoint_path, saver, inits, ModeKeys.EVAL)
        try:
            with g.as_default():
                results = self._eval_loop(sess, global_step, metrics, hooks, feeders, steps)
        finally:
            sess.close()
        _log.info("Finished evaluation at %s", datetime.datetime.now().strftime("%Y-%m-%d-%H:%M:%S"))
        _log.info("Saving dict for global step %d: %s", results["global_step"],
                  ", ".join(f"{k} = {results[k]}" for k in sorted(results)))
        return results

    @staticmethod
    def _eval_loop(sess, global_step, metrics, hooks, feeders, steps):
        hooks.after_create_session(sess)
        _log.info("Starting evaluation at %s", datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%SZ"))
        updates = [u for _, u in metrics.values()]
        n = 0
        while steps is None or n < steps:
            try:
                _, stop = hooks.run(sess, updates, _next_feed(feeders))
            except OutOfRangeError:
                break
            n += 1
            if steps is not None and (n == steps or n % max(steps // 10, 1) == 0):
                _log.info("Evaluation [%d/%d]", n, steps)
            if stop:
                break
        results = sess.run({k: v for k, (v, _) in metrics.items()})
        results["global_step"] = sess.run(global_step)
        hooks.end(sess)
        return results

    # -- predict -----------------------------------------------------------------------------
    def predict(self, input_fn, predict_keys=None, hooks=None, checkpoint_path=None,
                yield_single_examples=True):
        """A generator of predictions: per example (a dict of the predictions' keys, or
        the value when the model_fn's predictions are one tensor), or per batch with
        `yield_single_examples=False`."""
        g, _, spec = self._build(input_fn, ModeKeys.PREDICT)
        preds = spec.predictions
        if predict_keys is not None:
            if not isinstance(preds, dict):
                raise ValueError("predict_keys argument is not valid in case of non-dict predictions.")
            keys = [predict_keys] if isinstance(predict_keys, str) else list(predict_keys)
            chosen = {k: v for k, v in preds.items() if k in keys}
            if not chosen:
                raise ValueError(f"Expected to run at least one output from {list(preds)}, provided "
                                 f"{keys}.")
            preds = chosen
        all_hooks = _Hooks(list(hooks or ()) + list(spec.prediction_hooks))
        saver, inits = self._finalize(g, all_hooks)
        feeders = g.get_collection(INPUT_FEEDERS)
        sess = self._session(g, checkpoint_path, saver, inits, ModeKeys.PREDICT)
        try:
            with g.as_default():
                all_hooks.after_create_session(sess)
            while True:
                try:
                    with g.as_default():      # (not while the caller has the generator's values)
                        out, stop = all_hooks.run(sess, preds, _next_feed(feeders))
                except OutOfRangeError:
                    break
                if not yield_single_examples:
                    yield out
                else:
                    yield from _examples(out)
                if stop:
                    break
            with g.as_default():
                all_hooks.end(sess)
        finally:
            sess.close()


def _examples(out):
    """Split one batch of predictions into per-example values (dicts)."""
    if not isinstance(out, dict):
        arr = np.asarray(out)
        if arr.ndim == 0:
            raise ValueError("Prediction values must have a batch dimension: a scalar prediction "
                             "cannot be split per example; use yield_single_examples=False")
        return list(arr)
    n = None
    for k, v in out.items():
        v = np.asarray(v)
        if v.ndim == 0:
            raise ValueError(f"Prediction {k!r} is a scalar: predictions must have a batch dimension "
                             f"(or use yield_single_examples=False)")
        if n is None:
            n = v.shape[0]
        elif v.shape[0] != n:
            raise ValueError(f"Batch length of predictions should be same. {k} has different batch "
                             f"length than others.")
    return [{k: v[i] for k, v in out.items()} for i in range(n or 0)]


def _next_feed(feeders):
    feed = {}
    for f in feeders:
        feed.update(f.next_feed())
    return feed


def _data_module():
    try:
        from . import data
    except ImportError:
        return None
    return data if hasattr(data, "make_one_shot_iterator") and hasattr(data, "DatasetV2") else None


# --- train_and_evaluate ------------------------------------------------------------------------
class TrainSpec(collections.namedtuple("TrainSpec", ["input_fn", "max_steps", "hooks",
                                                     "saving_listeners"])):
    def __new__(cls, input_fn, max_steps=None, hooks=None, saving_listeners=None):
        if not callable(input_fn):
            raise TypeError(f"`input_fn` must be callable, given: {input_fn!r}")
        if max_steps is not None and max_steps <= 0:
            raise ValueError(f"Must specify max_steps > 0, given: {max_steps}")
        return super().__new__(cls, input_fn, max_steps, tuple(hooks or ()), tuple(saving_listeners or ()))


class EvalSpec(collections.namedtuple("EvalSpec", ["input_fn", "steps", "name", "hooks", "exporters",
                                                   "start_delay_secs", "throttle_secs"])):
    def __new__(cls, input_fn, steps=100, name=None, hooks=None, exporters=None, start_delay_secs=120,
                throttle_secs=600):
        if not callable(input_fn):
            raise TypeError(f"`input_fn` must be callable, given: {input_fn!r}")
        if steps is not None and steps <= 0:
            raise ValueError(f"Must specify steps > 0, given: {steps}")
        if exporters:
            raise UnimplementedError("EvalSpec(exporters=...) is not supported by flowjit.compat.v1 "
                                     "(exporters write SavedModels)")
        return super().__new__(cls, input_fn, steps, name, tuple(hooks or ()), (), start_delay_secs,
                               throttle_secs)


class _EvalListener(CheckpointSaverListener):
    def __init__(self, estimator, eval_spec):
        self.estimator, self.spec = estimator, eval_spec
        self.last_time = time.time()
        self.last_result = None
        self.evaluated_step = None

    def evaluate(self):
        s = self.spec
        self.last_result = self.estimator.evaluate(s.input_fn, steps=s.steps, hooks=s.hooks, name=s.name)
        self.evaluated_step = int(self.last_result["global_step"])
        self.last_time = time.time()

    def after_save(self, session, global_step_value):
        if time.time() - self.last_time >= (self.spec.throttle_secs or 0) and global_step_value > 0:
            # evaluated from the checkpoint just written (the training session stays open)
            self.evaluate()


def train_and_evaluate(estimator, train_spec, eval_spec):
    """The local form of TF1's train_and_evaluate: train to `train_spec.max_steps`,
    evaluating the new checkpoint when one is saved and `eval_spec.throttle_secs` have
    passed since the last evaluation, and once at the end; returns (the last
    evaluation's results, [])."""
    if not isinstance(estimator, Estimator):
        raise TypeError(f"`estimator` must have type `tf.estimator.Estimator`, given {type(estimator)}")
    if not isinstance(train_spec, TrainSpec):
        raise TypeError(f"`train_spec` must have type `tf.estimator.TrainSpec`, given {type(train_spec)}")
    if not isinstance(eval_spec, EvalSpec):
        raise TypeError(f"`eval_spec` must have type `tf.estimator.EvalSpec`, given {type(eval_spec)}")
    listener = _EvalListener(estimator, eval_spec)
    estimator.train(train_spec.input_fn, hooks=train_spec.hooks, max_steps=train_spec.max_steps,
                    saving_listeners=list(train_spec.saving_listeners) + [listener])
    step = estimator._checkpoint_step()
    if listener.last_result is None or listener.evaluated_step != step:
        listener.evaluate()
    return listener.last_result, []


# --- tf.estimator.inputs -------------------------------------------------------------------------
class _NumpyFeeder:
    """Batches of arrays along their first dim, for the placeholders of one input_fn
    call: `num_epochs` passes (None: for ever), each in a new random order if
    `shuffle`; batches run across pass boundaries, the last one may be smaller (TF1's
    queue-based numpy_input_fn does the same)."""

    def __init__(self, placeholders, arrays, batch_size, num_epochs, shuffle, seed):
        self.placeholders = placeholders
        self.arrays = arrays
        self.n = len(arrays[0])
        self.batch_size = batch_size
        self.num_epochs = num_epochs
        self.shuffle = shuffle
        self.rng = np.random.RandomState(seed)
        self.epoch = 0
        self.order = None
        self.pos = self.n

    def next_feed(self):
        parts, need = [], self.batch_size
        while need:
            if self.pos >= self.n:
                if self.num_epochs is not None and self.epoch >= self.num_epochs:
                    break
                self.order = self.rng.permutation(self.n) if self.shuffle else None
                self.pos = 0
                self.epoch += 1
            take = min(need, self.n - self.pos)
            parts.append((self.order, self.pos, self.pos + take))
            self.pos += take
            need -= take
        if not parts:
            raise OutOfRangeError(f"numpy_input_fn: the end of the data ({self.num_epochs} epoch(s) of "
                                  f"{self.n} examples)")
        if len(parts) == 1 and parts[0][0] is None:
            _, a, b = parts[0]
            return {ph: arr[a:b] for ph, arr in zip(self.placeholders, self.arrays)}
        idx = np.concatenate([o[a:b] if o is not None else np.arange(a, b) for o, a, b in parts])
        return {ph: arr[idx] for ph, arr in zip(self.placeholders, self.arrays)}


def _as_arrays(x, what):
    if isinstance(x, dict):
        if not x:
            raise ValueError(f"{what} cannot be an empty dict")
        return {k: np.asarray(v) for k, v in x.items()}, True
    return np.asarray(x), False


def numpy_input_fn(x, y=None, batch_size=128, num_epochs=1, shuffle=None, queue_capacity=1000,
                   num_threads=1, target_column="target"):
    """An input_fn giving batches of NumPy arrays: `x` a dict of arrays (features dict)
    or an array (one feature tensor), `y` an array or dict (labels) or None. The arrays'
    first dims must agree. Inside an Estimator each step gets the next batch; the data
    end after `num_epochs` passes (None: never). `shuffle` must be given (True/False),
    as in TF1. queue_capacity and num_threads are accepted for TF1 code (batches are
    cut directly from the arrays)."""
    if not isinstance(shuffle, bool):
        raise ValueError(f"shuffle must be provided explicitly as a bool, got {shuffle} instead.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, given: {batch_size!r}")
    if num_epochs is not None and (not isinstance(num_epochs, (int, np.integer)) or num_epochs <= 0):
        raise ValueError(f"num_epochs must be None or a positive integer, given: {num_epochs!r}")
    xs, x_dict = _as_arrays(x, "x")
    ys, y_dict = (None, False) if y is None else _as_arrays(y, "y")
    if x_dict and y_dict:
        dup = sorted(set(xs) & set(ys))
        if dup:
            raise ValueError(f"{len(dup)} duplicate keys are found in both x and y: {dup}")
    named = list(xs.items()) if x_dict else [("x", xs)]
    if ys is not None:
        named += list(ys.items()) if y_dict else [(target_column or "target", ys)]
    lengths = {}
    for k, a in named:
        if a.ndim == 0:
            raise ValueError(f"numpy_input_fn: {k} is a scalar; arrays need a first (example) dim")
        if a.dtype.kind not in "biuf":
            raise TypeError(f"numpy_input_fn: {k} has dtype {a.dtype}; flowjit computes only with "
                            f"numbers, so string or object features must be encoded as numbers first")
        lengths[k] = len(a)
    if len(set(lengths.values())) != 1:
        raise ValueError(f"Length of tensors in x and y is mismatched. All elements in x and y must "
                         f"have the same length. Lengths: {lengths}")
    if next(iter(lengths.values())) == 0:
        raise ValueError("numpy_input_fn: the arrays are empty")
    # the arrays are copied now (as TF1 copies x), so later edits of the caller's do not leak in
    x_items = [(k, np.ascontiguousarray(a).copy()) for k, a in (xs.items() if x_dict else [("x", xs)])]
    y_items = None if ys is None else [(k, np.ascontiguousarray(a).copy())
                                       for k, a in (ys.items() if y_dict else [("y", ys)])]

    def input_fn():
        g = get_default_graph()
        phs, arrays = [], []

        def make(k, a):
            p = placeholder(D.as_dtype(a.dtype), [None] + list(a.shape[1:]), name=str(k))
            phs.append(p)
            arrays.append(a.astype(p.dtype.np, copy=False))
            return p
        with g.name_scope("numpy_input_fn"):
            feats = {k: make(k, a) for k, a in x_items}
            labels = None if y_items is None else {k: make(k, a) for k, a in y_items}
        features = feats if x_dict else feats["x"]
        if labels is not None and not y_dict:
            labels = labels["y"]
        g.add_to_collection(INPUT_FEEDERS, _NumpyFeeder(phs, arrays, int(batch_size), num_epochs,
                                                        shuffle, g.seed))
        return features if labels is None else (features, labels)
    return input_fn


def _pandas_input_fn(*args, **kwargs):
    raise UnimplementedError("tf.estimator.inputs.pandas_input_fn is not implemented by flowjit.compat.v1: "
                             "pass the DataFrame's columns as arrays to numpy_input_fn, e.g. "
                             "numpy_input_fn({c: df[c].values for c in df}, df['label'].values)")


class _Inputs(types.ModuleType):
    def __getattr__(self, name):
        raise missing("tf.estimator.inputs", name)


inputs = _Inputs("flowjit.compat.v1.estimator.inputs", "tf.estimator.inputs: numpy_input_fn.")
inputs.numpy_input_fn = numpy_input_fn
inputs.pandas_input_fn = _pandas_input_fn
sys.modules.setdefault(inputs.__name__, inputs)      # `from ...estimator.inputs import numpy_input_fn`


# --- canned estimators: not provided ------------------------------------------------------------
_CANNED = {
    "DNNClassifier", "DNNRegressor", "DNNEstimator", "LinearClassifier", "LinearRegressor",
    "LinearEstimator", "DNNLinearCombinedClassifier", "DNNLinearCombinedRegressor",
    "DNNLinearCombinedEstimator", "BaselineClassifier", "BaselineRegressor", "BaselineEstimator",
    "BoostedTreesClassifier", "BoostedTreesRegressor", "BoostedTreesEstimator",
}


def __getattr__(name):
    if name in _CANNED:
        raise UnimplementedName(
            f"tf.estimator.{name} (a canned estimator) is not implemented by flowjit.compat.v1: write a "
            f"model_fn (e.g. tf.layers.dense layers, a tf.losses loss and an optimizer's minimize with "
            f"global_step=tf.train.get_global_step()) returning a tf.estimator.EstimatorSpec, and use "
            f"tf.estimator.Estimator(model_fn)")
    raise missing("tf.estimator", name)
