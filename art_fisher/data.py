"""Data sets: the embedded scikit-learn digits (default) and local MNIST / CIFAR-10 files.

Nothing is ever downloaded. Images come as float32 arrays of shape ``(N, C, H, W)`` scaled to
``[0, 1]`` and integer labels of shape ``(N,)``.

Local files
-----------
MNIST
    Either the four idx files of the original distribution, plain or gzip-compressed
    (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
    ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``), or one ``mnist.npz`` holding
    ``x_train``, ``y_train``, ``x_test``, ``y_test`` (the Keras layout). ``.npz`` files are read with
    ``allow_pickle=False``.
CIFAR-10
    The "python version" batches: ``data_batch_1`` … ``data_batch_5`` and ``test_batch``, either directly
    in ``data_dir`` or in its ``cifar-10-batches-py`` sub-folder. Each batch is a pickled dict with
    ``b"data"`` (uint8, 10000 × 3072, channel-major rows) and ``b"labels"``.

Security: a pickle can run arbitrary code when loaded. The CIFAR batches are therefore read with a
restricted unpickler (:class:`_CifarUnpickler`) that resolves only the handful of globals a CIFAR batch
needs to rebuild its numpy arrays (``numpy`` array reconstruction, ``numpy.ndarray``, ``numpy.dtype``, and
``_codecs.encode`` which Python 3 uses for ``bytes`` in protocol-2 pickles); any other global
(``os.system``, ``builtins.eval``, a class, …) raises :class:`pickle.UnpicklingError` before anything runs.
Plain :func:`pickle.load` is never used.
"""

from __future__ import annotations

import gzip
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "Dataset",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_mnist",
]

DATASETS = ("digits", "mnist", "cifar10")
_SPLITS = ("train", "test")
# Fraction of the 1797 digits kept for the test split (fixed, seeded, stratified).
_DIGITS_TEST_FRACTION = 0.25


@dataclass(frozen=True)
class Dataset:
    """Images and labels of one data set.

    Attributes
    ----------
    x : ndarray of shape (N, C, H, W), float32 in [0, 1]
    y : ndarray of shape (N,), int64
    name : str
    n_classes : int
    """

    x: np.ndarray
    y: np.ndarray
    name: str
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, ``(C, H, W)``."""
        return tuple(self.x.shape[1:])


def _canonical(x: np.ndarray) -> np.ndarray:
    """A C-ordered copy whose strides are the canonical ones for its shape, also on size-1 axes.

    ``a[:, None]`` gives the channel axis a stride of 0, which numpy still calls C-contiguous; torch
    then guesses a channels-last memory format for such tensors and convolution gradients come back in
    that layout. Rebuilding from a flat buffer gives every consumer ordinary ``(N, C, H, W)`` strides.
    """
    return np.ascontiguousarray(x).reshape(-1).copy().reshape(x.shape)


def _check_split(split: str | None) -> None:
    if split is not None and split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS} or None; got {split!r}.")


def load_digits(*, split: str | None = None) -> Dataset:
    """scikit-learn's 1797 8×8 grey-level digits, shape ``(N, 1, 8, 8)``, scaled to ``[0, 1]``.

    Parameters
    ----------
    split : {"train", "test"} or None
        ``None`` returns all 1797 images. ``"train"`` / ``"test"`` return a fixed stratified 75 % / 25 %
        partition (always the same, independent of any seed), so that a model trained on ``"train"``
        never sees a ``"test"`` image.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    _check_split(split)
    bunch = _sk_load_digits()
    x = _canonical((bunch.images.astype(np.float32) / 16.0)[:, None, :, :])
    y = bunch.target.astype(np.int64)
    if split is not None:
        from sklearn.model_selection import train_test_split

        idx_train, idx_test = train_test_split(
            np.arange(len(y)), test_size=_DIGITS_TEST_FRACTION, random_state=0, stratify=y
        )
        idx = np.sort(idx_train if split == "train" else idx_test)
        x, y = _canonical(x[idx]), y[idx]
    return Dataset(x=x, y=y, name="digits", n_classes=10)


# ----------------------------------------------------------------------------------------- MNIST

_MNIST_IDX = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_MAGIC_UBYTE = 0x08


def _find_file(data_dir: Path, stem: str) -> Path | None:
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Read one idx file (plain or gzip) holding unsigned bytes with ``ndim`` dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read it as an idx file ({exc}).") from exc
    if len(raw) < 4:
        raise ValueError(f"{path}: expected an idx file with a 4-byte magic number; got {len(raw)} bytes.")
    zero, dtype_code, file_ndim = raw[0] | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != _IDX_MAGIC_UBYTE or file_ndim != ndim:
        raise ValueError(
            f"{path}: expected an idx magic number 0x0000{_IDX_MAGIC_UBYTE:02x}{ndim:02x} (unsigned bytes, "
            f"{ndim} dimensions); got 0x{raw[:4].hex()}."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header (expected {header} bytes, got {len(raw)}).")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(
            f"{path}: the header announces shape {shape}, i.e. {expected} bytes in total; the file has "
            f"{len(raw)} bytes."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _mnist_from_idx(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_stem, lbl_stem = _MNIST_IDX[split]
    paths = [_find_file(data_dir, stem) for stem in (img_stem, lbl_stem)]
    for stem, path in zip((img_stem, lbl_stem), paths):
        if path is None:
            raise FileNotFoundError(
                f"MNIST {split} split: expected {data_dir / stem} (or {stem}.gz), or a mnist.npz with "
                f"x_{split}/y_{split}, in {data_dir}; none found."
            )
    images = _read_idx(paths[0], ndim=3)
    labels = _read_idx(paths[1], ndim=1)
    if len(images) != len(labels):
        raise ValueError(
            f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels; expected the same."
        )
    return images, labels


def _mnist_from_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    keys = (f"x_{split}", f"y_{split}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise ValueError(
                    f"{path}: expected arrays {list(keys)} (Keras mnist.npz layout); missing {missing}, "
                    f"found {sorted(npz.files)}."
                )
            images, labels = npz[keys[0]], npz[keys[1]]
    except (OSError, EOFError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read it as a numpy .npz archive ({exc}).") from exc
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{path}: expected {keys[0]} of shape (N, H, W) and {keys[1]} of shape (N,); got "
            f"{images.shape} and {labels.shape}."
        )
    return images, labels


def load_mnist(data_dir: str | Path, *, split: str = "train") -> Dataset:
    """MNIST from local files, shape ``(N, 1, 28, 28)`` scaled to ``[0, 1]``.

    Parameters
    ----------
    data_dir : str or Path
        Folder holding the idx files (plain or ``.gz``) or ``mnist.npz``; a path to an ``.npz`` file also
        works. The idx files win when both are present.
    split : {"train", "test"}
        Which part to return (60000 / 10000 images in the original distribution).

    Raises
    ------
    FileNotFoundError
        If neither the idx files nor an npz file is found; the message names the files looked for.
    ValueError
        If a file is malformed (wrong magic number, truncated, wrong arrays); the message names the file.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}; got {split!r}.")
    data_dir = Path(data_dir)
    if data_dir.is_file() and data_dir.suffix == ".npz":
        images, labels = _mnist_from_npz(data_dir, split)
    elif not data_dir.is_dir():
        raise FileNotFoundError(f"MNIST data_dir {data_dir} is neither a folder nor an .npz file.")
    elif _find_file(data_dir, _MNIST_IDX[split][0]) is None and (data_dir / "mnist.npz").is_file():
        images, labels = _mnist_from_npz(data_dir / "mnist.npz", split)
    else:
        images, labels = _mnist_from_idx(data_dir, split)
    _check_labels(labels, n_classes=10, where=str(data_dir))
    x = _canonical((images.astype(np.float32) / 255.0)[:, None, :, :])
    return Dataset(x=x, y=labels.astype(np.int64), name="mnist", n_classes=10)


# -------------------------------------------------------------------------------------- CIFAR-10

_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_ROW = 3 * 32 * 32


def _numpy_reconstruct():
    from numpy._core.multiarray import _reconstruct

    return _reconstruct


def _numpy_frombuffer():
    from numpy._core.numeric import _frombuffer

    return _frombuffer


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR-10 batch needs; everything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: __import__("codecs").encode,
    }

    def find_class(self, module: str, name: str):  # noqa: D102 (pickle API)
        resolver = self._ALLOWED.get((module, name))
        if resolver is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR-10 batch only needs numpy arrays"
            )
        return resolver()


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({exc}).") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict with b'data' and b'labels'; got {type(batch).__name__}.")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: expected keys b'data' and b'labels'; found {sorted(map(repr, batch))}.")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_ROW:
        raise ValueError(
            f"{path}: expected b'data' as uint8 of shape (N, {_CIFAR_ROW}); got {data.dtype} {data.shape}."
        )
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: expected {len(data)} integer labels in b'labels'; got {labels.dtype} {labels.shape}."
        )
    return data, labels


def load_cifar10(data_dir: str | Path, *, split: str = "train") -> Dataset:
    """CIFAR-10 from the local python-pickle batches, shape ``(N, 3, 32, 32)`` scaled to ``[0, 1]``.

    The batches are read with a restricted unpickler that only rebuilds numpy arrays (see the module
    docstring); a batch that asks for any other Python object is rejected.

    Parameters
    ----------
    data_dir : str or Path
        Folder holding ``data_batch_1`` … ``data_batch_5`` and ``test_batch``, or its parent holding
        ``cifar-10-batches-py/``.
    split : {"train", "test"}
        ``"train"``: the five data batches (50000 images); ``"test"``: ``test_batch`` (10000 images).

    Raises
    ------
    FileNotFoundError
        If a batch file is missing; the message names it.
    ValueError
        If a batch is not a CIFAR-10 batch (wrong content, foreign globals); the message names it.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}; got {split!r}.")
    data_dir = Path(data_dir)
    if (data_dir / "cifar-10-batches-py").is_dir():
        data_dir = data_dir / "cifar-10-batches-py"
    xs, ys = [], []
    for name in _CIFAR_FILES[split]:
        path = data_dir / name
        if not path.is_file():
            raise FileNotFoundError(
                f"CIFAR-10 {split} split: expected the python batch {path} "
                f"(files {list(_CIFAR_FILES[split])} from cifar-10-python.tar.gz); not found."
            )
        data, labels = _read_cifar_batch(path)
        xs.append(data)
        ys.append(labels)
    labels = np.concatenate(ys)
    _check_labels(labels, n_classes=10, where=str(data_dir))
    x = _canonical(np.concatenate(xs).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return Dataset(x=x, y=labels.astype(np.int64), name="cifar10", n_classes=10)


def _check_labels(labels: np.ndarray, *, n_classes: int, where: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{where}: expected labels in 0..{n_classes - 1}; got values from {labels.min()} to {labels.max()}."
        )


def load_dataset(name: str, *, data_dir: str | Path | None = None, split: str | None = None) -> Dataset:
    """Load one of :data:`DATASETS` by name.

    Parameters
    ----------
    name : {"digits", "mnist", "cifar10"}
        ``"digits"`` is embedded in scikit-learn; the others are read from ``data_dir``.
    data_dir : str or Path, optional
        Folder with the local files (required for ``"mnist"`` and ``"cifar10"``, ignored for digits).
    split : {"train", "test"} or None
        Which part; ``None`` means ``"train"`` for the file-based sets and all images for digits.

    Raises
    ------
    ValueError
        If ``name`` is unknown, or ``data_dir`` is missing for a file-based data set.
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}; got {name!r}.")
    _check_split(split)
    if name == "digits":
        return load_digits(split=split)
    if data_dir is None:
        raise ValueError(f"data_dir is required for dataset {name!r} (nothing is downloaded); got None.")
    loader = load_mnist if name == "mnist" else load_cifar10
    return loader(data_dir, split=split or "train")
