"""Device memory for the frontend (variables, inputs, outputs, constants), from the
backend that owns it: the frontend asks here and imports no backend, and a compiled
call runs the same way on every device.

`memory(kind)` is the memory of a device kind ("CPU", "GPU"): an object with
- `upload(host_array)`: a new buffer holding a copy (a C-contiguous NumPy array on the
  CPU, a flat device array on the GPU);
- `download(buf, shape)`: a NumPy copy with that shape;
- `store(buf, value, shape, copy)`: the buffer after writing `value` (an array of this
  memory) into it; with `copy=False` a backend may adopt `value` as the new buffer;
- `arguments(values)`: what a compiled program of this device takes for its inputs:
  host arrays (uploaded if the memory is not the host's), `DeviceArray`s (used in
  place, or downloaded by the host), or buffers of this memory (a variable's);
- `constants(host_arrays)`: the graph's constants, placed once per program;
- `variable_arguments(bufs)` (optional; else `arguments`): the same for variables'
  own buffers, which the memory made itself;
- `copy(buf)`: a new buffer with the same contents (an output that must not alias).
A backend with memory of its own adds its module to MEMORY (its `Memory` class)."""
import importlib

import numpy as np

MEMORY = {"GPU": "flowjit.backends.cuda.runtime"}
_memories = {}
_placed = set()      # kinds other than the CPU that some variable has been placed on


class DeviceArray:
    """A value living in the memory of device kind `kind` (a jitted function's GPU
    output, a CuPy array, a PyTorch CUDA tensor): `buf` in that memory's format."""
    __slots__ = ("kind", "buf", "shape", "dtype", "ndim")

    def __init__(self, kind, buf, shape):
        self.kind, self.buf, self.shape = kind, buf, tuple(shape)
        self.dtype, self.ndim = buf.dtype, len(self.shape)

    def host(self):
        return memory(self.kind).download(self.buf, self.shape)


def _host_argument(a):
    # compiled code takes C-contiguous arrays, a 0-d one as shape (1,)
    if type(a) is DeviceArray:
        a = a.host()
    return a if (a.ndim and a.flags.c_contiguous) else \
        (a.reshape(1) if a.ndim == 0 else np.ascontiguousarray(a))


class HostMemory:
    kind = "CPU"

    def arguments(self, values):
        return [_host_argument(a) for a in values]

    constants = arguments

    def variable_arguments(self, bufs):
        # a variable's buffer is C-contiguous (upload, store): only a 0-d one needs a view
        return [b if b.ndim else b.reshape(1) for b in bufs]

    def copy(self, buf):
        return buf.copy()

    def upload(self, host):
        return np.array(host, order="C", copy=True)

    def download(self, buf, shape):
        return buf.reshape(shape).copy()

    def store(self, buf, value, shape, copy=True):
        np.copyto(buf, np.asarray(value).reshape(shape))
        return buf


def memory(kind):
    m = _memories.get(kind)
    if m is None:
        m = _memories[kind] = HostMemory() if kind == "CPU" else \
            importlib.import_module(MEMORY[kind]).Memory()
    return m


def note_placed(kind):
    """Some variable now lives on `kind` (CPU programs then check their variables)."""
    if kind != "CPU":
        _placed.add(kind)


def anything_placed_off_host():
    return bool(_placed)


def count(kind):
    """How many devices of `kind` this process can use (none when its backend cannot
    load: no CUDA driver or toolkit)."""
    if kind == "CPU":
        return 1
    try:
        return importlib.import_module(MEMORY[kind]).device_count()
    except Exception:        # noqa: BLE001  (any failure here only means: no such device)
        return 0


def kind_of(x):
    """The device kind whose memory x is (an object with __cuda_array_interface__: CuPy
    arrays, PyTorch CUDA tensors, numba device arrays, or the CUDA simulator's arrays),
    or None for anything else."""
    if hasattr(x, "__cuda_array_interface__") or type(x).__name__ == "FakeCUDAArray":
        return "GPU"
    return None


def as_device_array(x):
    """x (memory of a device, see kind_of) as a buffer of that device's memory."""
    return importlib.import_module(MEMORY[kind_of(x)]).as_device_array(x)
