"""An ART evasion detector built on the Fisher information of the classifier's prediction.

:class:`FisherInformationDetector` computes Fisher metrics (:mod:`art_fisher.metrics`) of an ART
``PyTorchClassifier`` at each input, and a scikit-learn classifier learns from clean (0) and
adversarial (1) examples which metric values mean "adversarial". It follows ART's
``EvasionDetector`` contract: ``fit(x, y)``, ``detect(x) -> (report, is_adversarial)``,
``defence_params``, ``set_params``, ``get_params``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from art.defences.detector.evasion import EvasionDetector
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from art_fisher import _features
from art_fisher.estimators import ThresholdClassifier

logger = logging.getLogger(__name__)

__all__ = ["FisherInformationDetector", "default_estimator", "DETECTOR_FORMAT", "DETECTOR_FORMAT_VERSION"]

#: Identifies files written by :meth:`FisherInformationDetector.save`.
DETECTOR_FORMAT = "art_fisher.FisherInformationDetector"
#: Bumped whenever the saved layout changes; :meth:`FisherInformationDetector.load` refuses others.
DETECTOR_FORMAT_VERSION = 1
#: Types a saved detector may hold beyond skops' own defaults (sklearn estimators, numpy, builtins).
_TRUSTED_TYPES = ["art_fisher.estimators.ThresholdClassifier"]


def default_estimator(n_features: int) -> Any:
    """The estimator a detector uses when none is given.

    A :class:`~art_fisher.estimators.ThresholdClassifier` (Youden's J) for one feature column, a
    ``Pipeline([StandardScaler(), LogisticRegression()])`` for several.
    """
    if n_features == 1:
        return ThresholdClassifier()
    return Pipeline([("scale", StandardScaler()), ("logistic", LogisticRegression(max_iter=1000))])


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import art
    import sklearn
    import torch

    import art_fisher

    return {
        "art_fisher": art_fisher.__version__,
        "scikit-learn": sklearn.__version__,
        "adversarial-robustness-toolbox": art.__version__,
        "torch": torch.__version__,
        "skops": version("skops"),
    }


class FisherInformationDetector(EvasionDetector):
    """Detect adversarial inputs from the Fisher information of the classifier's prediction.

    For each input :math:`x` the detector computes the chosen metrics of the classifier's predictive
    distribution :math:`p(c \\mid x; \\theta)`, whose Fisher matrix is

    .. math:: F(x) = \\sum_c p_c \\, \\nabla_\\theta \\log p_c \\, \\nabla_\\theta \\log p_c^\\top,

    e.g. its trace :math:`\\operatorname{tr} F(x)` and the quadratic form :math:`\\bar v^\\top F(x) \\bar v`
    along the normalised gradient :math:`\\bar v` of the predicted class's log-probability (see
    :mod:`art_fisher.metrics`). A sensitivity map (one value per input dimension) is reduced to the
    features ``l1``, ``l2``, ``max`` and ``top_mass`` (:data:`art_fisher._features.SENSITIVITY_REDUCTIONS`);
    the full maps come from :meth:`sensitivity_maps`. A scikit-learn classifier (``estimator``) then
    learns from these features which inputs are adversarial.

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
        Metric names: ``"trace"``, ``"quadratic_form"``, ``"sensitivity"`` and ``"max_eigenvalue"``
        (where :mod:`art_fisher.metrics` provides it). One feature column per scalar metric, four for
        ``"sensitivity"``.
    estimator : sklearn classifier, default=None
        Any scikit-learn classifier over the feature columns (cloned in :meth:`fit`). None: a
        :class:`~art_fisher.estimators.ThresholdClassifier` for one feature column, and
        ``StandardScaler`` + ``LogisticRegression`` for several (see :func:`default_estimator`).
    batch_size : int, default=128
        Samples per metric computation when ``fit``/``detect`` get no ``batch_size``.
    output : {"logits", "log_probs", "probs"}, default="logits"
        What the classifier's model returns (``"logits"`` and ``"log_probs"`` give the same metrics,
        since the softmax of log-probabilities is the probabilities).
    direction : {"predicted", "top_eigenvector"}, default="predicted"
        Direction of the quadratic form and sensitivity: the gradient of the predicted class's
        log-probability, or (quadratic form only) the top eigenvector of :math:`F(x)`. (``"label"``
        needs true labels, which a detector does not have at detection time.)
    blockwise : bool or None, default=None
        Layer-wise (block-diagonal) Fisher for the quadratic form and sensitivity; None keeps each
        metric's own default (full for the quadratic form, blockwise for the sensitivity).
    normalize : bool, default=True
        Quadratic form and sensitivity along the unit direction :math:`\bar v = v / \|v\|`; False
        uses the raw gradient :math:`v` (the authors' package), :math:`\|v\|^2` times the value.
    classes : {"all", "predicted_vs_rest"}, default="all"
        Sum of the quadratic form and sensitivity over all classes, or over the two classes
        (predicted, rest) as the authors' package does.
    params : sequence of str or None, default=None
        Names of the model's parameters the Fisher information is taken over; None: all that require
        grad.
    method : {"exact", "finite_difference"}, default="exact"
        Autodiff, or the original paper's central finite differences (``"max_eigenvalue"`` is always
        exact).
    epsilon : float, default=1e-3
        Finite-difference step (only used with ``method="finite_difference"``).
    progress : bool, default=False
        Show a progress bar over batches.

    Attributes
    ----------
    estimator_ : sklearn classifier
        The fitted estimator (set by :meth:`fit`).
    feature_names_ : list of str
        Names of the feature columns the estimator was fitted on.

    Raises
    ------
    TypeError
        If ``classifier`` is not an ART ``PyTorchClassifier`` or ``estimator`` is not a
        scikit-learn-style classifier.
    ValueError
        If another setting is invalid.

    Notes
    -----
    ART's ``DetectorClassifier(classifier, detector)`` does not accept this detector: it needs a
    ``ClassifierNeuralNetwork`` detector (``predict`` returning one detection logit per sample and
    ``class_gradient`` with respect to the input, used by attacks on the combined model), while an
    ``EvasionDetector`` exposes ``detect``; input gradients of the Fisher metrics (mixed
    :math:`\partial_x \partial_\theta` derivatives of the model) are not provided. Use ``detect`` in front of the classifier instead.

    Examples
    --------
    >>> detector = FisherInformationDetector(classifier)            # doctest: +SKIP
    >>> detector.fit(np.concatenate([x_clean, x_adv]), np.r_[np.zeros(n), np.ones(n)])  # doctest: +SKIP
    >>> report, is_adversarial = detector.detect(x_test)            # doctest: +SKIP
    """

    defence_params = [
        "classifier",
        "metrics",
        "estimator",
        "batch_size",
        "output",
        "direction",
        "blockwise",
        "normalize",
        "classes",
        "params",
        "method",
        "epsilon",
        "progress",
    ]

    def __init__(
        self,
        classifier: Any,
        *,
        metrics: Sequence[str] = ("trace", "quadratic_form"),
        estimator: Any = None,
        batch_size: int = 128,
        output: str = "logits",
        direction: str = "predicted",
        blockwise: bool | None = None,
        normalize: bool = True,
        classes: str = "all",
        params: Sequence[str] | None = None,
        method: str = "exact",
        epsilon: float = 1e-3,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.metrics = metrics
        self.estimator = estimator
        self.batch_size = batch_size
        self.output = output
        self.direction = direction
        self.blockwise = blockwise
        self.normalize = normalize
        self.classes = classes
        self.params = params
        self.method = method
        self.epsilon = epsilon
        self.progress = progress
        self._check_params()

    # ----------------------------------------------------------------------------------------- checks
    def _check_params(self) -> None:
        self._metric_names = _features.check_settings_of(self)
        if self.estimator is not None and not (
            callable(getattr(self.estimator, "fit", None)) and callable(getattr(self.estimator, "predict", None))
        ):
            raise TypeError(
                "estimator must be None or a scikit-learn classifier with fit and predict; got "
                f"{type(self.estimator).__qualname__}."
            )
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress must be True or False; got {self.progress!r}.")

    def set_params(self, **kwargs: Any) -> None:
        """Set constructor parameters (names in :attr:`defence_params`) and check them.

        Changing a parameter that alters the features (anything but ``batch_size`` and ``progress``)
        discards a previous fit.

        Raises
        ------
        ValueError
            If a name is not a parameter of this detector, or a value is invalid (then nothing changes).
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
        if any(key not in ("batch_size", "progress") for key in changed) and hasattr(self, "estimator_"):
            logger.info("Parameters %s changed: the previous fit is discarded.", changed)
            del self.estimator_, self.feature_names_

    def _batch(self, batch_size: int | None) -> int:
        if batch_size is None:
            return self.batch_size
        _features.check_batch_size(batch_size)
        return int(batch_size)

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimator_"):
            raise NotFittedError(
                "This FisherInformationDetector is not fitted yet; call fit(x, y) with clean (0) and "
                "adversarial (1) examples first, or load a saved detector."
            )

    # -------------------------------------------------------------------------------------- features
    def _values(self, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        return _features.compute(
            self.classifier,
            x,
            metrics=self._metric_names,
            settings=_features.settings_of(self),
            batch_size=batch_size,
            progress=self.progress,
        )

    def sensitivity_maps(self, x: np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
        """Fisher information sensitivity of every input dimension, for plotting.

        Uses the detector's metric settings; needs no fit.

        Parameters
        ----------
        x : ndarray of shape (N, *classifier.input_shape)
        batch_size : int, optional
            Samples per computation (default: the detector's ``batch_size``).

        Returns
        -------
        ndarray of shape (N, *classifier.input_shape)
            The maps, with respect to the raw input when the classifier's preprocessing is a plain
            standardisation (chain rule: times :math:`1/\\sigma_i^2`), else with respect to the
            preprocessed input.

        Raises
        ------
        ValueError
            If ``x`` has the wrong shape or is not finite, or ``batch_size`` is not a positive integer.
        """
        x = _features.check_inputs(self.classifier, x)
        values = _features.compute(
            self.classifier,
            x,
            metrics=("sensitivity",),
            settings=_features.settings_of(self),
            batch_size=self._batch(batch_size),
            reduce_maps=False,
            progress=self.progress,
        )
        return values["sensitivity"]

    # ------------------------------------------------------------------------------------ fit/detect
    def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int | None = None, **kwargs: Any) -> None:
        """Fit the estimator on the metric features of clean and adversarial examples.

        Parameters
        ----------
        x : ndarray of shape (N, *classifier.input_shape)
            Clean and adversarial inputs, raw (before the classifier's preprocessing).
        y : ndarray of shape (N,) or (N, 2)
            Detection labels: 0 clean / 1 adversarial, or ART's one-hot form (column 1 = adversarial)
            as ``BinaryInputDetector`` takes.
        batch_size : int, optional
            Samples per metric computation (default: the detector's ``batch_size``).
        **kwargs
            Passed to the estimator's ``fit`` (e.g. ``sample_weight``); ART's ``nb_epochs`` is
            accepted and ignored (nothing here trains in epochs).

        Raises
        ------
        ValueError
            If ``x`` has the wrong shape or is not finite, or ``y`` is not binary, lacks one of the
            two classes, or does not match ``x``'s length.
        """
        batch_size = self._batch(batch_size)
        x = _features.check_inputs(self.classifier, x)
        labels = _detection_labels(y, len(x))
        kwargs.pop("nb_epochs", None)
        values = self._values(x, batch_size)
        features = _features.feature_matrix(values, self._metric_names)
        names = _features.feature_names(self._metric_names)
        if self.estimator is None:
            estimator = default_estimator(len(names))
        else:
            estimator = clone(self.estimator)
        estimator.fit(features, labels, **kwargs)
        self.estimator_ = estimator
        self.feature_names_ = names
        logger.debug("Fitted %s on %d samples and features %s.", type(estimator).__name__, len(x), names)

    def detect(self, x: np.ndarray, batch_size: int | None = None, **kwargs: Any) -> tuple[dict, np.ndarray]:
        """Flag adversarial inputs.

        Parameters
        ----------
        x : ndarray of shape (N, *classifier.input_shape)
            Raw inputs.
        batch_size : int, optional
            Samples per metric computation (default: the detector's ``batch_size``).

        Returns
        -------
        report : dict
            ``"scores"``: dict feature name -> ndarray (N,) of metric values (units of the metric);
            ``"decision_scores"``: ndarray (N,), the estimator's ``decision_function`` (or the
            probability of "adversarial" if it has none), higher = more adversarial;
            ``"threshold"``: float, the decision score above which an input is flagged
            (0.0, or 0.5 for probabilities); ``"feature_names"``: list of str.
        is_adversarial : ndarray of shape (N,), bool
            The estimator's prediction (True = adversarial).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the detector is not fitted.
        ValueError
            If ``x`` has the wrong shape or is not finite.
        TypeError
            If unknown keyword arguments are given.
        """
        if kwargs:
            raise TypeError(f"detect got unexpected keyword arguments {sorted(kwargs)}.")
        self._check_fitted()
        batch_size = self._batch(batch_size)
        x = _features.check_inputs(self.classifier, x)
        values = self._values(x, batch_size)
        features = _features.feature_matrix(values, self._metric_names)
        estimator = self.estimator_
        if hasattr(estimator, "decision_function"):
            decision, threshold = np.asarray(estimator.decision_function(features), dtype=np.float64), 0.0
        else:
            decision, threshold = np.asarray(estimator.predict_proba(features))[:, 1].astype(np.float64), 0.5
        positive = estimator.classes_[1]
        is_adversarial = np.asarray(estimator.predict(features)) == positive
        report = {
            "scores": dict(zip(self.feature_names_, features.T.copy(), strict=True)),
            "decision_scores": decision.reshape(-1),
            "threshold": threshold,
            "feature_names": list(self.feature_names_),
        }
        return report, is_adversarial

    # ----------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the learned state to ``path`` (a skops file, conventionally ``*.skops``).

        Stored: the metric settings, the fitted estimator (through ``skops.io``, never bare pickle),
        the feature names, the classifier's input shape and class count (checked on load), and the
        package versions. Not stored: the classifier or its weights.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the detector is not fitted.
        """
        import skops.io as sio

        self._check_fitted()
        state = {
            "format": DETECTOR_FORMAT,
            "format_version": DETECTOR_FORMAT_VERSION,
            "versions": _versions(),
            "settings": {
                "metrics": list(self._metric_names),
                "batch_size": int(self.batch_size),
                "output": self.output,
                "direction": self.direction,
                "blockwise": self.blockwise,
                "normalize": self.normalize,
                "classes": self.classes,
                "params": None if self.params is None else list(self.params),
                "method": self.method,
                "epsilon": float(self.epsilon),
                "progress": bool(self.progress),
            },
            "estimator": self.estimator,
            "estimator_": self.estimator_,
            "feature_names": list(self.feature_names_),
            "input_shape": [int(d) for d in self.classifier.input_shape],
            "nb_classes": int(self.classifier.nb_classes),
        }
        sio.dump(state, Path(path))

    @classmethod
    def load(
        cls, path: str | Path, classifier: Any, *, trusted: Sequence[str] = ()
    ) -> FisherInformationDetector:
        """Load a detector written by :meth:`save` and attach it to ``classifier``.

        Nothing in the file is executed: it is read with ``skops.io.load`` and only skops' default
        trusted types (scikit-learn estimators, numpy, builtins),
        :class:`~art_fisher.estimators.ThresholdClassifier` and the ``trusted`` type names you add are
        accepted.

        Parameters
        ----------
        path : str or Path
            A file written by :meth:`save`.
        classifier : art.estimators.classification.PyTorchClassifier
            The classifier the detector was fitted for (same input shape and number of classes).
        trusted : sequence of str
            Further type names to trust, for a custom ``estimator`` (review
            ``skops.io.get_untrusted_types(file=path)`` first).

        Returns
        -------
        FisherInformationDetector
            Fitted, with the saved settings.

        Raises
        ------
        ValueError
            If the file is not a skops file, is of another format or format version, holds types that
            are not trusted, or was fitted for a classifier of another input shape or class count.
        TypeError
            If ``classifier`` is not an ART ``PyTorchClassifier``.
        """
        import zipfile

        import skops.io as sio

        _features.check_classifier(classifier)
        path = Path(path)
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except (zipfile.BadZipFile, KeyError, ValueError) as err:
            raise ValueError(f"{path} is not a saved FisherInformationDetector (not a skops file: {err}).") from err
        allowed = set(_TRUSTED_TYPES) | set(trusted)
        refused = sorted(t for t in untrusted if t not in allowed)
        if refused:
            raise ValueError(
                f"{path} holds types that are not trusted: {refused}. If you created the file and trust "
                "them, pass their names in trusted=."
            )
        state = sio.load(path, trusted=sorted(set(untrusted)))
        if not isinstance(state, dict) or state.get("format") != DETECTOR_FORMAT:
            raise ValueError(f"{path} is not a saved FisherInformationDetector (format {DETECTOR_FORMAT!r}).")
        if state.get("format_version") != DETECTOR_FORMAT_VERSION:
            raise ValueError(
                f"{path} has detector format version {state.get('format_version')!r}; this art_fisher reads "
                f"version {DETECTOR_FORMAT_VERSION}."
            )
        saved_shape = tuple(state["input_shape"])
        if tuple(classifier.input_shape) != saved_shape or classifier.nb_classes != state["nb_classes"]:
            raise ValueError(
                f"{path} was fitted for a classifier with input_shape {saved_shape} and "
                f"{state['nb_classes']} classes; got input_shape {tuple(classifier.input_shape)} and "
                f"{classifier.nb_classes} classes."
            )
        now = _versions()
        for package in ("art_fisher", "scikit-learn"):
            if state["versions"].get(package) != now[package]:
                warnings.warn(
                    f"{path} was saved with {package} {state['versions'].get(package)}; running "
                    f"{now[package]}. Check its decisions before relying on them.",
                    UserWarning,
                    stacklevel=2,
                )
        settings = dict(state["settings"])
        settings["metrics"] = tuple(settings["metrics"])
        if settings["params"] is not None:
            settings["params"] = tuple(settings["params"])
        detector = cls(classifier, estimator=state["estimator"], **settings)
        detector.estimator_ = state["estimator_"]
        detector.feature_names_ = list(state["feature_names"])
        if detector.feature_names_ != _features.feature_names(detector._metric_names):
            raise ValueError(f"{path} is inconsistent: its feature names do not match its metrics.")
        return detector


def _same(a: Any, b: Any) -> bool:
    """Whether two parameter values are the same (sequences compared as tuples, objects by identity)."""
    if a is b:
        return True
    if isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, str | bytes):
        return tuple(a) == tuple(b)
    if isinstance(a, str | bool | int | float | type(None)) and isinstance(b, str | bool | int | float | type(None)):
        return type(a) is type(b) and a == b
    return False


def _detection_labels(y: Any, n: int) -> np.ndarray:
    """0/1 labels from ``y`` of shape (n,) or ART's one-hot (n, 2); ValueError if not binary 0/1."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 2:
        if not (np.isin(arr, (0, 1)).all() and np.all(arr.sum(axis=1) == 1)):
            raise ValueError("y of shape (N, 2) must be one-hot rows ([1, 0] clean, [0, 1] adversarial).")
        arr = arr[:, 1]
    if arr.ndim != 1:
        raise ValueError(f"y must have shape (N,) or (N, 2); got {arr.shape}.")
    if len(arr) != n:
        raise ValueError(f"y must have one label per sample of x: x has {n} samples, y has {len(arr)}.")
    if arr.dtype.kind not in "biuf" or not np.isin(arr, (0, 1)).all():
        raise ValueError(
            f"y must hold detection labels 0 (clean) and 1 (adversarial); got values {np.unique(arr)[:5]}."
        )
    labels = arr.astype(np.int64)
    if len(np.unique(labels)) != 2:
        raise ValueError("y must contain both clean (0) and adversarial (1) examples to fit a detector.")
    return labels
