"""A user's image data set in one ``.npz`` file: ``x_train``, ``y_train``, ``x_test``, ``y_test``.

The file is what ``np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)`` (or ``savez_compressed``)
writes:

- ``x_train``, ``x_test``: images of shape ``(N, C, H, W)`` (channels first), either ``uint8`` (0 … 255, scaled
  to ``[0, 1]`` here) or floating point already in ``[0, 1]``; both splits of one ``(C, H, W)``;
- ``y_train``, ``y_test``: integer labels of shape ``(N,)``, or one-hot rows of shape ``(N, K)``.

Nothing in the file is trusted. Before any array is allocated: the archive may hold only those four ``.npy``
members, each once, neither encrypted nor compressed with anything but deflate; each member's ``.npy`` header
is read on its own and its shape and dtype checked; the bytes it announces must be the member's declared
size, which deflate can produce from the member's compressed bytes (at most 1032 : 1), and all arrays
together, with the float32 copy of the images, must fit ``max_bytes``. Arrays are read with
``allow_pickle=False`` from their own member only. Pixel ranges, finite values and labels are checked after
reading. Every refusal is a :class:`ValueError` whose message starts with the file's path.
"""

from __future__ import annotations

import math
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from art_fisher.data._loaders import Dataset
from art_fisher.utils import check_int

#: Memory the arrays of one file may take once loaded (the images as float32 included): 8 GiB.
DEFAULT_MAX_BYTES = 8 * 2**30
_KEYS = ("x_train", "y_train", "x_test", "y_test")
_MEMBERS = tuple(f"{key}.npy" for key in _KEYS)
_DEFLATE_MAX_RATIO = 1032
#: Channel counts that look like a channels-last layout when they sit on the last axis instead.
_CHANNEL_COUNTS = (1, 3, 4)
#: Classes a one-hot label row may have (the many-class Fisher options reach far beyond ImageNet's 1000).
_MAX_CLASSES = 100_000


@dataclass(frozen=True)
class _Header:
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int


def _check_zip_info(info: zipfile.ZipInfo, path: Path) -> None:
    name = info.filename[:60]
    if info.flag_bits & 0x1:
        raise ValueError(f"{path}: member {name!r} is encrypted; expected a plain np.savez archive.")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(
            f"{path}: member {name!r} uses zip compression method {info.compress_type}; expected stored (0) or "
            "deflated (8), as np.savez and np.savez_compressed write."
        )
    stored = info.compress_type == zipfile.ZIP_STORED
    limit = info.compress_size if stored else _DEFLATE_MAX_RATIO * info.compress_size + 64
    if info.file_size > limit:
        raise ValueError(
            f"{path}: member {name!r} declares {info.file_size} bytes, more than its {info.compress_size} "
            f"{'stored' if stored else 'deflated'} bytes can hold."
        )


def _check_members(archive: zipfile.ZipFile, path: Path) -> None:
    names = archive.namelist()
    shown = [name[:60] for name in names[:8]]
    if len(names) != len(set(names)):
        raise ValueError(f"{path}: the archive holds a member name twice (one would shadow the other); {shown}.")
    unexpected = [name[:60] for name in names if name not in _MEMBERS]
    missing = [key for key, member in zip(_KEYS, _MEMBERS, strict=True) if member not in names]
    if unexpected or missing:
        raise ValueError(
            f"{path}: expected exactly the arrays {list(_KEYS)} (np.savez(path, x_train=..., y_train=..., "
            f"x_test=..., y_test=...)); missing {missing}, unexpected members {unexpected[:5]}."
        )
    for info in archive.infolist():
        _check_zip_info(info, path)


def _read_header(archive: zipfile.ZipFile, key: str, path: Path) -> _Header:
    info = archive.getinfo(f"{key}.npy")
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise ValueError(f"unsupported .npy format version {version}")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(member)
            header_size = member.tell()
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile, RuntimeError, NotImplementedError) as exc:
        raise ValueError(f"{path}: cannot read the .npy header of {key!r} ({str(exc)[:200]}).") from exc
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"{path}: {key} must be a plain numeric array; its header says dtype {dtype}.")
    nbytes = math.prod(shape) * dtype.itemsize
    if header_size + nbytes != info.file_size:
        raise ValueError(
            f"{path}: {key}'s header announces {dtype} {tuple(shape)} ({nbytes} bytes of data), but the member "
            f"declares {info.file_size - header_size} bytes of data."
        )
    return _Header(tuple(int(s) for s in shape), dtype, nbytes)


def _check_image_header(key: str, header: _Header, path: Path) -> None:
    shape, dtype = header.shape, header.dtype
    if dtype != np.uint8 and dtype.kind != "f":
        raise ValueError(f"{path}: {key} must be uint8 or floating point; its header says {dtype}.")
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(
            f"{path}: {key} must have shape (N, C, H, W) with every size >= 1 (channels first); its header says "
            f"{shape}."
        )
    if shape[-1] in _CHANNEL_COUNTS and shape[1] not in _CHANNEL_COUNTS:
        raise ValueError(
            f"{path}: {key} of shape {shape} looks channels-last (N, H, W, C); expected (N, C, H, W): "
            "x.transpose(0, 3, 1, 2)."
        )


def _check_label_header(key: str, header: _Header, n_images: int, path: Path) -> None:
    shape, dtype = header.shape, header.dtype
    one_hot = len(shape) == 2 and 2 <= shape[1] <= _MAX_CLASSES and dtype.kind in "iuf"
    if not (one_hot or (len(shape) == 1 and dtype.kind in "iu")) or shape[0] != n_images:
        raise ValueError(
            f"{path}: {key} must hold {n_images} integer labels of shape ({n_images},) or one-hot rows of shape "
            f"({n_images}, K) with 2 <= K <= {_MAX_CLASSES}; its header says {dtype} {shape}."
        )


def _check_headers(headers: dict[str, _Header], path: Path, max_bytes: int) -> None:
    for split in ("train", "test"):
        _check_image_header(f"x_{split}", headers[f"x_{split}"], path)
        _check_label_header(f"y_{split}", headers[f"y_{split}"], headers[f"x_{split}"].shape[0], path)
    if headers["x_train"].shape[1:] != headers["x_test"].shape[1:]:
        raise ValueError(
            f"{path}: x_train's images are {headers['x_train'].shape[1:]} but x_test's are "
            f"{headers['x_test'].shape[1:]}; expected one (C, H, W)."
        )
    if headers["y_train"].shape[1:] != headers["y_test"].shape[1:]:
        raise ValueError(
            f"{path}: y_train {headers['y_train'].shape} and y_test {headers['y_test'].shape} must both be integer "
            "labels or both one-hot rows of one width."
        )
    images_f32 = sum(4 * math.prod(headers[k].shape) for k in ("x_train", "x_test"))
    total = sum(h.nbytes for h in headers.values()) + images_f32
    if total > max_bytes:
        raise ValueError(
            f"{path}: its arrays need {total} bytes once loaded (the images as float32 included); max_bytes is "
            f"{max_bytes}."
        )


def _images(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    if x.dtype == np.uint8:
        out = np.empty(x.shape, dtype=np.float32)
        np.divide(x, np.float32(255.0), out=out)
        return out
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: {key} holds NaN or infinite pixels; expected floats in [0, 1].")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{path}: {key} holds pixels from {low:.4g} to {high:.4g}; expected floats in [0, 1] (or uint8 0..255)."
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray, key: str, path: Path) -> np.ndarray:
    if y.ndim == 1:
        if len(y) and int(y.min()) < 0:
            raise ValueError(f"{path}: {key} holds the negative label {int(y.min())}; expected labels >= 0.")
        if len(y) and int(y.max()) >= _MAX_CLASSES:
            raise ValueError(f"{path}: {key} holds the label {int(y.max())}; expected labels < {_MAX_CLASSES}.")
        return y.astype(np.int64)
    valid = np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()
    if not valid:
        raise ValueError(f"{path}: {key} of shape {y.shape} must be one-hot: rows of 0s with exactly one 1.")
    return np.argmax(y, axis=1).astype(np.int64)


def _dataset_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:40] or "npz"


def load_npz(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Dataset, Dataset]:
    """The training and test splits of a user's ``.npz`` file (layout and checks in the module docstring).

    Parameters
    ----------
    path : str or Path
        The ``.npz`` file.
    max_bytes : int
        Memory the loaded arrays may take, the float32 images included; checked from the headers, before
        any array is read.

    Returns
    -------
    train, test : Dataset
        Images as float32 ``(N, C, H, W)`` in ``[0, 1]``, integer labels ``(N,)``; ``n_classes`` is one more
        than the largest label of either split (the one-hot width for one-hot labels); ``name`` is the file's
        stem.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    ValueError
        If the file is not such an archive, announces more than ``max_bytes``, or holds pixels outside
        ``[0, 1]`` or malformed labels; the message starts with the path.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> rng = np.random.default_rng(0)
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.npz")
    >>> np.savez(path, x_train=rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8), y_train=np.arange(6) % 3,
    ...          x_test=rng.random((2, 3, 4, 4), dtype=np.float32), y_test=np.array([0, 2]))
    >>> train, test = load_npz(path)
    >>> train.x.shape, train.x.dtype, test.n_classes
    ((6, 3, 4, 4), dtype('float32'), 3)
    """
    path = Path(path)
    check_int(max_bytes, "max_bytes", low=1)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist or is not a regular file"
        raise FileNotFoundError(f"data file {path} {what}; expected an .npz with x_train, y_train, x_test, y_test.")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_members(archive, path)
            headers = {key: _read_header(archive, key, path) for key in _KEYS}
            _check_headers(headers, path, max_bytes)
            arrays = {}
            for key in _KEYS:
                with archive.open(f"{key}.npy") as member:
                    arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, RuntimeError, NotImplementedError) as exc:
        raise ValueError(f"{path}: cannot read it as a numpy .npz archive ({str(exc)[:200]}).") from exc
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read it as a numpy .npz archive ({str(exc)[:200]}).") from exc
    labels = {split: _labels(arrays[f"y_{split}"], f"y_{split}", path) for split in ("train", "test")}
    if headers["y_train"].shape[1:]:
        n_classes = headers["y_train"].shape[1]
    else:
        n_classes = 1 + max(int(labels[s].max()) for s in ("train", "test"))
    if n_classes < 2:
        raise ValueError(f"{path}: every label is 0; expected at least two classes.")
    name = _dataset_name(path)
    train, test = (
        Dataset(x=_images(arrays[f"x_{s}"], f"x_{s}", path), y=labels[s], name=name, n_classes=n_classes)
        for s in ("train", "test")
    )
    return train, test
