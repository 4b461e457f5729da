"""A user's .npz data set: layouts read right, every malformed or oversized file refused before allocation."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from art_fisher.data import load_npz


def _arrays(seed=0, n_train=10, n_test=4, shape=(3, 5, 6), n_classes=4, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        make = lambda n: rng.integers(0, 256, (n, *shape), dtype=np.uint8)  # noqa: E731
    else:
        make = lambda n: rng.random((n, *shape)).astype(dtype)  # noqa: E731
    return {
        "x_train": make(n_train),
        "y_train": np.arange(n_train) % n_classes,
        "x_test": make(n_test),
        "y_test": np.arange(n_test) % n_classes,
    }


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def _write_members(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_uint8_images_are_scaled_and_labels_kept(tmp_path, compressed):
    arrays = _arrays()
    path = tmp_path / "data.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    train, test = load_npz(path)
    np.testing.assert_array_equal(train.x, arrays["x_train"].astype(np.float32) / np.float32(255.0))
    np.testing.assert_array_equal(test.y, arrays["y_test"])
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert train.n_classes == test.n_classes == 4 and train.input_shape == (3, 5, 6) and train.name == "data"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_images_and_one_hot_labels(tmp_path, dtype):
    arrays = _arrays(dtype=dtype)
    for split in ("train", "test"):
        arrays[f"y_{split}"] = np.eye(7, dtype=np.float32)[arrays[f"y_{split}"]]
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    train, test = load_npz(path)
    np.testing.assert_array_equal(train.x, arrays["x_train"].astype(np.float32))
    np.testing.assert_array_equal(test.y, np.argmax(arrays["y_test"], axis=1))
    assert train.n_classes == 7  # the one-hot width, even where the last classes have no example


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x_train": np.zeros((4, 5, 6), np.uint8)}, r"shape \(N, C, H, W\)"),
        ({"x_train": np.zeros((10, 8, 8, 3), np.uint8)}, "channels-last"),
        ({"x_train": np.zeros((10, 3, 5, 6), np.int32)}, "uint8 or floating point"),
        ({"x_test": np.zeros((4, 3, 5, 7), np.uint8)}, "expected one"),
        ({"y_train": np.zeros(9, np.int64)}, "10 integer labels"),
        ({"y_train": np.zeros(10, np.float32)}, "integer labels"),
        ({"y_train": -np.ones(10, np.int64)}, "negative label"),
        ({"y_train": np.zeros((10, 3), np.int64)}, "one-hot"),
        ({"x_train": np.full((10, 3, 5, 6), 1.5, np.float32)}, r"pixels from 1\.5 to 1\.5"),
        ({"x_train": np.full((10, 3, 5, 6), np.nan, np.float32)}, "NaN or infinite"),
        ({"x_train": np.zeros((0, 3, 5, 6), np.uint8), "y_train": np.zeros(0, np.int64)}, "every size >= 1"),
        ({"y_train": np.zeros(10, np.int64), "y_test": np.zeros(4, np.int64)}, "at least two classes"),
    ],
)
def test_malformed_arrays_are_refused_naming_the_file(tmp_path, change, message):
    arrays = {**_arrays(), **change}
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message) as info:
        load_npz(path)
    assert str(info.value).startswith(str(path))


def test_wrong_members_and_pickled_arrays_are_refused(tmp_path):
    arrays = _arrays()
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    path = _write_members(tmp_path / "extra.npz", {**members, "x_train": b"raw"})
    with pytest.raises(ValueError, match="unexpected members"):
        load_npz(path)
    path = _write_members(tmp_path / "missing.npz", {k: v for k, v in members.items() if k != "y_test.npy"})
    with pytest.raises(ValueError, match=r"missing \['y_test'\]"):
        load_npz(path)
    obj = np.empty(10, dtype=object)
    obj[:] = [0] * 10
    buf = io.BytesIO()
    np.lib.format.write_array(buf, obj, allow_pickle=True)
    path = _write_members(tmp_path / "pickle.npz", {**members, "y_train.npy": buf.getvalue()})
    with pytest.raises(ValueError, match="plain numeric array"):
        load_npz(path)


def test_encrypted_flag_and_unknown_compression_are_refused(tmp_path):
    members = {f"{k}.npy": _npy(v) for k, v in _arrays().items()}
    path = _write_members(tmp_path / "data.npz", members)
    raw = bytearray(path.read_bytes())
    # Local header (PK\3\4) and central directory (PK\1\2) records of the first member.
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    encrypted = bytearray(raw)
    encrypted[local + 6] |= 1
    encrypted[central + 8] |= 1
    (tmp_path / "encrypted.npz").write_bytes(bytes(encrypted))
    with pytest.raises(ValueError, match="encrypted"):
        load_npz(tmp_path / "encrypted.npz")
    bzip = bytearray(raw)
    struct.pack_into("<H", bzip, local + 8, 99)
    struct.pack_into("<H", bzip, central + 10, 99)
    (tmp_path / "method.npz").write_bytes(bytes(bzip))
    with pytest.raises(ValueError, match="compression method 99"):
        load_npz(tmp_path / "method.npz")


def test_header_announcing_more_than_the_member_is_refused_before_allocation(tmp_path):
    arrays = _arrays()
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    # A header that claims 10**5 images of the declared size, over the small member's real data.
    big = _npy(np.zeros((100_000, 3, 5, 6), np.uint8))[:128]
    members["x_train.npy"] = big + b"\0" * 900
    path = _write_members(tmp_path / "lying.npz", members)
    with pytest.raises(ValueError, match="declares"):
        load_npz(path)


def test_bomb_is_refused_by_max_bytes_before_reading(tmp_path):
    arrays = _arrays(shape=(3, 64, 64))
    # 49 MB of a repeated 1 KB pattern deflate to a few hundred KB.
    pattern = np.random.default_rng(1).integers(0, 256, 1024, dtype=np.uint8)
    arrays["x_train"] = np.tile(pattern, 4000 * 3 * 4).reshape(4000, 3, 64, 64)
    arrays["y_train"] = np.arange(4000) % 4
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, **arrays)
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="max_bytes"):
            load_npz(path, max_bytes=10_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


def test_missing_file_and_not_a_zip(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="cannot read it as a numpy .npz archive"):
        load_npz(tmp_path / "text.npz")
    with pytest.raises(ValueError, match="max_bytes"):
        load_npz(tmp_path / "text.npz", max_bytes=0)
