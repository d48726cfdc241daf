"""MNIST from the file Keras caches: `<keras home>/datasets/mnist.npz`."""
import numpy as np

from . import cached_file

_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"


def check_images_labels(caller, name, x, y, classes=10):
    """MNIST's layout: uint8 images (N, 28, 28), integer labels (N,) in 0..classes-1."""
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"{caller}: x_{name} is {x.dtype} {x.shape}, expected uint8 (N, 28, 28)")
    if y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise ValueError(f"{caller}: y_{name} is {y.dtype} {y.shape}, expected integer labels ({len(x)},)")
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"{caller}: y_{name} holds labels {int(y.min())}..{int(y.max())}, "
                         f"expected 0..{classes - 1}")


def load_data(path="mnist.npz"):
    """`((x_train, y_train), (x_test, y_test))`: uint8 images (60000, 28, 28) and
    (10000, 28, 28), uint8 labels 0..9, read from `<keras home>/datasets/<path>` (the npz
    `keras.datasets.mnist.load_data()` downloads). No download here: a missing file
    raises FileNotFoundError saying where to put it."""
    fname = cached_file("mnist.load_data", path, _ORIGIN)
    # allow_pickle=False: a data file must not be able to run code
    with np.load(fname, allow_pickle=False) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise ValueError(f"mnist.load_data: {fname} lacks {sorted(missing)} (it holds {sorted(f.files)})")
        x_train, y_train, x_test, y_test = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    check_images_labels("mnist.load_data", "train", x_train, y_train)
    check_images_labels("mnist.load_data", "test", x_test, y_test)
    return (x_train, y_train), (x_test, y_test)
