"""Trace-safe data sets for NNI evaluators: scikit-learn digits (default), local MNIST and CIFAR-10 files.

NNI serialises every argument of a traced evaluator / ``DataLoader`` and refuses anything over 64 KB,
so a data set must be rebuilt from small constructor arguments, never passed as tensors. The classes
here are wrapped with :func:`nni.trace`: NNI records ``DigitsDataset("train", seed=0)`` and rebuilds it
in a trial. Each yields ``(x, y)`` with ``x`` a float32 tensor of shape ``(C, H, W)`` in ``[0, 1]`` and
``y`` an int64 scalar tensor.

Splits are deterministic: a fixed permutation drawn from ``seed`` cuts the pool into train / val / test
(fractions ``0.6 / 0.2 / 0.2`` for digits; for MNIST and CIFAR-10 the official test set is ``"test"`` and
``val_fraction`` of the official training set is ``"val"``). Nothing is ever downloaded.

MNIST files (``mnist.npz`` in the Keras layout, or the four idx files, plain or ``.gz``) are read with
:func:`art_fisher.data.load_mnist`, which checks every declared size before allocating; the data
set records only the folder's path, so a traced ``MnistDataset(data_dir, "train")`` stays a few bytes.

CIFAR-10 files are the official "python version" pickle batches (``data_batch_1`` … ``data_batch_5``,
``test_batch``). They are read with :func:`art_fisher.data.read_cifar10_batch`, the restricted
unpickler both packages share: it runs no foreign code (a foreign global raises
:class:`~art_fisher.data.UnsafeCifarBatchError`, a :class:`pickle.UnpicklingError`) and checks
every declared size against the file and the format (uint8 (N, 3072), N <= 10000, labels 0..9) before
allocating (anything else raises :class:`~art_fisher.data.CifarBatchError`, a ValueError).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, get_args

import nni
import numpy as np
import torch
from torch.utils.data import Dataset

from art_fisher.data import load_digits, load_mnist, read_cifar10_batch
from art_fisher.utils import check_choice, check_int, check_path

logger = logging.getLogger(__name__)

#: Names :func:`make_dataset` accepts; every one but ``"digits"`` is read from a local folder.
DatasetName = Literal["digits", "mnist", "cifar10"]
DATASETS: tuple[str, ...] = get_args(DatasetName)

Split = Literal["train", "val", "test"]
#: Names of the splits every data set here accepts.
SPLITS: tuple[str, ...] = get_args(Split)

CIFAR10_TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"


def _check_split(split: str) -> None:
    check_choice(split, "split", Split)


def _check_limit(limit: int | None) -> None:
    check_int(limit, "limit", low=1, optional=True)


class _ArrayDataset(Dataset):
    """Common part: holds ``x`` (N, C, H, W) float32 and ``y`` (N,) int64 tensors."""

    x: torch.Tensor
    y: torch.Tensor
    n_classes: int

    def _set(self, x: np.ndarray, y: np.ndarray, limit: int | None, split: str) -> None:
        if len(y) == 0:
            raise ValueError(
                f"{type(self).__name__}: the {split!r} split holds no sample (the data hold too few images for a "
                "train / val / test split); nothing could be trained or measured on it."
            )
        if limit is not None:
            x, y = x[:limit], y[:limit]
        self.x = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
        self.y = torch.as_tensor(np.asarray(y), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one input, ``(C, H, W)``."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]


@nni.trace
class DigitsDataset(_ArrayDataset):
    """scikit-learn's embedded 8×8 digits (1797 images, 10 classes), one deterministic split.

    Parameters
    ----------
    split : {"train", "val", "test"}
        Which part: 60 % / 20 % / 20 % of a permutation drawn from ``seed``.
    seed : int
        Seed of the split permutation (the same seed gives disjoint train / val / test).
    limit : int or None
        Keep only the first ``limit`` samples of the split (for quick tests).

    Attributes
    ----------
    x : Tensor of shape (N, 1, 8, 8), float32 in [0, 1]
    y : Tensor of shape (N,), int64
    n_classes : int
        Always 10.

    Raises
    ------
    ValueError
        For an unknown ``split`` or a non-positive ``limit``.
    """

    def __init__(self, split: Split = "train", *, seed: int = 0, limit: int | None = None) -> None:
        _check_split(split)
        _check_limit(limit)

        data = load_digits()
        perm = np.random.default_rng(seed).permutation(len(data.y))
        n_train, n_val = int(0.6 * len(perm)), int(0.2 * len(perm))
        parts = {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}
        idx = parts[split]
        self.n_classes = data.n_classes
        self._set(data.x[idx], data.y[idx], limit, split)


def load_cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch file safely.

    Parameters
    ----------
    path : str or Path
        A ``data_batch_*`` or ``test_batch`` file (a pickled dict with ``data``: uint8 (N, 3072) and
        ``labels``: N ints).

    Returns
    -------
    x : ndarray of shape (N, 3, 32, 32), float32 in [0, 1]
    y : ndarray of shape (N,), int64

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    art_fisher.data.UnsafeCifarBatchError
        (a ValueError and a :class:`pickle.UnpicklingError`) If the file asks for code to run (a global, an
        opcode or a call a CIFAR-10 batch never needs); nothing was run.
    art_fisher.data.CifarBatchError
        (a ValueError) For any other malformed batch: too large, not a pickle, missing keys, pixels that
        are not uint8 of shape (N, 3072) with N <= 10000, labels that are not N ints in 0..9.
    """
    data, labels = read_cifar10_batch(path)
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return x, labels


@nni.trace
class Cifar10Dataset(_ArrayDataset):
    """CIFAR-10 from the local python batches in ``data_dir`` (never downloaded).

    Parameters
    ----------
    data_dir : str
        Folder holding ``data_batch_1`` … ``data_batch_5`` and ``test_batch`` (the extracted
        ``cifar-10-batches-py``). Missing training batches are skipped with a warning; at least one is
        needed for ``"train"`` / ``"val"``.
    split : {"train", "val", "test"}
        ``"test"`` is ``test_batch``; ``"train"`` / ``"val"`` split the training batches.
    seed : int
        Seed of the train / val permutation.
    val_fraction : float
        Share of the training batches that goes to ``"val"``, in ``(0, 1)``.
    limit : int or None
        Keep only the first ``limit`` samples of the split.

    Raises
    ------
    ValueError
        For a bad argument.
    FileNotFoundError
        If the needed batch files are absent.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        split: Split = "train",
        *,
        seed: int = 0,
        val_fraction: float = 0.1,
        limit: int | None = None,
    ) -> None:
        if data_dir is None:
            raise ValueError("data_dir must name a folder with CIFAR-10 python batches; got None.")
        _check_split(split)
        _check_limit(limit)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction!r}.")
        folder = Path(data_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"data_dir must be a folder with CIFAR-10 python batches; got {data_dir!r}.")
        self.n_classes = 10
        if split == "test":
            if not (folder / CIFAR10_TEST_FILE).is_file():
                raise FileNotFoundError(f"{folder / CIFAR10_TEST_FILE} not found.")
            x, y = load_cifar10_batch(folder / CIFAR10_TEST_FILE)
            self._set(x, y, limit, split)
            return
        present = [folder / name for name in CIFAR10_TRAIN_FILES if (folder / name).is_file()]
        if not present:
            raise FileNotFoundError(f"no CIFAR-10 training batch (data_batch_1..5) in {folder}.")
        if len(present) < len(CIFAR10_TRAIN_FILES):
            logger.warning("Only %d of 5 CIFAR-10 training batches found in %s.", len(present), folder)
        parts = [load_cifar10_batch(p) for p in present]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        self._set(*_train_val(x, y, split, seed, val_fraction), limit, split)


def _train_val(
    x: np.ndarray, y: np.ndarray, split: str, seed: int, val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """The ``"train"`` or ``"val"`` part of an official training set: a permutation drawn from ``seed``."""
    perm = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, round(val_fraction * len(y)))
    idx = perm[n_val:] if split == "train" else perm[:n_val]
    return x[idx], y[idx]


@nni.trace
class MnistDataset(_ArrayDataset):
    """MNIST from the local files in ``data_dir`` (never downloaded), 28×28 grey images, 10 classes.

    Parameters
    ----------
    data_dir : str
        Folder holding ``mnist.npz`` (``x_train``, ``y_train``, ``x_test``, ``y_test``) or the four idx files
        (see :func:`art_fisher.data.load_mnist`), or the path of such an ``.npz`` file.
    split : {"train", "val", "test"}
        ``"test"`` is the official test set (10,000 images); ``"train"`` / ``"val"`` split the official
        training set (60,000 images).
    seed : int
        Seed of the train / val permutation.
    val_fraction : float
        Share of the official training set that goes to ``"val"``, in ``(0, 1)``.
    limit : int or None
        Keep only the first ``limit`` samples of the split.

    Attributes
    ----------
    x : Tensor of shape (N, 1, 28, 28), float32 in [0, 1]
    y : Tensor of shape (N,), int64
    n_classes : int
        Always 10.

    Raises
    ------
    ValueError
        For a bad argument or a malformed file (the message names the file).
    FileNotFoundError
        If neither ``mnist.npz`` nor the idx files are in ``data_dir``.
    """

    def __init__(
        self,
        data_dir: str,
        split: Split = "train",
        *,
        seed: int = 0,
        val_fraction: float = 0.1,
        limit: int | None = None,
    ) -> None:
        _check_split(split)
        _check_limit(limit)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction!r}.")

        self.n_classes = 10
        data = load_mnist(Path(data_dir).expanduser(), split="test" if split == "test" else "train")
        x, y = (data.x, data.y) if split == "test" else _train_val(data.x, data.y, split, seed, val_fraction)
        self._set(x, y, limit, split)


def check_dataset(name: str, data_dir: str | None, *, arg: str = "data_dir") -> None:
    """Check a data set name and its folder before any work (nothing is read).

    Parameters
    ----------
    name : str
        A name from :data:`DATASETS`.
    data_dir : str or None
        The folder of the local files (needed by every set but ``"digits"``).
    arg : str
        The name of ``data_dir`` in the caller's interface, for the messages.

    Raises
    ------
    TypeError
        If ``name`` is not a str or ``data_dir`` is not a path.
    ValueError
        If ``name`` is not in :data:`DATASETS`, or a file-based set has no folder.
    """
    check_choice(name, "dataset", DatasetName)
    check_path(data_dir, arg, optional=True)
    if name == "digits":
        return
    what = "mnist.npz or the MNIST idx files" if name == "mnist" else "CIFAR-10 python batches"
    if data_dir is None:
        raise ValueError(f"{arg} must name a folder of {what} for dataset {name!r}; got None.")
    path = Path(data_dir).expanduser()
    if not (path.is_dir() or (name == "mnist" and path.suffix == ".npz" and path.is_file())):
        raise ValueError(f"{arg} {data_dir!r} is not a folder (expected {what} for dataset {name!r}).")


def make_dataset(
    name: str,
    split: Split,
    *,
    data_dir: str | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> DigitsDataset | MnistDataset | Cifar10Dataset:
    """Build a data set by name: ``"digits"`` (embedded), ``"mnist"`` or ``"cifar10"`` (both need ``data_dir``).

    Raises
    ------
    ValueError
        For an unknown ``name``, or a file-based set without ``data_dir``.
    """
    if name == "digits":
        return DigitsDataset(split, seed=seed, limit=limit)
    check_choice(name, "dataset", DatasetName)
    if data_dir is None:
        raise ValueError(f"data_dir must be given for dataset {name!r} (a folder of its local files).")
    cls = MnistDataset if name == "mnist" else Cifar10Dataset
    return cls(data_dir, split, seed=seed, limit=limit)
