"""Device placement: `with fj.device("/gpu:0")`, `fj.list_devices()`.

A device string is parsed into a canonical `DeviceSpec` ("CPU", 0) / ("GPU", 0). The
innermost `fj.device` block is the *current* device; variables created in it live
there and jitted functions traced in it compile for that device's backend.
"""
import contextlib
import re
import threading
from dataclasses import dataclass

from ..errors import DeviceError
from ..runtime import devices


@dataclass(frozen=True)
class DeviceSpec:
    kind: str      # "CPU" or "GPU"
    index: int = 0

    @property
    def name(self):
        return f"/job:localhost/replica:0/task:0/device:{self.kind}:{self.index}"

    def __str__(self):
        return self.name


CPU0 = DeviceSpec("CPU", 0)
_PATTERN = re.compile(r"^(?:/job:\w+)?(?:/replica:\d+)?(?:/task:\d+)?"
                      r"/?(?:device:)?(cpu|gpu|CPU|GPU)(?::(\d+))?$")


def _gpu_count():
    return devices.count("GPU")


def parse(spec):
    """'/gpu:0', 'GPU:0', 'gpu', '/device:CPU:0', a DeviceSpec -> DeviceSpec (checked)."""
    if isinstance(spec, DeviceSpec):
        return spec
    if spec is None or spec == "":
        return CPU0
    m = _PATTERN.match(str(spec).strip())
    if not m:
        raise DeviceError(f"fj.device: cannot parse device {spec!r}; use '/cpu:0' or '/gpu:0'")
    kind, idx = m.group(1).upper(), int(m.group(2) or 0)
    d = DeviceSpec(kind, idx)
    if kind == "CPU" and idx != 0:
        raise DeviceError(f"fj.device: {spec!r} does not exist; this process has one CPU device "
                          f"'/cpu:0' (it uses every core)")
    if kind == "GPU":
        n = _gpu_count()
        if idx >= n:
            raise DeviceError(
                f"fj.device: {spec!r} was requested but this machine has "
                f"{'no CUDA GPU' if n == 0 else f'{n} GPU(s)'} visible to numba.cuda; "
                f"available devices: {', '.join(x.name for x in list_devices())}")
    return d


_local = threading.local()


def _stack():
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def current():
    s = _stack()
    return s[-1] if s else CPU0


@contextlib.contextmanager
def device(spec):
    """Place the variables created and the jitted functions traced in this block."""
    d = parse(spec)
    _stack().append(d)
    try:
        yield d
    finally:
        _stack().pop()


def list_devices():
    """The devices this process can use: the CPU, then each CUDA GPU numba.cuda sees."""
    return [CPU0] + [DeviceSpec("GPU", i) for i in range(_gpu_count())]


def explicit():
    """The innermost `fj.device` block's device, or None outside every block."""
    s = getattr(_local, "stack", None)
    return s[-1] if s else None


GPU0 = DeviceSpec("GPU", 0)


def is_device_array(x):
    """Whether x lives in a device's memory (CuPy arrays, PyTorch CUDA tensors, numba
    device arrays: see runtime/devices.kind_of)."""
    return devices.kind_of(x) is not None

