"""Data sets: the embedded scikit-learn digits (default), local MNIST / CIFAR-10 files and a user's ``.npz``.

:mod:`~art_fisher.data.loaders` reads each format (nothing is ever downloaded);
:mod:`~art_fisher.data.cifar_batch` is the restricted reader of CIFAR-10's pickled batches;
:mod:`~art_fisher.data.npz_dataset` reads a user's images and labels from one ``.npz``.
"""

from art_fisher.data.loaders import DATASETS, Dataset, load_cifar10, load_dataset, load_digits, load_mnist
from art_fisher.data.npz_dataset import load_npz

__all__ = ["DATASETS", "Dataset", "load_cifar10", "load_dataset", "load_digits", "load_mnist", "load_npz"]
