"""Data sets: the embedded scikit-learn digits (default), local MNIST / CIFAR-10 files and a user's ``.npz``.

Nothing is ever downloaded; CIFAR-10's pickled batches are read by a restricted reader
(:func:`read_cifar10_batch`) that refuses anything but the expected arrays.
"""

from art_fisher.data._cifar_batch import CifarBatchError, UnsafeCifarBatchError, read_cifar10_batch
from art_fisher.data._loaders import DATASETS, Dataset, load_cifar10, load_dataset, load_digits, load_mnist
from art_fisher.data._npz import load_npz

__all__ = [
    "DATASETS",
    "CifarBatchError",
    "Dataset",
    "UnsafeCifarBatchError",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_npz",
    "read_cifar10_batch",
]
