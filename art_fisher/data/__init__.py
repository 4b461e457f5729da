"""Data sets: the embedded scikit-learn digits (default) and local MNIST / CIFAR-10 files.

:mod:`~art_fisher.data.loaders` reads each format (nothing is ever downloaded);
:mod:`~art_fisher.data.cifar_batch` is the restricted reader of CIFAR-10's pickled batches.
"""

from art_fisher.data.loaders import DATASETS, Dataset, load_cifar10, load_dataset, load_digits, load_mnist

__all__ = ["DATASETS", "Dataset", "load_cifar10", "load_dataset", "load_digits", "load_mnist"]
