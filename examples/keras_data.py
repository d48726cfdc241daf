"""The data of the Keras examples: what `keras.datasets.mnist.load_data()` returns
(uint8 images (n, 28, 28), integer labels), from real MNIST with --mnist DIR (the four
IDX files, raw or .gz, or Keras's mnist.npz), else from the bundled 8x8 digits resampled
to 28x28 (`flowjit.keras.datasets.digits`), so the programs run unchanged on either."""
import os

import numpy as np

import flowjit as fj
import flowjit.keras as keras


def load(mnist_dir=None):
    if mnist_dir is None:
        return keras.datasets.digits.load_data(), "digits (8x8 resampled to 28x28)"
    npz = os.path.join(mnist_dir, "mnist.npz")
    if os.path.exists(npz):
        with np.load(npz, allow_pickle=False) as f:
            return ((f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])), "MNIST"
    sets = fj.data.load_mnist(mnist_dir, reshape=False, one_hot=False, validation_size=0)

    def to_uint8(ds):
        return (np.round(ds.images[..., 0] * 255)).astype(np.uint8), ds.labels.astype(np.uint8)
    return (to_uint8(sets.train), to_uint8(sets.test)), "MNIST"
