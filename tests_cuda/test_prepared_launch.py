"""runtime.Counted on a GPU keeps each kernel's marshalled arguments between launches
(runtime.PreparedLaunch). The simulator has no marshalling, so this drives the launch
path with a stand-in for numba-cuda's dispatcher, its kernel overload (`_prepare_args`,
as numba-cuda writes an array: pointer, then shape and strides) and the driver's launch,
and checks what reaches the driver: always the values a fresh marshalling of the
call's arguments gives, with only the changed arguments marshalled again."""
import warnings

import numpy as np
import pytest

import flowjit as fj
from flowjit.backends.cuda import runtime as RT


class Memory:
    def __init__(self, ptr):
        self.ptr = ptr


class Array:
    def __init__(self, mem, shape, dtype=np.float32):
        self.gpu_data, self.shape, self.dtype = mem, tuple(shape), np.dtype(dtype)
        self.strides = tuple(int(np.prod(shape[k + 1:])) * self.dtype.itemsize for k in range(len(shape)))


def typeof(v):
    return ("array", v.dtype, len(v.shape)) if isinstance(v, Array) else type(v).__name__


class Overload:
    def __init__(self, types):
        self.argument_types, self.cooperative, self.debug, self.extensions = types, False, False, None
        self.marshalled = 0
        cufunc = type("CuFunc", (), {"handle": "handle"})()
        self._codelibrary = type("Lib", (), {"get_cufunc": lambda _: cufunc})()

    def _prepare_args(self, ty, val, stream, retr, out):
        self.marshalled += 1
        if isinstance(val, Array):
            out += [("data", val.gpu_data.ptr), *(("dim", d) for d in val.shape),
                    *(("stride", s) for s in val.strides)]
        else:
            out.append(("scalar", val))


def marshal(args):
    """What a fresh marshalling of `args` gives."""
    out = []
    for a in args:
        Overload(None)._prepare_args(None, a, 0, [], out)
    return out


class Dispatcher:
    """numba-cuda's dispatcher: `k[config](*args)` compiles an overload per argument
    types and launches it (recorded as ('numba', values))."""

    def __init__(self):
        self.overloads, self.log = {}, []

    def typeof_pyval(self, v):
        return typeof(v)

    def __getitem__(self, config):
        def launch(*args):
            sig = tuple(typeof(a) for a in args)
            self.overloads.setdefault(sig, Overload(sig))
            self.log.append(("numba", config, marshal(args)))
        return launch


@pytest.fixture
def gpu_launch_path(monkeypatch):
    """Counted kernels take the GPU's launch path; the driver's launches are recorded."""
    monkeypatch.setattr(RT, "SIM", False)
    monkeypatch.setattr(RT, "PREPARED_LAUNCHES", True)
    log = []

    def driver_launch(handle, grid, block, kernelargs, cooperative):
        log.append(("driver", (grid, block), list(kernelargs)))
    monkeypatch.setattr(RT, "driver_launch", driver_launch)
    return log


def test_unchanged_arguments_are_not_marshalled_again(gpu_launch_path):
    d = Dispatcher()
    k = RT.Counted(d)
    x, y = Array(Memory(100), (4, 3)), Array(Memory(200), (4, 3))
    before = fj.stats()["kernel_launches"]
    k[(2, 256)](x, y, np.int64(12))
    assert d.log == [("numba", (2, 256), marshal([x, y, np.int64(12)]))]
    ov = next(iter(d.overloads.values()))
    marshalled = ov.marshalled
    for _ in range(3):               # the same buffers through new views: nothing marshalled
        k[(2, 256)](Array(x.gpu_data, x.shape), y, np.int64(12))
    assert ov.marshalled == marshalled
    assert gpu_launch_path == [("driver", (2, 256), marshal([x, y, np.int64(12)]))] * 3
    assert fj.stats()["kernel_launches"] - before == 4


def test_a_changed_pointer_or_scalar_is_marshalled_alone(gpu_launch_path):
    d = Dispatcher()
    k = RT.Counted(d)
    x, y = Array(Memory(100), (4, 3)), Array(Memory(200), (4, 3))
    k[(2, 256)](x, y, np.int64(12))
    ov = next(iter(d.overloads.values()))
    m0 = ov.marshalled
    y2 = Array(Memory(300), (4, 3))               # a fresh output buffer
    k[(2, 256)](x, y2, np.int64(12))
    assert ov.marshalled == m0 + 1
    k[(5, 256)](x, y2, np.int64(7))               # another scalar and grid
    assert ov.marshalled == m0 + 2
    assert [c for c in gpu_launch_path] == [
        ("driver", (2, 256), marshal([x, y2, np.int64(12)])),
        ("driver", (5, 256), marshal([x, y2, np.int64(7)]))]
    assert len(d.log) == 1


@pytest.mark.parametrize("change", ["shape", "dtype", "type", "config"])
def test_another_shape_or_type_goes_back_to_numbas_launch(gpu_launch_path, change):
    d = Dispatcher()
    k = RT.Counted(d)
    x, y = Array(Memory(100), (4, 3)), Array(Memory(200), (4, 3))
    k[(2, 256)](x, y, np.int64(12))
    args, config = [x, y, np.int64(12)], (2, 256)
    if change == "shape":
        args[1] = Array(Memory(200), (8, 3))
    elif change == "dtype":
        args[1] = Array(Memory(200), (4, 3), np.float64)
    elif change == "type":
        args[2] = np.int32(12)
    else:
        config = (np.int64(2), 256)               # numba reads it: its own launch
    k[config](*args)
    assert gpu_launch_path == []
    assert d.log[-1] == ("numba", config, marshal(args))
    if change != "config":                        # kept for the new arguments from then on
        k[config](*args)
        assert gpu_launch_path == [("driver", config, marshal(args))]


def test_a_failing_prepared_launch_falls_back_to_numba_with_a_warning(gpu_launch_path, monkeypatch):
    def broken(*a):
        raise TypeError("launch_kernel() got an unexpected argument")
    monkeypatch.setattr(RT, "driver_launch", broken)
    d = Dispatcher()
    k = RT.Counted(d)
    x = Array(Memory(100), (4,))
    k[(1, 256)](x)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        k[(1, 256)](x)
        k[(1, 256)](x)
    assert [e[0] for e in d.log] == ["numba"] * 3
    assert sum("marshalled on every launch" in str(e.message) for e in w) == 1
    assert RT.PREPARED_LAUNCHES is False


@pytest.mark.parametrize("error", RT.LAUNCH_ERRORS, ids=lambda c: c.__name__)
def test_a_device_error_from_a_prepared_launch_reaches_the_caller(gpu_launch_path, monkeypatch, error):
    """numba-cuda's CudaAPIError, or (0.30 on, launching through cuda.core) cuda.core's
    CUDAError: the device's answer, not a sign of a numba-cuda whose internals differ."""
    def refuse(*a):
        raise error.__new__(error)
    d = Dispatcher()
    k = RT.Counted(d)
    x = Array(Memory(100), (4,))
    k[(1, 256)](x)
    monkeypatch.setattr(RT, "driver_launch", refuse)
    with pytest.raises(error):
        k[(1, 256)](x)
    assert RT.PREPARED_LAUNCHES is True
