"""`tf.summary`: TensorBoard summaries are not yet available in flowjit.compat.v1
(fj.summary is being built); every name exists and says so when called."""
from .errors import UnimplementedError


def _not_yet(name):
    def f(*args, **kwargs):
        raise UnimplementedError(f"tf.summary.{name} is not yet available in flowjit.compat.v1: "
                                 f"TensorBoard summaries arrive with fj.summary")
    f.__name__ = name
    return f


scalar = _not_yet("scalar")
histogram = _not_yet("histogram")
image = _not_yet("image")
text = _not_yet("text")
merge = _not_yet("merge")
merge_all = _not_yet("merge_all")


class FileWriter:
    def __init__(self, *args, **kwargs):
        _not_yet("FileWriter")()


class FileWriterCache:
    @staticmethod
    def get(*args, **kwargs):
        _not_yet("FileWriterCache")()
