"""`fj.data`: datasets shaped like TF1's `input_data.read_data_sets`.

`load_digits()` gives scikit-learn's bundled 8x8 handwritten digits (images scaled to
[0, 1], one-hot labels, a fixed seeded 80/20 train/test split); `load_mnist(path)`
reads the four standard IDX files (gzipped or raw) and checks their magic numbers and
sizes. `Dataset.next_batch` reshuffles (seeded) at every epoch, and iterating a Dataset
yields one epoch of batches.

`Dataset.from_tensor_slices`, `.from_tensors`, `.range`, `.zip` and `.from_generator`
build `tf.data` pipelines instead (flowjit/data_pipeline.py): `fj.data` is also TF2's
`tf.data`.
"""
import gzip
import json
import os
import zlib

import numpy as np

from . import data_pipeline as _pipeline
from .data_pipeline import (  # noqa: F401
    AUTOTUNE, INFINITE_CARDINALITY, UNKNOWN_CARDINALITY, DatasetV2, Options, experimental,
)


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
        if not 0 < batch_size <= n:
            raise ValueError(f"next_batch: batch_size {batch_size} must be in 1..{n} (the number of examples)")
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

    def get_state(self):
        """Where `next_batch` stands (this epoch's order, the position in it, the epoch
        count and the shuffling RNG's state), as arrays: what a checkpoint saves so a
        resumed run sees the same batches."""
        rng = json.dumps(self._rng.bit_generator.state).encode("utf-8")
        return {"order": self._order.astype(np.int64), "position": np.int64(self._pos),
                "epochs_completed": np.int64(self.epochs_completed),
                "rng_state": np.frombuffer(rng, np.uint8).copy()}

    def set_state(self, state):
        rng_state = self.check_state(state)
        self._rng.bit_generator.state = rng_state
        self._order = np.asarray(state["order"]).astype(np.int64)
        self._pos = int(state["position"])
        self.epochs_completed = int(state["epochs_completed"])

    def check_state(self, state):
        """ValueError unless `state` (from `get_state`, perhaps via a stranger's checkpoint)
        fits this dataset: each field's dtype, shape and range, the order a permutation of
        range(n), the RNG state one this dataset's generator accepts; returns that state."""
        n = self.num_examples
        missing = [k for k in ("order", "position", "epochs_completed", "rng_state") if k not in state]
        if missing:
            raise ValueError(f"Dataset.set_state: the state has no {', '.join(missing)}")
        order = np.asarray(state["order"])
        if order.dtype.kind not in "iu" or order.shape != (n,) or \
                not np.array_equal(np.sort(order), np.arange(n)):
            raise ValueError(f"Dataset.set_state: the saved 'order' ({order.dtype}{list(order.shape)}) is not "
                             f"an integer permutation of this dataset's {n} examples (a different dataset?)")
        for key, top in (("position", n), ("epochs_completed", np.iinfo(np.int64).max)):
            v = np.asarray(state[key])
            if v.dtype.kind not in "iu" or v.shape != () or not 0 <= int(v) <= top:
                raise ValueError(f"Dataset.set_state: the saved {key!r} ({v.dtype}{list(v.shape)}) is not "
                                 f"an integer in 0..{top}")
        raw = np.asarray(state["rng_state"])
        if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > 1 << 16:
            raise ValueError(f"Dataset.set_state: the saved 'rng_state' ({raw.dtype}{list(raw.shape)}) is "
                             f"not JSON text as uint8 bytes")
        try:
            rng_state = json.loads(raw.tobytes().decode("utf-8"))
        except (ValueError, RecursionError) as e:     # bad UTF-8 or JSON, deep nesting
            raise ValueError(f"Dataset.set_state: the saved 'rng_state' is not JSON ({e})") from None
        kind = type(self._rng.bit_generator)
        if not isinstance(rng_state, dict) or rng_state.get("bit_generator") != kind.__name__:
            got = rng_state.get("bit_generator") if isinstance(rng_state, dict) else rng_state
            raise ValueError(f"Dataset.set_state: the saved 'rng_state' is for RNG {str(got)[:60]!r}, this "
                             f"dataset uses {kind.__name__}")
        try:                  # the generator's own setter checks every field; try it on a scratch one
            kind().state = rng_state
        except (ValueError, TypeError, KeyError, OverflowError) as e:
            raise ValueError(f"Dataset.set_state: the saved 'rng_state' is not a valid {kind.__name__} "
                             f"state ({e!r})") from None
        return rng_state

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

    def __repr__(self):
        return (f"<fj.data.Dataset {self.num_examples} examples, images {self.images.shape} "
                f"{self.images.dtype}, labels {self.labels.shape} {self.labels.dtype}>")

    # tf.data's constructors: they return pipelines (DatasetV2), not this class
    from_tensor_slices = staticmethod(_pipeline.DatasetV2.from_tensor_slices)
    from_tensors = staticmethod(_pipeline.DatasetV2.from_tensors)
    range = staticmethod(_pipeline.DatasetV2.range)
    zip = staticmethod(_pipeline.DatasetV2.zip)
    from_generator = staticmethod(_pipeline.DatasetV2.from_generator)


class Datasets:
    def __init__(self, train, test, validation=None):
        self.train, self.test = train, test
        self.validation = validation


def _one_hot(y, n=10):
    out = np.zeros((len(y), n), np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


def load_digits(reshape=True, one_hot=True, test_fraction=0.2, seed=0):
    """scikit-learn's 8x8 digits: 1797 images, pixels scaled from 0..16 to [0, 1].
    Images are `[n, 64]`, or `[n, 8, 8, 1]` with `reshape=False`."""
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


# -- MNIST IDX files --------------------------------------------------------------------

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049      # 0x00000803 (ubyte, 3 dims), 0x00000801 (ubyte, 1 dim)


class IDXError(ValueError):
    """A missing, truncated or corrupt IDX file."""


def _find(path, stem):
    # the usual spellings: LeCun's names (raw or .gz) and the dotted variant some mirrors use
    names = [stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"]
    for n in names:
        p = os.path.join(path, n)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"load_mnist: {stem}[.gz] not found in {path!r} (the four MNIST files "
                            f"are {', '.join(MNIST_FILES.values())}, raw or gzipped)")


def read_idx(filename, expected_magic=None):
    """A uint8 IDX file (raw or gzipped) as an ndarray, after checking that its magic
    number, header and size agree."""
    with open(filename, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IDXError(f"{filename}: corrupt or truncated gzip file ({e})") from None
    if len(raw) < 4:
        raise IDXError(f"{filename}: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    zero, dtype_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if expected_magic is not None and magic != expected_magic:
        raise IDXError(f"{filename}: magic number {magic:#010x}, expected {expected_magic:#010x} "
                       f"(not an MNIST {'image' if expected_magic == _IMAGES_MAGIC else 'label'} IDX file)")
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise IDXError(f"{filename}: magic number {magic:#010x} is not a uint8 IDX header")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise IDXError(f"{filename}: truncated header ({len(raw)} bytes, need {head})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    need = head + int(np.prod(dims, dtype=np.int64))
    if len(raw) != need:
        what = "truncated" if len(raw) < need else "has trailing bytes"
        raise IDXError(f"{filename}: {what}: header says {dims} = {need - head} bytes of data, "
                       f"the file holds {len(raw) - head}")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims)


def load_mnist(path, reshape=True, one_hot=True, validation_size=5000, seed=0):
    """MNIST from the four standard IDX files in directory `path` (raw or .gz), like
    TF1's `input_data.read_data_sets(path, one_hot=True)`: `.train`, `.validation` (the
    first `validation_size` training examples, as in TF1) and `.test`, images float32 in
    [0, 1], `[n, 784]` or `[n, 28, 28, 1]` with `reshape=False`; labels one-hot float32
    `[n, 10]` (or int64 class ids with `one_hot=False`)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"load_mnist: {path!r} is not a directory (it should hold "
                                f"{', '.join(MNIST_FILES.values())}, raw or gzipped)")
    arrays = {}
    for key, stem in MNIST_FILES.items():
        magic = _IMAGES_MAGIC if key.endswith("images") else _LABELS_MAGIC
        arrays[key] = read_idx(_find(path, stem), magic)
    sets = {}
    for part in ("train", "test"):
        images, labels = arrays[part + "_images"], arrays[part + "_labels"]
        if len(images) != len(labels):
            raise IDXError(f"load_mnist: {part} has {len(images)} images but {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise IDXError(f"load_mnist: {part} labels hold {int(labels.max())}; MNIST classes are 0..9")
        x = images.astype(np.float32) * np.float32(1.0 / 255.0)
        x = x.reshape(len(x), -1) if reshape else x[..., None]
        y = labels.astype(np.int64)
        sets[part] = (x, _one_hot(y) if one_hot else y)
    x, y = sets["train"]
    if not 0 <= validation_size <= len(x):
        raise ValueError(f"load_mnist: validation_size {validation_size} must be in 0..{len(x)} "
                         f"(the number of training examples)")
    validation = Dataset(x[:validation_size], y[:validation_size], seed + 2) if validation_size else None
    return Datasets(Dataset(x[validation_size:], y[validation_size:], seed), Dataset(*sets["test"], seed + 1),
                    validation)
