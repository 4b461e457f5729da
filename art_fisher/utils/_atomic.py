"""Where outputs go: atomic file writes and the output-folder check.

:func:`atomic_write` writes a temporary file in the target's folder, then renames it once: a reader
(another run, a crash-recovery) sees either the old file or the complete new one, never a truncated
file. Every file the two packages write goes through it (detector files, the model cache, the
evaluation report and plots, the one-shot search's records).

:func:`check_output_dir` is the one output-folder check of both command lines and workflows: before
any work, it makes sure the folder exists or can be created, by writing (and removing) an empty probe
folder in it or in its nearest existing parent. Permission bits are not read: they are not reliable
(root writes through them, a file system may be mounted read-only).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from art_fisher.utils._validation import check_path


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


def check_output_dir(path: str | Path, name: str = "output_dir") -> Path:
    """Check, before any work, that ``path`` is a writable folder or can be created as one; returns it.

    Nothing is left behind: the probe folder is removed, and a missing ``path`` is not created.

    Parameters
    ----------
    path : str or Path
        The output folder (``~`` is expanded).
    name : str
        The argument's name in the error messages.

    Returns
    -------
    Path
        ``path``, expanded.

    Raises
    ------
    TypeError
        If ``path`` is not a path.
    ValueError
        If ``path`` or its nearest existing parent is not a folder, or no folder can be written there.
    """
    out = check_path(path, name)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == out:
            raise ValueError(f"{name} {str(out)!r} exists and is not a folder (it is a file).")
        raise ValueError(
            f"{name} {str(out)!r} cannot be created: it lies under the file {str(existing)!r}, which is not a folder."
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".probe_", dir=existing))
    except OSError as exc:
        raise ValueError(f"{name} {str(out)!r} is not writable ({exc.strerror}: {existing}).") from exc
    return out
