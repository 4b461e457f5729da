"""An ART evasion detector built on the Fisher information of the classifier's prediction.

:class:`FisherInformationDetector` computes Fisher metrics (:mod:`art_fisher.metrics`) of an ART
``PyTorchClassifier`` at each input, and a scikit-learn estimator decides from these values which inputs
are adversarial: a classifier fitted on clean (0) and adversarial (1) examples, or, with no labels, an
outlier detector calibrated on clean inputs alone. It is one configuration of
:class:`~art_fisher.detection.Detector`, which holds the fit, the decision, the threshold, the files and the
detection logit; this module holds the metric features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from art_fisher import metrics as metrics_module
from art_fisher.detection import _features
from art_fisher.detection._base import Detector
from art_fisher.detection._decision import default_clean_estimator, default_estimator
from art_fisher.detection._feature_source import FeatureSource
from art_fisher.detection._logit import NotDifferentiableError, check_estimator_differentiable


class FisherInformationDetector(Detector):
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
        The (trained) classifier whose inputs are screened. Never modified; not saved by
        :meth:`~art_fisher.detection.Detector.save`.
    metrics : sequence of str, default=("trace", "quadratic_form")
        Metric names: ``"trace"``, ``"quadratic_form"``, ``"sensitivity"``, ``"max_eigenvalue"`` and
        ``"block_traces"``. One feature column per scalar
        metric, one per selected parameter tensor for ``"block_traces"`` (the trace of its own block of
        :math:`F(x)`), four for ``"sensitivity"``.
    estimator : sklearn classifier or outlier detector, default=None
        Decides from the feature columns (cloned in :meth:`~art_fisher.detection.Detector.fit`). A classifier
        (with ``predict_proba`` or ``decision_function``) is fitted on labelled clean / adversarial inputs;
        an outlier detector (e.g. ``IsolationForest``) on clean inputs alone, ``fit(x)``. None: with labels, a
        :class:`~art_fisher.detection.ThresholdClassifier` for one feature column and a logistic
        regression on the standardised logs of the columns for several (``default_estimator``); without
        labels, ``default_clean_estimator``.
    target_fpr, threshold, chunk_size, progress, feature_source
        As for every detector (:class:`~art_fisher.detection.Detector`): the share of clean inputs flagged,
        the decision threshold rule (``"target_fpr"`` by default), samples per computation, a progress bar,
        and where per-input metric values come from (None: computed; a
        :class:`~art_fisher.detection.FeatureCache`: looked up where computed before).
    output, direction, blockwise, normalize, classes, params, method, fd_step, tau
        The metric options, one object shared with :class:`~art_fisher.detection.FisherFeatures`
        (meanings and defaults: ``art_fisher.detection._features.MetricOptions``). ``direction`` is
        ``"predicted"`` or ``"top_eigenvector"`` (a detector has no true labels at detection time).

    Attributes
    ----------
    estimator_, feature_names_, calibration_, threshold_, clean_fpr_, model_fingerprint_
        The fit, as for every detector (:class:`~art_fisher.detection.Detector`).

    Raises
    ------
    TypeError
        If ``classifier`` is not an ART ``PyTorchClassifier`` or ``estimator`` is neither a classifier
        with ``predict_proba`` / ``decision_function`` nor an outlier detector (e.g. a regressor).
    ValueError
        If another setting is invalid.

    Notes
    -----
    Attacks that know the detector: :meth:`~art_fisher.detection.Detector.as_art_classifier` is the detector as ART's
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

    ``fit`` accepts ``x_reference`` as every detector does and does not use it (the metrics fit nothing).

    Examples
    --------
    >>> detector = FisherInformationDetector(classifier)            # doctest: +SKIP
    >>> detector.fit(np.concatenate([x_clean, x_adv]), np.r_[np.zeros(n), np.ones(n)])  # doctest: +SKIP
    >>> report, is_adversarial = detector.detect(x_test)            # doctest: +SKIP
    >>> clean_only = FisherInformationDetector(classifier, target_fpr=0.05)  # doctest: +SKIP
    >>> clean_only.fit(x_clean)                      # no adversarial example needed  # doctest: +SKIP
    """

    defence_params: ClassVar[list[str]] = [
        "classifier",
        "metrics",
        "estimator",
        "target_fpr",
        "threshold",
        "chunk_size",
        *(name for name in _features.OPTION_NAMES if name != "metrics"),
        "progress",
        "feature_source",
    ]
    _FILE_KIND: ClassVar[str] = "FisherInformationDetector"

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
        feature_source: FeatureSource | None = None,
    ) -> None:
        super().__init__(
            classifier,
            estimator=estimator,
            target_fpr=target_fpr,
            threshold=threshold,
            chunk_size=chunk_size,
            progress=progress,
            feature_source=feature_source,
        )
        self.metrics = metrics
        self.output = output
        self.direction = direction
        self.blockwise = blockwise
        self.normalize = normalize
        self.classes = classes
        self.params = params
        self.method = method
        self.fd_step = fd_step
        self.tau = tau
        self._check_params()

    # -------------------------------------------------------------------------------------- features
    def _check_config(self) -> None:
        self._options = _features.options_of(self)

    def _feature_names(self) -> list[str]:
        return _features.feature_names(self._options.metrics, _features.block_names(self.classifier, self._options))

    def _features(self, x: np.ndarray, chunk_size: int) -> np.ndarray:
        values = {
            metric: _features.metric_values(
                self.classifier, x, metric, self._options, chunk_size=chunk_size, progress=self.progress,
                source=self._source,
            )
            for metric in self._options.metrics
        }  # fmt: skip
        return _features.feature_matrix(values, self._options.metrics)

    def _default_estimator(self, *, labelled: bool, n_features: int) -> Any:
        if labelled:
            return default_estimator(n_features)
        blocks = _features.block_names(self.classifier, self._options)
        return default_clean_estimator(self._options.metrics, float(self.target_fpr), blocks)

    def _saved_settings(self) -> dict[str, Any]:
        settings = super()._saved_settings()
        settings["metrics"] = list(self._options.metrics)
        return settings

    def _check_differentiable(self) -> None:
        options = self._options
        maps = [m for m in options.metrics if _features.METRICS[m].is_map]
        if maps:
            raise NotDifferentiableError(
                f"metrics {maps} have no input gradient here (a map reduced by sorts); gradients need metrics "
                f"from {[m for m in _features.METRICS if not _features.METRICS[m].is_map]}; got "
                f"metrics={options.metrics}."
            )
        if options.method != "exact":
            raise NotDifferentiableError(f"gradients need method='exact'; got method={options.method!r}.")
        check_estimator_differentiable(self.estimator_)

    def _torch_features(self, x: torch.Tensor) -> torch.Tensor:
        model, columns = self.classifier.model, []
        for metric in self._options.metrics:
            spec = _features.METRICS[metric]
            values = getattr(metrics_module, spec.function)(
                model, x, create_graph=True, **self._options.kwargs_for(metric)
            )
            columns.append(_features.metric_columns(values, spec))
        return torch.cat(columns, dim=1)

    def _logit_name(self) -> str:
        return f"FisherInformationDetector({', '.join(self._options.metrics)})"

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
