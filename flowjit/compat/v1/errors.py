"""`tf.errors`: the exception types TF1 programs catch."""
from ...errors import FlowjitError, InvalidArgumentError, OutOfRangeError  # noqa: F401


class OpError(FlowjitError):
    """Base of the errors a session run raises (TF1's tf.errors.OpError)."""


class FailedPreconditionError(OpError, RuntimeError):
    """An op needs state that is not there, e.g. a variable read before initialization."""


class UnimplementedError(OpError, NotImplementedError):
    """A TF1 feature that flowjit.compat.v1 does not provide yet."""


class NotFoundError(OpError, KeyError):
    """Something named does not exist, e.g. a variable missing from a checkpoint."""

    def __str__(self):          # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
