"""Log output of ``nni-lease``: NNI's messages through ``logging``, without colour codes, each once.

NNI 3.0 installs its own stdout handler on the ``nni`` logger, writes colour codes into its messages and
repeats some warnings at every step (```training_service` will be ignored for sequential execution
engine`` a dozen times per search); pytorch-lightning prints its device banner, and NNI and Lightning
raise Python warnings about versions that are harmless here. :func:`cli_logging` routes all of these
through one handler on stderr: colour codes removed, each distinct message once; NNI's and Lightning's
INFO lines, and the Python warnings raised in their own files, only when ``verbose``. NNI's and Lightning's lines
stay on stdout, where NNI writes them, without the tracebacks they attach unless ``verbose``: stderr holds
nni_lease's own messages, so that a failure reads as the one line that names it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

#: NNI's colour placeholders (``${GREEN}``) and ANSI escape sequences.
_COLOUR = re.compile(r"\$\{[A-Z_]+\}|\x1b\[[0-9;]*m")
#: Loggers of the libraries under nni_lease, quiet below WARNING unless --verbose.
_LIBRARIES = ("nni", "pytorch_lightning", "lightning_fabric")
#: A warning raised in these packages' files (``captureWarnings`` puts the file name in the message).
_LIBRARY_FILE = re.compile(r"[/\\](nni|pytorch_lightning|lightning_fabric|lightning_utilities|torchmetrics)[/\\]")


class _Once(logging.Filter):
    """Pass each distinct (level, logger, message) once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[int, str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.name, _COLOUR.sub("", record.getMessage()))
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def _not_from_libraries(record: logging.LogRecord) -> bool:
    """Drop the Python warnings that NNI and Lightning raise about their own code and versions."""
    return record.name != "py.warnings" or not _LIBRARY_FILE.search(record.getMessage())


class _Plain(logging.Formatter):
    """``LEVEL logger: message`` with NNI's colour codes removed, and without tracebacks unless ``tracebacks``."""

    def __init__(self, fmt: str, *, tracebacks: bool = True) -> None:
        super().__init__(fmt)
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if not self._tracebacks and (record.exc_info or record.exc_text or record.stack_info):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        return _COLOUR.sub("", super().format(record))


def _handler(stream: TextIO, *, verbose: bool, tracebacks: bool) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Plain("%(levelname)s %(name)s: %(message)s", tracebacks=tracebacks))
    handler.addFilter(_Once())
    if not verbose:
        handler.addFilter(_not_from_libraries)
    return handler


@contextmanager
def cli_logging(*, verbose: bool = False) -> Iterator[logging.Handler]:
    """Route nni_lease's, NNI's and Lightning's log lines and Python warnings through one plain handler.

    Parameters
    ----------
    verbose : bool
        Show NNI's and Lightning's INFO lines too (nni_lease's own INFO lines are always shown).

    Yields
    ------
    logging.Handler
        The handler of nni_lease's own lines and the Python warnings, on stderr (NNI's and Lightning's lines go
        to stdout); everything is restored on exit.
    """
    logging.captureWarnings(True)
    import nni  # noqa: F401  (their imports install their handlers; replace them afterwards)
    import pytorch_lightning  # noqa: F401

    handler = _handler(sys.stderr, verbose=verbose, tracebacks=True)
    libraries = _handler(sys.stdout, verbose=verbose, tracebacks=verbose)
    levels = {"nni_lease": logging.INFO, "art_fisher": logging.INFO, "py.warnings": logging.WARNING}
    levels.update(dict.fromkeys(_LIBRARIES, logging.INFO if verbose else logging.WARNING))
    saved = {}
    for name, level in levels.items():
        log = logging.getLogger(name)
        saved[name] = (log.level, log.propagate, list(log.handlers))
        for other in list(log.handlers):
            log.removeHandler(other)
        log.addHandler(libraries if name in _LIBRARIES else handler)
        log.setLevel(level)
        log.propagate = False
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        for name, (level, propagate, handlers) in saved.items():
            log = logging.getLogger(name)
            log.removeHandler(libraries if name in _LIBRARIES else handler)
            for other in handlers:
                log.addHandler(other)
            log.setLevel(level)
            log.propagate = propagate
