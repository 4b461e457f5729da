"""An ART evasion detector built on the Fisher information of the classifier's prediction.

:class:`FisherInformationDetector` computes Fisher metrics (:mod:`art_fisher.metrics`) of an ART
``PyTorchClassifier`` at each input, and a scikit-learn estimator decides from these values which inputs
are adversarial: a classifier fitted on clean (0) and adversarial (1) examples, or, with no labels, an
outlier detector calibrated on clean inputs alone (:mod:`art_fisher.detection`). It follows ART's
``EvasionDetector`` contract: ``fit(x, y, batch_size, nb_epochs)``, ``detect(x, batch_size) ->
(report, is_adversarial)``, ``defence_params``, ``set_params``, ``get_params``. The constructor, the
parameter checks and ``set_params`` live in :mod:`art_fisher.detection`; files in
:mod:`art_fisher.detection`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sklearn

from art_fisher.detection import _features
from art_fisher.detection import _persistence as persistence
from art_fisher.detection._calibration import clean_threshold
from art_fisher.detection._decision import (
    check_fit_kwargs,
    decide,
    detection_labels,
    new_estimator,
    routes_metadata,
    supervised_threshold,
)
from art_fisher.detection._detector_params import DetectorParameters
from art_fisher.detection._logit import DetectionLogitClassifier, detection_logit_function

logger = logging.getLogger(__name__)

DETECTOR_FORMAT = persistence.DETECTOR_FORMAT
DETECTOR_FORMAT_VERSION = persistence.DETECTOR_FORMAT_VERSION


class FisherInformationDetector(DetectorParameters):
    r"""Detect adversarial inputs from the Fisher information of the classifier's prediction.

    For each input :math:`x` the detector computes the chosen metrics of the classifier's predictive
    distribution :math:`p(c \mid x; \theta)`, whose Fisher matrix is

    .. math:: F(x) = \sum_c p_c \, \nabla_\theta \log p_c \, \nabla_\theta \log p_c^\top,

    e.g. its trace :math:`\operatorname{tr} F(x)` and the quadratic form :math:`\bar v^\top F(x) \bar v`
    along the normalised gradient :math:`\bar v` of the predicted class's log-probability (see
    :mod:`art_fisher.metrics`). A sensitivity map (one value per input dimension) is reduced to the
    features ``l1``, ``l2``, ``max`` and ``top_mass`` (``art_fisher.detection._features.SENSITIVITY_REDUCTIONS``);
    the full maps come from :meth:`sensitivity_maps`. A scikit-learn estimator (``estimator``) then
    decides from these features which inputs are adversarial: a classifier fitted on clean and
    adversarial examples (``fit(x, y)``), or an outlier detector calibrated on clean inputs alone
    (``fit(x)``, see below).

    The metrics see what the classifier sees: inputs pass through the classifier's preprocessing
    (``preprocessing`` and preprocessing defences, as in ``classifier.predict``), the model runs in
    eval mode on the classifier's device, and the model's parameters, gradients and train/eval
    modes are left as they were. Postprocessing defences act on the classifier's outputs only and
    do not enter the metrics.

    Parameters
    ----------
    classifier : art.estimators.classification.PyTorchClassifier
        The (trained) classifier whose inputs are screened. Never modified; not saved by :meth:`save`.
    metrics : sequence of str, default=("trace", "quadratic_form")
        Metric names: ``"trace"``, ``"quadratic_form"``, ``"sensitivity"``, ``"max_eigenvalue"`` and
        ``"block_traces"``. One feature column per scalar
        metric, one per selected parameter tensor for ``"block_traces"`` (the trace of its own block of
        :math:`F(x)`), four for ``"sensitivity"``.
    estimator : sklearn classifier or outlier detector, default=None
        Decides from the feature columns (cloned in :meth:`fit`). A classifier (with ``predict_proba``
        or ``decision_function``) is fitted on labelled clean / adversarial inputs; an outlier detector
        (e.g. ``IsolationForest``) on clean inputs alone, ``fit(x)``. None: with labels, a
        :class:`~art_fisher.detection.ThresholdClassifier` for one feature column and a logistic
        regression on the standardised logs of the columns for several (``default_estimator``); without
        labels, ``default_clean_estimator``.
    target_fpr : float in (0, 1), default=0.05
        Fraction of clean inputs the detector is set to flag: by the default estimator of ``fit(x)``
        without labels, and by the decision threshold after ``fit(x, y)`` (``threshold="target_fpr"``).
    threshold : {"target_fpr", "estimator"} or float, default="target_fpr"
        Where the decision score (``detect``'s ``"decision_scores"``) flags an input after ``fit(x, y)``.
        ``"target_fpr"``: at the clean examples' ``art_fisher.detection._decision.supervised_threshold``,
        which flags ``target_fpr`` of clean inputs (out-of-fold scores, 5 folds), not where the estimator
        separates the balanced fit set best. ``"estimator"``: the estimator's own ``predict`` (e.g.
        probability ½). A number: flag decision scores above it. After ``fit(x)`` without labels the outlier
        detector decides (the default one flags ``target_fpr`` of clean inputs), unless a number is given.
    chunk_size : int, default=128
        Samples per metric computation when ``fit``/``detect`` get no ``batch_size`` (bounds memory;
        the values do not depend on it).
    output, direction, blockwise, normalize, classes, params, method, fd_step, tau
        The metric options, one object shared with :class:`~art_fisher.detection.FisherFeatures`
        (meanings and defaults: ``art_fisher.detection._features.MetricOptions``). ``direction`` is
        ``"predicted"`` or ``"top_eigenvector"`` (a detector has no true labels at detection time).
    progress : bool, default=False
        Show a progress bar over batches.

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
        After ``fit(x, y)`` with ``threshold="target_fpr"``: the share of the clean fit examples'
        out-of-fold decision scores above ``threshold_`` (else None).
    model_fingerprint_ : str
        ``art_fisher.detection._persistence.model_fingerprint`` of the classifier at fit time (saved with the
        detector; :meth:`load` checks it).

    Raises
    ------
    TypeError
        If ``classifier`` is not an ART ``PyTorchClassifier`` or ``estimator`` is neither a classifier
        with ``predict_proba`` / ``decision_function`` nor an outlier detector (e.g. a regressor).
    ValueError
        If another setting is invalid.

    Notes
    -----
    Attacks that know the detector: :meth:`as_art_classifier` is the detector as ART's
    ``DetectorClassifier`` needs it (``predict`` = one detection logit per sample, ``class_gradient`` its
    exact input gradient, by autodiff through the Fisher metrics), and
    :class:`art_fisher.adversarial.AdaptiveDetectorClassifier` the pair with an attacker's loss, on
    which ART's PGD, AutoPGD and C&W run. Differentiable: the scalar metrics with ``method="exact"`` and the
    estimators ``ThresholdClassifier``, a linear classifier (alone or after ``StandardScaler``, the
    default with labels) and ``QuantileOutlierDetector`` (the default without labels, piecewise);
    see :mod:`art_fisher.detection`.

    Clean-only calibration (``fit(x)`` without ``y``) flags inputs whose Fisher information is
    *higher* than that of the clean inputs: :math:`\\operatorname{tr} F(x)` vanishes for a prediction the
    model is sure of and grows where the predictive distribution is spread, which is where adversarial
    examples end up; an attack that pushes inputs to *high* confidence evades this rule. How several
    metrics are combined and thresholded is in :mod:`art_fisher.detection`.

    Examples
    --------
    >>> detector = FisherInformationDetector(classifier)            # doctest: +SKIP
    >>> detector.fit(np.concatenate([x_clean, x_adv]), np.r_[np.zeros(n), np.ones(n)])  # doctest: +SKIP
    >>> report, is_adversarial = detector.detect(x_test)            # doctest: +SKIP
    >>> clean_only = FisherInformationDetector(classifier, target_fpr=0.05)  # doctest: +SKIP
    >>> clean_only.fit(x_clean)                      # no adversarial example needed  # doctest: +SKIP
    """

    # -------------------------------------------------------------------------------------- features
    def _values(self, x: np.ndarray, chunk_size: int) -> dict[str, np.ndarray]:
        return _features.compute(
            self.classifier,
            x,
            metrics=self._metric_names,
            settings=self._options,
            chunk_size=chunk_size,
            progress=self.progress,
        )

    def sensitivity_maps(self, x: np.ndarray, *, chunk_size: int | None = None) -> np.ndarray:
        """Fisher information sensitivity of every input dimension, for plotting.

        Uses the detector's metric settings; needs no fit.

        Parameters
        ----------
        x : ndarray of shape (N, *classifier.input_shape)
        chunk_size : int, optional
            Samples per computation (default: the detector's ``chunk_size``).

        Returns
        -------
        ndarray of shape (N, *classifier.input_shape)
            The maps, with respect to the raw input when the classifier's preprocessing is a plain
            standardisation (chain rule: times :math:`1/\\sigma_i^2`), else with respect to the
            preprocessed input.

        Raises
        ------
        ValueError
            If ``x`` has the wrong shape or is not finite, or ``chunk_size`` is not a positive integer.
        """
        if chunk_size is not None:
            chunk_size = _features.check_chunk_size(chunk_size)
        x = _features.check_inputs(self.classifier, x)
        values = _features.compute(
            self.classifier,
            x,
            metrics=("sensitivity",),
            settings=self._options,
            chunk_size=self._chunk(chunk_size),
            reduce_maps=False,
            progress=self.progress,
        )
        return values["sensitivity"]

    # ------------------------------------------------------------------------------------ fit/detect
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        batch_size: int | None = None,
        nb_epochs: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Fit the estimator on the metric features of labelled inputs, or calibrate it on clean inputs.

        Parameters
        ----------
        x : ndarray of shape (N, *classifier.input_shape)
            Inputs, raw (before the classifier's preprocessing): clean and adversarial with ``y``, clean
            only without.
        y : ndarray of shape (N,) or (N, 2), optional
            Detection labels: 0 clean / 1 adversarial, or ART's one-hot form (column 1 = adversarial)
            as ``BinaryInputDetector`` takes. None: clean-only calibration (the estimator must be None,
            then ``default_clean_estimator`` flags ``target_fpr`` of clean inputs, or an outlier
            detector).
        batch_size : int, optional
            Samples per metric computation, ART's name for the detector's ``chunk_size`` (default: that).
        nb_epochs : int, optional
            ART's argument, accepted and ignored (nothing here trains in epochs).
        **kwargs
            Passed to the estimator's ``fit``. ``sample_weight`` (shape (N,), non-negative) reaches the
            default estimators (the pipeline through scikit-learn's metadata routing) and any estimator
            whose ``fit`` takes it.

        Raises
        ------
        ValueError
            Before any metric is computed: if ``x`` has the wrong shape or is not finite; ``y`` is not
            binary, lacks one of the two classes or does not match ``x``'s length; ``y`` is None while
            ``estimator`` is a classifier (it needs labels), or ``y`` is given for an outlier detector;
            ``sample_weight`` is malformed or the estimator cannot take it.
        TypeError
            If ``estimator`` cannot serve as a detector's estimator (e.g. a regressor).
        """
        del nb_epochs
        chunk_size = self._chunk(batch_size)
        x = _features.check_inputs(self.classifier, x)
        names = _features.feature_names(self._metric_names, _features.block_names(self.classifier, self._options))
        estimator, kind = self._new_estimator(labelled=y is not None, n_features=len(names))
        labels = None if y is None else detection_labels(y, len(x))
        fit_kwargs = check_fit_kwargs(estimator, kwargs, len(x))
        features = _features.feature_matrix(self._values(x, chunk_size), self._metric_names)
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
        self.feature_names_ = names
        self.calibration_ = "labels" if labels is not None else "clean"
        self.model_fingerprint_ = persistence.model_fingerprint(self.classifier)
        self.threshold_, self.clean_fpr_ = threshold, clean_fpr
        logger.debug(
            "Fitted %s on %d samples and features %s; threshold %s (clean out-of-fold FPR %s).",
            type(estimator).__name__,
            len(x),
            names,
            self.threshold_,
            self.clean_fpr_,
        )

    def _new_estimator(self, *, labelled: bool, n_features: int) -> tuple[Any, str]:
        return new_estimator(
            self.estimator,
            labelled=labelled,
            n_features=n_features,
            metrics=self._metric_names,
            target_fpr=float(self.target_fpr),
            blocks=_features.block_names(self.classifier, self._options),
        )

    def detect(self, x: np.ndarray, batch_size: int | None = None, **kwargs: Any) -> tuple[dict, np.ndarray]:
        """Flag adversarial inputs.

        Parameters
        ----------
        x : ndarray of shape (N, *classifier.input_shape)
            Raw inputs.
        batch_size : int, optional
            Samples per metric computation, ART's name for the detector's ``chunk_size`` (default: that).
        **kwargs
            Accepted and ignored, as ART's own detectors do (e.g. ``verbose=False``).

        Returns
        -------
        report : dict
            ``"scores"``: dict feature name -> ndarray (N,) of metric values (units of the metric);
            ``"decision_scores"``: ndarray (N,), higher = more adversarial: a classifier's
            ``decision_function`` (or its probability of "adversarial" if it has none), an outlier
            detector's ``-decision_function``; ``"threshold"``: float, the decision score above which an
            input is flagged (``threshold_``; where the estimator's ``predict`` decides, 0.0, or 0.5 for
            probabilities); ``"feature_names"``: list of str.
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
        features = _features.feature_matrix(self._values(x, chunk_size), self._metric_names)
        decision, threshold, is_adversarial = decide(self.estimator_, features, self.threshold_)
        report = {
            "scores": dict(zip(self.feature_names_, features.T.copy(), strict=True)),
            "decision_scores": decision,
            "threshold": threshold,
            "feature_names": list(self.feature_names_),
        }
        return report, is_adversarial

    def calibrate(self, x_clean: np.ndarray) -> FisherInformationDetector:
        """Move the decision threshold to flag ``target_fpr`` of the held-out clean images ``x_clean``.

        Returns
        -------
        self : FisherInformationDetector
            With ``threshold_`` at the clean quantile of ``x_clean``'s decision scores and ``clean_fpr_`` the
            share of ``x_clean`` it flags.
        """
        report, _ = self.detect(x_clean)
        scores = report["decision_scores"]
        self.threshold_ = clean_threshold(scores, self.target_fpr)
        self.clean_fpr_ = float(np.mean(scores > self.threshold_))
        return self

    def as_art_classifier(self) -> Any:
        """The fitted detector as an ART classifier with one output: the detection logit, with input gradients.

        ``predict(x)`` gives shape (N, 1): the decision score minus ``threshold_`` (for a linear classifier,
        its ``decision_function``; for ``ThresholdClassifier``, divided by its column's std, as its
        log-odds; for ``QuantileOutlierDetector``, ``-decision_function``); positive exactly where
        :meth:`detect` flags the input. ``class_gradient(x)`` gives its exact input gradient, shape
        (N, 1, *input_shape), through the Fisher metrics' mixed second derivatives. Pass it (or the
        detector) to :class:`art_fisher.adversarial.AdaptiveDetectorClassifier` or ART's
        ``DetectorClassifier``.

        Returns
        -------
        art_fisher.detection._logit.DetectionLogitClassifier

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the detector is not fitted.
        art_fisher.detection._logit.NotDifferentiableError
            Before any work, naming the estimator, metric or method that has no input gradient.
        """
        parameter = next(self.classifier.model.parameters())
        return DetectionLogitClassifier(
            detection_logit_function(self),
            input_shape=tuple(self.classifier.input_shape),
            clip_values=self.classifier.clip_values,
            dtype=parameter.dtype,
            device=parameter.device,
            name=f"FisherInformationDetector({', '.join(self._metric_names)})",
            model_fingerprint=getattr(self, "model_fingerprint_", None),
        )

    # ----------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the learned state to ``path`` (a skops file, conventionally ``*.skops``), atomically.

        Stored: the settings, the fitted estimator (through ``skops.io``, never bare pickle), the feature
        names, the classifier's input shape and class count, a fingerprint of the classifier's weights
        and preprocessing (``art_fisher.detection._persistence.model_fingerprint``, taken at fit time) and the
        package versions. Not stored: the classifier or its weights.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the detector is not fitted.
        """
        self._check_fitted()
        persistence.write_state(self._get_state(), path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        classifier: Any,
        *,
        trusted: Sequence[str] = (),
        allow_other_model: bool = False,
    ) -> FisherInformationDetector:
        """Load a detector written by :meth:`save` and attach it to ``classifier``.

        Nothing in the file is executed (``skops.io`` with a trusted-type list); see
        ``art_fisher.detection._persistence.read_state`` for every check.

        Parameters
        ----------
        path : str or Path
            A file written by :meth:`save`.
        classifier : art.estimators.classification.PyTorchClassifier
            The classifier the detector was fitted for (same weights and preprocessing, checked through
            the saved fingerprint; same input shape and number of classes).
        trusted : sequence of str
            Further type names to trust, for a custom ``estimator``.
        allow_other_model : bool, default=False
            Load even when the fingerprint differs (with a warning): the decisions are then not
            calibrated for this model.

        Returns
        -------
        FisherInformationDetector
            Fitted, with the saved settings.

        Raises
        ------
        ValueError
            If the file is missing, malformed, untrusted or of another format, or fitted for another
            classifier (see ``art_fisher.detection._persistence.read_state``).
        TypeError
            If ``classifier`` is not an ART ``PyTorchClassifier``.
        """
        _features.check_classifier(classifier)
        state = persistence.read_state(
            path, classifier, setting_names=cls._setting_names(), trusted=trusted, allow_other_model=allow_other_model
        )
        try:
            detector = cls(classifier, estimator=state["estimator"], **state["settings"])
        except (TypeError, ValueError) as err:
            raise persistence.invalid_file(path, f"its settings are invalid ({err})") from err
        try:
            detector._set_state(state)
        except ValueError as err:
            raise ValueError(f"{path} is inconsistent: {err}") from err
        return detector

    @classmethod
    def _setting_names(cls) -> list[str]:
        """The constructor arguments a saved state holds (all but the classifier and the estimator)."""
        return [k for k in cls.defence_params if k not in ("classifier", "estimator")]

    def _get_state(self) -> dict[str, Any]:
        """The fitted detector's state, as ``art_fisher.detection._persistence.write_state`` stores it.

        Keys: ``settings`` (constructor arguments but the classifier and the estimator), ``estimator``,
        ``estimator_``, ``feature_names``, ``input_shape``, ``nb_classes``, ``model_fingerprint``,
        ``decision_threshold`` and ``clean_fpr``. The estimators are the detector's own objects (not copies).
        """
        self._check_fitted()
        settings = {key: getattr(self, key) for key in self._setting_names()}
        settings["metrics"] = list(self._metric_names)
        return {
            "settings": settings,
            "estimator": self.estimator,
            "estimator_": self.estimator_,
            "feature_names": list(self.feature_names_),
            "input_shape": [int(d) for d in self.classifier.input_shape],
            "nb_classes": int(self.classifier.nb_classes),
            "model_fingerprint": self.model_fingerprint_,
            "decision_threshold": self.threshold_,
            "clean_fpr": self.clean_fpr_,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        """Take back the fitted part of a state from ``art_fisher.detection._persistence.read_state``.

        Sets ``estimator_``, ``feature_names_``, ``model_fingerprint_``, ``calibration_``, ``threshold_``
        and ``clean_fpr_``; the settings are the constructor's business.

        Raises
        ------
        ValueError
            If the state's feature names are not those of this detector's metrics for its classifier, or its
            ``estimator_`` was fitted on another number of features.
        """
        blocks = _features.block_names(self.classifier, self._options)
        if list(state["feature_names"]) != _features.feature_names(self._metric_names, blocks):
            raise ValueError("its feature names do not match its metrics.")
        n_fitted = getattr(state["estimator_"], "n_features_in_", None)
        if n_fitted is not None and n_fitted != len(state["feature_names"]):
            raise ValueError(
                f"its 'estimator_' was fitted on {n_fitted} features; the detector computes "
                f"{len(state['feature_names'])}."
            )
        self.estimator_ = state["estimator_"]
        self.feature_names_ = list(state["feature_names"])
        self.model_fingerprint_ = state["model_fingerprint"]
        self.calibration_ = state["calibration"]
        self.threshold_, self.clean_fpr_ = state["decision_threshold"], state["clean_fpr"]
