"""The five dtypes of flowjit and TF's promotion rules for Python scalars."""
import numpy as np


class DType:
    """A flowjit dtype: a thin, named wrapper around a NumPy dtype."""

    __slots__ = ("name", "np")

    def __init__(self, name, np_dtype):
        self.name = name
        self.np = np.dtype(np_dtype)

    @property
    def is_floating(self):
        return self.np.kind == "f"

    @property
    def is_integer(self):
        return self.np.kind in "iu"

    @property
    def is_bool(self):
        return self.np.kind == "b"

    @property
    def as_numpy_dtype(self):
        return self.np.type

    def __repr__(self):
        return f"fj.{self.name}"

    def __reduce__(self):
        return (as_dtype, (self.name,))


float32 = DType("float32", np.float32)
float64 = DType("float64", np.float64)
int32 = DType("int32", np.int32)
int64 = DType("int64", np.int64)
bool_ = DType("bool", np.bool_)

ALL = (float32, float64, int32, int64, bool_)
# TF's string tensors, as far as teaching programs use them (tf.constant("hello"), print,
# .numpy() -> bytes): eager values only, an object array of bytes; no op computes on them
string = DType("string", object)
_BY_NP = {d.np: d for d in ALL}
_BY_NAME = {d.name: d for d in ALL}
_BY_NAME.update({"float": float32, "double": float64, "int": int32, "bool_": bool_})


def as_dtype(x):
    """Turn a flowjit dtype, NumPy dtype/type or name into a flowjit DType."""
    if isinstance(x, DType):
        return x
    if isinstance(x, str) and x in _BY_NAME:
        return _BY_NAME[x]
    if x is str or x is bytes or x == "string":
        return string
    if x is float:
        return float32
    if x is int:
        return int32
    if x is bool:
        return bool_
    try:
        npd = np.dtype(x)
    except TypeError:
        raise TypeError(f"{x!r} is not a flowjit dtype; use one of "
                        f"{', '.join(d.name for d in ALL)}") from None
    if npd in _BY_NP:
        return _BY_NP[npd]
    if npd.kind in "USO":
        return string
    # Narrower or unsigned NumPy types map to the nearest flowjit type.
    if npd.kind == "f":
        return float32 if npd.itemsize <= 4 else float64
    if npd.kind in "iu":
        return int32 if npd.itemsize <= 4 and npd.kind == "i" else int64
    raise TypeError(f"NumPy dtype {npd} has no flowjit equivalent")


def from_numpy_value(a):
    """dtype a NumPy array keeps when it becomes a tensor by itself."""
    return as_dtype(a.dtype)


def from_python_value(v):
    """dtype of a Python literal converted on its own (TF: float -> float32, int -> int32)."""
    if isinstance(v, (bool, np.bool_)):
        return bool_
    if isinstance(v, (int, np.integer)):
        return int32
    return float32
