"""Data sets: the embedded scikit-learn digits (default) and local MNIST / CIFAR-10 files.

Nothing is ever downloaded; CIFAR-10's pickled batches are read by a restricted reader
(:func:`read_cifar10_batch`) that refuses anything but the expected arrays.
"""

from art_fisher.data._cifar_batch import CifarBatchError, UnsafeCifarBatchError, read_cifar10_batch
from art_fisher.data._loaders import DATASETS, Dataset, load_cifar10, load_dataset, load_digits, load_mnist

__all__ = [
    "DATASETS",
    "CifarBatchError",
    "Dataset",
    "UnsafeCifarBatchError",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "read_cifar10_batch",
]
