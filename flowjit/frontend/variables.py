"""`fj.Variable`: mutable state. Eagerly a NumPy buffer; inside `@fj.jit` an implicit
input of the compiled function whose assignments are graph effects written back into
the same buffer after the step succeeded (a step that raises changes nothing)."""
import itertools

import numpy as np

from .. import dtypes as D
from ..errors import DTypeError, ShapeError
from .tensor import Tensor, TensorShape, active_tapes, convert, current_trace, to_numpy, user_src

_names = itertools.count()


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
        self._buf = np.array(arr, order="C", copy=True)
        self._name = name or f"Variable_{next(_names)}"
        self.trainable = bool(trainable)

    # -- reading ---------------------------------------------------------------------
    def _flowjit_tensor(self):
        ctx = current_trace()
        t = ctx.read_variable(self) if ctx is not None else Tensor(value=self._buf.copy())
        for tape in active_tapes():
            tape._on_variable_read(self, t)
        return t

    def read_value(self):
        return self._flowjit_tensor()

    value = read_value

    def numpy(self):
        if current_trace() is not None:
            raise TypeError(f"Variable {self._name}: .numpy() inside @fj.jit; return the value instead")
        return self._buf.copy()

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    @property
    def shape(self):
        return TensorShape(self._buf.shape)

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
        return "/job:localhost/replica:0/task:0/device:CPU:0"

    # -- writing ---------------------------------------------------------------------
    def assign(self, value, read_value=True, name=None):
        ctx = current_trace()
        t = value._flowjit_tensor() if hasattr(value, "_flowjit_tensor") else value
        if isinstance(t, Tensor):
            if t.dtype is not self.dtype:
                raise DTypeError(f"assign to {self._name} (at {user_src()}): value has dtype "
                                 f"{t.dtype.name}, the variable {self.dtype.name}; use fj.cast")
        else:
            t = convert(t, self.dtype)
        from ..ir.shapes import Sym, hint, unify_dims
        vs = tuple(t.shape)
        if len(vs) != self._buf.ndim or any(hint(a) != b for a, b in zip(vs, self._buf.shape)):
            raise ShapeError(f"assign to {self._name} (at {user_src()}): value shape "
                             f"{tuple(vs)} differs from the variable's {self._buf.shape}")
        for a, b in zip(vs, self._buf.shape):
            if isinstance(a, Sym):       # the trace is only valid for values of this shape
                unify_dims(a, b)
        if ctx is not None:
            ctx.assign_variable(self, t)
        else:
            np.copyto(self._buf, t.numpy())
        return self

    def assign_add(self, delta, read_value=True, name=None):
        return self.assign(self._flowjit_tensor() + delta)

    def assign_sub(self, delta, read_value=True, name=None):
        return self.assign(self._flowjit_tensor() - delta)

    def __repr__(self):
        return (f"<fj.Variable '{self.name}' shape={self.shape!r} dtype={self.dtype.name}, "
                f"numpy={np.array2string(self._buf, separator=', ')}>")

    def __hash__(self):
        return id(self)

    def ref(self):
        return self


def _install_operators():
    # every Tensor operator reads the variable and applies to the value
    names = ["__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
             "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pow__",
             "__rpow__", "__matmul__", "__rmatmul__", "__lt__", "__le__", "__gt__", "__ge__",
             "__neg__", "__abs__", "__getitem__", "__and__", "__or__", "__invert__"]
    for n in names:
        def op(self, *args, _n=n):
            return getattr(self._flowjit_tensor(), _n)(*args)
        setattr(Variable, n, op)


_install_operators()
