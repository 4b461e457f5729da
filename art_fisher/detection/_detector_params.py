"""Parameters of :class:`~art_fisher.detection.FisherInformationDetector`: constructor, checks, set_params.

ART's ``EvasionDetector`` keeps a detector's settings as attributes named in ``defence_params``, which
``get_params`` reads and ``set_params`` writes; this base class holds that part (the parameters are
documented on :class:`~art_fisher.detection.FisherInformationDetector`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from numbers import Real
from typing import Any, ClassVar

from art.defences.detector.evasion import EvasionDetector
from sklearn.exceptions import NotFittedError

from art_fisher.detection import _features
from art_fisher.detection._decision import estimator_kind

logger = logging.getLogger(__name__)

#: The named decision thresholds (a detector's ``threshold`` may also be a number).
THRESHOLDS = ("target_fpr", "estimator")


class DetectorParameters(EvasionDetector):
    """Constructor, parameter checks and ``set_params`` of a Fisher information detector (no fit)."""

    defence_params: ClassVar[list[str]] = [
        "classifier",
        "metrics",
        "estimator",
        "target_fpr",
        "threshold",
        "chunk_size",
        *(name for name in _features.OPTION_NAMES if name != "metrics"),
        "progress",
    ]

    def __init__(
        self,
        classifier: Any,
        *,
        metrics: Sequence[str] = _features.DEFAULT_OPTIONS.metrics,
        estimator: Any = None,
        target_fpr: float = 0.05,
        threshold: str | float = "target_fpr",
        chunk_size: int = 128,
        output: str = _features.DEFAULT_OPTIONS.output,
        direction: str = _features.DEFAULT_OPTIONS.direction,
        blockwise: bool | None = _features.DEFAULT_OPTIONS.blockwise,
        normalize: bool = _features.DEFAULT_OPTIONS.normalize,
        classes: str = _features.DEFAULT_OPTIONS.classes,
        params: Sequence[str] | None = _features.DEFAULT_OPTIONS.params,
        method: str = _features.DEFAULT_OPTIONS.method,
        fd_step: float = _features.DEFAULT_OPTIONS.fd_step,
        tau: float | None = _features.DEFAULT_OPTIONS.tau,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.metrics = metrics
        self.estimator = estimator
        self.target_fpr = target_fpr
        self.threshold = threshold
        self.chunk_size = chunk_size
        self.output = output
        self.direction = direction
        self.blockwise = blockwise
        self.normalize = normalize
        self.classes = classes
        self.params = params
        self.method = method
        self.fd_step = fd_step
        self.tau = tau
        self.progress = progress
        self._check_params()

    # ----------------------------------------------------------------------------------------- checks
    def _check_params(self) -> None:
        self._options = _features.options_of(self)
        self._metric_names = self._options.metrics
        _features.check_chunk_size(self.chunk_size)
        if self.estimator is not None:
            estimator_kind(self.estimator)
        if (
            not isinstance(self.target_fpr, Real)
            or isinstance(self.target_fpr, bool)
            or not 0.0 < float(self.target_fpr) < 1.0
        ):
            raise ValueError(f"target_fpr must be a number in (0, 1); got {self.target_fpr!r}.")
        named = isinstance(self.threshold, str) and self.threshold in THRESHOLDS
        number = isinstance(self.threshold, Real) and not isinstance(self.threshold, bool)
        if not named and not (number and math.isfinite(float(self.threshold))):
            raise ValueError(
                f"threshold must be one of {list(THRESHOLDS)} or a finite number (a decision score); "
                f"got {self.threshold!r}."
            )
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress must be True or False; got {self.progress!r}.")

    def set_params(self, **kwargs: Any) -> None:
        """Set constructor parameters (names in :attr:`defence_params`) and check them.

        Changing a parameter that alters the features or the decision (anything but ``chunk_size`` and
        ``progress``, and ``target_fpr`` after a fit with labels whose ``threshold`` is not ``"target_fpr"``)
        discards a previous fit.

        Raises
        ------
        ValueError
            If a name is not a parameter of this detector, or a value is invalid (then nothing changes).
        TypeError
            If ``classifier`` or ``estimator`` is of an unusable type (then nothing changes).
        """
        unknown = sorted(set(kwargs) - set(self.defence_params))
        if unknown:
            raise ValueError(f"Unknown parameters {unknown}; valid ones are {self.defence_params}.")
        old = self.get_params()
        try:
            super().set_params(**kwargs)
        except (TypeError, ValueError):
            for key, value in old.items():
                setattr(self, key, value)
            self._check_params()
            raise
        changed = [key for key, value in kwargs.items() if not _same(old[key], value)]
        keeps = {"chunk_size", "progress"}
        if getattr(self, "calibration_", None) == "labels" and self.threshold != "target_fpr":
            keeps.add("target_fpr")
        if any(key not in keeps for key in changed) and hasattr(self, "estimator_"):
            logger.info("Parameters %s changed: the previous fit is discarded.", changed)
            del self.estimator_, self.feature_names_, self.calibration_, self.model_fingerprint_
            del self.threshold_, self.clean_fpr_

    def _chunk(self, batch_size: int | None) -> int:
        """Samples per metric computation: ART's ``batch_size`` argument if given, else ``chunk_size``."""
        if batch_size is None:
            return self.chunk_size
        return _features.check_chunk_size(batch_size, "batch_size")

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimator_"):
            raise NotFittedError(
                "This FisherInformationDetector is not fitted yet; call fit(x, y) with clean (0) and "
                "adversarial (1) examples, or fit(x) with clean inputs only, or load a saved detector."
            )


def _same(a: Any, b: Any) -> bool:
    """Whether two parameter values are the same (sequences compared as tuples, objects by identity)."""
    if a is b:
        return True
    if isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, str | bytes):
        return tuple(a) == tuple(b)
    if isinstance(a, str | bool | int | float | type(None)) and isinstance(b, str | bool | int | float | type(None)):
        return type(a) is type(b) and a == b
    return False
