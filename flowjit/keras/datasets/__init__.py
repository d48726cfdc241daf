"""`keras.datasets` on flowjit: `mnist`, `fashion_mnist` and `digits`.

flowjit downloads nothing. `mnist.load_data()` and `fashion_mnist.load_data()` read the
files Keras caches under `<keras home>/datasets/` (`$KERAS_HOME`, else `~/.keras`), so a
machine where Keras has run once, or a copy of those files, is enough.
`digits.load_data()` is a bundled stand-in: scikit-learn's 8x8 digits, resized to
28x28 and returned in MNIST's layout, so an MNIST program runs on it unchanged.
"""
import os


def keras_home():
    """Where Keras keeps its cache: `$KERAS_HOME`, else `~/.keras` (`/tmp/.keras` when
    the home directory is not writable), read at each call."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    home = os.path.expanduser("~")
    return os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")


def cached_file(caller, relpath, origin):
    """The path of `<keras home>/datasets/<relpath>`, or a FileNotFoundError saying
    where to put it. Keras's `get_file` saves to `/tmp/.keras` when the keras home is
    not writable, so that is looked in too. An absolute `relpath` is used as is."""
    primary = os.path.join(os.path.expanduser(keras_home()), "datasets", relpath)
    candidates = [primary, os.path.join("/tmp", ".keras", "datasets", relpath)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{caller}: {primary} not found. flowjit does not download datasets: put the file Keras "
        f"caches there (download {origin}, or copy ~/.keras/datasets/{relpath} from a machine where "
        f"Keras has loaded it), or set KERAS_HOME to a directory whose datasets/ holds it. "
        f"For a bundled stand-in with the same shapes and dtypes, use "
        f"flowjit.keras.datasets.digits.load_data().")


from . import digits, fashion_mnist, mnist  # noqa: E402  (they use the helpers above)

__all__ = ["digits", "fashion_mnist", "mnist", "keras_home"]
