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

Security: nothing in these files is trusted. Declared sizes are checked against the format before
anything is allocated (idx headers: 28×28 images, at most 60000 / 10000 per split, read as a stream of
exactly the announced length, so a small ``.gz`` cannot inflate to gigabytes; npz: the archive may hold only
the four ``.npy`` members above, each once (no raw or shadowing member such as ``x_train`` next to
``x_train.npy``), and each array's ``.npy`` header is read from the archive and checked before its data,
which is read from that member only; CIFAR-10: see
:mod:`art_fisher.data`, which reads the pickles with a restricted unpickler, shared with
``nni_lease``, that runs no foreign code and refuses arrays larger than the file). Plain
:func:`pickle.load` is never used.
"""

from __future__ import annotations

import gzip
import logging
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from art_fisher.data._cifar_batch import read_cifar10_batch
from art_fisher.utils import check_choice

logger = logging.getLogger(__name__)

#: The data sets :func:`load_dataset` reads by name.
DatasetName = Literal["digits", "mnist", "cifar10"]
DATASETS: tuple[str, ...] = get_args(DatasetName)
Split = Literal["train", "test"]
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
    if split is not None:
        check_choice(split, "split", Split)


def load_digits(*, split: Split | None = None) -> Dataset:
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
#: The MNIST format: 28×28 images, at most 60000 (train) / 10000 (test) per split.
MNIST_SIDE = 28
MNIST_MAX_IMAGES = {"train": 60_000, "test": 10_000}
# Deflate expands at most 1032:1, so a .gz cannot hold more than this many bytes per byte of file.
_DEFLATE_MAX_RATIO = 1032


def _find_file(data_dir: Path, stem: str) -> Path | None:
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, *, shape_limits: tuple[int, ...], exact: tuple[bool, ...]) -> np.ndarray:
    """Read one idx file of unsigned bytes (plain or gzip), checking its header before reading the data.

    ``shape_limits[i]`` bounds dimension ``i`` (``exact[i]``: it must equal it). The data are read as a
    stream of exactly the announced length (a ``.gz`` is decompressed no further than that, plus one
    byte to detect trailing data), so memory never exceeds what a valid file of that header needs.
    """
    ndim = len(shape_limits)
    compressed = path.suffix == ".gz"
    try:
        file_size = path.stat().st_size
        with gzip.open(path, "rb") if compressed else open(path, "rb") as fh:
            magic = fh.read(4)
            if len(magic) < 4:
                raise ValueError(f"{path}: expected an idx file with a 4-byte magic number; got {len(magic)} bytes.")
            if magic[0] | magic[1] or magic[2] != _IDX_MAGIC_UBYTE or magic[3] != ndim:
                raise ValueError(
                    f"{path}: expected an idx magic number 0x0000{_IDX_MAGIC_UBYTE:02x}{ndim:02x} (unsigned bytes, "
                    f"{ndim} dimensions); got 0x{magic.hex()}."
                )
            dims = fh.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{path}: truncated idx header (expected {4 + 4 * ndim} bytes, got {4 + len(dims)}).")
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            for axis, (size, limit, equal) in enumerate(zip(shape, shape_limits, exact, strict=True)):
                if (size != limit) if equal else (size > limit):
                    want = f"= {limit}" if equal else f"<= {limit}"
                    raise ValueError(
                        f"{path}: the header announces shape {shape}; the MNIST format needs dimension {axis} {want}."
                    )
            header, expected = 4 + 4 * ndim, math.prod(shape)
            if not compressed and file_size != header + expected:
                raise ValueError(
                    f"{path}: the header announces shape {shape}, i.e. {header + expected} bytes in "
                    f"total; the file has {file_size} bytes."
                )
            if compressed and expected > _DEFLATE_MAX_RATIO * file_size:
                raise ValueError(
                    f"{path}: the header announces shape {shape} ({expected} bytes), more than a "
                    f"{file_size}-byte gzip file can hold."
                )
            payload = fh.read(expected)
            trailing = fh.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: cannot read it as an idx file ({exc}).") from exc
    if len(payload) != expected or trailing:
        held = f"only {header + len(payload)}" if len(payload) != expected else "more"
        raise ValueError(
            f"{path}: the header announces shape {shape}, i.e. {header + expected} bytes in total; "
            f"the {'decompressed ' if compressed else ''}file holds {held} bytes."
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def _mnist_from_idx(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_stem, lbl_stem = _MNIST_IDX[split]
    paths: list[Path] = []
    for stem in (img_stem, lbl_stem):
        path = _find_file(data_dir, stem)
        if path is None:
            raise FileNotFoundError(
                f"MNIST {split} split: expected {data_dir / stem} (or {stem}.gz), or a mnist.npz with "
                f"x_{split}/y_{split}, in {data_dir}; none found."
            )
        paths.append(path)
    n_max = MNIST_MAX_IMAGES[split]
    images = _read_idx(paths[0], shape_limits=(n_max, MNIST_SIDE, MNIST_SIDE), exact=(False, True, True))
    labels = _read_idx(paths[1], shape_limits=(n_max,), exact=(False,))
    if len(images) != len(labels):
        raise ValueError(
            f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels; expected the same."
        )
    _check_not_empty(len(images), where=f"{paths[0]} ({split} images)")
    _check_labels(labels, n_classes=10, where=str(paths[1]))
    return images, labels


_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_NPZ_MEMBERS = tuple(f"{array}_{split}.npy" for split in ("train", "test") for array in ("x", "y"))


def _npz_header(archive: zipfile.ZipFile, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``key`` in an npz archive, read from its ``.npy`` header (no data read)."""
    try:
        with archive.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(member)
    except (KeyError, ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read the header of array {key!r} ({str(exc)[:200]}).") from exc
    return shape, dtype


def _npz_members(archive: zipfile.ZipFile, path: Path, keys: tuple[str, str]) -> None:
    """Refuse archives that hold anything but the Keras layout's ``.npy`` members, each once."""
    names = archive.namelist()
    shown = [name[:60] for name in names[:10]]
    for info in archive.infolist():
        if info.flag_bits & 0x1:
            raise ValueError(f"{path}: member {info.filename[:60]!r} is encrypted; numpy archives are not.")
        if info.compress_type not in _ZIP_METHODS:
            raise ValueError(
                f"{path}: member {info.filename[:60]!r} uses zip compression method {info.compress_type}; "
                f"expected one of {sorted(_ZIP_METHODS)} (stored, deflated, bzip2, lzma)."
            )
    if len(names) != len(set(names)):
        raise ValueError(
            f"{path}: the archive holds a member name twice (one would shadow the other); members {shown}."
        )
    unexpected = [name for name in names if name not in _NPZ_MEMBERS]
    if unexpected:
        raw = [name for name in unexpected if name + ".npy" in _NPZ_MEMBERS]
        why = (
            f"member {raw[0][:60]!r} has no .npy suffix: numpy would read it instead of {raw[0][:60]}.npy "
            "(shadowing the array checked here) or as raw bytes"
            if raw
            else f"unexpected members {[n[:60] for n in unexpected[:5]]}"
        )
        raise ValueError(f"{path}: expected only {list(_NPZ_MEMBERS)} (Keras mnist.npz layout); {why}.")
    missing = [k for k in keys if f"{k}.npy" not in names]
    if missing:
        raise ValueError(
            f"{path}: expected arrays {list(keys)} (Keras mnist.npz layout); missing {missing}, found {shown}."
        )


def _mnist_from_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    keys = (f"x_{split}", f"y_{split}")
    n_max = MNIST_MAX_IMAGES[split]
    try:
        with zipfile.ZipFile(path) as archive:
            _npz_members(archive, path, keys)
            (x_shape, x_dtype), (y_shape, y_dtype) = (_npz_header(archive, k, path) for k in keys)
            if (
                x_dtype != np.uint8
                or len(x_shape) != 3
                or x_shape[1:] != (MNIST_SIDE, MNIST_SIDE)
                or x_shape[0] > n_max
            ):
                raise ValueError(
                    f"{path}: expected {keys[0]} as uint8 of shape (N, {MNIST_SIDE}, {MNIST_SIDE}) "
                    f"with N <= {n_max}; its header says {x_dtype} {x_shape}."
                )
            if y_dtype.kind not in "iu" or y_shape != x_shape[:1]:
                raise ValueError(
                    f"{path}: expected {keys[1]} as {x_shape[0]} integers; its header says {y_dtype} {y_shape}."
                )
            # Sizes checked: each checked member is read from its own header, at most what it announces.
            arrays = []
            for key in keys:
                with archive.open(f"{key}.npy") as member:
                    arrays.append(np.lib.format.read_array(member, allow_pickle=False))
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read it as a numpy .npz archive ({str(exc)[:200]}).") from exc
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read it as a numpy .npz archive ({str(exc)[:200]}).") from exc
    images, labels = arrays
    _check_not_empty(len(images), where=f"{path} ({keys[0]})")
    _check_labels(labels, n_classes=10, where=f"{path} ({keys[1]})")
    return images, labels


def load_mnist(data_dir: str | Path, *, split: Split = "train") -> Dataset:
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
        If a file is malformed (wrong magic number, truncated, wrong arrays, a header announcing sizes beyond
        the MNIST format or the file); the message names the file.
    """
    check_choice(split, "split", Split)
    data_dir = Path(data_dir)
    if data_dir.is_file() and data_dir.suffix == ".npz":
        images, labels = _mnist_from_npz(data_dir, split)
    elif not data_dir.is_dir():
        raise FileNotFoundError(f"MNIST data_dir {data_dir} is neither a folder nor an .npz file.")
    elif _find_file(data_dir, _MNIST_IDX[split][0]) is None and (data_dir / "mnist.npz").is_file():
        images, labels = _mnist_from_npz(data_dir / "mnist.npz", split)
    else:
        images, labels = _mnist_from_idx(data_dir, split)
    # One float32 array written in place (no float64 or stride-0 intermediates): 188 MB for the training split.
    x = np.empty((len(images), 1, MNIST_SIDE, MNIST_SIDE), dtype=np.float32)
    np.divide(images.reshape(x.shape), np.float32(255.0), out=x)
    return Dataset(x=x, y=labels.astype(np.int64), name="mnist", n_classes=10)


# -------------------------------------------------------------------------------------- CIFAR-10

_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def load_cifar10(data_dir: str | Path, *, split: Split = "train") -> Dataset:
    """CIFAR-10 from the local python-pickle batches, shape ``(N, 3, 32, 32)`` scaled to ``[0, 1]``.

    The batches are read with :func:`art_fisher.data.read_cifar10_batch`: a restricted unpickler
    that only rebuilds numpy arrays and checks every declared size against the file and the format
    (uint8 (N, 3072), N <= 10000, labels 0..9) before allocating; anything else is rejected.

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
        If a batch is not a CIFAR-10 batch (wrong content, foreign globals, declared sizes beyond the format
        or the file); the message names it.
    """
    check_choice(split, "split", Split)
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
        data, labels = read_cifar10_batch(path)
        xs.append(data)
        ys.append(labels)
    labels = np.concatenate(ys)
    x = _canonical(np.concatenate(xs).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return Dataset(x=x, y=labels.astype(np.int64), name="cifar10", n_classes=10)


def _check_not_empty(n: int, *, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` when a split holds no image (nothing could be trained or tested)."""
    if n == 0:
        raise ValueError(f"{where} holds 0 images; a data split needs at least one.")


def _check_labels(labels: np.ndarray, *, n_classes: int, where: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{where}: expected labels in 0..{n_classes - 1}; got values from {labels.min()} to {labels.max()}."
        )


def load_dataset(name: DatasetName, *, data_dir: str | Path | None = None, split: Split | None = None) -> Dataset:
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
    TypeError
        If ``name`` or ``split`` is not a string.
    ValueError
        If ``name`` is unknown, or ``data_dir`` is missing for a file-based data set.
    """
    check_choice(name, "name", DatasetName)
    _check_split(split)
    if name == "digits":
        return load_digits(split=split)
    if data_dir is None:
        raise ValueError(f"data_dir is required for dataset {name!r} (nothing is downloaded); got None.")
    loader = load_mnist if name == "mnist" else load_cifar10
    return loader(data_dir, split=split or "train")
