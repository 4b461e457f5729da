"""Data loaders: digits, and MNIST / CIFAR-10 from small synthetic files written in the real formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from art_fisher.data import load_cifar10, load_dataset, load_digits, load_mnist


# ------------------------------------------------------------------------------------ writers
def _idx_bytes(array: np.ndarray) -> bytes:
    """The idx format: 2 zero bytes, type code 0x08 (ubyte), ndim, big-endian int32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", s) for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path, array, *, compress=False):
    data = _idx_bytes(array)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _mnist_arrays(n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8)),
        "test": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8)),
    }


def _write_mnist_idx(folder, arrays, *, compress):
    names = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip
    for split, (images, labels) in arrays.items():
        _write_idx(folder / names[split][0], images, compress=compress)
        _write_idx(folder / names[split][1], labels, compress=compress)


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"synthetic batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _write_cifar(folder, n=4):
    """Protocol-2 pickles of dicts with bytes keys: the layout of cifar-10-batches-py."""
    batches = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        batches[name] = _cifar_batch(n, seed=i)
        with open(folder / name, "wb") as fh:
            pickle.dump(batches[name], fh, protocol=2)
    return batches


# -------------------------------------------------------------------------------------- digits
def test_digits_splits_are_disjoint_and_cover_everything():
    full, train, test = load_digits(), load_digits(split="train"), load_digits(split="test")
    assert full.x.shape == (1797, 1, 8, 8) and full.x.dtype == np.float32
    assert len(train.y) + len(test.y) == 1797 and len(test.y) == 450
    assert 0.0 <= full.x.min() and full.x.max() <= 1.0
    # train + test is a partition of the full set (as a multiset of (image, label) rows).
    def rows(ds):
        return sorted(r.tobytes() + bytes([lbl]) for r, lbl in zip(ds.x.reshape(len(ds.y), -1), ds.y))

    assert rows(full) == sorted(rows(train) + rows(test))
    # Same split every call (no hidden randomness).
    np.testing.assert_array_equal(load_digits(split="test").x, test.x)


# --------------------------------------------------------------------------------------- MNIST
@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_round_trip(tmp_path, compress):
    arrays = _mnist_arrays()
    _write_mnist_idx(tmp_path, arrays, compress=compress)
    for split in ("train", "test"):
        ds = load_mnist(tmp_path, split=split)
        images, labels = arrays[split]
        assert ds.x.shape == (len(labels), 1, 28, 28) and ds.x.dtype == np.float32
        np.testing.assert_array_equal(ds.x[:, 0], images.astype(np.float32) / 255.0)
        np.testing.assert_array_equal(ds.y, labels.astype(np.int64))
        assert ds.name == "mnist" and ds.n_classes == 10


def test_mnist_npz_folder_and_file(tmp_path):
    arrays = _mnist_arrays()
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=arrays["train"][0], y_train=arrays["train"][1],
             x_test=arrays["test"][0], y_test=arrays["test"][1])  # fmt: skip
    for where in (tmp_path, path):
        ds = load_mnist(where, split="test")
        np.testing.assert_array_equal(ds.x[:, 0] * 255.0, arrays["test"][0].astype(np.float32))
        np.testing.assert_array_equal(ds.y, arrays["test"][1])
    assert len(load_dataset("mnist", data_dir=tmp_path).y) == 12  # default split: train


def test_mnist_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, split="test")


def test_mnist_wrong_magic_names_the_file(tmp_path):
    _write_mnist_idx(tmp_path, _mnist_arrays(), compress=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(bad.read_bytes())
    raw[2] = 0x0D  # float32 type code instead of unsigned bytes
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*magic number"):
        load_mnist(tmp_path)


def test_mnist_truncated_file_names_it(tmp_path):
    _write_mnist_idx(tmp_path, _mnist_arrays(), compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*bytes"):
        load_mnist(tmp_path)


def test_mnist_corrupt_gzip_names_it(tmp_path):
    _write_mnist_idx(tmp_path, _mnist_arrays(), compress=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path)


def test_mnist_count_mismatch(tmp_path):
    arrays = _mnist_arrays()
    arrays["train"] = (arrays["train"][0], arrays["train"][1][:-1])
    _write_mnist_idx(tmp_path, arrays, compress=False)
    with pytest.raises(ValueError, match="12 images but .* 11 labels"):
        load_mnist(tmp_path)


def test_mnist_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"mnist.npz.*y_train"):
        load_mnist(tmp_path)


def test_mnist_npz_refuses_object_arrays(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.array([object()], dtype=object), y_train=np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match="mnist.npz"):
        load_mnist(tmp_path)


# ------------------------------------------------------------------------------------ CIFAR-10
def test_cifar_round_trip(tmp_path):
    batches = _write_cifar(tmp_path)
    train = load_cifar10(tmp_path, split="train")
    assert train.x.shape == (20, 3, 32, 32) and train.x.dtype == np.float32
    first = batches["data_batch_1"]
    np.testing.assert_array_equal(train.x[:4] * 255.0, first[b"data"].reshape(4, 3, 32, 32).astype(np.float32))
    np.testing.assert_array_equal(train.y[:4], first[b"labels"])
    test = load_cifar10(tmp_path, split="test")
    np.testing.assert_array_equal(test.y, batches["test_batch"][b"labels"])
    # The standard archive's sub-folder is found from its parent too.
    sub = tmp_path / "parent" / "cifar-10-batches-py"
    sub.mkdir(parents=True)
    for name in batches:
        os.link(tmp_path / name, sub / name)
    assert load_dataset("cifar10", data_dir=tmp_path / "parent", split="test").x.shape == (4, 3, 32, 32)


def test_cifar_missing_batch_names_it(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path)


class _Evil:
    """Unpickling this would call os.getcwd (harmless here, but any callable would do)."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_restricted_unpickler_refuses_foreign_globals(tmp_path, monkeypatch):
    _write_cifar(tmp_path)
    batch = _cifar_batch(4, seed=0)
    batch[b"labels"] = _Evil()
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    called = []
    monkeypatch.setattr(os, "getcwd", lambda: called.append(1))
    with pytest.raises(ValueError, match=r"test_batch.*refusing to load global (posix|os)\.getcwd"):
        load_cifar10(tmp_path, split="test")
    assert not called


def test_cifar_malformed_content_names_the_file(tmp_path):
    _write_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"test_batch.*\(N, 3072\)"):
        load_cifar10(tmp_path, split="test")
    (tmp_path / "test_batch").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="test_batch.*not a CIFAR-10 python batch"):
        load_cifar10(tmp_path, split="test")


def test_cifar_labels_out_of_range(tmp_path):
    _write_cifar(tmp_path)
    batch = _cifar_batch(4, seed=0)
    batch[b"labels"] = [0, 1, 2, 12]
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    with pytest.raises(ValueError, match=r"labels in 0\.\.9"):
        load_cifar10(tmp_path, split="test")


# ------------------------------------------------------------------------------- load_dataset
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "imagenet"}, ValueError, "name must be one of"),
        ({"name": "mnist"}, ValueError, "data_dir is required"),
        ({"name": "digits", "split": "valid"}, ValueError, "split must be one of"),
    ],
)
def test_load_dataset_bad_arguments(kwargs, error, match):
    name = kwargs.pop("name")
    with pytest.raises(error, match=match):
        load_dataset(name, **kwargs)


def test_load_dataset_digits():
    assert load_dataset("digits").x.shape == (1797, 1, 8, 8)
    assert load_dataset("digits", split="test").x.shape == (450, 1, 8, 8)


def test_arrays_have_canonical_strides(tmp_path):
    """Ordinary (N, C, H, W) strides also on the size-1 channel axis (torch infers memory formats from them)."""
    _write_mnist_idx(tmp_path, _mnist_arrays(), compress=False)
    _write_cifar(tmp_path)
    for ds in (load_digits(), load_digits(split="test"), load_mnist(tmp_path), load_cifar10(tmp_path)):
        n, c, h, w = ds.x.shape
        assert ds.x.strides == (4 * c * h * w, 4 * h * w, 4 * w, 4)
