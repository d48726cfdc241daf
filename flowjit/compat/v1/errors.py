"""`tf.errors`: the exception types TF1 programs catch."""
from ...errors import FlowjitError, InvalidArgumentError, OutOfRangeError  # noqa: F401
from ... import errors as _core


class OpError(FlowjitError):
    """Base of the errors a session run raises (TF1's tf.errors.OpError)."""


class FailedPreconditionError(OpError, RuntimeError):
    """An op needs state that is not there, e.g. a variable read before initialization."""


class UnimplementedError(OpError, _core.UnimplementedError):
    """A TF1 feature that flowjit.compat.v1 does not provide yet."""


class DeadlineExceededError(OpError, TimeoutError):
    """An operation took longer than allowed, e.g. waiting for the chief to initialize."""


class NotFoundError(OpError, KeyError):
    """Something named does not exist, e.g. a variable missing from a checkpoint."""

    def __str__(self):          # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnimplementedName(UnimplementedError, _core.UnimplementedName):
    """A name of TF1's API that flowjit.compat.v1 leaves out on purpose, raised on
    attribute access with what to use instead. An AttributeError too, so `hasattr` and
    `getattr(tf, name, default)` keep working."""


def missing(module, name, why=None):
    """The error for `module.name` (e.g. "tf.train", "slice_input_producer")."""
    if name.startswith("__") and name.endswith("__"):
        return AttributeError(name)             # Python's own probes (pickle, copy, ...)
    return UnimplementedName(f"{module}.{name} is not implemented by flowjit.compat.v1"
                             + (f": {why}" if why else ""))
