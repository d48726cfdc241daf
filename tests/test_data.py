"""fj.data: IDX reading (raw and gz, corrupt files), MNIST layout, next_batch epochs."""
import gzip
import os

import numpy as np
import pytest

import flowjit as fj
from flowjit.data import MNIST_FILES, IDXError, read_idx


def idx_bytes(arr, magic=None):
    arr = np.ascontiguousarray(arr, np.uint8)
    head = (magic if magic is not None else (0x0800 | arr.ndim)).to_bytes(4, "big")
    return head + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


def write_mnist(d, n_train=12, n_test=5, h=4, w=3, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"train_images": rng.integers(0, 256, (n_train, h, w)), "train_labels": rng.integers(0, 10, n_train),
              "test_images": rng.integers(0, 256, (n_test, h, w)), "test_labels": rng.integers(0, 10, n_test)}
    for key, stem in MNIST_FILES.items():
        data = idx_bytes(arrays[key])
        if gz:
            with gzip.open(os.path.join(d, stem + ".gz"), "wb") as f:
                f.write(data)
        else:
            with open(os.path.join(d, stem), "wb") as f:
                f.write(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_matches_the_files(tmp_path, gz):
    a = write_mnist(tmp_path, gz=gz)
    m = fj.data.load_mnist(str(tmp_path), validation_size=2)
    assert m.train.images.dtype == np.float32 and m.train.images.shape == (10, 12)
    np.testing.assert_allclose(m.train.images, a["train_images"][2:].reshape(10, 12) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(m.train.labels.argmax(1), a["train_labels"][2:])
    assert m.train.labels.dtype == np.float32 and m.train.labels.sum() == 10
    np.testing.assert_array_equal(m.validation.labels.argmax(1), a["train_labels"][:2])
    np.testing.assert_allclose(m.test.images, a["test_images"].reshape(5, 12) / 255.0, rtol=1e-6)
    assert m.test.num_examples == 5
    r = fj.data.load_mnist(str(tmp_path), reshape=False, one_hot=False, validation_size=0)
    assert r.train.images.shape == (12, 4, 3, 1) and r.validation is None
    np.testing.assert_array_equal(r.train.labels, a["train_labels"])
    assert 0.0 <= r.train.images.min() and r.train.images.max() <= 1.0


def test_idx_errors(tmp_path):
    write_mnist(tmp_path)
    img = tmp_path / MNIST_FILES["train_images"]
    good = img.read_bytes()
    img.write_bytes(good[:-7])                                  # truncated data
    with pytest.raises(IDXError, match="truncated.*header says"):
        fj.data.load_mnist(str(tmp_path))
    img.write_bytes(good[:10])                                  # truncated header
    with pytest.raises(IDXError, match="truncated header"):
        read_idx(str(img), 2051)
    img.write_bytes(good + b"\0")
    with pytest.raises(IDXError, match="trailing bytes"):
        read_idx(str(img), 2051)
    img.write_bytes(idx_bytes(np.zeros(3), magic=2049))        # a label file where images belong
    with pytest.raises(IDXError, match=r"magic number 0x00000801, expected 0x00000803"):
        fj.data.load_mnist(str(tmp_path))
    img.write_bytes(gzip.compress(good)[:40])                  # truncated gzip stream
    with pytest.raises(IDXError, match="corrupt or truncated gzip"):
        fj.data.load_mnist(str(tmp_path))
    img.unlink()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        fj.data.load_mnist(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        fj.data.load_mnist(str(tmp_path / "nope"))


def test_mismatched_counts_and_bad_labels(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / MNIST_FILES["test_labels"]).write_bytes(idx_bytes(np.zeros(4)))
    with pytest.raises(IDXError, match="5 images but 4 labels"):
        fj.data.load_mnist(str(tmp_path), validation_size=0)
    (tmp_path / MNIST_FILES["test_labels"]).write_bytes(idx_bytes(np.full(5, 12)))
    with pytest.raises(IDXError, match="labels hold 12"):
        fj.data.load_mnist(str(tmp_path), validation_size=0)
    write_mnist(tmp_path)
    with pytest.raises(ValueError, match="validation_size 5000"):
        fj.data.load_mnist(str(tmp_path))


def test_next_batch_covers_every_example_once_per_epoch():
    n = 23
    ds = fj.data.Dataset(np.arange(n, dtype=np.float32)[:, None], np.arange(n), seed=3)
    seen = np.concatenate([ds.next_batch(5)[1] for _ in range(n * 3 // 5 + 1)])[:3 * n]
    epochs = seen.reshape(3, n)
    for e in epochs:                       # each epoch is a permutation of all examples
        np.testing.assert_array_equal(np.sort(e), np.arange(n))
    assert not np.array_equal(epochs[0], epochs[1])        # reshuffled between epochs
    assert ds.epochs_completed == 3
    again = fj.data.Dataset(np.arange(n, dtype=np.float32)[:, None], np.arange(n), seed=3)
    np.testing.assert_array_equal(again.next_batch(n)[1], epochs[0])   # seeded: reproducible
    assert sorted(np.concatenate([y for _, y in ds]).tolist()) == list(range(n))   # epoch iteration
    with pytest.raises(ValueError, match="batch_size 24"):
        ds.next_batch(24)


def test_load_digits_reshape_false():
    d = fj.data.load_digits(reshape=False)
    flat = fj.data.load_digits()
    assert d.train.images.shape == (flat.train.num_examples, 8, 8, 1)
    np.testing.assert_array_equal(d.train.images.reshape(-1, 64), flat.train.images)
