"""Which process of a multi-process job this is, and whether it writes files.

Under an MPI launcher (`mpiexec -n N`) every rank runs the same program, so every rank
would write the same checkpoint and event files at once. Checkpoints (fj.train,
tf.train.Saver, Keras saving) and TensorBoard event files are therefore written by one
rank only: rank 0 by default, the chief worker in a TF1 parameter-server cluster
(`tf.train.Server` sets it). `fj.distributed.write_files("all")` or
FLOWJIT_WRITE_FILES=all makes every rank write (e.g. to per-rank directories).

The rank comes from the launcher's environment, so this works before (and without)
`fj.distributed.init()` and never imports MPI. Outside a launch it is 0 and every
process writes, as before.
"""
import os

_RANK_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")

_state = {"writer": 0, "mode": None}      # mode None: from FLOWJIT_WRITE_FILES


def rank():
    """This process's rank as its MPI launcher numbered it (0 without a launcher)."""
    for var in _RANK_VARS:
        v = os.environ.get(var)
        if v is not None and v.strip().isdigit():
            return int(v)
    return 0


def set_writer_rank(r):
    """The rank that writes checkpoints and event files ("rank0" mode)."""
    _state["writer"] = int(r)


def writer_rank():
    return _state["writer"]


def set_write_mode(mode):
    """"rank0" (one writer: `writer_rank()`) or "all" (every rank writes)."""
    if mode not in ("rank0", "all", None):
        raise ValueError(f"write_files: expected 'rank0' or 'all', got {mode!r}")
    _state["mode"] = mode


def write_mode():
    mode = _state["mode"]
    if mode is None:
        mode = "all" if os.environ.get("FLOWJIT_WRITE_FILES", "").strip().lower() == "all" else "rank0"
    return mode


def writes_files():
    """Whether this process writes checkpoints and event files."""
    return write_mode() == "all" or rank() == _state["writer"]
