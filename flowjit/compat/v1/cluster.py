"""TF1's distributed programs on MPI: `tf.train.ClusterSpec`, `tf.train.Server`,
`tf.device("/job:ps/task:k")`, `tf.train.replica_device_setter` and
`tf.train.SyncReplicasOptimizer`, mapped onto the ranks of an `mpiexec` job.

The mapping (README, "Distributed"):
- a cluster's tasks are MPI ranks: jobs in sorted name order ("chief", "ps", "worker"),
  tasks in index order, so {"ps": [1 address], "worker": [2]} is ranks 0 (ps:0), 1
  (worker:0) and 2 (worker:1). Start it with `mpiexec -n 3 python prog.py`; the host:port
  addresses are kept (`server.target`) but nothing listens on them.
- `tf.train.Server(cluster, job_name, task_index)`: every rank makes one, first thing
  (it is collective). job_name/task_index default to this rank's task, and must be it.
- a variable created under `tf.device("/job:ps/task:k")` (or placed there by
  `replica_device_setter`) lives on that ps task: its rank holds the value in an MPI
  window (distributed/parameter_server.py). `sess.run` on a worker reads the values of
  the ps variables the run uses (one-sided MPI reads), runs the step on local copies,
  then adds each variable's change to its owner's value (an atomic one-sided
  accumulate), or writes it (initializers, restores). Workers never wait for each
  other: asynchronous training, where updates interleave (Hogwild, like TF's default
  use_locking=False).
- `SyncReplicasOptimizer`: the workers average their gradients with an allreduce inside
  the compiled step (over the workers only), every worker computes the same update,
  the chief writes it, and the workers wait for each other after each step.
- the chief (task 0 of "chief", else of "worker") writes checkpoints and event files.
- `server.join()` on a ps task serves until every worker has finished (TF's never
  returns); on a worker it waits for the others likewise.
- Not mapped: variables owned by a worker task and read by another (model parallelism
  between workers: an error names the variable), in-graph replication (one client
  placing ops on other tasks' devices: ops run where the session runs), gRPC itself.
"""
import atexit

import numpy as np

from ...errors import InvalidArgumentError
from ...runtime import process
from .graph import make_op, parse_device


# ---- the cluster ---------------------------------------------------------------------------
class ClusterSpec:
    """`tf.train.ClusterSpec({"ps": [...], "worker": [...]})`: job name -> task addresses
    (a list, or a dict task index -> address)."""

    def __init__(self, cluster):
        if isinstance(cluster, ClusterSpec):
            cluster = cluster.as_dict()
        if not isinstance(cluster, dict):
            raise TypeError(f"ClusterSpec: expected a dict job name -> list of addresses, got "
                            f"{type(cluster).__name__}")
        self._jobs = {}
        for job, tasks in cluster.items():
            if not isinstance(job, str) or not job:
                raise TypeError(f"ClusterSpec: job names must be non-empty strings, got {job!r}")
            if isinstance(tasks, (list, tuple)):
                tasks = dict(enumerate(tasks))
            elif not isinstance(tasks, dict):
                raise TypeError(f"ClusterSpec: job {job!r} must map to a list or dict of addresses")
            self._jobs[job] = {int(i): str(a) for i, a in sorted(tasks.items())}

    @property
    def jobs(self):
        return list(self._jobs)

    def num_tasks(self, job_name):
        return len(self._job(job_name))

    def task_indices(self, job_name):
        return sorted(self._job(job_name))

    def task_address(self, job_name, task_index):
        tasks = self._job(job_name)
        if task_index not in tasks:
            raise ValueError(f"No task with index {task_index!r} in job {job_name!r}")
        return tasks[task_index]

    def job_tasks(self, job_name):
        tasks = self._job(job_name)
        return [tasks.get(i) for i in range(max(tasks) + 1)] if tasks else []

    def as_dict(self):
        return {job: (list(t.values()) if sorted(t) == list(range(len(t))) else dict(t))
                for job, t in self._jobs.items()}

    def _job(self, job_name):
        if job_name not in self._jobs:
            raise ValueError(f"No such job in cluster: {job_name!r}")
        return self._jobs[job_name]

    # flowjit: the tasks as MPI ranks
    def tasks(self):
        """[(job, task index)] in rank order: jobs by name, tasks by index."""
        return [(job, i) for job in sorted(self._jobs) for i in sorted(self._jobs[job])]

    def rank_of(self, job, task):
        try:
            return self.tasks().index((job, int(task)))
        except ValueError:
            raise ValueError(f"the cluster has no task /job:{job}/task:{task} "
                             f"(it has {self._describe()})") from None

    def _describe(self):
        return ", ".join(f"{job}: {len(t)}" for job, t in self._jobs.items())

    def __bool__(self):
        return bool(self._jobs)

    def __eq__(self, other):
        return isinstance(other, ClusterSpec) and self.as_dict() == other.as_dict()

    def __repr__(self):
        return f"ClusterSpec({self.as_dict()!r})"


class _ServerDef:
    def __init__(self, cluster, job_name, task_index, protocol):
        self.cluster = cluster
        self.job_name = job_name
        self.task_index = task_index
        self.protocol = protocol


class Server:
    """`tf.train.Server(cluster, job_name=None, task_index=None)`: this process's task in
    the cluster, which is this MPI rank's (see the module docstring)."""

    def __init__(self, server_or_cluster_def, job_name=None, task_index=None, protocol=None,
                 config=None, start=True):
        if isinstance(server_or_cluster_def, _ServerDef):
            sd = server_or_cluster_def
            server_or_cluster_def, job_name, task_index = sd.cluster, sd.job_name, sd.task_index
        cluster = ClusterSpec(server_or_cluster_def)
        rt = _start(cluster)
        mine = cluster.tasks()[rt.rank]
        job = mine[0] if job_name is None else job_name
        task = (mine[1] if job == mine[0] else 0) if task_index is None else int(task_index)
        if (job, task) != mine:
            raise ValueError(f"tf.train.Server: this process is MPI rank {rt.rank}, which the cluster "
                             f"maps to /job:{mine[0]}/task:{mine[1]} (ranks go to jobs in sorted name "
                             f"order, tasks in index order), not /job:{job}/task:{task}; leave "
                             f"job_name and task_index out to take the rank's task")
        self._def = _ServerDef(cluster, job, task, protocol or "grpc")
        self._target = f"grpc://{cluster.task_address(job, task)}"

    @property
    def target(self):
        return self._target

    @property
    def server_def(self):
        return self._def

    def start(self):
        """Servers start when made."""

    def join(self):
        """Serve this task's variables until every worker has finished (a worker: wait
        for the other tasks likewise); then the cluster's MPI resources are freed."""
        _RUNTIME[0].close()

    def served_variables(self):
        """(flowjit) The names of the variables this task holds for the cluster."""
        store = _RUNTIME[0].store
        return sorted(store.owned) if store is not None else []

    @staticmethod
    def create_local_server(config=None, start=True):
        return Server({"localhost": ["localhost:0"]}, "localhost", 0)


# ---- the runtime: one per process ----------------------------------------------------------
class _Runtime:
    def __init__(self, cluster):
        from ... import distributed as D
        self.cluster = cluster
        tasks = cluster.tasks()
        if len(tasks) == 1:               # a cluster of one task: this process alone
            self.rank, self.size = 0, 1
        else:
            D.init()
            self.rank, self.size = D.rank(), D.world_size()
        if len(tasks) != self.size:
            raise ValueError(f"tf.train.Server: the cluster has {len(tasks)} task(s) "
                             f"({cluster._describe()}), so the program must run as {len(tasks)} MPI "
                             f"ranks: mpiexec -n {len(tasks)} python {_program()} (this job has "
                             f"{self.size})")
        self.job, self.task = tasks[self.rank]
        self.servers = [r for r, (job, _) in enumerate(tasks) if job == "ps"]
        self.workers = [r for r in range(self.size) if r not in self.servers]
        chiefs = [r for r, t in enumerate(tasks) if t == ("chief", 0)] or \
                 [r for r, t in enumerate(tasks) if t == ("worker", 0)] or self.workers or [0]
        self.chief = chiefs[0]
        self.is_chief = self.rank == self.chief
        if self.size > 1:
            process.set_writer_rank(self.chief)
        self.store = None
        self.workers_group = 0
        self.workers_comm = None
        if self.size > 1:
            from ...distributed import _comm as C
            from ...distributed.parameter_server import ParameterStore
            world = C.S.comm
            self.store = ParameterStore(world, self.servers)
            self.workers_comm = world.Split(0 if self.rank in self.workers else 1, self.rank)
            if self.rank in self.workers:
                self.workers_group = C.add_group(self.workers_comm)
        self.closed = False
        atexit.register(self.close)

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.store is not None:
            self.store.close()

    def owner(self, var):
        """The rank that owns `var`'s value, or None when it is this process's."""
        spec = var.op.device
        if not spec or self.size == 1:
            return None
        d = parse_device(spec)
        job = d.get("job")
        if job is None or job == "localhost":
            return None
        r = self.cluster.rank_of(job, d.get("task", 0))
        if r == self.rank:
            return None
        if r not in self.servers:
            raise InvalidArgumentError(
                f"variable {var.op.name} (created at {var.op._src}) is placed on /job:{job}/task:"
                f"{d.get('task', 0)}, another worker: flowjit serves shared variables from the ps "
                f"job's tasks only (place it with tf.device('/job:ps/task:k') or "
                f"tf.train.replica_device_setter)")
        return r

    def barrier_workers(self):
        from ...distributed import _comm as C
        C.wait([self.workers_comm.Ibarrier()], "the workers' barrier after a synchronous step")


_RUNTIME = [None]


def _start(cluster):
    rt = _RUNTIME[0]
    if rt is None:
        rt = _RUNTIME[0] = _Runtime(cluster)
    elif rt.cluster != cluster:
        raise ValueError(f"tf.train.Server: this process already belongs to the cluster "
                         f"{rt.cluster!r}; one cluster per process")
    return rt


def _program():
    import sys
    return sys.argv[0] if sys.argv and sys.argv[0] else "prog.py"


def runtime():
    """The cluster runtime when this process has made a tf.train.Server, else None."""
    return _RUNTIME[0]


# ---- Session.run on a worker: read the ps variables, run, send the changes -----------------
class _Shared:
    """The ps-owned variables one plan uses, with their handles."""

    def __init__(self, rt, sess, plan):
        self.items = []            # (tf variable, handle)
        inits = {op.attrs["variable"] for op in plan.order
                 if op.attrs.get("initializer") and "variable" in op.attrs}
        for var in plan.variables:
            owner = rt.owner(var)
            if owner is None:
                continue
            h = rt.store.register(owner, var.op.name, var.shape.as_list(), var.dtype.np)
            self.items.append((var, h))
        self.inits = inits
        self.needs = set(plan.needs_init)
        self.sync = any(op.attrs.get("sync_replicas") for op in plan.order)


def before_run(rt, sess, plan):
    shared = plan.shared
    if shared is None:
        shared = plan.shared = _Shared(rt, sess, plan)
    if not shared.items:
        return None
    to_read = [(v, h) for v, h in shared.items if v not in shared.inits]
    pulled = {}
    for (var, h), (vals, ok) in zip(to_read, rt.store.read([h for _, h in to_read])):
        if ok:
            fv = sess._vars.get(var) or sess._new_variable(var)
            fv.assign(vals)
            pulled[var] = vals
        elif var in shared.needs:
            from .errors import FailedPreconditionError
            raise FailedPreconditionError(
                f"Attempting to use uninitialized value {var.op.name} (created at {var.op._src}): its "
                f"owner, {var.op.device}, has no value yet; the chief initializes the variables "
                f"(tf.global_variables_initializer(), or MonitoredTrainingSession/Supervisor with "
                f"is_chief=True)")
    return pulled


def after_run(rt, sess, plan, pulled):
    shared = plan.shared
    if pulled is None:
        return
    push = not shared.sync or rt.is_chief
    owners = set()
    if push:
        for var, h in shared.items:
            fv = sess._vars.get(var)
            if fv is None:
                continue
            new = np.asarray(fv.numpy())
            if var in shared.inits:
                rt.store.write(h, new)
            elif var in pulled:
                old = pulled[var]
                if new.dtype == np.bool_:
                    if (new != old).any():
                        rt.store.write(h, new)
                else:
                    delta = new - old
                    if delta.any():
                        rt.store.add(h, delta)
            else:
                continue
            owners.add(h.owner)
        rt.store.flush(owners)
    if shared.sync:
        rt.barrier_workers()


def refresh(sess, variables):
    """Bring the session's copies of the ps variables among `variables` up to date (their
    owners' current values), e.g. before a checkpoint is written."""
    rt = runtime()
    if rt is None or rt.store is None:
        return
    pairs = []
    for v in variables:
        owner = rt.owner(v)
        if owner is not None:
            pairs.append((v, rt.store.register(owner, v.op.name, v.shape.as_list(), v.dtype.np)))
    for (v, _), (vals, ok) in zip(pairs, rt.store.read([h for _, h in pairs])):
        if ok:
            (sess._vars.get(v) or sess._new_variable(v)).assign(vals)


def write_values(sess, pairs):
    """Restores: values assigned to ps variables are written to their owners."""
    rt = runtime()
    if rt is None or rt.store is None:
        return
    owners = set()
    for var, value in pairs:
        owner = rt.owner(var)
        if owner is None:
            continue
        h = rt.store.register(owner, var.op.name, var.shape.as_list(), var.dtype.np)
        rt.store.write(h, np.asarray(value))
        owners.add(owner)
    rt.store.flush(owners)


def initialized(sess, variables):
    """Which of `variables` have a value: local ones in `sess`, ps ones on their owner."""
    rt = runtime()
    out = []
    remote = []
    for v in variables:
        owner = rt.owner(v) if rt is not None and rt.store is not None else None
        if owner is None:
            out.append(v in sess._vars)
        else:
            remote.append((len(out), rt.store.register(owner, v.op.name, v.shape.as_list(), v.dtype.np)))
            out.append(None)
    if remote:
        for (i, _), (_, ok) in zip(remote, rt.store.read([h for _, h in remote])):
            out[i] = ok
    return out


# ---- placement ----------------------------------------------------------------------------
_PS_OPS = ("VariableV2", "Variable", "VarHandleOp", "AutoReloadVariable", "MutableHashTable",
           "MutableHashTableV2", "MutableHashTableOfTensors", "MutableDenseHashTable")


def replica_device_setter(ps_tasks=0, ps_device="/job:ps", worker_device="/job:worker", merge_devices=True,
                          cluster=None, ps_ops=None, ps_strategy=None):
    """A device function for tf.device: variables go to the ps tasks in turn (round
    robin), every other op to `worker_device`. None when there are no ps tasks."""
    if cluster is not None:
        cluster = ClusterSpec(cluster)
        ps_tasks = cluster.num_tasks("ps") if "ps" in cluster.jobs else 0
    if not ps_tasks:
        return None
    ops = tuple(ps_ops) if ps_ops is not None else _PS_OPS
    state = {"next": 0}

    def strategy(op):
        if ps_strategy is not None:
            return ps_strategy(op)
        k = state["next"] % ps_tasks
        state["next"] += 1
        return k

    def place(op):
        current = parse_device(op.device) if op.device else {}
        if op.type in ops:
            target = parse_device(ps_device)
            if ps_tasks and "task" not in target:
                target["task"] = strategy(op)
        else:
            target = parse_device(worker_device) if worker_device else {}
        if merge_devices:
            target = {**target, **{k: v for k, v in current.items() if k not in target}}
        from .graph import device_string
        return device_string(target)
    return place


# ---- synchronous replicas -----------------------------------------------------------------
class SyncReplicasOptimizer:
    """`tf.train.SyncReplicasOptimizer(opt, replicas_to_aggregate, total_num_replicas)`:
    each step averages the gradients of every worker (an allreduce over the workers,
    inside the compiled step), then applies `opt`'s update once: every worker computes
    the same one, the chief writes it to the ps, and the workers wait for each other.
    replicas_to_aggregate must be the number of workers (no backup workers)."""

    def __init__(self, opt, replicas_to_aggregate, total_num_replicas=None, variable_averages=None,
                 variables_to_average=None, use_locking=False, name="sync_replicas"):
        if variable_averages is not None:
            raise InvalidArgumentError("SyncReplicasOptimizer(variable_averages=...) is not supported "
                                       "by flowjit.compat.v1")
        self._opt = opt
        self._replicas = int(replicas_to_aggregate)
        self._total = int(total_num_replicas) if total_num_replicas is not None else self._replicas
        self._name = name

    def _check(self):
        rt = runtime()
        n = len(rt.workers) if rt is not None else 1
        if self._replicas != n or self._total != n:
            raise InvalidArgumentError(
                f"SyncReplicasOptimizer: replicas_to_aggregate={self._replicas}, total_num_replicas="
                f"{self._total}, but the cluster has {n} worker(s): flowjit aggregates every "
                f"worker's gradients each step (an allreduce), with no backup workers")
        return rt

    def compute_gradients(self, *args, **kwargs):
        return self._opt.compute_gradients(*args, **kwargs)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        rt = self._check()
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        group = rt.workers_group if rt is not None else 0
        grads = [g for g, _ in pairs]

        def average(*values):
            if group == 0:
                return list(values)
            from ...distributed import ops as dist_ops
            out, prev = [], []
            for x in values:
                red = dist_ops.collective(x, "mean", after=prev, group=group)
                prev = [red]
                out.append(red)
            return out

        avg = make_op("SyncReplicasAverage", average, grads, name=f"{self._name}/average",
                      out_specs=[(g.dtype, g.shape) for g in grads])
        op = self._opt.apply_gradients(list(zip(avg.outputs, [v for _, v in pairs])),
                                       global_step=global_step, name=name)
        op.attrs["sync_replicas"] = True
        return op

    def minimize(self, loss, global_step=None, var_list=None, name=None, **kwargs):
        gvs = self.compute_gradients(loss, var_list)
        return self.apply_gradients(gvs, global_step=global_step, name=name)

    def make_session_run_hook(self, is_chief, num_tokens=-1):
        from .estimator import SessionRunHook
        return SessionRunHook()

    def get_slot(self, *args, **kwargs):
        return self._opt.get_slot(*args, **kwargs)

    def get_slot_names(self, *args, **kwargs):
        return self._opt.get_slot_names(*args, **kwargs)

    def get_init_tokens_op(self, num_tokens=-1):
        from .ops import no_op
        return no_op(name=f"{self._name}/init_tokens")

    def get_chief_queue_runner(self):
        from .errors import UnimplementedError
        raise UnimplementedError(
            "SyncReplicasOptimizer.get_chief_queue_runner: flowjit synchronizes the workers with "
            "an allreduce and has no token queue; use make_session_run_hook(is_chief) with "
            "tf.train.MonitoredTrainingSession, or simply run the train op")


__all__ = ["ClusterSpec", "Server", "replica_device_setter", "SyncReplicasOptimizer"]
