"""Exceptions flowjit raises. Each names the op, the shapes/dtypes and the user's line."""


class FlowjitError(Exception):
    """Base class of flowjit's own errors."""


class ShapeError(FlowjitError, ValueError):
    """Shapes that an op cannot take (raised at trace time under jit)."""


class DTypeError(FlowjitError, TypeError):
    """dtypes that an op cannot take, or two tensor dtypes mixed without `fj.cast`."""


class InvalidArgumentError(FlowjitError, ValueError):
    """A runtime value an op cannot take (e.g. an index out of range)."""


class OutOfRangeError(InvalidArgumentError, IndexError):
    """An index out of range in gather or integer indexing."""


class DeviceError(InvalidArgumentError):
    """A device that does not exist here (e.g. a GPU on a machine without one)."""


class TracerError(FlowjitError, TypeError):
    """A traced (symbolic) tensor used where a concrete value is needed."""


class CompileError(FlowjitError, RuntimeError):
    """The backend failed to compile generated code (a flowjit bug: please report)."""


class CheckpointError(FlowjitError, ValueError):
    """A checkpoint that is missing, corrupt or hostile (each names the file and the field),
    or that does not fit the objects restored into (`fj.train` re-exports it)."""


def with_context(exc_type, op, message, src):
    """Build an exception whose text names the op and the user's source line."""
    where = f" (created at {src})" if src else ""
    return exc_type(f"{op}{where}: {message}")


class UnimplementedError(FlowjitError, NotImplementedError):
    """A TensorFlow feature flowjit does not provide (tf.errors.UnimplementedError)."""


class UnimplementedName(UnimplementedError, AttributeError):
    """A name of TensorFlow's API that flowjit leaves out, raised on attribute access with
    what to use instead; an AttributeError too, so `hasattr` keeps working."""
