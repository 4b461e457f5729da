"""Read one CIFAR-10 "python version" batch without trusting the file (shared by art_fisher and nni_lease).

A batch (``data_batch_1`` … ``data_batch_5``, ``test_batch``) is a pickled dict with ``b"data"``, a uint8
numpy array of shape (N, 3072) holding channel-major 32×32 RGB rows (N = 10000 in the official files),
and ``b"labels"``, N ints in 0..9. Loading a pickle can run code and allocate without bound, so
:func:`read_cifar10_batch` reads it with a pure-Python unpickler (:class:`_CifarUnpickler`) whose limits
are checked before any large allocation:

* the file is at most :data:`MAX_BATCH_FILE_BYTES` (64 MiB; an official batch is 31 MB), read once;
* only the opcodes a pickled dict of lists and numpy arrays uses are executed (no ``INST``/``OBJ``/
  ``NEWOBJ``/extensions/persistent ids/out-of-band buffers);
* only these globals resolve, each to a checking wrapper, never to the real callable: numpy's array
  reconstruction (``_reconstruct(ndarray, (0,), b"b")``, only that call), ``numpy.ndarray`` (a marker
  that ``_reconstruct`` accepts and that refuses to be called: ``ndarray(shape, dtype, buffer, offset,
  strides)`` would build zero-stride views declaring any number of images over a few bytes),
  ``numpy.dtype`` (numeric kinds only), numpy scalars, ``_frombuffer`` (protocol 5),
  ``_codecs.encode`` with latin-1 and ``bytes()`` without arguments (protocol-2 bytes);
* at most :data:`MAX_OPCODES` opcodes run, and the stack, the mark stack and the memo hold at most
  :data:`MAX_STACK` items each (a batch needs about 30,000 opcodes; a file of repeated ``DUP`` would
  otherwise grow the stack by 8 bytes per file byte);
* refusal messages describe what was refused in a bounded number of characters (:func:`describe`),
  never through ``repr`` of the whole object;
* ``BUILD`` (``__setstate__``) runs on numpy arrays and dtypes only, with the state checked: an array's
  declared shape must match its raw bytes, so its size is bounded by the file's; a dtype's state may
  only set the byte order (a crafted dtype state can otherwise claim Python objects inside raw bytes).

Afterwards ``b"data"`` must be a C-contiguous uint8 (N, 3072) array with 1 <= N <= :data:`MAX_BATCH_IMAGES`
and ``b"labels"`` N integers in 0..9; anything else is a :class:`CifarBatchError` naming the file.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any, cast

import numpy as np

#: Bytes of one image row: 3 channels × 32 × 32, channel-major.
CIFAR10_ROW = 3 * 32 * 32
#: Images in one batch at most (the official batches hold exactly this many).
MAX_BATCH_IMAGES = 10_000
#: Largest batch file read: an official batch is 31,035,704 bytes; re-pickled with protocol 2 by Python 3,
#: its pixel bytes become latin-1 text stored as UTF-8, up to twice the size (10000 × 3072 × 2 + labels).
MAX_BATCH_FILE_BYTES = 64 * 2**20
#: Opcodes executed at most: an official batch pickles 10,000 labels (one opcode each, plus their
#: APPENDS) and a handful of objects, about 20,000 opcodes.
MAX_OPCODES = 200_000
#: Items on the unpickler's stack, mark stack or memo at most (the 10,000 labels sit on the stack at once).
MAX_STACK = 50_000
_N_CLASSES = 10
_NUMERIC_KINDS = "biuf"


class CifarBatchError(ValueError):
    """A file that is not a well-formed CIFAR-10 python batch (the message names the file)."""


class UnsafeCifarBatchError(CifarBatchError, pickle.UnpicklingError):
    """The pickle asks for something a CIFAR-10 batch never needs (a foreign global, opcode or call)."""


# ---------------------------------------------------------------------------- checking wrappers
def describe(obj: object, limit: int = 60, *, _depth: int = 0) -> str:
    """A short description of ``obj`` (at most about ``4 * limit`` characters) whose cost does not grow with it.

    Strings and bytes show their first ``limit`` characters and their length; tuples and lists their
    first 3 items (two levels deep) and their length; dtypes their type string or number of fields; ints
    over 64 bits their bit length; anything else its type name.
    """
    if obj is None or isinstance(obj, (bool, float)) or (isinstance(obj, int) and obj.bit_length() <= 64):
        return repr(obj)
    if isinstance(obj, int):
        return f"<int of {obj.bit_length()} bits>"
    if isinstance(obj, (str, bytes, bytearray)):
        head = repr(obj[:limit])
        return head if len(obj) <= limit else f"{head}... ({len(obj)} in all)"
    if isinstance(obj, np.dtype):
        return f"dtype with {len(obj.names)} fields" if obj.names is not None else repr(obj)[:100]
    if isinstance(obj, (tuple, list)):
        if _depth >= 2:
            return f"<{type(obj).__name__} of {len(obj)} items>"
        items = ", ".join(describe(item, max(limit // 3, 8), _depth=_depth + 1) for item in obj[:3])
        more = f", ... ({len(obj)} items)" if len(obj) > 3 else ""
        left, right = ("(", ")") if isinstance(obj, tuple) else ("[", "]")
        return f"{left}{items}{more}{right}"
    if isinstance(obj, _NdarrayMarker):
        return "numpy.ndarray"
    return f"<{type(obj).__name__}>"


def _numeric_dtype(dtype: object) -> np.dtype:
    if (
        not isinstance(dtype, np.dtype)
        or dtype.kind not in _NUMERIC_KINDS
        or dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.hasobject
    ):
        raise UnsafeCifarBatchError(
            f"refusing dtype {describe(dtype)}: a CIFAR-10 batch holds plain numeric arrays only"
        )
    return dtype


def _dtype(obj: object, align: object = False, copy: object = False) -> np.dtype:
    """``numpy.dtype(obj, align, copy)`` for a plain numeric type code only (always a fresh copy)."""
    if isinstance(obj, bytes):
        obj = obj.decode("ascii", "replace")
    if not isinstance(obj, str) or len(obj) > 4:
        raise UnsafeCifarBatchError(
            f"refusing numpy.dtype({describe(obj)}): a CIFAR-10 batch needs a numeric type code"
        )
    try:
        dtype = np.dtype(obj, align=False, copy=True)
    except TypeError as exc:
        raise UnsafeCifarBatchError(f"refusing numpy.dtype({describe(obj)}): {str(exc)[:200]}") from exc
    return _numeric_dtype(dtype)


class _NdarrayMarker:
    """Stands for ``numpy.ndarray`` in the pickle: accepted by ``_reconstruct``, never called."""

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise UnsafeCifarBatchError(
            "refusing to call numpy.ndarray(...) directly (it can declare arrays far larger than the file, "
            "e.g. zero-stride views); a CIFAR-10 batch rebuilds its arrays with numpy's _reconstruct"
        )

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayMarker()


def _reconstruct(cls: object, shape: object, typecode: object) -> np.ndarray:
    """numpy's ``_reconstruct(ndarray, (0,), b"b")`` (the empty array a later BUILD fills), nothing else."""
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise UnsafeCifarBatchError(
            f"refusing numpy _reconstruct({describe(cls)}, {describe(shape)}, {describe(typecode)})"
        )
    return np.ndarray((0,), dtype=np.int8)


def _count(shape: object) -> int:
    if not isinstance(shape, tuple) or len(shape) > 2 or not all(type(s) is int and s >= 0 for s in shape):
        raise UnsafeCifarBatchError(f"refusing array shape {describe(shape)}: expected at most 2 non-negative ints")
    count = 1
    for size in shape:
        count *= size
    return count


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> np.ndarray:
    """numpy's protocol-5 ``_frombuffer``: the buffer must hold exactly the declared array."""
    dtype = _numeric_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray)) or order not in ("C", "F"):
        raise UnsafeCifarBatchError(
            f"refusing numpy _frombuffer of a {type(buffer).__name__} in order {describe(order)}"
        )
    if _count(shape) * dtype.itemsize != len(buffer):
        raise UnsafeCifarBatchError(f"array of shape {shape} and {dtype} does not match its {len(buffer)} bytes")
    return np.frombuffer(buffer, dtype=dtype).reshape(
        cast("tuple[int, ...]", shape), order="F" if order == "F" else "C"
    )


def _scalar(dtype: object, raw: object = b"") -> np.generic:
    dtype = _numeric_dtype(dtype)
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise UnsafeCifarBatchError(f"numpy scalar of {dtype} needs {dtype.itemsize} bytes; got {describe(raw, 20)}")
    return np.frombuffer(raw, dtype=dtype)[0]


def _encode(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode(str, "latin1")``: how protocol-2 pickles from Python 3 store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "latin_1"):
        raise UnsafeCifarBatchError(
            f"refusing _codecs.encode(..., {describe(encoding)}): only latin-1 text is expected"
        )
    return text.encode("latin-1")


def _bytes(*args: object) -> bytes:
    """``bytes()``: how protocol 2 stores an empty bytes object; any argument is refused."""
    if args:
        raise UnsafeCifarBatchError("refusing bytes(...) with arguments: only the empty bytes object is expected")
    return b""


_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("__builtin__", "bytes"): _bytes,
    ("builtins", "bytes"): _bytes,
}


def _build_array(array: np.ndarray, state: object) -> None:
    if not (isinstance(state, tuple) and len(state) == 5):
        raise UnsafeCifarBatchError(f"refusing numpy array state of type {type(state).__name__}")
    version, shape, dtype, is_fortran, raw = state
    dtype = _numeric_dtype(dtype)
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    if not isinstance(raw, (bytes, bytearray)) or type(is_fortran) is not bool:
        raise UnsafeCifarBatchError("refusing numpy array state: expected raw bytes and a fortran flag")
    expected = _count(shape) * dtype.itemsize
    if len(raw) != expected:  # numpy checks this too; checked here first, with the numbers
        raise CifarBatchError(
            f"an array of shape {shape} and {dtype} needs {expected} bytes; the file holds {len(raw)}"
        )
    array.__setstate__((version, shape, dtype, is_fortran, bytes(raw)))  # type: ignore[arg-type]  # checked above


def _build_dtype(dtype: np.dtype, state: object) -> None:
    if not (isinstance(state, tuple) and len(state) == 8):
        raise UnsafeCifarBatchError(f"refusing numpy dtype state of type {type(state).__name__}")
    byteorder = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
    if state[0] not in (3, 4) or byteorder not in ("<", ">", "|", "=") or state[2:7] != (None, None, None, -1, -1):
        raise UnsafeCifarBatchError(f"refusing numpy dtype state {describe(state)}: only a byte order may be set")
    dtype.__setstate__((3, byteorder, None, None, None, -1, -1, dtype.flags))  # type: ignore[attr-defined]  # not in numpy's stubs


def _bounded(opcode):
    """``opcode``'s handler, after checking the opcode budget and the stack, mark stack and memo sizes."""

    def run(self: _CifarUnpickler) -> None:
        self.opcodes += 1
        if self.opcodes > MAX_OPCODES:
            raise CifarBatchError(f"more than {MAX_OPCODES} pickle opcodes; a CIFAR-10 batch needs far fewer")
        if len(self.stack) > MAX_STACK or len(self.metastack) > MAX_STACK or len(self.memo) > MAX_STACK:
            raise CifarBatchError(
                f"more than {MAX_STACK} items on the pickle's stack or memo; a CIFAR-10 batch needs far fewer"
            )
        opcode(self)

    return run


class _Dispatch(dict):
    def __missing__(self, code: int):
        raise UnsafeCifarBatchError(f"refusing pickle opcode {bytes([code])!r}: a CIFAR-10 batch does not use it")


_OPCODES = (
    "PROTO FRAME STOP MARK POP POP_MARK DUP NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG1 LONG4 "
    "BINFLOAT STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 BINBYTES "
    "SHORT_BINBYTES BINBYTES8 BYTEARRAY8 EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST LIST APPEND "
    "APPENDS EMPTY_DICT DICT SETITEM SETITEMS GET BINGET LONG_BINGET PUT BINPUT LONG_BINPUT MEMOIZE "
    "GLOBAL STACK_GLOBAL REDUCE BUILD"
).split()


class _CifarUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be restricted
    """Unpickler for CIFAR-10 batches: the opcodes, globals and ``__setstate__`` calls listed above only."""

    # pickle._Unpickler's value stack, mark stack and memo, set up by load()
    stack: list[Any]
    metastack: list[list[Any]]
    memo: dict[int, Any]
    dispatch = _Dispatch(
        {getattr(pickle, name)[0]: _bounded(pickle._Unpickler.dispatch[getattr(pickle, name)[0]]) for name in _OPCODES}
    )
    opcodes = 0

    def find_class(self, module: str, name: str):  # pickle API
        found = _GLOBALS.get((module, name))
        if found is None:
            raise UnsafeCifarBatchError(
                f"refusing to load global {module}.{name}: a CIFAR-10 batch only needs numpy arrays"
            )
        return found

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if type(target) is np.ndarray:
            _build_array(target, state)
        elif isinstance(target, np.dtype):
            _build_dtype(target, state)
        else:
            raise UnsafeCifarBatchError(f"refusing to set the state of a {type(target).__name__}")

    dispatch[pickle.BUILD[0]] = _bounded(load_build)


# ------------------------------------------------------------------------------------- the reader
def _labels(values: object, n: int, path: Path) -> np.ndarray:
    if isinstance(values, np.ndarray):
        ok = values.ndim == 1 and values.dtype.kind in "iu"
    else:
        ok = isinstance(values, list) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values[: n + 1]
        )
    if not (ok and isinstance(values, (np.ndarray, list)) and len(values) == n):
        found = f"{values.dtype} {values.shape}" if isinstance(values, np.ndarray) else type(values).__name__
        raise CifarBatchError(
            f"{path}: expected b'labels' as {n} integers (one per image); got {found}"
            + (f" of length {len(values)}" if isinstance(values, list) else "")
            + "."
        )
    labels = np.array(values, dtype=np.int64)
    if n and (labels.min() < 0 or labels.max() >= _N_CLASSES):
        raise CifarBatchError(
            f"{path}: expected labels in 0..{_N_CLASSES - 1}; got values from {labels.min()} to {labels.max()}."
        )
    return labels


def read_cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch, checking everything before anything large is allocated.

    Parameters
    ----------
    path : str or Path
        A ``data_batch_*`` or ``test_batch`` file.

    Returns
    -------
    data : ndarray of shape (N, 3072), uint8
        One channel-major 32×32×3 image per row, C-contiguous; 1 <= N <= 10000.
    labels : ndarray of shape (N,), int64
        Classes in 0..9.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    UnsafeCifarBatchError
        (a :class:`CifarBatchError` and a :class:`pickle.UnpicklingError`) If the pickle asks for a global,
        opcode or call that a CIFAR-10 batch never needs; nothing it asked for was run.
    CifarBatchError
        (a ValueError) For any other malformed content: file too large, not a pickle, missing keys, wrong
        dtype (e.g. float pixels), shape, layout, label count or label range.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch {path} not found.")
    size = path.stat().st_size
    if size > MAX_BATCH_FILE_BYTES:
        raise CifarBatchError(
            f"{path}: {size} bytes; a CIFAR-10 batch has at most {MAX_BATCH_IMAGES} images "
            f"(31 MB as distributed, up to 62 MB re-pickled), so files over {MAX_BATCH_FILE_BYTES} bytes are "
            "refused."
        )
    try:
        batch = _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except UnsafeCifarBatchError as exc:
        raise UnsafeCifarBatchError(f"{path}: not a CIFAR-10 python batch: {exc}") from None
    except CifarBatchError as exc:
        raise CifarBatchError(f"{path}: not a CIFAR-10 python batch ({exc}).") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,
        RecursionError,
        UnicodeDecodeError,
        struct.error,
    ) as exc:
        raise CifarBatchError(
            f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {str(exc)[:300]})."
        ) from None
    if not isinstance(batch, dict):
        raise CifarBatchError(
            f"{path}: expected a pickled dict with b'data' and b'labels'; got {type(batch).__name__}."
        )
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise CifarBatchError(f"{path}: expected keys b'data' and b'labels'; found {describe(list(batch)[:10])}.")
    if (
        type(data) is not np.ndarray
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != CIFAR10_ROW
        or not 1 <= data.shape[0] <= MAX_BATCH_IMAGES
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarBatchError(
            f"{path}: expected b'data' as uint8 of shape (N, {CIFAR10_ROW}) with "
            f"1 <= N <= {MAX_BATCH_IMAGES}; got {got}."
        )
    if data.strides != (CIFAR10_ROW, 1):
        raise CifarBatchError(
            f"{path}: expected b'data' as a C-contiguous array (strides ({CIFAR10_ROW}, 1)); "
            f"got strides {data.strides}."
        )
    return data, _labels(labels, len(data), path)
