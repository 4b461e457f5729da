"""The one CIFAR-10 batch reader of both packages (art_fisher.data._cifar_batch): real layouts load, hostile
files are refused with the file's name and without allocating what they declare."""

from __future__ import annotations

import os
import pickle
import struct
import tracemalloc

import numpy as np
import pytest

from art_fisher.data._cifar_batch import (
    MAX_BATCH_FILE_BYTES,
    CifarBatchError,
    UnsafeCifarBatchError,
    read_cifar10_batch,
)

MB = 2**20


def _batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"synthetic",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _write(path, obj, protocol=2):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as the official files store it: pickled by Python 2 (py2 str keys and raw data)."""

    def py2str(raw: bytes) -> bytes:
        return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw

    n = len(labels)
    out = [
        b"\x80\x02}(",
        py2str(b"data"),
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85",
        py2str(b"b"),
        b"\x87R(K\x01J" + struct.pack("<i", n) + b"M\x00\x0c\x86cnumpy\ndtype\n",
        py2str(b"u1"),
        b"K\x00K\x01\x87R(K\x03",
        py2str(b"|"),
        b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89",
        py2str(data.tobytes()),
        b"tb",
        py2str(b"labels"),
        b"](",
        *(b"K" + bytes([v]) for v in labels),
        b"eu.",
    ]
    return b"".join(out)


def _traced_peak(fn) -> tuple[BaseException | None, int]:
    """Run fn; return what it raised and the peak of traced Python / numpy allocations (bytes) meanwhile."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    error = None
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        error = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return error, peak


# ------------------------------------------------------------------------------------ real layouts
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batches_pickled_by_python_3_load(tmp_path, protocol):
    batch = _batch(5)
    data, labels = read_cifar10_batch(_write(tmp_path / "b", batch, protocol))
    np.testing.assert_array_equal(data, batch[b"data"])
    np.testing.assert_array_equal(labels, batch[b"labels"])
    assert data.dtype == np.uint8 and data.strides == (3072, 1) and labels.dtype == np.int64


def test_the_official_python_2_layout_loads(tmp_path):
    batch = _batch(3)
    path = tmp_path / "data_batch_1"
    path.write_bytes(_py2_batch(batch[b"data"], batch[b"labels"]))
    data, labels = read_cifar10_batch(path)
    np.testing.assert_array_equal(data, batch[b"data"])
    np.testing.assert_array_equal(labels, batch[b"labels"])


def test_labels_as_numpy_arrays_or_scalars_load(tmp_path):
    batch = _batch(4)
    expected = list(batch[b"labels"])
    batch[b"labels"] = np.array(expected, dtype=">i8")  # big-endian: a dtype state setting the byte order
    np.testing.assert_array_equal(read_cifar10_batch(_write(tmp_path / "a", batch))[1], expected)
    batch[b"labels"] = [np.int32(v) for v in expected]
    np.testing.assert_array_equal(read_cifar10_batch(_write(tmp_path / "b", batch))[1], expected)


# ------------------------------------------------------------------------------ content checks
@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({b"labels": [0, 1, 2, 57]}, r"labels in 0\.\.9; got values from 0 to 57"),
        ({b"labels": [0, -3, 2, 1]}, r"labels in 0\.\.9; got values from -3 to 2"),
        ({b"labels": [0, 1, 2]}, r"4 integers"),
        ({b"labels": [0, 1, 2, 3.0]}, r"4 integers"),
        ({b"labels": [True, 1, 2, 3]}, r"4 integers"),
        ({b"data": np.random.default_rng(0).random((4, 3072))}, r"uint8 of shape \(N, 3072\).*got float64"),
        ({b"data": np.zeros((4, 3072), np.int64)}, r"uint8 .*got int64"),
        ({b"data": np.zeros((4, 100), np.uint8)}, r"\(N, 3072\).*got uint8 \(4, 100\)"),
        ({b"data": np.zeros((0, 3072), np.uint8)}, r"1 <= N <= 10000"),
        ({b"data": np.zeros((3072, 4), np.uint8).T}, r"C-contiguous.*strides \(1, 4\)"),
        ({b"data": [[0] * 3072] * 4}, r"uint8 of shape .*got list"),
    ],
)
def test_malformed_content_is_a_value_error_naming_the_file(tmp_path, change, match):
    path = _write(tmp_path / "test_batch", {**_batch(4), **change})
    with pytest.raises(CifarBatchError, match=rf"test_batch: .*{match}"):
        read_cifar10_batch(path)


def test_more_than_10000_images_is_refused(tmp_path):
    path = _write(
        tmp_path / "data_batch_1", {b"data": np.zeros((10_001, 3072), np.uint8), b"labels": [0] * 10_001}, protocol=4
    )
    with pytest.raises(CifarBatchError, match=r"data_batch_1: .*1 <= N <= 10000; got uint8 \(10001, 3072\)"):
        read_cifar10_batch(path)


def test_not_a_pickle_missing_file_and_wrong_keys(tmp_path):
    (tmp_path / "garbage").write_bytes(b"\x80\x02}q\x00(")
    with pytest.raises(CifarBatchError, match="garbage: not a CIFAR-10 python batch"):
        read_cifar10_batch(tmp_path / "garbage")
    with pytest.raises(FileNotFoundError, match="missing"):
        read_cifar10_batch(tmp_path / "missing")
    with pytest.raises(CifarBatchError, match="expected keys b'data' and b'labels'"):
        read_cifar10_batch(_write(tmp_path / "keys", {b"pixels": 1}))
    with pytest.raises(CifarBatchError, match="expected a pickled dict"):
        read_cifar10_batch(_write(tmp_path / "list", [1, 2]))


# ------------------------------------------------------------------------------ hostile files
class _ZeroStride:
    """The memory bomb: numpy.ndarray(shape, uint8, buffer=b"\\0", strides=(0, 0)) declares any size."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self):
        return (np.ndarray, ((self.n, 3072), np.dtype("u1"), b"\0", 0, (0, 0)))


def test_a_200_byte_file_declaring_a_million_images_is_refused_before_allocating(tmp_path):
    path = _write(tmp_path / "data_batch_1", {b"data": _ZeroStride(10**6), b"labels": [0]})
    assert path.stat().st_size < 250
    error, peak = _traced_peak(lambda: read_cifar10_batch(path))
    assert isinstance(error, UnsafeCifarBatchError) and isinstance(error, ValueError)
    assert str(error).startswith(f"{path}: not a CIFAR-10 python batch: refusing to call numpy.ndarray")
    assert peak < MB  # 10^6 images would be 3 GB as uint8, 12 GB as float32


class _Call:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (_Call(os.system, "echo pwned"), r"refusing to load global (posix|os)\.system"),
        (_Call(eval, "1"), r"refusing to load global (__builtin__|builtins)\.eval"),
        (_Call(bytes, 10**12), r"refusing bytes\(\.\.\.\) with arguments"),
        (_Call(np.dtype, "O"), r"refusing dtype dtype\('O'\)"),
        (_Call(np.dtype, "V8"), r"refusing dtype dtype\('V8'\)"),
        (_Call(np.frombuffer, b"\0" * 8), r"refusing to load global numpy.*frombuffer"),
    ],
)
def test_foreign_globals_and_calls_are_refused(tmp_path, payload, match):
    path = _write(tmp_path / "test_batch", {b"data": payload, b"labels": [0]})
    with pytest.raises(UnsafeCifarBatchError, match=match) as info:
        read_cifar10_batch(path)
    assert isinstance(info.value, pickle.UnpicklingError) and str(path) in str(info.value)


def _replace_once(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert raw.count(old) >= 1
    return raw.replace(old, new, 1)


def test_a_dtype_state_claiming_python_objects_is_refused(tmp_path):
    """dtype('u1').__setstate__ can set flags saying the raw bytes hold object pointers; never run it."""
    raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=2)
    # the dtype's state ends in its flags, K\x00 (0): make them 0x3f (NPY_ITEM_HASOBJECT | REFCOUNT ...)
    hostile = _replace_once(raw, b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00", b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x3f")
    path = tmp_path / "test_batch"
    path.write_bytes(hostile)
    data, _ = read_cifar10_batch(path)  # only the byte order is taken from a dtype state
    assert not data.dtype.hasobject and data.dtype == np.uint8
    fields = _replace_once(raw, b"NNNJ\xff\xff\xff\xff", b"N(X\x01\x00\x00\x00at}NJ\xff\xff\xff\xff")
    path.write_bytes(fields)
    with pytest.raises(UnsafeCifarBatchError, match="refusing numpy dtype state"):
        read_cifar10_batch(path)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x80\x02cnumpy\ndtype\nq\x00)\x81.", r"opcode b'\\x81'"),  # NEWOBJ
        (b"\x80\x02\x82\x01.", r"opcode b'\\x82'"),  # EXT1
        (b"\x80\x02(ios\nsystem\n.", r"opcode b'i'"),  # INST
        (b"\x80\x02P0\n.", r"opcode b'P'"),  # PERSID
        (b"\x80\x05\x97.", r"opcode b'\\x97'"),  # NEXT_BUFFER
    ],
)
def test_opcodes_a_batch_never_uses_are_refused(tmp_path, raw, match):
    (tmp_path / "b").write_bytes(raw)
    with pytest.raises(UnsafeCifarBatchError, match=match):
        read_cifar10_batch(tmp_path / "b")


@pytest.mark.parametrize(
    "raw",
    [
        b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"x" * 16 + b".",  # BINBYTES8 declaring 1 TiB
        b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"x" * 16 + b".",  # BINUNICODE8 declaring 1 TiB
        b"\x80\x02K\x01r\xff\xff\xff\x7f.",  # LONG_BINPUT at memo index 2^31 (the C unpickler sizes an array)
        b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"}.",  # FRAME declaring 1 TiB
    ],
    ids=["bytes8", "unicode8", "memo-index", "frame"],
)
def test_declared_lengths_allocate_nothing(tmp_path, raw):
    (tmp_path / "b").write_bytes(raw)
    error, peak = _traced_peak(lambda: read_cifar10_batch(tmp_path / "b"))
    assert isinstance(error, CifarBatchError) and str(tmp_path / "b") in str(error)
    assert peak < MB


def test_array_state_larger_than_its_bytes_is_refused(tmp_path):
    raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=4)
    hostile = _replace_once(raw, b"K\x01M\x00\x0c\x86", b"J\x40\x42\x0f\x00M\x00\x0c\x86")  # shape (10^6, 3072)
    (tmp_path / "b").write_bytes(hostile)
    error, peak = _traced_peak(lambda: read_cifar10_batch(tmp_path / "b"))
    assert isinstance(error, CifarBatchError) and "needs 3072000000 bytes; the file holds 3072" in str(error)
    assert peak < MB


def test_files_over_the_size_limit_are_not_read(tmp_path):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as fh:
        fh.truncate(MAX_BATCH_FILE_BYTES + 1)  # sparse: no disk used
    error, peak = _traced_peak(lambda: read_cifar10_batch(path))
    assert isinstance(error, CifarBatchError) and f"{path}: {MAX_BATCH_FILE_BYTES + 1} bytes" in str(error)
    assert peak < MB
