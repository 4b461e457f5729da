"""Data loaders: digits, and MNIST / CIFAR-10 from small synthetic files written in the real formats."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from art_fisher.data._loaders import load_cifar10, load_dataset, load_digits, load_mnist


# ------------------------------------------------------------------------------------ writers
def _idx_bytes(array: np.ndarray) -> bytes:
    """The idx format: 2 zero bytes, type code 0x08 (ubyte), ndim, big-endian int32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", s) for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path, array, *, compress=False):
    data = _idx_bytes(array)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _mnist_arrays(n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train": (
            rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n_train, dtype=np.uint8),
        ),
        "test": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8)),
    }


def _write_mnist_idx(folder, arrays, *, compress):
    names = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    for split, (images, labels) in arrays.items():
        _write_idx(folder / names[split][0], images, compress=compress)
        _write_idx(folder / names[split][1], labels, compress=compress)


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"synthetic batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _write_cifar(folder, n=4):
    """Protocol-2 pickles of dicts with bytes keys: the layout of cifar-10-batches-py."""
    batches = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        batches[name] = _cifar_batch(n, seed=i)
        with open(folder / name, "wb") as fh:
            pickle.dump(batches[name], fh, protocol=2)
    return batches


# -------------------------------------------------------------------------------------- digits
def test_digits_splits_are_disjoint_and_cover_everything():
    full, train, test = load_digits(), load_digits(split="train"), load_digits(split="test")
    assert full.x.shape == (1797, 1, 8, 8) and full.x.dtype == np.float32
    assert len(train.y) + len(test.y) == 1797 and len(test.y) == 450
    assert 0.0 <= full.x.min() and full.x.max() <= 1.0

    # train + test is a partition of the full set (as a multiset of (image, label) rows).
    def rows(ds):
        return sorted(r.tobytes() + bytes([lbl]) for r, lbl in zip(ds.x.reshape(len(ds.y), -1), ds.y, strict=False))

    assert rows(full) == sorted(rows(train) + rows(test))
    # Same split every call (no hidden randomness).
    np.testing.assert_array_equal(load_digits(split="test").x, test.x)


# --------------------------------------------------------------------------------------- MNIST
@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_round_trip(tmp_path, compress):
    arrays = _mnist_arrays()
    _write_mnist_idx(tmp_path, arrays, compress=compress)
    for split in ("train", "test"):
        ds = load_mnist(tmp_path, split=split)
        images, labels = arrays[split]
        assert ds.x.shape == (len(labels), 1, 28, 28) and ds.x.dtype == np.float32
        np.testing.assert_array_equal(ds.x[:, 0], images.astype(np.float32) / 255.0)
        np.testing.assert_array_equal(ds.y, labels.astype(np.int64))
        assert ds.name == "mnist" and ds.n_classes == 10


def test_mnist_npz_folder_and_file(tmp_path):
    arrays = _mnist_arrays()
    path = tmp_path / "mnist.npz"
    np.savez(
        path, x_train=arrays["train"][0], y_train=arrays["train"][1], x_test=arrays["test"][0], y_test=arrays["test"][1]
    )
    for where in (tmp_path, path):
        ds = load_mnist(where, split="test")
        np.testing.assert_array_equal(ds.x[:, 0] * 255.0, arrays["test"][0].astype(np.float32))
        np.testing.assert_array_equal(ds.y, arrays["test"][1])
    assert len(load_dataset("mnist", data_dir=tmp_path).y) == 12  # default split: train


def test_mnist_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, split="test")


def test_mnist_wrong_magic_names_the_file(tmp_path):
    _write_mnist_idx(tmp_path, _mnist_arrays(), compress=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(bad.read_bytes())
    raw[2] = 0x0D  # float32 type code instead of unsigned bytes
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*magic number"):
        load_mnist(tmp_path)


def test_mnist_truncated_file_names_it(tmp_path):
    _write_mnist_idx(tmp_path, _mnist_arrays(), compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*bytes"):
        load_mnist(tmp_path)


def test_mnist_corrupt_gzip_names_it(tmp_path):
    _write_mnist_idx(tmp_path, _mnist_arrays(), compress=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path)


def test_mnist_count_mismatch(tmp_path):
    arrays = _mnist_arrays()
    arrays["train"] = (arrays["train"][0], arrays["train"][1][:-1])
    _write_mnist_idx(tmp_path, arrays, compress=False)
    with pytest.raises(ValueError, match="12 images but .* 11 labels"):
        load_mnist(tmp_path)


def test_mnist_labels_out_of_range_name_the_file(tmp_path):
    arrays = _mnist_arrays()
    arrays["train"][1][3] = 12
    _write_mnist_idx(tmp_path, arrays, compress=False)
    with pytest.raises(
        ValueError, match=r"train-labels-idx1-ubyte: expected labels in 0\.\.9; got values from 0 to 12"
    ):
        load_mnist(tmp_path)
    np.savez(tmp_path / "mnist.npz", x_train=arrays["train"][0], y_train=arrays["train"][1])
    with pytest.raises(ValueError, match=r"mnist.npz \(y_train\): expected labels in 0\.\.9"):
        load_mnist(tmp_path / "mnist.npz")


def test_mnist_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"mnist.npz.*y_train"):
        load_mnist(tmp_path)


def test_mnist_npz_refuses_object_arrays(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.array([object()], dtype=object), y_train=np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match="mnist.npz"):
        load_mnist(tmp_path)


# ------------------------------------------------------------------------ MNIST: hostile headers
def _traced_peak(fn):
    """Run fn; return what it raised and the peak of traced Python / numpy allocations (bytes) meanwhile."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    error = None
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - returned to the test
        error = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return error, peak


def _idx_header(shape) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape)


def _gzip_bomb(path, shape, inflated_mib):
    """A gzip of a few MB that inflates to ``inflated_mib`` MiB: an idx header, then zeros (repeated members)."""
    zeros = bytes(2**20)
    member = gzip.compress(zeros, compresslevel=9)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(_idx_header(shape) + zeros, compresslevel=9))
        for _ in range(inflated_mib - 1):
            fh.write(member)


def test_mnist_gzip_bomb_is_read_no_further_than_its_header_announces(tmp_path):
    _write_mnist_idx(tmp_path, _mnist_arrays(), compress=True)
    bomb = tmp_path / "t10k-images-idx3-ubyte.gz"
    _gzip_bomb(bomb, (10_000, 28, 28), inflated_mib=2300)  # 2.3 GB inflated, like the probe's file
    assert bomb.stat().st_size < 3 * 2**20
    error, peak = _traced_peak(lambda: load_mnist(tmp_path, split="test"))
    assert isinstance(error, ValueError)
    assert str(error).startswith(
        f"{bomb}: the header announces shape (10000, 28, 28), i.e. 7840016 bytes in total; "
        "the decompressed file holds more bytes"
    )
    assert peak < 24 * 2**20  # the announced 7.8 MB (and gzip's buffers), not 2.3 GB


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2**32 - 1, 2**32 - 1, 2**32 - 1), r"shape \(4294967295, 4294967295, 4294967295\).*dimension 0 <= 60000"),
        ((60_001, 28, 28), r"dimension 0 <= 60000"),
        ((10, 32, 32), r"dimension 1 = 28"),
        ((10, 28, 2**31), r"dimension 2 = 28"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_mnist_header_beyond_the_format_names_the_file(tmp_path, shape, match, compress):
    """Dimensions whose product overflows int64 used to give `cannot reshape array of size 0`."""
    _write_mnist_idx(tmp_path, _mnist_arrays(), compress=compress)
    name = "train-images-idx3-ubyte" + (".gz" if compress else "")
    raw = _idx_header(shape) + bytes(100)
    (tmp_path / name).write_bytes(gzip.compress(raw) if compress else raw)
    error, peak = _traced_peak(lambda: load_mnist(tmp_path))
    assert isinstance(error, ValueError) and re.search(rf"{re.escape(str(tmp_path / name))}: .*{match}", str(error))
    assert peak < 2**20


def test_mnist_gzip_announcing_more_than_it_can_hold(tmp_path):
    _write_mnist_idx(tmp_path, _mnist_arrays(), compress=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header((60_000, 28, 28)) + bytes(10)))
    with pytest.raises(
        ValueError,
        match=r"train-images-idx3-ubyte.gz: the header announces shape \(60000, 28, 28\) "
        r"\(47040000 bytes\), more than a \d+-byte gzip file can hold",
    ):
        load_mnist(tmp_path)


def _npz_with_header(path, arrays: dict[str, tuple[tuple[int, ...], str, bytes]]):
    """An npz whose members carry the given .npy headers (shape, dtype) followed by the given bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, (shape, dtype, body) in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array_header_1_0(member, {"descr": dtype, "fortran_order": False, "shape": shape})
            archive.writestr(f"{key}.npy", member.getvalue() + body)


def test_mnist_npz_headers_are_checked_before_loading(tmp_path):
    path = tmp_path / "mnist.npz"
    _npz_with_header(path, {"x_train": ((10**9, 28, 28), "|u1", bytes(64)), "y_train": ((10**9,), "|u1", bytes(8))})
    error, peak = _traced_peak(lambda: load_mnist(path))
    assert isinstance(error, ValueError)
    assert str(error) == (
        f"{path}: expected x_train as uint8 of shape (N, 28, 28) with N <= 60000; its header says "
        "uint8 (1000000000, 28, 28)."
    )
    assert peak < 2**20  # np.load would have allocated the 784 GB the header declares before reading


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"x_train": np.zeros((2, 28, 28), np.float32), "y_train": np.zeros(2, np.uint8)},
            r"x_train as uint8.*float32",
        ),
        ({"x_train": np.zeros((2, 28, 28), np.uint8), "y_train": np.zeros(2, np.float64)}, r"y_train as 2 integers"),
        ({"x_train": np.zeros((2, 28, 28), np.uint8), "y_train": np.zeros(3, np.uint8)}, r"y_train as 2 integers"),
        (
            {"x_train": np.zeros((2, 32, 32), np.uint8), "y_train": np.zeros(2, np.uint8)},
            r"x_train as uint8 of shape \(N, 28, 28\).*\(2, 32, 32\)",
        ),
    ],
)
def test_mnist_npz_wrong_dtypes_and_shapes(tmp_path, arrays, match):
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(ValueError, match=rf"mnist.npz: expected {match}"):
        load_mnist(tmp_path)


def test_mnist_npz_that_is_not_a_zip(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "plain.npy").rename(tmp_path / "mnist.npz")
    with pytest.raises(ValueError, match="mnist.npz: cannot read it as a numpy .npz archive"):
        load_mnist(tmp_path)


_RSS_PROBE = """
import gzip, pickle, resource, sys
from pathlib import Path
import numpy as np
from art_fisher.data._loaders import load_cifar10, load_mnist

root = Path(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for load in (lambda: load_cifar10(root / "cifar", split="test"), lambda: load_mnist(root / "mnist", split="test"),
             lambda: load_mnist(root / "mnist.npz")):
    try:
        load()
        print("ACCEPTED")
    except ValueError as exc:
        print(str(exc)[:200])
print("GROWTH_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


class _ZeroStride:
    def __reduce__(self):
        return (np.ndarray, ((10**6, 3072), np.dtype("u1"), b"\0", 0, (0, 0)))


def test_hostile_files_do_not_grow_the_process(tmp_path):
    """Peak RSS of a fresh process loading the hostile files above (nni_lease reads CIFAR through the same
    art_fisher.data._cifar_batch; its own test measures the traced peak)."""
    (tmp_path / "cifar").mkdir()
    with open(tmp_path / "cifar" / "test_batch", "wb") as fh:
        pickle.dump({b"data": _ZeroStride(), b"labels": [0]}, fh, protocol=2)
    (tmp_path / "mnist").mkdir()
    _write_mnist_idx(tmp_path / "mnist", _mnist_arrays(), compress=True)
    _gzip_bomb(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", (10_000, 28, 28), inflated_mib=2300)
    _npz_with_header(
        tmp_path / "mnist.npz", {"x_train": ((10**9, 28, 28), "|u1", b""), "y_train": ((10**9,), "|u1", b"")}
    )
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
        timeout=300,
    )
    lines = out.stdout.splitlines()
    assert "ACCEPTED" not in lines and len(lines) == 4, out.stdout + out.stderr[-2000:]
    for line, name in zip(lines, ["test_batch", "t10k-images-idx3-ubyte.gz", "mnist.npz"], strict=False):
        assert name in line
    growth_mb = int(lines[-1].split()[1]) / 1024
    assert growth_mb < 64, lines  # declared: 3 GB (CIFAR), 2.3 GB inflated (gzip), 784 GB (npz)


# ------------------------------------------------------------------------------------ CIFAR-10
def test_cifar_round_trip(tmp_path):
    batches = _write_cifar(tmp_path)
    train = load_cifar10(tmp_path, split="train")
    assert train.x.shape == (20, 3, 32, 32) and train.x.dtype == np.float32
    first = batches["data_batch_1"]
    np.testing.assert_array_equal(train.x[:4] * 255.0, first[b"data"].reshape(4, 3, 32, 32).astype(np.float32))
    np.testing.assert_array_equal(train.y[:4], first[b"labels"])
    test = load_cifar10(tmp_path, split="test")
    np.testing.assert_array_equal(test.y, batches["test_batch"][b"labels"])
    # The standard archive's sub-folder is found from its parent too.
    sub = tmp_path / "parent" / "cifar-10-batches-py"
    sub.mkdir(parents=True)
    for name in batches:
        os.link(tmp_path / name, sub / name)
    assert load_dataset("cifar10", data_dir=tmp_path / "parent", split="test").x.shape == (4, 3, 32, 32)


def test_cifar_missing_batch_names_it(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path)


class _Evil:
    """Unpickling this would call os.getcwd (harmless here, but any callable would do)."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_restricted_unpickler_refuses_foreign_globals(tmp_path, monkeypatch):
    _write_cifar(tmp_path)
    batch = _cifar_batch(4, seed=0)
    batch[b"labels"] = _Evil()
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    called = []
    monkeypatch.setattr(os, "getcwd", lambda: called.append(1))
    with pytest.raises(ValueError, match=r"test_batch.*refusing to load global (posix|os)\.getcwd"):
        load_cifar10(tmp_path, split="test")
    assert not called


def test_cifar_malformed_content_names_the_file(tmp_path):
    _write_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"test_batch.*\(N, 3072\)"):
        load_cifar10(tmp_path, split="test")
    (tmp_path / "test_batch").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="test_batch.*not a CIFAR-10 python batch"):
        load_cifar10(tmp_path, split="test")


def test_cifar_labels_out_of_range(tmp_path):
    _write_cifar(tmp_path)
    batch = _cifar_batch(4, seed=0)
    batch[b"labels"] = [0, 1, 2, 12]
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    with pytest.raises(ValueError, match=r"labels in 0\.\.9"):
        load_cifar10(tmp_path, split="test")


# ------------------------------------------------------------------------------- load_dataset
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "imagenet"}, ValueError, "name must be one of"),
        ({"name": "mnist"}, ValueError, "data_dir is required"),
        ({"name": "digits", "split": "valid"}, ValueError, "split must be one of"),
    ],
)
def test_load_dataset_bad_arguments(kwargs, error, match):
    name = kwargs.pop("name")
    with pytest.raises(error, match=match):
        load_dataset(name, **kwargs)


def test_load_dataset_digits():
    assert load_dataset("digits").x.shape == (1797, 1, 8, 8)
    assert load_dataset("digits", split="test").x.shape == (450, 1, 8, 8)


def test_arrays_have_canonical_strides(tmp_path):
    """Ordinary (N, C, H, W) strides also on the size-1 channel axis (torch infers memory formats from them)."""
    _write_mnist_idx(tmp_path, _mnist_arrays(), compress=False)
    _write_cifar(tmp_path)
    for ds in (load_digits(), load_digits(split="test"), load_mnist(tmp_path), load_cifar10(tmp_path)):
        _n, c, h, w = ds.x.shape
        assert ds.x.strides == (4 * c * h * w, 4 * h * w, 4 * w, 4)


# ------------------------------------------------------------------ size bombs: bounded work, bounded messages
class _DtypeBomb:
    """numpy.dtype([b'\\0' * 1000] * 100000): 444 KB pickled (one memoized bytes), 400 MB as repr."""

    def __reduce__(self):
        return (np.dtype, ([b"\0" * 1000] * 100_000,))


def _write_size_bombs(root: Path) -> dict[str, Path]:
    (root / "dtype").mkdir()
    with open(root / "dtype" / "test_batch", "wb") as fh:
        pickle.dump({b"data": _DtypeBomb(), b"labels": [0]}, fh, protocol=2)
    (root / "dup").mkdir()
    (root / "dup" / "test_batch").write_bytes(b"\x80\x02N" + b"2" * (63 * 2**20) + b".")  # 63 MiB of DUP
    x_small = io.BytesIO()
    np.save(x_small, np.zeros((20, 28, 28), np.uint8))
    with zipfile.ZipFile(root / "shadow.npz", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x_train.npy", x_small.getvalue())
        archive.writestr("y_train.npy", _npy_bytes(np.zeros(20, np.uint8)))
        archive.writestr("x_train", _npy_bytes(np.zeros((200_000, 28, 28), np.uint8)))  # 150 KB deflated: np.load
        # read these 200,000 images instead of the 20 checked ones
    return {"dtype": root / "dtype", "dup": root / "dup", "npz": root / "shadow.npz"}


def _npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


_BOMB_PROBE = """
import resource, sys, time
from pathlib import Path
from art_fisher.data._loaders import load_cifar10, load_mnist

kind, path = sys.argv[1], Path(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    load_mnist(path) if kind == "npz" else load_cifar10(path, split="test")
    print("ACCEPTED")
except ValueError as exc:
    print(len(str(exc)), str(exc)[:300].replace(chr(10), " "))
print("SECONDS", time.perf_counter() - start)
print("GROWTH_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.parametrize("kind", ["dtype", "dup", "npz"])
def test_size_bombs_are_refused_within_300_mb(tmp_path, kind):
    """Each hostile file of the probe: a short ValueError naming the file, peak RSS < 300 MB over the baseline
    (before: 1.8 GB and a 400 MB message; 810 MB and 16.6 s; 1.6 GB and 200,000 images accepted)."""
    path = _write_size_bombs(tmp_path)[kind]
    out = subprocess.run(
        [sys.executable, "-c", _BOMB_PROBE, kind, str(path)],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
        timeout=300,
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and lines[0] != "ACCEPTED", out.stdout + out.stderr[-2000:]
    length, message = lines[0].split(" ", 1)
    assert int(length) < 1000 and str(path) in message, message
    assert {"dtype": "refusing numpy.dtype([", "dup": "more than 50000 items", "npz": "has no .npy suffix"}[
        kind
    ] in message
    assert float(lines[1].split()[1]) < 10
    growth_mb = int(lines[2].split()[1]) / 1024
    assert growth_mb < 300, (kind, growth_mb)


def test_npz_reads_only_the_members_it_checked(tmp_path):
    x, y = np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8)
    for members, match in [
        (
            {"x_train.npy": _npy_bytes(x), "y_train.npy": _npy_bytes(y), "x_train": b"\0" * 10},
            r"member 'x_train' has no .npy suffix: numpy would read it instead of x_train.npy",
        ),
        (
            {"x_train.npy": _npy_bytes(x), "y_train.npy": _npy_bytes(y), "notes.txt": b"hi"},
            r"unexpected members \['notes.txt'\]",
        ),
        ({"x_train": bytes(784 * 3), "y_train.npy": _npy_bytes(y)}, r"has no .npy suffix"),
        (
            {"x_train.npy": _npy_bytes(x), "y_train.npy": _npy_bytes(y), "x_train": _npy_bytes(np.zeros((9, 28, 28)))},
            r"shadowing the array checked here",
        ),
    ]:
        path = tmp_path / "mnist.npz"
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: expected only .*{match}"):
            load_mnist(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", _npy_bytes(np.zeros((9, 28, 28), np.uint8)))
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("x_train.npy", _npy_bytes(x))
        archive.writestr("y_train.npy", _npy_bytes(y))
    with pytest.raises(ValueError, match="holds a member name twice"):
        load_mnist(path)
    with zipfile.ZipFile(path, "w") as archive:  # the plain layout still loads
        archive.writestr("x_train.npy", _npy_bytes(x + 255))
        archive.writestr("y_train.npy", _npy_bytes(y + 3))
    data = load_mnist(path)
    assert data.x.shape == (3, 1, 28, 28) and np.all(data.y == 3)


def test_cifar_refusals_describe_without_repr():
    from art_fisher.data._cifar_batch import describe

    huge = [b"\0" * 10**6] * 10**5
    text = describe(huge)
    assert len(text) < 400 and "100000 items" in text and "1000000 in all" in text
    assert describe(2**200) == "<int of 201 bits>" and describe((1, "a")) == "(1, 'a')"
    assert describe(np.dtype([(f"f{i}", "u1") for i in range(1000)])) == "dtype with 1000 fields"


# ------------------------------------------------------------------ empty splits, odd zip members
@pytest.mark.parametrize("layout", ["idx", "idx.gz", "npz"])
@pytest.mark.parametrize("empty", ["train", "test"])
def test_mnist_split_with_no_image_names_the_file(tmp_path, layout, empty):
    """Before: 'memoryview: cannot cast view with zeros', ZeroDivisionError or 'num_samples=0' downstream."""
    arrays = _mnist_arrays()
    arrays[empty] = (arrays[empty][0][:0], arrays[empty][1][:0])
    if layout == "npz":
        np.savez(tmp_path / "mnist.npz", x_train=arrays["train"][0], y_train=arrays["train"][1],
                 x_test=arrays["test"][0], y_test=arrays["test"][1])  # fmt: skip
    else:
        _write_mnist_idx(tmp_path, arrays, compress=layout == "idx.gz")
    with pytest.raises(ValueError, match=r"(ubyte|npz).* holds 0 images; a data split needs at least one"):
        load_mnist(tmp_path, split=empty)
    other = "test" if empty == "train" else "train"
    assert len(load_mnist(tmp_path, split=other).y) == len(arrays[other][1])


def _npz_with_member_flags(path, *, flag_bits=0, compress_type=None):
    """``mnist.npz`` whose members' local and central headers claim ``flag_bits`` / ``compress_type``."""
    arrays = _mnist_arrays()
    np.savez(path, x_train=arrays["train"][0], y_train=arrays["train"][1],
             x_test=arrays["test"][0], y_test=arrays["test"][1])  # fmt: skip
    data = bytearray(path.read_bytes())
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            if flag_bits:
                data[start + flag_at : start + flag_at + 2] = struct.pack("<H", flag_bits)
            if compress_type is not None:
                data[start + method_at : start + method_at + 2] = struct.pack("<H", compress_type)
            start += 4
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flag_bits": 1}, "is encrypted"),
        ({"compress_type": 99}, "compression method 99"),
        ({"compress_type": 9}, "compression method 9"),
    ],
)
def test_mnist_npz_member_encrypted_or_with_an_unknown_method_names_the_file(tmp_path, kwargs, match):
    """Before: zipfile's RuntimeError ('File ... is encrypted') or NotImplementedError escaped."""
    path = _npz_with_member_flags(tmp_path / "mnist.npz", **kwargs)
    with pytest.raises(ValueError, match=rf"mnist.npz: member 'x_train.npy' .*{match}"):
        load_mnist(path, split="train")
