"""TF1's managed training sessions: `tf.train.MonitoredTrainingSession` (with hooks,
`StopAtStepHook`, `Scaffold`) and the older `tf.train.Supervisor`.

Both make a Session and get it ready: the chief restores the newest checkpoint of its
directory, or else runs the init op; any other worker waits until the chief has
initialized the shared (ps) variables, then initializes its own. At the end the chief
writes a checkpoint. In a cluster (cluster.py) only the chief writes files anyway.

Not mapped: the background threads TF runs for summaries and periodic checkpoints
(`save_summaries_secs`/`save_summaries_steps`: write summaries with a
tf.summary.FileWriter or `sv.summary_computed`; MonitoredTrainingSession checks
`save_checkpoint_steps`/`save_checkpoint_secs` between steps, Supervisor saves at the end
of `managed_session` only), and session recovery after a worker fails (a failed rank
ends the job: fj.distributed).
"""
import contextlib
import os
import time

from ...errors import OutOfRangeError
from . import cluster as _cluster
from .errors import DeadlineExceededError
from .estimator import SessionRunHook, _Hooks
from .graph import GraphKeys, get_default_graph
from .session import Session

USE_DEFAULT = 0          # TF's sentinel: "build the default"


def _global_step(graph):
    from .train import get_global_step
    return get_global_step(graph)


class Scaffold:
    """What a monitored session needs from the graph: init_op (default: every global
    variable's initializer), local_init_op (local variables'), saver (a tf.train.Saver
    of the global variables, made when a checkpoint directory asks for one), init_fn."""

    def __init__(self, init_op=None, init_feed_dict=None, init_fn=None, ready_op=None,
                 ready_for_local_init_op=None, local_init_op=None, summary_op=None, saver=None,
                 copy_from_scaffold=None):
        self.init_op = init_op
        self.init_feed_dict = init_feed_dict
        self.init_fn = init_fn
        self.local_init_op = local_init_op
        self.summary_op = summary_op
        self._saver = saver
        self.ready_op = ready_op
        self.ready_for_local_init_op = ready_for_local_init_op

    def finalize(self):
        from .variables import global_variables_initializer, local_variables_initializer
        if self.init_op is None:
            self.init_op = global_variables_initializer()
        if self.local_init_op is None:
            self.local_init_op = local_variables_initializer()
        return self

    @property
    def saver(self):
        if self._saver is None:
            from .train import Saver
            self._saver = Saver()
        return self._saver


def _prepare(sess, is_chief, init_op, init_feed_dict, init_fn, local_init_op, saver, checkpoint_dir,
             max_wait_secs, scaffold=None):
    """Restore or initialize (chief), or wait for the chief (other workers)."""
    from .train import latest_checkpoint
    from .variables import global_variables
    graph = sess.graph
    with graph.as_default():
        if is_chief:
            ckpt = latest_checkpoint(checkpoint_dir) if checkpoint_dir else None
            if ckpt is not None and saver is not None:
                saver.restore(sess, ckpt)
            else:
                if init_op is not None:
                    sess.run(init_op, feed_dict=init_feed_dict)
                if init_fn is not None:
                    init_fn(scaffold, sess) if scaffold is not None else init_fn(sess)
        else:
            variables = list(global_variables())
            rt = _cluster.runtime()
            shared = [v for v in variables if rt is not None and rt.store is not None and rt.owner(v) is not None]
            own = [v for v in variables if v not in shared]
            deadline = time.monotonic() + max_wait_secs
            while shared and not all(_cluster.initialized(sess, shared)):
                if time.monotonic() > deadline:
                    raise DeadlineExceededError(
                        f"waited {max_wait_secs} s for the chief to initialize the shared variables "
                        f"({', '.join(v.op.name for v in shared[:5])}...)")
                time.sleep(0.02)
            if own:
                sess.run([v.initializer for v in own])
        if local_init_op is not None:
            sess.run(local_init_op)


class _CheckpointSaver:
    """The chief's checkpoints: every `steps` runs or `secs` seconds, and at the end."""

    def __init__(self, saver, directory, secs, steps, global_step):
        self.saver, self.directory = saver, directory
        self.secs, self.steps = secs, steps
        self.global_step = global_step
        self.last_time = time.monotonic()
        self.runs = 0

    def save(self, sess):
        step = sess.run(self.global_step) if self.global_step is not None else None
        self.saver.save(sess, os.path.join(self.directory, "model.ckpt"), global_step=step)
        self.last_time = time.monotonic()

    def after_run(self, sess):
        self.runs += 1
        if (self.steps and self.runs % self.steps == 0) or \
                (self.secs and time.monotonic() - self.last_time >= self.secs):
            self.save(sess)


class _MonitoredSession:
    """What MonitoredTrainingSession returns: `run`, `should_stop`, `close`, a context
    manager (OutOfRangeError ending the `with` body counts as a normal stop)."""

    def __init__(self, master, is_chief, checkpoint_dir, scaffold, hooks, config, save_checkpoint_secs,
                 save_checkpoint_steps, max_wait_secs):
        self.graph = get_default_graph()
        self._hooks = _Hooks(hooks)
        self._is_chief = is_chief
        scaffold = (scaffold or Scaffold())
        with self.graph.as_default():
            scaffold.finalize()
            self._hooks.begin()
            saver = scaffold.saver if checkpoint_dir else None
            self._saver = None
            if is_chief and checkpoint_dir:
                self._saver = _CheckpointSaver(saver, checkpoint_dir, save_checkpoint_secs,
                                               save_checkpoint_steps, _global_step(self.graph))
        self._sess = Session(master, graph=self.graph, config=config)
        _prepare(self._sess, is_chief, scaffold.init_op, scaffold.init_feed_dict, scaffold.init_fn,
                 scaffold.local_init_op, saver, checkpoint_dir, max_wait_secs, scaffold)
        self._hooks.after_create_session(self._sess)
        self._stop = False
        self._closed = False

    @property
    def session(self):
        return self._sess

    def raw_session(self):
        return self._sess

    def _tf_sess(self):
        return self._sess

    def run(self, fetches, feed_dict=None, options=None, run_metadata=None):
        out, stop = self._hooks.run(self._sess, fetches, feed_dict)
        self._stop = self._stop or stop
        if self._saver is not None:
            self._saver.after_run(self._sess)
        return out

    def run_step_fn(self, step_fn):
        return step_fn(_StepContext(self))

    def should_stop(self):
        return self._stop or self._closed

    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            self._hooks.end(self._sess)
            if self._saver is not None:
                self._saver.save(self._sess)
        finally:
            self._sess.close()

    def __enter__(self):
        return self

    def __exit__(self, tp, value, tb):
        if tp is not None and issubclass(tp, OutOfRangeError):
            self._stop = True
        self.close()
        return tp is not None and issubclass(tp, (OutOfRangeError, StopIteration))


class _StepContext:
    def __init__(self, ms):
        self._ms = ms

    @property
    def session(self):
        return self._ms._sess

    def run_with_hooks(self, *args, **kwargs):
        return self._ms.run(*args, **kwargs)

    def request_stop(self):
        self._ms._stop = True


def MonitoredTrainingSession(master="", is_chief=True, checkpoint_dir=None, scaffold=None, hooks=None,
                             chief_only_hooks=None, save_checkpoint_secs=USE_DEFAULT,
                             save_summaries_steps=USE_DEFAULT, save_summaries_secs=USE_DEFAULT, config=None,
                             stop_grace_period_secs=120, log_step_count_steps=100, max_wait_secs=7200,
                             save_checkpoint_steps=USE_DEFAULT, summary_dir=None):
    """A session for training (see the module docstring). With `checkpoint_dir`, the
    chief restores from it and saves to it (every save_checkpoint_steps runs, else every
    save_checkpoint_secs seconds, 600 by default, and at the end)."""
    hooks = list(hooks or ())
    if is_chief:
        hooks += list(chief_only_hooks or ())
    steps = None if save_checkpoint_steps in (USE_DEFAULT, None) else int(save_checkpoint_steps)
    if save_checkpoint_secs is None or steps:
        secs = None
    else:
        secs = 600 if save_checkpoint_secs == USE_DEFAULT else float(save_checkpoint_secs)
    return _MonitoredSession(master, is_chief, checkpoint_dir, scaffold, hooks, config, secs, steps,
                             max_wait_secs)


class StopAtStepHook(SessionRunHook):
    """Requests a stop when the global step reaches `last_step` (or after `num_steps`
    more steps from the step the session starts at)."""

    def __init__(self, num_steps=None, last_step=None):
        if (num_steps is None) == (last_step is None):
            raise ValueError("One of num_steps or last_step must be specified.")
        if num_steps is not None and num_steps < 0:
            raise ValueError("num_steps must be non-negative")
        self._num_steps = num_steps
        self._last_step = last_step
        self._gs = None

    def begin(self):
        self._gs = _global_step(get_default_graph())
        if self._gs is None:
            raise RuntimeError("Global step should be created to use StopAtStepHook.")

    def after_create_session(self, session, coord):
        if self._last_step is None:
            self._last_step = int(session.run(self._gs)) + self._num_steps

    def before_run(self, run_context):
        from .estimator import SessionRunArgs
        return SessionRunArgs(self._gs)

    def after_run(self, run_context, run_values):
        step = int(run_values.results) + 1
        if step >= self._last_step:
            # the fetched value may predate this step's own update: read it again
            if int(run_context.session.run(self._gs)) >= self._last_step:
                run_context.request_stop()


class Supervisor:
    """`tf.train.Supervisor` (TF1's older session manager): `managed_session(master)`
    gives a ready session (restored from `logdir` or initialized by the chief; other
    workers wait for the chief), `should_stop()`, `request_stop()`, `stop()`. At the end
    of `managed_session` the chief saves a checkpoint in `logdir`."""

    def __init__(self, graph=None, ready_op=USE_DEFAULT, ready_for_local_init_op=USE_DEFAULT, is_chief=True,
                 init_op=USE_DEFAULT, init_feed_dict=None, local_init_op=USE_DEFAULT, logdir=None,
                 summary_op=USE_DEFAULT, saver=USE_DEFAULT, global_step=USE_DEFAULT, save_summaries_secs=120,
                 save_model_secs=600, recovery_wait_secs=30, stop_grace_secs=120,
                 checkpoint_basename="model.ckpt", session_manager=None, summary_writer=USE_DEFAULT,
                 init_fn=None, local_init_run_options=None):
        from .train import Saver
        from .variables import global_variables_initializer, local_variables_initializer
        self._graph = graph or get_default_graph()
        with self._graph.as_default():
            self._init_op = global_variables_initializer() if init_op is USE_DEFAULT else init_op
            self._local_init_op = local_variables_initializer() if local_init_op is USE_DEFAULT \
                else local_init_op
            self._global_step = _global_step(self._graph) if global_step is USE_DEFAULT else global_step
            if saver is USE_DEFAULT:
                saver = Saver() if logdir and self._graph.get_collection(GraphKeys.GLOBAL_VARIABLES) else None
        self._saver = saver
        self._is_chief = bool(is_chief)
        self._init_feed_dict = init_feed_dict
        self._init_fn = init_fn
        self._logdir = logdir
        self._save_path = os.path.join(logdir, checkpoint_basename) if logdir else None
        self._save_model_secs = save_model_secs
        self._summary_writer = None
        if summary_writer is not USE_DEFAULT:
            self._summary_writer = summary_writer
        self._stop = False

    @property
    def is_chief(self):
        return self._is_chief

    @property
    def saver(self):
        return self._saver

    @property
    def global_step(self):
        return self._global_step

    @property
    def save_path(self):
        return self._save_path

    @property
    def init_op(self):
        return self._init_op

    @property
    def summary_writer(self):
        if self._summary_writer is None and self._is_chief and self._logdir:
            from .summary import FileWriter
            self._summary_writer = FileWriter(self._logdir, self._graph)
        return self._summary_writer

    def summary_computed(self, sess, summary, global_step=None):
        if self.summary_writer is None:
            raise RuntimeError("Writing a summary requires a summary writer (a chief with a logdir).")
        if global_step is None and self._global_step is not None:
            global_step = sess.run(self._global_step)
        self.summary_writer.add_summary(summary, global_step)

    def prepare_or_wait_for_session(self, master="", config=None, wait_for_checkpoint=False,
                                    max_wait_secs=7200, start_standard_services=True):
        sess = Session(master, graph=self._graph, config=config)
        _prepare(sess, self._is_chief, self._init_op, self._init_feed_dict, self._init_fn,
                 self._local_init_op, self._saver, self._logdir, max_wait_secs)
        return sess

    @contextlib.contextmanager
    def managed_session(self, master="", config=None, start_standard_services=True, close_summary_writer=True):
        sess = self.prepare_or_wait_for_session(master, config)
        try:
            yield sess
        except OutOfRangeError:
            pass
        finally:
            self.stop()
            if self._is_chief and self._saver is not None and self._save_path:
                step = sess.run(self._global_step) if self._global_step is not None else None
                self._saver.save(sess, self._save_path, global_step=step)
            if close_summary_writer and self._summary_writer is not None:
                self._summary_writer.close()
            sess.close()

    def should_stop(self):
        return self._stop

    def request_stop(self, ex=None):
        self._stop = True
        if ex is not None:
            raise ex

    def stop(self, threads=None, close_summary_writer=True, ignore_live_threads=False):
        self._stop = True

    def start_queue_runners(self, sess, queue_runners=None):
        """flowjit has no queue runners (input queues are refused: see queues.py)."""
        return []

    def wait_for_stop(self):
        return self._stop


__all__ = ["MonitoredTrainingSession", "StopAtStepHook", "Supervisor", "Scaffold"]
