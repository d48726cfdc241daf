"""Device memory for the frontend (variables, inputs, outputs), from the backend that
owns it: the frontend asks here and imports no backend."""
import importlib


def _gpu():
    return importlib.import_module("flowjit.backends.cuda.runtime")


def as_device_array(x):
    """A numba device array viewing GPU memory x (any __cuda_array_interface__ object)."""
    return _gpu().as_device_array(x)


def to_host(x):
    """A NumPy copy of device memory."""
    return _gpu().to_host(as_device_array(x))


def to_device(a):
    """A device copy of host array a."""
    return _gpu().to_device(a)
