"""Variables owned by server ranks, read and updated by client ranks with MPI one-sided
operations: the parameter-server model of TF1's distributed programs
(compat/v1/cluster.py maps `tf.train.Server`, `tf.device("/job:ps/task:k")` and
`Session.run` onto it).

Memory: one MPI window over the job, made on every rank at once when the store is made
(`Win.Allocate`): each server exposes an arena of FLOWJIT_PS_BYTES bytes (default 64
MiB), the clients none. (An allocated window lets MPICH do the operations of ranks on
one machine directly in shared memory, with no help from the server: 5 us for a small
read and update, against 350 us through a dynamic window, whose operations the server
must progress by polling.) Each variable a server owns is a slice of its arena: 8 bytes
of header (int64: 1 once a value has been written) then the values. A client asks the
owner for a variable by name once (a two-sided message: name, shape, dtype); the owner
places it (zeros, not initialized) the first time any client asks, and replies with
its offset. From then on the client never needs the server's attention:
- read: `Get_accumulate(op=NO_OP)`, MPI's atomic read, element by element;
- update: `Accumulate(delta, op=SUM)`: the step's change (new - read) is added to
  whatever the value is now, atomically per element, so two clients' updates both land
  (asynchronous training: Hogwild-style, as TF's ps with use_locking=False);
- write: `Accumulate(value, op=REPLACE)` then the header set to 1 (initializers,
  restores).
Every client holds a shared passive-target lock on every rank for the store's life
(`Lock_all`), and each batch of operations ends with `Flush` of the owner.

A server runs `serve()` until every client has said it is done (sent at its exit, or
by `finish()`): it answers registrations, sleeping 1 ms between polls. Then every rank
frees the window together (`close`).

Everything here is plain NumPy and mpi4py; it never imports the frontend.
"""
import os
import time

import numpy as np

from . import _comm as C

TAG_REGISTER, TAG_REPLY, TAG_DONE = 7101, 7102, 7103
HEADER = 8
SERVE_PAUSE = 0.001


def arena_bytes():
    try:
        return int(float(os.environ.get("FLOWJIT_PS_BYTES", str(64 << 20))))
    except ValueError:
        return 64 << 20


def _mpi_type(dtype):
    return C.S.MPI._typedict[np.dtype(dtype).char]


class Handle:
    """A client's reference to one variable on its owner."""
    __slots__ = ("name", "owner", "addr", "shape", "dtype", "mtype", "size")

    def __init__(self, name, owner, addr, shape, dtype):
        self.name, self.owner, self.addr = name, owner, addr
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.mtype = _mpi_type(self.dtype)
        self.size = int(np.prod(self.shape, dtype=np.int64))


class ParameterStore:
    """Made on every rank of `comm` at the same point (collective). servers: the ranks
    that own variables and serve; every other rank is a client."""

    def __init__(self, comm, servers):
        MPI = C.S.MPI
        self.MPI = MPI
        self.comm = comm.Dup()              # its messages never meet the program's own
        self.rank = self.comm.Get_rank()
        self.servers = sorted(set(int(s) for s in servers))
        self.clients = [r for r in range(self.comm.Get_size()) if r not in self.servers]
        self.capacity = arena_bytes() if self.rank in self.servers else 0
        self.win = MPI.Win.Allocate(self.capacity, disp_unit=1, comm=self.comm)
        self.win.Lock_all()
        self.arena = np.frombuffer(self.win.tomemory(), np.uint8) if self.capacity else None
        self.used = 0                       # server: bytes of the arena handed out
        self.owned = {}                     # server: name -> (offset, shape, dtype)
        self.handles = {}                   # client: (owner, name) -> Handle
        self.done = set()                   # server: clients that finished
        self.finished = False
        self.closed = False
        self._flag = np.ones(1, np.int64)

    @property
    def is_server(self):
        return self.rank in self.servers

    # ---- server side --------------------------------------------------------------------
    def _allocate(self, name, shape, dtype):
        shape, dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        have = self.owned.get(name)
        if have is not None:
            if have[1] != shape or have[2] != dtype:
                return {"error": f"variable {name} is {have[2]}{list(have[1])} on its owner (rank "
                                 f"{self.rank}), but was asked for as {dtype}{list(shape)}"}
            return {"addr": have[0]}
        nbytes = HEADER + dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        nbytes = -(-nbytes // 8) * 8                      # whole int64s: 8-aligned values
        if self.used + nbytes > self.capacity:
            return {"error": f"variable {name} ({nbytes} bytes) does not fit in the parameter "
                             f"server's memory on rank {self.rank} ({self.used} of {self.capacity} "
                             f"bytes used): set FLOWJIT_PS_BYTES larger, or spread the variables "
                             f"over more ps tasks"}
        offset = self.used
        self.used += nbytes
        self.arena[offset:offset + nbytes] = 0
        self.owned[name] = (offset, shape, dtype)
        return {"addr": offset}

    def _answer_one(self):
        """Answer one pending message, if any; whether there was one."""
        MPI = self.MPI
        st = MPI.Status()
        if not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st):
            return False
        src, tag = st.Get_source(), st.Get_tag()
        msg = self.comm.recv(source=src, tag=tag)
        if tag == TAG_REGISTER:
            self.comm.send(self._allocate(*msg), dest=src, tag=TAG_REPLY)
        elif tag == TAG_DONE:
            self.done.add(src)
        return True

    def serve(self):
        """Serve until every client is done (registrations; the clients' reads and
        updates need nothing from this rank)."""
        while len(self.done) < len(self.clients):
            if self._answer_one():
                continue
            time.sleep(SERVE_PAUSE)

    # ---- client side --------------------------------------------------------------------
    def register(self, owner, name, shape, dtype):
        key = (owner, name)
        h = self.handles.get(key)
        if h is not None:
            if h.shape != tuple(shape) or h.dtype != np.dtype(dtype):
                raise ValueError(f"variable {name} was registered as {h.dtype}{list(h.shape)}, now "
                                 f"asked for as {np.dtype(dtype)}{list(shape)}")
            return h
        if owner not in self.servers:
            raise ValueError(f"variable {name}: its owner, rank {owner}, does not serve variables "
                             f"(only the ps job's tasks do: ranks {self.servers})")
        self.comm.send((name, tuple(shape), np.dtype(dtype).str), dest=owner, tag=TAG_REGISTER)
        req = self.comm.irecv(source=owner, tag=TAG_REPLY)
        reply = _wait_message(req, f"registering variable {name} with its owner, rank {owner}")
        if "error" in reply:
            raise ValueError(reply["error"])
        h = self.handles[key] = Handle(name, owner, reply["addr"], shape, dtype)
        return h

    def read(self, handles):
        """[(values, initialized)] of each handle, read atomically per element."""
        MPI = self.MPI
        out, flags = [], []
        owners = set()
        for h in handles:
            vals = np.empty(h.shape, h.dtype)
            flag = np.zeros(1, np.int64)
            self.win.Get_accumulate([self._flag, MPI.INT64_T], [flag, MPI.INT64_T], h.owner,
                                    target=(h.addr, 1, MPI.INT64_T), op=MPI.NO_OP)
            if h.size:
                self.win.Get_accumulate([vals, h.mtype], [vals, h.mtype], h.owner,
                                        target=(h.addr + HEADER, h.size, h.mtype), op=MPI.NO_OP)
            out.append(vals)
            flags.append(flag)
            owners.add(h.owner)
        for o in owners:
            self.win.Flush(o)
        return [(v, bool(f[0])) for v, f in zip(out, flags)]

    def add(self, handle, delta):
        """values += delta on the owner (atomic per element)."""
        delta = np.ascontiguousarray(delta, handle.dtype)
        if handle.dtype == np.bool_:
            raise TypeError(f"variable {handle.name}: a bool variable is written, not added to")
        self.win.Accumulate([delta, handle.mtype], handle.owner,
                            target=(handle.addr + HEADER, handle.size, handle.mtype), op=self.MPI.SUM)

    def write(self, handle, values):
        """values = `values` on the owner, and marked initialized."""
        MPI = self.MPI
        values = np.ascontiguousarray(values, handle.dtype)
        if handle.size:
            self.win.Accumulate([values, handle.mtype], handle.owner,
                                target=(handle.addr + HEADER, handle.size, handle.mtype), op=MPI.REPLACE)
        self.win.Flush(handle.owner)          # the values land before the flag says so
        self.win.Accumulate([self._flag, MPI.INT64_T], handle.owner, target=(handle.addr, 1, MPI.INT64_T),
                            op=MPI.REPLACE)

    def flush(self, owners):
        for o in set(owners):
            self.win.Flush(o)

    def finish(self):
        """A client: tell every server this rank is done (once)."""
        if self.finished or self.is_server:
            return
        self.finished = True
        for s in self.servers:
            self.comm.send(None, dest=s, tag=TAG_DONE)

    def close(self):
        """Every rank, together: a client says it is done, a server serves until every
        client has; then the window is freed."""
        if self.closed:
            return
        if self.is_server:
            self.serve()
        else:
            self.finish()
        self.win.Unlock_all()
        self.win.Free()
        self.closed = True


def _wait_message(req, what):
    limit = C.timeout()
    deadline = time.monotonic() + limit
    while True:
        done, msg = req.test()
        if done:
            return msg
        if time.monotonic() > deadline:
            raise C.CollectiveTimeoutError(
                f"flowjit.distributed: {what} timed out on rank {C.S.rank} after {limit:g} s "
                f"(FLOWJIT_MPI_TIMEOUT): is that rank serving (server.join())?")
        time.sleep(1e-5)
