"""Progress of a one-shot search off a terminal: one log line per search epoch.

Lightning's progress bar (``progress=True``) is a terminal bar; a search written to a log file, run under
CI or ``nohup`` would otherwise say nothing until it ends. :class:`EpochLogger` logs, at the end of every
training epoch, the epoch number, its wall-clock seconds and LeaSE's logged metrics.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl

logger = logging.getLogger(__name__)


class EpochLogger(pl.Callback):
    """Log ``search epoch k/N (s seconds): name=value, ...`` at the end of every training epoch."""

    def __init__(self) -> None:
        super().__init__()
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Remember when the epoch started."""
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Log the epoch's number, duration and metrics."""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k and not k.startswith("prob/")}
        logger.info(
            "search epoch %d/%s (%.1f s): %s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            time.perf_counter() - self._start,
            ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())),
        )
