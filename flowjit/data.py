"""`fj.data`: datasets shaped like TF1's `input_data.read_data_sets`.

`load_digits()` gives scikit-learn's bundled 8x8 handwritten digits (images scaled to
[0, 1], one-hot labels, a fixed seeded 80/20 train/test split); `Dataset.next_batch`
reshuffles (seeded) at every epoch, and iterating a Dataset yields one epoch of batches.
"""
import numpy as np


class Dataset:
    def __init__(self, images, labels, seed=0):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(images))
        self._pos = len(images)          # forces a shuffle on the first batch
        self.epochs_completed = 0

    @property
    def num_examples(self):
        return len(self.images)

    def next_batch(self, batch_size, shuffle=True):
        """The next `batch_size` examples; a new seeded permutation starts each epoch, so
        every example is seen once per epoch (a batch may straddle two epochs)."""
        n = self.num_examples
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} > {n} examples")
        parts = []
        need = batch_size
        while need:
            if self._pos >= n:
                self._order = self._rng.permutation(n) if shuffle else np.arange(n)
                self._pos = 0
            take = min(need, n - self._pos)
            parts.append(self._order[self._pos:self._pos + take])
            self._pos += take
            need -= take
            if self._pos >= n:
                self.epochs_completed += 1
        idx = np.concatenate(parts)
        return self.images[idx], self.labels[idx]

    def batches(self, batch_size, shuffle=True, drop_remainder=False):
        """One epoch of batches (the last one smaller unless drop_remainder)."""
        n = self.num_examples
        order = self._rng.permutation(n) if shuffle else np.arange(n)
        stop = n - (n % batch_size if drop_remainder else 0)
        for s in range(0, stop, batch_size):
            idx = order[s:s + batch_size]
            yield self.images[idx], self.labels[idx]

    def __iter__(self):
        return self.batches(100)


class Datasets:
    def __init__(self, train, test):
        self.train, self.test = train, test
        self.validation = None


def _one_hot(y, n=10):
    out = np.zeros((len(y), n), np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


def load_digits(reshape=True, one_hot=True, test_fraction=0.2, seed=0):
    """scikit-learn's 8x8 digits: 1797 images, pixels scaled from 0..16 to [0, 1]."""
    try:
        from sklearn.datasets import load_digits as _sk
    except ImportError:
        raise ImportError("fj.data.load_digits needs scikit-learn (pip install 'flowjit[examples]')") from None
    d = _sk()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    if not reshape:
        x = x.reshape(-1, 8, 8, 1)
    lab = _one_hot(y) if one_hot else y
    return Datasets(Dataset(x[train], lab[train], seed), Dataset(x[test], lab[test], seed + 1))
