"""`fj.distributed`: data-parallel training on MPI (mpi4py).

Launch one process per rank with the MPI launcher:

    mpiexec -n 2 python train.py        # (MPICH's `mpiexec`, from `pip install mpich`)

    import flowjit as fj
    fj.distributed.init()
    fj.distributed.broadcast_variables(model_variables, root=0)
    opt = fj.distributed.DistributedOptimizer(fj.optimizers.Adam(1e-3))
    x, y = fj.distributed.shard((x_all, y_all))          # this rank's rows

    @fj.jit
    def step(x, y):
        with fj.GradientTape() as tape:
            loss = loss_fn(x, y)
        opt.apply_gradients(zip(tape.gradient(loss, vars), vars))   # allreduce inside
        return loss

MPI choice: MPICH through mpi4py (the `distributed` extra installs the `mpi4py` and
`mpich` wheels); MPICH's wheel needs no system MPI and, unlike Open MPI, runs as root
without extra variables. See _comm.py for the timeout and abort design.

API (every call works unchanged in a world of size 1 -- no launcher, or no mpi4py:
allreduce and broadcast return their input, allgather returns it as is):
- init(timeout=None, abort_on_error=True): idempotent; rank and size from MPI when
  started by mpiexec. Every other call calls it when needed.
- rank(), world_size(), barrier(), abort(code=1)
- allreduce(t, op="sum"|"mean"|"max"|"min", inplace=False), broadcast(t, root=0): on flowjit tensors,
  Variables (their value), NumPy arrays and Python numbers; eagerly a NumPy array in
  gives a NumPy array out, otherwise a tensor. Inside `@fj.jit` both are graph nodes
  (ops.py) run by the compiled function between its kernels.
- allgather(t): every rank's value concatenated on axis 0, in rank order (eager only:
  its shape depends on the other ranks' shapes).
- broadcast_variables(variables, root=0): root's values assigned to every rank's
  Variables (a list, or an object with `.variables`, e.g. a Module or Keras model).
- DistributedOptimizer(opt, op="mean"): wraps an fj.optimizers optimizer;
  apply_gradients/minimize average the gradients over the ranks first (packed per
  dtype into one contiguous buffer, reduced in buckets of FLOWJIT_MPI_BUCKET_BYTES,
  4 MiB by default, all started at once with Iallreduce), then apply the update.
- shard(data, num_shards=None, index=None): this rank's part of an fj.data.Dataset
  (the TF1-style class has no `shard`, so it is provided here: every num_shards-th
  example from `index`), of a tf.data-style DatasetV2 (its own .shard), of an array, or
  of a tuple/list/dict of arrays with the same first dim.

Files: checkpoints (fj.train, tf.train.Saver, Keras saving) and TensorBoard event files
are written by rank 0 only (the chief worker in a TF1 cluster); the other ranks' saves
return the same path and write nothing. write_files("all") (or FLOWJIT_WRITE_FILES=all)
makes every rank write; writes_files() says whether this rank writes.

Timeouts: FLOWJIT_MPI_TIMEOUT seconds (default 60) per collective; then
CollectiveTimeoutError names the operation and the rank, and (uncaught) MPI_Abort ends
every rank.
"""
import numpy as np

from . import _comm as C
from ._comm import CollectiveTimeoutError  # noqa: F401
from . import ops as _ops
from ..runtime import process as _process


def init(timeout=None, abort_on_error=True):
    """Join the MPI world when started by an MPI launcher (else a world of size 1).
    timeout: seconds each collective may wait (default FLOWJIT_MPI_TIMEOUT or 60).
    abort_on_error: with several ranks, an uncaught exception calls MPI_Abort so the
    other ranks end too. Calling it again only updates the timeout."""
    C.init(timeout=timeout, abort_on_error=abort_on_error)


def rank():
    C.ensure()
    return C.S.rank


def world_size():
    C.ensure()
    return C.S.size


def set_timeout(seconds):
    C.ensure()
    C.S.timeout = float(seconds)


def barrier():
    C.ensure()
    C.barrier()


def write_files(which="rank0"):
    """Which ranks write checkpoints and TensorBoard event files: "rank0" (the default:
    one writer, rank 0 or a TF1 cluster's chief worker) or "all"."""
    _process.set_write_mode(which)


def writes_files():
    """Whether this rank writes checkpoints and event files."""
    return _process.writes_files()


def abort(code=1):
    """End every rank now (MPI_Abort)."""
    C.abort(code)


# ---- helpers ---------------------------------------------------------------------------
def _tracing():
    from ..frontend.tensor import current_trace
    return current_trace() is not None


def _tensor_of(t):
    from ..frontend.tensor import Tensor
    from ..frontend.variables import Variable
    if isinstance(t, Variable):
        return t.read_value()
    if hasattr(t, "_flowjit_tensor"):
        return t._flowjit_tensor()
    if isinstance(t, Tensor):
        return t
    return None


def _to_numpy(t):
    tt = _tensor_of(t)
    return np.asarray(tt.numpy() if tt is not None else t)


def _wrap(result, like):
    if isinstance(like, (np.ndarray, np.generic)):
        return result
    from ..frontend.api import constant
    return constant(result)


def _traced(t):
    tt = _tensor_of(t)
    return tt is not None and tt._node is not None


# ---- collectives -----------------------------------------------------------------------
def allreduce(t, op="sum", name=None, inplace=False):
    """The elementwise `op` ("sum", "mean", "max", "min") of t over every rank.
    inplace=True (a writable C-contiguous NumPy array, eager): reduce in t's own buffer
    and return t, with no copies (a new array otherwise costs a copy in and one out)."""
    C.ensure()
    if op not in C.OPS:
        raise ValueError(f"fj.distributed.allreduce: op must be one of {C.OPS}, got {op!r}")
    if inplace:
        return C.allreduce_np(t, op, inplace=True)
    if _tracing() or _traced(t):
        x = _tensor_of(t)
        if x is None:
            from ..frontend.api import convert_to_tensor
            x = convert_to_tensor(t)
        return _ops.collective(x, op)
    return _wrap(C.allreduce_np(_to_numpy(t), op), t)


def broadcast(t, root=0, name=None):
    """Rank `root`'s value of t, on every rank."""
    C.ensure()
    C._check_root(root, "broadcast")
    if _tracing() or _traced(t):
        x = _tensor_of(t)
        if x is None:
            from ..frontend.api import convert_to_tensor
            x = convert_to_tensor(t)
        return _ops.collective(x, "broadcast", root=root)
    return _wrap(C.broadcast_np(_to_numpy(t), root), t)


def allgather(t, name=None):
    """Every rank's t concatenated on axis 0, in rank order (a scalar counts as shape
    (1,)). Eager only."""
    C.ensure()
    if _tracing() or _traced(t):
        from ..errors import TracerError
        raise TracerError("fj.distributed.allgather is not supported inside @fj.jit (its shape "
                          "depends on the other ranks): gather outside the jitted function")
    return _wrap(C.allgather_np(_to_numpy(t)), t)


def _variable_list(variables):
    if hasattr(variables, "variables") and not isinstance(variables, (list, tuple)):
        v = variables.variables
        variables = v() if callable(v) else v
    return list(variables)


def broadcast_variables(variables, root=0):
    """Assign rank `root`'s values to every rank's `variables` (eager; one broadcast per
    dtype, the values packed into one buffer)."""
    C.ensure()
    C._check_root(root, "broadcast_variables")
    vs = _variable_list(variables)
    if _tracing():
        for v in vs:
            v.assign(_ops.collective(v.read_value(), "broadcast", root=root))
        return
    if not C.active():
        return
    groups = {}
    for v in vs:
        groups.setdefault(np.dtype(v.dtype.np).str, []).append(v)
    for _, group in sorted(groups.items()):
        arrays = [np.asarray(v.numpy()) for v in group]
        flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
        flat = C.broadcast_np(flat, root, what=f"broadcast_variables({len(group)} variables)")
        off = 0
        for v, a in zip(group, arrays):
            v.assign(flat[off:off + a.size].reshape(a.shape).astype(a.dtype, copy=False))
            off += a.size


# ---- the optimizer ---------------------------------------------------------------------
def reduce_gradients(grads, op="mean"):
    """The gradients reduced (averaged by default) over the ranks: eagerly NumPy-packed
    per dtype and reduced by non-blocking bucketed Iallreduces, all started before the
    first wait; under `@fj.jit` one `mpi_collective` node per dtype on the concatenated
    flat gradients (the host callback cuts it into the same buckets), each ordered after
    the previous one. None stays None. A world of size 1 returns them unchanged."""
    C.ensure()
    grads = list(grads)
    if C.S.size == 1:
        return grads
    idx = [i for i, g in enumerate(grads) if g is not None]
    if not idx:
        return grads
    if _tracing() or any(_traced(grads[i]) for i in idx):
        return _reduce_traced(grads, idx, op)
    arrays = {i: _to_numpy(grads[i]) for i in idx}
    groups = {}
    for i in idx:
        groups.setdefault(arrays[i].dtype.str, []).append(i)
    pending = []
    for key in sorted(groups):
        members = groups[key]
        buf = C.scratch(arrays[members[0]].dtype, sum(arrays[i].size for i in members))
        np.concatenate([arrays[i].reshape(-1) for i in members], out=buf)
        pending.append((members, buf, C.start_allreduce(buf, op)))
    C.wait([r for _, _, reqs in pending for r in reqs],
           lambda: f"DistributedOptimizer gradient allreduce ({sum(b.size for _, b, _ in pending)} values)")
    out = list(grads)
    for members, buf, _ in pending:
        C.finish(buf, op)
        off = 0
        for i in members:
            a = arrays[i]
            r = buf[off:off + a.size].reshape(a.shape).copy()    # buf is reused
            off += a.size
            out[i] = _wrap(r, grads[i])
    return out


def _reduce_traced(grads, idx, op):
    """Inside a jitted step: the gradients in buckets, last variables first (the backward
    computes them first), each bucket's allreduce started as soon as its gradients are
    computed (mpi_start, scheduled early) and completed (mpi_wait) only when the update
    needs it, so the rest of the backward runs meanwhile. The first bucket is small
    (FIRST_BUCKET_BYTES), as PyTorch DDP's, so communication starts early."""
    from ..frontend import api as F
    tensors = {i: (_tensor_of(grads[i]) if _tensor_of(grads[i]) is not None
                   else F.convert_to_tensor(grads[i])) for i in idx}
    try:
        sizes = {i: int(np.prod([int(d) for d in tensors[i].shape])) for i in idx}
    except (TypeError, ValueError):
        from ..errors import TracerError
        raise TracerError("fj.distributed: inside @fj.jit the gradients to reduce need fixed shapes "
                          "(gradients of Variables have them)") from None
    buckets, open_ = [], {}
    for i in reversed(idx):
        key = tensors[i].dtype.name
        nbytes = sizes[i] * np.dtype(tensors[i].dtype.np).itemsize
        b = open_.get(key)
        cap = FIRST_BUCKET_BYTES if buckets and b is buckets[0][1] else C.BUCKET_BYTES
        if b is None or (b["bytes"] and b["bytes"] + nbytes > cap):
            b = open_[key] = {"members": [], "bytes": 0}
            buckets.append((key, b))
        b["members"].append(i)
        b["bytes"] += nbytes
    waits = [(b["members"], _ops.start_and_wait([tensors[i] for i in b["members"]], op))
             for _, b in buckets]
    out = list(grads)
    for members, wait in waits:
        red = wait()
        parts = F.split(red, [sizes[i] for i in members], 0) if len(members) > 1 else [red]
        for i, p in zip(members, parts):
            out[i] = F.reshape(p, [int(d) for d in tensors[i].shape])
    return out


FIRST_BUCKET_BYTES = 256 << 10


class DistributedOptimizer:
    """Wraps an fj.optimizers optimizer: apply_gradients (and minimize) average the
    gradients over the ranks, then run the wrapped update. Everything else (variables,
    learning_rate, iterations, get_slot...) is the wrapped optimizer's."""

    def __init__(self, optimizer, op="mean"):
        if op not in ("mean", "sum"):
            raise ValueError(f"DistributedOptimizer: op must be 'mean' or 'sum', got {op!r}")
        self.__dict__["_opt"] = optimizer
        self.__dict__["_op"] = op

    @property
    def optimizer(self):
        return self._opt

    def __getattr__(self, name):
        return getattr(self.__dict__["_opt"], name)

    def __setattr__(self, name, value):
        setattr(self._opt, name, value)

    def apply_gradients(self, grads_and_vars, **kw):
        pairs = list(grads_and_vars)
        grads = reduce_gradients([g for g, _ in pairs], self._op)
        return self._opt.apply_gradients(list(zip(grads, [v for _, v in pairs])), **kw)

    def minimize(self, loss, var_list, tape=None):
        from ..frontend.autodiff import GradientTape
        if not callable(loss) and tape is None:
            raise ValueError("minimize(loss_tensor) needs the tape that recorded it (tape=...); "
                             "or pass a zero-argument function")
        with GradientTape() as t:
            value = loss() if callable(loss) else loss
        grads = (tape or t).gradient(value, var_list)
        return self.apply_gradients(zip(grads, var_list))

    def __repr__(self):
        return f"DistributedOptimizer({self._opt!r}, op={self._op!r})"


# ---- data ------------------------------------------------------------------------------
def shard(data, num_shards=None, index=None):
    """This rank's shard of `data`: every num_shards-th example starting at `index`
    (defaults: world_size(), rank()). data: an fj.data.Dataset (a new Dataset of the
    shard, same seed), a tf.data-style dataset with .shard, a NumPy array / tensor, or a
    tuple/list/dict of them (sharded alike)."""
    C.ensure()
    n = C.S.size if num_shards is None else int(num_shards)
    i = C.S.rank if index is None else int(index)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"fj.distributed.shard: need 0 <= index < num_shards, got index={i}, "
                         f"num_shards={n}")
    from .. import data as _data
    if isinstance(data, _data.Dataset):
        seed = getattr(data, "_seed", 0)
        return _data.Dataset(data.images[i::n], data.labels[i::n], seed=seed)
    if hasattr(data, "shard") and callable(data.shard):
        return data.shard(n, i)
    if isinstance(data, dict):
        return {k: shard(v, n, i) for k, v in data.items()}
    if isinstance(data, (tuple, list)):
        return type(data)(shard(v, n, i) for v in data)
    tt = _tensor_of(data)
    if tt is not None:
        from ..frontend.api import constant
        return constant(np.asarray(tt.numpy())[i::n])
    return np.asarray(data)[i::n]


__all__ = ["init", "rank", "world_size", "barrier", "allreduce", "broadcast", "allgather",
           "broadcast_variables", "DistributedOptimizer", "reduce_gradients", "shard",
           "set_timeout", "abort", "CollectiveTimeoutError", "write_files", "writes_files"]
