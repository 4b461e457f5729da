"""Atomic file writes: a temporary file in the target's folder, then one rename.

A reader (another run, a crash-recovery) therefore sees either the old file or the complete new one,
never a truncated file. Used by the model cache, the evaluation report and detector files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str | Path, *, text: bool = False) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success rename it onto ``path``.

    Parameters
    ----------
    path : str or Path
        The final file. Its folder must exist.
    text : bool
        Open in text mode (UTF-8, ``newline=""``) instead of binary.

    Yields
    ------
    file object
        Write the whole content to it; it is flushed, synced and renamed when the block ends without an
        exception, and deleted otherwise (``path`` is then left as it was).

    Raises
    ------
    IsADirectoryError
        If ``path`` is an existing folder (nothing is written).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; cannot write a file there.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        fh: IO = os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
