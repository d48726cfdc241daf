"""A bundled stand-in for MNIST: scikit-learn's 1797 handwritten 8x8 digits, resized to
`size` x `size` and scaled to uint8 0..255, in `mnist.load_data()`'s layout. Needs no
download (scikit-learn ships the data), so MNIST examples and tests run anywhere."""
import numpy as np


def resize_bilinear(images, size):
    """Bilinear resize of `images` (N, h, w) to (N, size, size), with pixel centres
    aligned (output pixel i samples input coordinate (i + 0.5) * h / size - 0.5, clamped
    to the edge), as `tf.image.resize(..., "bilinear")` and PIL do. No antialiasing: it
    is meant for enlarging. Done one axis at a time: rows, then columns."""
    def weights(n_in):
        src = np.clip((np.arange(size) + 0.5) * (n_in / size) - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    x = np.asarray(images, np.float64)
    lo, hi, f = weights(x.shape[1])
    x = x[:, lo, :] * (1 - f)[:, None] + x[:, hi, :] * f[:, None]
    lo, hi, f = weights(x.shape[2])
    return x[:, :, lo] * (1 - f) + x[:, :, hi] * f


def load_data(size=28, test_fraction=0.2, seed=0):
    """`((x_train, y_train), (x_test, y_test))` like `mnist.load_data()`: uint8 images
    (N, size, size) in 0..255, uint8 labels 0..9. The split is a seeded permutation,
    the same one `fj.data.load_digits(test_fraction=..., seed=...)` uses: 1438 train
    and 359 test images by default."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("flowjit.keras.datasets.digits needs scikit-learn "
                          "(pip install 'flowjit[examples]')") from None
    d = load_digits()
    x = resize_bilinear(d.images, int(size))               # pixel values 0..16
    x = np.clip(np.rint(x * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    y = d.target.astype(np.uint8)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return (x[train], y[train]), (x[test], y[test])
