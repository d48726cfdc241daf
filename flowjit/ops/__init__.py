"""Op definitions. Importing this package registers every op in the registry."""
from . import elementwise, reduce, shape_ops, linalg, indexing, random_ops, conv, control  # noqa: F401
from . import sampling, host_ops  # noqa: F401
