"""Compatibility layers: `import flowjit.compat.v1 as tf` runs TensorFlow 1 programs."""
from . import v1  # noqa: F401
