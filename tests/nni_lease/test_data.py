"""Trace-safe data sets (nni_lease._data): digits splits, NNI serialisation, safe CIFAR-10 loading."""

from __future__ import annotations

import os
import pickle

import nni
import numpy as np
import pytest
import torch
from nni.nas.evaluator.pytorch import DataLoader

from nni_lease._data import Cifar10Dataset, DigitsDataset, load_cifar10_batch, make_dataset


def test_digits_splits_are_disjoint_and_cover_the_data():
    parts = {s: DigitsDataset(s, seed=1) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [1078, 359, 360]
    x, y = parts["train"][0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert parts["train"].input_shape == (1, 8, 8) and parts["train"].n_classes == 10
    rows = {s: {tuple(r) for r in parts[s].x.flatten(1).numpy().round(4).tolist()} for s in parts}
    # digits has a few duplicate images, so compare counts rather than demand empty intersections
    assert len(rows["train"] & rows["test"]) < 10
    assert float(parts["train"].x.max()) <= 1.0 and float(parts["train"].x.min()) >= 0.0
    again = DigitsDataset("train", seed=1)
    assert torch.equal(again.x, parts["train"].x)
    assert not torch.equal(DigitsDataset("train", seed=2).x, parts["train"].x)
    assert len(DigitsDataset("val", limit=17)) == 17


def test_traced_loader_serialises_small():
    loader = DataLoader(DigitsDataset("train", seed=0, limit=50), batch_size=8)
    dumped = nni.dump(loader)
    assert len(dumped) < 2_000  # NNI refuses traced arguments over 64 KB; tensors would be ~300 KB
    rebuilt = nni.load(dumped)
    assert torch.equal(next(iter(rebuilt))[0], next(iter(loader))[0])


def _write_cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"synthetic",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"f"] * n,
    }
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    return batch


def test_cifar10_from_local_batches(tmp_path):
    written = {
        name: _write_cifar_batch(tmp_path / name, 20, i)
        for i, name in enumerate(["data_batch_1", "data_batch_2", "test_batch"])
    }
    x, y = load_cifar10_batch(tmp_path / "test_batch")
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(y, written["test_batch"][b"labels"])
    np.testing.assert_allclose(x[3].reshape(-1) * 255.0, written["test_batch"][b"data"][3], atol=1e-3)
    train = Cifar10Dataset(str(tmp_path), "train", val_fraction=0.25)
    val = Cifar10Dataset(str(tmp_path), "val", val_fraction=0.25)
    test = make_dataset("cifar10", "test", data_dir=str(tmp_path))
    assert (len(train), len(val), len(test)) == (30, 10, 20)
    assert train.input_shape == (3, 32, 32)
    assert len(nni.dump(DataLoader(train, batch_size=4))) < 2_000


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar10_loader_refuses_code_in_the_pickle(tmp_path):
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"test_batch: .*refusing to load global (posix|os)\.system"):
        load_cifar10_batch(tmp_path / "test_batch")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        DigitsDataset("dev")
    with pytest.raises(ValueError, match="limit must be"):
        DigitsDataset("train", limit=0)
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 training batch"):
        Cifar10Dataset(str(tmp_path), "train")
    with pytest.raises(FileNotFoundError):
        Cifar10Dataset(str(tmp_path / "missing"), "test")
    with pytest.raises(ValueError, match="data_dir must be given"):
        make_dataset("cifar10", "train")
    with pytest.raises(ValueError, match="dataset must be one of"):
        make_dataset("svhn", "train")
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 10), dtype=np.uint8), b"labels": [0, 1]}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"test_batch: expected b'data' as uint8 of shape \(N, 3072\)"):
        load_cifar10_batch(tmp_path / "test_batch")


def test_one_cifar_unpickler_for_both_packages():
    import art_fisher.data._loaders
    from art_fisher.data._cifar_batch import read_cifar10_batch
    from nni_lease import _data as data

    assert data.read_cifar10_batch is read_cifar10_batch is art_fisher.data._loaders.read_cifar10_batch
    assert not [name for name in vars(data) if "Unpickler" in name]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({b"labels": [0, 57]}, r"labels in 0\.\.9; got values from 0 to 57"),
        ({b"labels": [-3, 1]}, r"labels in 0\.\.9; got values from -3 to 1"),
        ({b"data": np.full((2, 3072), 0.5)}, r"uint8 of shape \(N, 3072\).*got float64"),
        ({b"data": np.full((2, 3072), 0.5, np.float32)}, r"uint8 of shape \(N, 3072\).*got float32"),
    ],
)
def test_cifar10_loader_refuses_bad_labels_and_float_pixels(tmp_path, change, match):
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], **change}
    for name in ("data_batch_1", "test_batch"):
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with pytest.raises(ValueError, match=rf"test_batch: .*{match}"):
        load_cifar10_batch(tmp_path / "test_batch")
    with pytest.raises(ValueError, match=rf"data_batch_1: .*{match}"):
        Cifar10Dataset(str(tmp_path), "train")


class _ZeroStride:
    def __reduce__(self):
        return (np.ndarray, ((10**6, 3072), np.dtype("u1"), b"\0", 0, (0, 0)))


def test_cifar10_loader_refuses_a_tiny_file_declaring_a_million_images(tmp_path):
    import tracemalloc

    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": _ZeroStride(), b"labels": [0]}, fh, protocol=2)
    tracemalloc.start()
    with pytest.raises(ValueError, match="test_batch: not a CIFAR-10 python batch: refusing to call numpy.ndarray"):
        Cifar10Dataset(str(tmp_path), "test")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20  # the old loader made (10^6, 3, 32, 32) float32: 12 GB


@pytest.mark.parametrize(("n_train", "split"), [(0, "train"), (1, "train"), (0, "val")])
def test_an_mnist_split_without_samples_is_refused_naming_it(tmp_path, n_train, split):
    """Before: 0 training images gave 'need at least one array to concatenate', ZeroDivisionError in retrain or
    PyTorch's num_samples=0; one image left the training split empty."""
    from nni_lease._data import MnistDataset
    from tests.fake_mnist import write_fake_mnist

    write_fake_mnist(tmp_path, n_train=n_train, n_test=5)
    with pytest.raises(ValueError, match=rf"holds 0 images|MnistDataset: the '{split}' split holds no sample"):
        MnistDataset(str(tmp_path), split)
    assert len(MnistDataset(str(tmp_path), "test")) == 5
