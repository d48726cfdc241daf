"""`fj.Variable`: mutable state. Eagerly a NumPy buffer; inside `@fj.jit` an implicit
input of the compiled function whose assignments are graph effects written back into
the same buffer after the step succeeded (a step that raises changes nothing).

Placement: a variable created inside `with fj.device("/gpu:0")` keeps its value in
GPU memory (a flat device array) between steps; the compiled GPU code reads and
updates it there. A program compiled for another device that uses the variable moves
it there once (later calls find it in place)."""
import itertools
import threading

import numpy as np

from .. import dtypes as D
from ..errors import DTypeError, ShapeError
from ..runtime import devices
from ..runtime.interrupts import deferred_interrupts
from .tensor import Tensor, TensorShape, active_tapes, convert, current_trace, to_numpy, user_src

_names = itertools.count()
_txn = threading.local()


class transaction:
    """Eager assignments inside this block are staged (reads see the staged values)
    and written together at the end, with Ctrl-C deferred: an eager optimizer step
    that raises or is interrupted changes no variable. Under @fj.jit assignments are
    graph effects, applied all or nothing by the compiled step, so this is a no-op."""

    def __enter__(self):
        self.outer = getattr(_txn, "pending", None)
        if self.outer is None:
            _txn.pending = {}
        return self

    def __exit__(self, exc_type, *exc):
        if self.outer is not None:
            return False
        pending, _txn.pending = _txn.pending, None
        if exc_type is None:
            with deferred_interrupts():
                for var, value in pending.values():
                    var._store(value)
        return False


def _staged(var):
    pending = getattr(_txn, "pending", None)
    hit = pending.get(id(var)) if pending else None
    return None if hit is None else hit[1]


class Variable:
    __array_ufunc__ = None        # ndarray <op> Variable defers to the Variable's operators
    __array_priority__ = 200

    def __init__(self, initial_value, name=None, trainable=True, dtype=None, shape=None):
        if callable(initial_value) and not isinstance(initial_value, (Tensor, np.ndarray)):
            initial_value = initial_value()
        if isinstance(initial_value, Tensor) and initial_value.is_traced:
            raise TypeError("create Variables outside @fj.jit (a traced value has no concrete "
                            "initial value); build them before the first call")
        arr = to_numpy(initial_value, dtype)
        self._mem = devices.memory("CPU")
        self._buf = self._mem.upload(arr)
        self._shape = self._buf.shape
        self._name = name or f"Variable_{next(_names)}"
        self.trainable = bool(trainable)
        from .device import current
        if current().kind != "CPU":
            self._place(current().kind)

    # -- placement: the memory of the device kind holds the buffer (runtime/devices) ----
    @property
    def _device(self):
        return self._mem.kind

    def _place(self, kind):
        """Move the value to the memory of device kind `kind` ("CPU", "GPU")."""
        if kind == self._mem.kind:
            return
        host = self._mem.download(self._buf, self._shape)
        self._mem = devices.memory(kind)
        self._buf = self._mem.upload(host)
        devices.note_placed(kind)

    def _write(self, value, copy):
        """Store a compiled step's new value (an array of this variable's memory).
        `copy=False` lets a device variable adopt the new buffer instead of copying it."""
        self._buf = self._mem.store(self._buf, value, self._shape, copy)

    def _host_value(self):
        staged = _staged(self)
        if staged is not None:
            return staged.copy()
        return self._mem.download(self._buf, self._shape)

    # -- reading ---------------------------------------------------------------------
    def _flowjit_tensor(self):
        ctx = current_trace()
        t = ctx.read_variable(self) if ctx is not None else Tensor(value=self._host_value())
        for tape in active_tapes():
            tape._on_variable_read(self, t)
        return t

    def read_value(self):
        return self._flowjit_tensor()

    value = read_value

    def numpy(self):
        if current_trace() is not None:
            raise TypeError(f"Variable {self._name}: .numpy() inside @fj.jit; return the value instead")
        return self._host_value()

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    @property
    def shape(self):
        return TensorShape(self._shape)

    def get_shape(self):
        return self.shape

    @property
    def dtype(self):
        return D.as_dtype(self._buf.dtype)

    @property
    def name(self):
        return self._name + ":0" if not self._name.endswith(":0") else self._name

    @property
    def device(self):
        return f"/job:localhost/replica:0/task:0/device:{self._device}:0"

    # -- writing ---------------------------------------------------------------------
    def assign(self, value, read_value=True, name=None):
        ctx = current_trace()
        t = value._flowjit_tensor() if hasattr(value, "_flowjit_tensor") else value
        if isinstance(t, (np.ndarray, np.generic)) and D.from_numpy_value(np.asarray(t)) is not self.dtype:
            raise DTypeError(f"assign to {self._name} (at {user_src()}): value has dtype "
                             f"{np.asarray(t).dtype}, the variable {self.dtype.name}; use fj.cast")
        if isinstance(t, Tensor):
            if t.dtype is not self.dtype:
                raise DTypeError(f"assign to {self._name} (at {user_src()}): value has dtype "
                                 f"{t.dtype.name}, the variable {self.dtype.name}; use fj.cast")
        else:
            t = convert(t, self.dtype)
        from ..ir.shapes import Sym, hint, unify_dims
        vs = tuple(t.shape)
        if len(vs) != len(self._shape) or any(hint(a) != b for a, b in zip(vs, self._shape)):
            raise ShapeError(f"assign to {self._name} (at {user_src()}): value shape "
                             f"{tuple(vs)} differs from the variable's {self._shape}")
        for a, b in zip(vs, self._shape):
            if isinstance(a, Sym):       # the trace is only valid for values of this shape
                unify_dims(a, b)
        if ctx is not None:
            ctx.assign_variable(self, t)
        elif getattr(_txn, "pending", None) is not None:
            _txn.pending[id(self)] = (self, np.array(t.numpy(), copy=True))
        else:
            self._store(t.numpy())
        return self

    def _store(self, value):
        """Write a host value (the variable's shape and dtype) into the buffer."""
        self._buf = self._mem.store(self._buf, np.asarray(value), self._shape)

    def assign_add(self, delta, read_value=True, name=None):
        return self.assign(self._flowjit_tensor() + delta)

    def assign_sub(self, delta, read_value=True, name=None):
        return self.assign(self._flowjit_tensor() - delta)

    def __repr__(self):
        return (f"<fj.Variable '{self.name}' shape={self.shape!r} dtype={self.dtype.name}, "
                f"numpy={np.array2string(self._host_value(), separator=', ')}>")

    def __hash__(self):
        return id(self)

    def ref(self):
        return self


def _install_operators():
    # every Tensor operator reads the variable and applies to the value
    names = ["__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
             "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pow__",
             "__rpow__", "__matmul__", "__rmatmul__", "__lt__", "__le__", "__gt__", "__ge__",
             "__neg__", "__abs__", "__getitem__", "__and__", "__or__", "__invert__",
             "__float__", "__int__", "__index__", "__format__"]
    for n in names:
        def op(self, *args, _n=n):
            return getattr(self._flowjit_tensor(), _n)(*args)
        setattr(Variable, n, op)


_install_operators()
