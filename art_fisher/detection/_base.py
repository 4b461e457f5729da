r"""What every detector of :mod:`art_fisher.detection` is: features, then an estimator, then a threshold.

:class:`Detector` is the ART ``EvasionDetector`` that holds this contract once; a configuration
(:class:`~art_fisher.detection.FisherInformationDetector`, :class:`~art_fisher.detection.StackedDetector`)
says only which features it computes. Everything else is the same for all of them:

- ``fit(x, y=None, *, x_reference=None)``: with detection labels ``y`` (0 clean, 1 adversarial) a
  classifier is fitted on the features, without them an outlier detector is calibrated on clean inputs
  alone; clean reference images (``x_reference``) are given to ``fit``, by every detector;
- the decision threshold: ``threshold="target_fpr"`` flags ``target_fpr`` of clean inputs (after a fit with
  labels: at the clean examples' out-of-fold decision scores,
  :func:`~art_fisher.detection._decision.supervised_threshold`), ``"estimator"`` leaves the decision to the
  estimator, a number flags decision scores above it; :meth:`Detector.calibrate` moves it to held-out clean
  images;
- ``detect(x) -> (report, is_adversarial)`` with the report keys ``"scores"``, ``"decision_scores"``,
  ``"threshold"`` and ``"feature_names"``;
- ``save(path)`` / ``load(path, classifier)`` through one file format (:mod:`art_fisher.detection`);
- ``as_art_classifier()``: the decision as a differentiable detection logit (an ART classifier with one
  output), where the features and the estimator have input gradients;
- ``feature_source``: where per-input values come from (computed, or looked up in a
  :class:`~art_fisher.detection.FeatureCache` shared by several detectors).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import sklearn
import torch
from art.defences.detector.evasion import EvasionDetector
from sklearn.exceptions import NotFittedError

from art_fisher.detection import _features
from art_fisher.detection import _persistence as persistence
from art_fisher.detection._calibration import check_target_fpr, clean_threshold
from art_fisher.detection._decision import (
    check_fit_kwargs,
    clone_for_fit,
    decide,
    detection_labels,
    estimator_kind,
    routes_metadata,
    supervised_threshold,
)
from art_fisher.detection._feature_source import FeatureSource, check_feature_source
from art_fisher.detection._logit import DetectionLogitClassifier, NotDifferentiableError, estimator_logit

logger = logging.getLogger(__name__)

#: The named decision thresholds (a detector's ``threshold`` may also be a number).
THRESHOLDS = ("target_fpr", "estimator")
#: Constructor arguments of every detector; a configuration adds its own.
SHARED_PARAMS = ("classifier", "estimator", "target_fpr", "threshold", "chunk_size", "progress", "feature_source")
#: Constructor arguments a saved file does not hold (objects, not settings).
_NOT_SAVED = ("classifier", "estimator", "feature_source")
#: Parameters whose change keeps a fit (they change neither the features nor the decision).
_KEEP_FIT = ("chunk_size", "progress", "feature_source")


class Detector(EvasionDetector):
    """An ART evasion detector: features of each input, a scikit-learn estimator on them, a decision threshold.

    The base of :class:`~art_fisher.detection.FisherInformationDetector` and
    :class:`~art_fisher.detection.StackedDetector` (see :mod:`art_fisher.detection`); not used on its own.
    A configuration implements the features: ``_feature_names``, ``_fit_features``, ``_features``,
    ``_default_estimator``, ``_torch_features`` and, where it has fitted state beyond the estimator,
    ``_extra_state`` / ``_restore_features``.

    Parameters
    ----------
    classifier : art.estimators.classification.PyTorchClassifier
        The (trained) classifier whose inputs are screened (logits out). Never modified; not saved.
    estimator : sklearn classifier or outlier detector, default=None
        Decides from the feature columns (cloned in :meth:`fit`). A classifier (with ``predict_proba`` or
        ``decision_function``) is fitted on labelled clean / adversarial inputs; an outlier detector (e.g.
        ``IsolationForest``) on clean inputs alone, ``fit(x)``. None: the configuration's default for
        each case.
    target_fpr : float in (0, 1), default=0.05
        Share of clean inputs the detector is set to flag: by the default estimator of ``fit(x)`` without
        labels, and by the decision threshold after ``fit(x, y)`` with ``threshold="target_fpr"``.
    threshold : {"target_fpr", "estimator"} or float, default="target_fpr"
        Where the decision score (``detect``'s ``"decision_scores"``) flags an input after ``fit(x, y)``.
        ``"target_fpr"``: at the clean examples' threshold, which flags ``target_fpr`` of clean inputs
        (out-of-fold scores, 5 folds), not where the estimator separates the balanced fit set best.
        ``"estimator"``: the estimator's own ``predict`` (e.g. probability ½). A number: flag decision scores
        above it. After ``fit(x)`` without labels the outlier detector decides (the default one flags
        ``target_fpr`` of clean inputs), unless a number is given.
    chunk_size : int, default=128
        Samples per feature computation when ``fit`` / ``detect`` get no ``batch_size`` (bounds memory; the
        values do not depend on it).
    progress : bool, default=False
        Show a progress bar over batches.
    feature_source : FeatureSource, optional
        Where per-input values come from: None computes them; a
        :class:`~art_fisher.detection.FeatureCache` (or any object with its ``rows`` and ``once`` methods)
        looks up those computed before, e.g. by another detector of the same classifier. Not saved.

    Attributes
    ----------
    estimator_ : sklearn classifier or outlier detector
        The fitted estimator (set by :meth:`fit`).
    feature_names_ : list of str
        Names of the feature columns the estimator was fitted on.
    calibration_ : {"labels", "clean"}
        Whether the fit used clean / adversarial labels or clean inputs only.
    threshold_ : float or None
        The decision-score threshold :meth:`detect` flags above; None where the estimator's ``predict``
        decides.
    clean_fpr_ : float or None
        After ``fit(x, y)`` with ``threshold="target_fpr"``, or :meth:`calibrate`: the share of the clean
        decision scores above ``threshold_`` (else None).
    model_fingerprint_ : str
        ``art_fisher.detection._persistence.model_fingerprint`` of the classifier at fit time (saved with
        the detector; :meth:`load` checks it).
    """

    defence_params: ClassVar[list[str]] = list(SHARED_PARAMS)
    #: The detector class a file names (``"art_fisher.<kind>"``); set by a configuration.
    _FILE_KIND: ClassVar[str] = "Detector"
    #: State keys a configuration saves beside the shared ones (:meth:`_extra_state`).
    _EXTRA_KEYS: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        classifier: Any,
        *,
        estimator: Any = None,
        target_fpr: float = 0.05,
        threshold: str | float = "target_fpr",
        chunk_size: int = 128,
        progress: bool = False,
        feature_source: FeatureSource | None = None,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.estimator = estimator
        self.target_fpr = target_fpr
        self.threshold = threshold
        self.chunk_size = chunk_size
        self.progress = progress
        self.feature_source = feature_source

    # ------------------------------------------------------------------------------ what a configuration adds
    def _check_config(self) -> None:
        """Check the configuration's own parameters (TypeError / ValueError naming them)."""

    def _feature_names(self) -> list[str]:
        """Names of the feature columns, known before any computation."""
        raise NotImplementedError

    def _fit_features(self, x: np.ndarray, labels: np.ndarray | None, x_reference: np.ndarray | None) -> None:
        """Fit whatever the features learn (e.g. class Gaussians), on checked inputs."""

    def _features(self, x: np.ndarray, chunk_size: int) -> np.ndarray:
        """The feature matrix (N, n_features) of checked inputs ``x``."""
        raise NotImplementedError

    def _default_estimator(self, *, labelled: bool, n_features: int) -> Any:
        """The estimator of a fit when ``estimator`` is None (a classifier with labels, an outlier detector without)."""
        raise NotImplementedError

    def _torch_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature matrix of preprocessed inputs ``x`` as a torch function with input gradients.

        Raises NotDifferentiableError, before any work, where the features have none.
        """
        raise NotDifferentiableError(f"{type(self).__name__} has no input gradient.")

    def _check_differentiable(self) -> None:
        """Raise NotDifferentiableError, naming the culprit, where the features have no input gradient."""

    def _extra_state(self) -> dict[str, Any]:
        """Fitted state of the features, saved under :attr:`_EXTRA_KEYS`."""
        return {}

    def _restore_features(self, state: dict[str, Any]) -> None:
        """Take back :meth:`_extra_state` from a loaded state (ValueError if inconsistent)."""

    def _saved_settings(self) -> dict[str, Any]:
        """The constructor arguments a file holds (all but the classifier, the estimator and the source)."""
        return {key: getattr(self, key) for key in self._setting_names()}

    # ------------------------------------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        _features.check_classifier(self.classifier)
        self._check_config()
        _features.check_chunk_size(self.chunk_size)
        if self.estimator is not None:
            estimator_kind(self.estimator)
        check_target_fpr(self.target_fpr)
        named = isinstance(self.threshold, str) and self.threshold in THRESHOLDS
        number = isinstance(self.threshold, Real) and not isinstance(self.threshold, bool)
        if not named and not (number and math.isfinite(float(self.threshold))):
            raise ValueError(
                f"threshold must be one of {list(THRESHOLDS)} or a finite number (a decision score); "
                f"got {self.threshold!r}."
            )
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress must be True or False; got {self.progress!r}.")
        self._source = check_feature_source(self.feature_source)

    def set_params(self, **kwargs: Any) -> None:
        """Set constructor parameters (names in ``defence_params``) and check them.

        Changing a parameter that alters the features or the decision (anything but ``chunk_size``,
        ``progress`` and ``feature_source``, and ``target_fpr`` after a fit with labels whose ``threshold`` is
        not ``"target_fpr"``) discards a previous fit.

        Raises
        ------
        ValueError
            If a name is not a parameter of this detector, or a value is invalid (then nothing changes).
        TypeError
            If ``classifier``, ``estimator`` or ``feature_source`` is of an unusable type (then nothing changes).
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
        keeps = set(_KEEP_FIT)
        if getattr(self, "calibration_", None) == "labels" and self.threshold != "target_fpr":
            keeps.add("target_fpr")
        if any(key not in keeps for key in changed) and hasattr(self, "estimator_"):
            logger.info("Parameters %s changed: the previous fit is discarded.", changed)
            self._discard_fit()

    def _discard_fit(self) -> None:
        del self.estimator_, self.feature_names_, self.calibration_, self.model_fingerprint_
        del self.threshold_, self.clean_fpr_

    def _chunk(self, batch_size: int | None) -> int:
        """Samples per computation: ART's ``batch_size`` argument if given, else ``chunk_size``."""
        if batch_size is None:
            return self.chunk_size
        return _features.check_chunk_size(batch_size, "batch_size")

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimator_"):
            name = type(self).__name__
            raise NotFittedError(
                f"This {name} is not fitted yet; call fit(x, y) with clean (0) and adversarial (1) examples, or "
                "fit(x) with clean inputs only, or load a saved detector."
            )

    def _new_estimator(self, *, labelled: bool, n_features: int) -> tuple[Any, str]:
        if self.estimator is None:
            kind = "classifier" if labelled else "outlier_detector"
            return self._default_estimator(labelled=labelled, n_features=n_features), kind
        return clone_for_fit(self.estimator, labelled=labelled)

    # ---------------------------------------------------------------------------------------- fit / detect
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        batch_size: int | None = None,
        nb_epochs: int | None = None,
        *,
        x_reference: np.ndarray | None = None,
        **kwargs: Any,
    ) -> None:
        """Fit the estimator on the features of labelled inputs, or calibrate it on clean inputs.

        Parameters
        ----------
        x : ndarray of shape (N, *classifier.input_shape)
            Inputs, raw (before the classifier's preprocessing): clean and adversarial with ``y``, clean only
            without.
        y : ndarray of shape (N,) or (N, 2), optional
            Detection labels: 0 clean / 1 adversarial, or ART's one-hot form (column 1 = adversarial) as
            ``BinaryInputDetector`` takes. None: clean-only calibration (the estimator must be None or an
            outlier detector).
        batch_size : int, optional
            Samples per computation, ART's name for the detector's ``chunk_size`` (default: that).
        nb_epochs : int, optional
            ART's argument, accepted and ignored (nothing here trains in epochs).
        x_reference : ndarray of shape (M, *classifier.input_shape), optional
            Clean reference images (e.g. from the classifier's training set) for the features fitted on clean
            images (the stacked detector's class Gaussians); what a detector does without them is on its
            class. A detector whose features fit nothing ignores them.
        **kwargs
            Passed to the estimator's ``fit``. ``sample_weight`` (shape (N,), non-negative) reaches the
            default estimators (pipelines through scikit-learn's metadata routing) and any estimator whose
            ``fit`` takes it.

        Raises
        ------
        ValueError
            Before any feature is computed: if ``x`` or ``x_reference`` has the wrong shape or is not finite;
            ``y`` is not binary, lacks one of the two classes or does not match ``x``'s length; ``y`` is None
            while ``estimator`` is a classifier (it needs labels), or ``y`` is given for an outlier detector;
            ``sample_weight`` is malformed or the estimator cannot take it.
        TypeError
            If ``estimator`` cannot serve as a detector's estimator (e.g. a regressor).
        """
        del nb_epochs
        chunk_size = self._chunk(batch_size)
        x = _features.check_inputs(self.classifier, x)
        if x_reference is not None:
            x_reference = _features.check_inputs(self.classifier, x_reference, "x_reference")
        names = self._feature_names()
        estimator, kind = self._new_estimator(labelled=y is not None, n_features=len(names))
        labels = None if y is None else detection_labels(y, len(x))
        fit_kwargs = check_fit_kwargs(estimator, kwargs, len(x))
        self._fit_features(x, labels, x_reference)
        features = self._features(x, chunk_size)
        self._fit_estimator(estimator, kind, features, labels, fit_kwargs)
        self.feature_names_ = names
        self.calibration_ = "labels" if labels is not None else "clean"
        self.model_fingerprint_ = persistence.model_fingerprint(self.classifier)
        logger.debug(
            "Fitted %s on %d samples and features %s; threshold %s (clean out-of-fold FPR %s).",
            type(estimator).__name__,
            len(x),
            names,
            self.threshold_,
            self.clean_fpr_,
        )

    def _fit_estimator(
        self, estimator: Any, kind: str, features: np.ndarray, labels: np.ndarray | None, fit_kwargs: dict[str, Any]
    ) -> None:
        """Fit ``estimator`` on the feature matrix and set ``estimator_``, ``threshold_`` and ``clean_fpr_``."""
        threshold, clean_fpr = (None if isinstance(self.threshold, str) else float(self.threshold)), None
        if labels is not None and self.threshold == "target_fpr":
            threshold, clean_fpr = supervised_threshold(estimator, features, labels, float(self.target_fpr), fit_kwargs)
        with sklearn.config_context(enable_metadata_routing=routes_metadata(estimator, fit_kwargs)):
            if labels is None:
                estimator.fit(features, **fit_kwargs)
            else:
                estimator.fit(features, labels, **fit_kwargs)
        if kind == "classifier" and len(getattr(estimator, "classes_", ())) != 2:
            classes = getattr(estimator, "classes_", None)
            raise ValueError(f"estimator must be a binary classifier; its classes_ are {classes}.")
        self.estimator_ = estimator
        self.threshold_, self.clean_fpr_ = threshold, clean_fpr
        self._calibrated = False

    def detect(self, x: np.ndarray, batch_size: int | None = None, **kwargs: Any) -> tuple[dict, np.ndarray]:
        """Flag adversarial inputs.

        Parameters
        ----------
        x : ndarray of shape (N, *classifier.input_shape)
            Raw inputs.
        batch_size : int, optional
            Samples per computation, ART's name for the detector's ``chunk_size`` (default: that).
        **kwargs
            Accepted and ignored, as ART's own detectors do (e.g. ``verbose=False``).

        Returns
        -------
        report : dict
            ``"scores"``: dict feature name -> ndarray (N,) of feature values; ``"decision_scores"``: ndarray
            (N,), higher = more adversarial: a classifier's ``decision_function`` (or its probability of
            "adversarial" if it has none), an outlier detector's ``-decision_function``; ``"threshold"``:
            float, the decision score above which an input is flagged (``threshold_``; where the estimator's
            ``predict`` decides, 0.0, or 0.5 for probabilities); ``"feature_names"``: list of str.
        is_adversarial : ndarray of shape (N,), bool
            True = adversarial: ``decision_scores > threshold_``, or the estimator's ``predict``.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the detector is not fitted.
        ValueError
            If ``x`` has the wrong shape or is not finite.
        """
        if kwargs:
            logger.debug("detect ignores the keyword arguments %s (accepted as ART's detectors do).", sorted(kwargs))
        self._check_fitted()
        chunk_size = self._chunk(batch_size)
        x = _features.check_inputs(self.classifier, x)
        features = self._features(x, chunk_size)
        decision, threshold, is_adversarial = decide(self.estimator_, features, self.threshold_)
        report = {
            "scores": dict(zip(self.feature_names_, features.T.copy(), strict=True)),
            "decision_scores": decision,
            "threshold": threshold,
            "feature_names": list(self.feature_names_),
        }
        return report, is_adversarial

    def calibrate(self, x_clean: np.ndarray) -> Self:
        """Move the decision threshold to flag ``target_fpr`` of the held-out clean images ``x_clean``.

        Returns
        -------
        self
            With ``threshold_`` at the clean quantile of ``x_clean``'s decision scores and ``clean_fpr_`` the
            share of ``x_clean`` it flags.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the detector is not fitted.
        """
        report, _ = self.detect(x_clean)
        scores = report["decision_scores"]
        self.threshold_ = clean_threshold(scores, self.target_fpr)
        self.clean_fpr_ = float(np.mean(scores > self.threshold_))
        self._calibrated = True
        return self

    # ------------------------------------------------------------------------------------ detection logit
    def as_art_classifier(self) -> DetectionLogitClassifier:
        """The fitted detector as an ART classifier with one output: the detection logit, with input gradients.

        ``predict(x)`` gives shape (N, 1): the decision score minus ``threshold_`` (for a linear classifier,
        its ``decision_function``; for ``ThresholdClassifier``, divided by its column's std, as its
        log-odds; for ``QuantileOutlierDetector``, ``-decision_function``); positive exactly where
        :meth:`detect` flags the input. ``class_gradient(x)`` gives its exact input gradient, shape
        (N, 1, *input_shape), by autodiff through the features. Pass it (or the detector) to
        :class:`art_fisher.adversarial.AdaptiveDetectorClassifier` or ART's ``DetectorClassifier``.

        Returns
        -------
        art_fisher.detection.DetectionLogitClassifier

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the detector is not fitted.
        art_fisher.detection.NotDifferentiableError
            Before any work, naming the features, estimator or preprocessing that has no input gradient.
        """
        self._check_fitted()
        self._check_differentiable()
        classifier = self.classifier
        if classifier.preprocessing_operations and not classifier.all_framework_preprocessing:
            raise NotDifferentiableError(
                f"the classifier's preprocessing {[type(op).__name__ for op in classifier.preprocessing_operations]}"
                " is not run in PyTorch by ART, so the detector's input gradient cannot pass through it."
            )
        parameter = next(classifier.model.parameters())
        to_logit = estimator_logit(
            self.estimator_, dtype=parameter.dtype, device=parameter.device, threshold=self.threshold_
        )

        def logit(x: torch.Tensor) -> torch.Tensor:
            if classifier.preprocessing_operations:
                x, _ = classifier._apply_preprocessing(x, y=None, fit=False, no_grad=False)
            with _features._eval_mode(classifier.model):
                return to_logit(self._torch_features(x.contiguous()))

        return DetectionLogitClassifier(
            logit,
            input_shape=tuple(classifier.input_shape),
            clip_values=classifier.clip_values,
            dtype=parameter.dtype,
            device=parameter.device,
            name=self._logit_name(),
            model_fingerprint=self.model_fingerprint_,
        )

    def _logit_name(self) -> str:
        return type(self).__name__

    # ---------------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the learned state to ``path`` (a skops file, conventionally ``*.skops``), atomically.

        Stored: the settings, the fitted estimator (through ``skops.io``, never bare pickle), the feature
        names, what the features learned (the stacked detector's class Gaussians), the classifier's input
        shape and class count, a fingerprint of the classifier's weights and preprocessing
        (``art_fisher.detection._persistence.model_fingerprint``, taken at fit time), the decision
        threshold and the package versions. Not stored: the classifier or its weights, the feature source,
        the reference images.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the detector is not fitted.
        """
        self._check_fitted()
        persistence.write_state(self._get_state(), path, detector=self._FILE_KIND, extra_keys=self._EXTRA_KEYS)

    @classmethod
    def load(
        cls,
        path: str | Path,
        classifier: Any,
        *,
        trusted: Sequence[str] = (),
        allow_other_model: bool = False,
    ) -> Self:
        """Load a detector written by :meth:`save` and attach it to ``classifier``.

        Nothing in the file is executed (``skops.io`` with a trusted-type list); see
        ``art_fisher.detection._persistence.read_state`` for every check. Its decisions are those of the
        detector that was saved.

        Parameters
        ----------
        path : str or Path
            A file written by :meth:`save` of this class.
        classifier : art.estimators.classification.PyTorchClassifier
            The classifier the detector was fitted for (same weights and preprocessing, checked through the
            saved fingerprint; same input shape and number of classes).
        trusted : sequence of str
            Further type names to trust, for a custom ``estimator``.
        allow_other_model : bool, default=False
            Load even when the fingerprint differs (with a warning): the decisions are then not calibrated
            for this model.

        Returns
        -------
        Detector
            Of this class, fitted, with the saved settings.

        Raises
        ------
        ValueError
            If the file is missing, malformed, untrusted or of another format or detector class, or fitted for
            another classifier (see ``art_fisher.detection._persistence.read_state``).
        TypeError
            If ``classifier`` is not an ART ``PyTorchClassifier``.
        """
        _features.check_classifier(classifier)
        state = persistence.read_state(
            path, classifier, setting_names=cls._setting_names(), trusted=trusted,
            allow_other_model=allow_other_model, detector=cls._FILE_KIND, extra_keys=cls._EXTRA_KEYS,
        )  # fmt: skip
        try:
            detector = cls(classifier, estimator=state["estimator"], **state["settings"])
        except (TypeError, ValueError) as err:
            raise persistence.invalid_file(path, f"its settings are invalid ({err})", cls._FILE_KIND) from err
        try:
            detector._set_state(state)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is inconsistent: {err}") from err
        return detector

    @classmethod
    def _setting_names(cls) -> list[str]:
        """The constructor arguments a saved state holds."""
        return [k for k in cls.defence_params if k not in _NOT_SAVED]

    def _get_state(self) -> dict[str, Any]:
        """The fitted detector's state, as :func:`art_fisher.detection._persistence.write_state` stores it.

        Keys: ``settings`` (constructor arguments but the classifier, the estimator and the feature source),
        ``estimator``, ``estimator_``, ``feature_names``, ``input_shape``, ``nb_classes``,
        ``model_fingerprint``, ``decision_threshold``, ``clean_fpr``, ``calibrated`` and the configuration's
        :attr:`_EXTRA_KEYS`. The estimators are the detector's own objects (not copies).
        """
        self._check_fitted()
        return {
            "settings": self._saved_settings(),
            "estimator": self.estimator,
            "estimator_": self.estimator_,
            "feature_names": list(self.feature_names_),
            "input_shape": [int(d) for d in self.classifier.input_shape],
            "nb_classes": int(self.classifier.nb_classes),
            "model_fingerprint": self.model_fingerprint_,
            "decision_threshold": self.threshold_,
            "clean_fpr": self.clean_fpr_,
            "calibrated": self._calibrated,
            **self._extra_state(),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        """Take back the fitted part of a state from ``art_fisher.detection._persistence.read_state``.

        Raises
        ------
        ValueError
            If the state's feature names are not those of this detector for its classifier, or its
            ``estimator_`` was fitted on another number of features.
        """
        if list(state["feature_names"]) != self._feature_names():
            raise ValueError("its feature names do not match its settings.")
        n_fitted = getattr(state["estimator_"], "n_features_in_", None)
        if n_fitted is not None and n_fitted != len(state["feature_names"]):
            raise ValueError(
                f"its 'estimator_' was fitted on {n_fitted} features; the detector computes "
                f"{len(state['feature_names'])}."
            )
        self._restore_features(state)
        self.estimator_ = state["estimator_"]
        self.feature_names_ = list(state["feature_names"])
        self.model_fingerprint_ = state["model_fingerprint"]
        self.calibration_ = state["calibration"]
        self.threshold_, self.clean_fpr_ = state["decision_threshold"], state["clean_fpr"]
        self._calibrated = bool(state["calibrated"])


def _same(a: Any, b: Any) -> bool:
    """Whether two parameter values are the same (sequences compared as tuples, objects by identity)."""
    if a is b:
        return True
    if isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, str | bytes):
        return tuple(a) == tuple(b)
    if isinstance(a, str | bool | int | float | type(None)) and isinstance(b, str | bool | int | float | type(None)):
        return type(a) is type(b) and a == b
    return False
