"""Fashion-MNIST from the files Keras caches: `<keras home>/datasets/fashion-mnist/`
holding the four gzipped IDX files."""
import os

from ...data import read_idx
from . import cached_file
from .mnist import check_images_labels

_BASE = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_IMAGES, _LABELS = 0x803, 0x801         # IDX magic numbers: uint8 with 3 dims / 1 dim


def load_data():
    """`((x_train, y_train), (x_test, y_test))`: uint8 images (60000, 28, 28) and
    (10000, 28, 28), uint8 labels 0..9 (T-shirt/top, Trouser, Pullover, Dress, Coat,
    Sandal, Shirt, Sneaker, Bag, Ankle boot). Unlike Keras, the IDX headers are checked
    (magic number, sizes) by `fj.data.read_idx`."""
    def read(fname, magic):
        path = cached_file("fashion_mnist.load_data", os.path.join("fashion-mnist", fname), _BASE + fname)
        return read_idx(path, magic)

    y_train = read("train-labels-idx1-ubyte.gz", _LABELS)
    x_train = read("train-images-idx3-ubyte.gz", _IMAGES)
    y_test = read("t10k-labels-idx1-ubyte.gz", _LABELS)
    x_test = read("t10k-images-idx3-ubyte.gz", _IMAGES)
    check_images_labels("fashion_mnist.load_data", "train", x_train, y_train)
    check_images_labels("fashion_mnist.load_data", "test", x_test, y_test)
    return (x_train, y_train), (x_test, y_test)
