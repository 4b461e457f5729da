"""scikit-learn estimators for detection scores: a threshold classifier and a Fisher feature transformer.

:class:`ThresholdClassifier` learns one decision threshold on a score (for example the trace of the
Fisher information) from clean (label 0) and adversarial (label 1) examples. :class:`FisherFeatures`
turns inputs of an ART ``PyTorchClassifier`` into the matrix of Fisher metric features, so that

>>> from sklearn.pipeline import make_pipeline                           # doctest: +SKIP
>>> make_pipeline(FisherFeatures(classifier), StandardScaler(), LogisticRegression())  # doctest: +SKIP

is an ordinary scikit-learn classifier of raw inputs (``GridSearchCV`` and ``cross_val_score`` work).

The log of non-negative feature columns, as a scikit-learn transformer (the default detector's first step).

Fisher metrics are non-negative and span orders of magnitude (the trace of a confident prediction is
many decades below that of an uncertain one), so a linear model sees them best on a log scale: on the
digits evaluation a logistic regression on the raw per-parameter-tensor traces lost 0.02 ROC-AUC on
unseen attacks against the same model on their logs (``tests/benchmarks/bench_fisher_features.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from art_fisher.detection import _features
from art_fisher.utils import check_probability

logger = logging.getLogger(__name__)


_STRATEGIES = ("youden", "balanced_accuracy", "accuracy", "target_fpr")
_POLARITIES = ("auto", "higher", "lower")


def _rank_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> float:
    """Weighted ROC-AUC of ``scores`` for the boolean labels ``positive`` (ties count 1/2)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, scores, sample_weight=weights))


def _threshold_search(
    scores: np.ndarray, positive: np.ndarray, weights: np.ndarray, strategy: str, target_fpr: float | None
) -> tuple[float, float]:
    """Best threshold for the rule ``score > threshold`` -> positive, and the criterion's value there.

    Candidate thresholds are the midpoints between consecutive distinct scores, plus one value below
    the smallest and one above the largest score (all positive / all negative). Rates are weighted by
    ``weights`` (samples of weight 0 must have been removed: they would add candidates).
    """
    values, inverse = np.unique(scores, return_inverse=True)
    n_pos = float(weights[positive].sum())
    n_neg = float(weights[~positive].sum())
    pos_at = np.bincount(inverse, weights=weights * positive, minlength=len(values))
    neg_at = np.bincount(inverse, weights=weights * ~positive, minlength=len(values))
    # Candidate k (k = 0..m) lies just below values[k] (k = m: above the largest value); the rule then
    # calls positive exactly the samples with a value index >= k.
    tp = n_pos - np.concatenate([[0.0], np.cumsum(pos_at)])
    fp = n_neg - np.concatenate([[0.0], np.cumsum(neg_at)])
    tpr, fpr = tp / n_pos, fp / n_neg
    if strategy in ("youden", "balanced_accuracy"):
        # Balanced accuracy (tpr + 1 - fpr) / 2 = (1 + J) / 2: both pick the same threshold.
        criterion = tpr - fpr
        best = int(np.argmax(criterion))
    elif strategy == "accuracy":
        criterion = (tp + (n_neg - fp)) / (n_pos + n_neg)
        best = int(np.argmax(criterion))
    else:  # target_fpr: highest tpr with fpr <= target; among ties the lowest fpr (last index).
        if target_fpr is None:
            raise ValueError("strategy='target_fpr' needs a target_fpr; got None.")
        criterion = np.where(fpr <= target_fpr + 1e-12, tpr, -np.inf)
        best = len(criterion) - 1 - int(np.argmax(criterion[::-1]))
    if len(values) > 1:
        margin = 0.5 * float(np.min(np.diff(values)))
    else:
        margin = 0.5 * max(1.0, abs(float(values[0])))
    edges = np.concatenate([[values[0] - margin], (values[:-1] + values[1:]) / 2, [values[-1] + margin]])
    return float(edges[best]), float(criterion[best])


def _check_sample_weight(sample_weight: Any, X: np.ndarray) -> np.ndarray:
    """float64 weights of shape (n_samples,): ones for None; ValueError unless finite and non-negative."""
    if sample_weight is None:
        return np.ones(len(X))
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.ndim == 0:
        weights = np.full(len(X), float(weights))
    if weights.shape != (len(X),):
        raise ValueError(f"sample_weight must have shape ({len(X)},); got {weights.shape}.")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("sample_weight must be finite and non-negative.")
    if not np.any(weights > 0):
        raise ValueError("sample_weight must hold at least one non-zero weight; got all zero.")
    return weights


class ThresholdClassifier(ClassifierMixin, BaseEstimator):
    """Binary classifier that learns one threshold on one score column.

    With scores :math:`s` and a learned threshold :math:`t`, the prediction is the positive class
    (``classes_[1]``, e.g. 1 = adversarial) when :math:`\\sigma (s - t) > 0`, where the sign
    :math:`\\sigma = +1` if high scores mean positive (``polarity="higher"``) and :math:`-1` if low
    scores do. The threshold is the midpoint between two consecutive distinct training scores that
    is best for ``strategy``.

    With several columns it fits a threshold per column and keeps the column whose threshold is
    best for ``strategy`` (a decision stump); with one column (the usual case: one Fisher metric)
    that column is used.

    Parameters
    ----------
    strategy : {"youden", "balanced_accuracy", "accuracy", "target_fpr"}, default="youden"
        How the threshold is chosen on the training data:

        - ``"youden"``: maximise Youden's :math:`J = \\mathrm{TPR} - \\mathrm{FPR}`;
        - ``"balanced_accuracy"``: maximise :math:`(\\mathrm{TPR} + \\mathrm{TNR}) / 2 = (1 + J) / 2`,
          which selects the same threshold as ``"youden"`` (offered under its common name);
        - ``"accuracy"``: maximise plain accuracy (depends on the class proportions);
        - ``"target_fpr"``: the highest TPR whose training FPR is at most ``target_fpr``.
    target_fpr : float in [0, 1], default=None
        Largest false-positive rate allowed; required by, and only allowed with,
        ``strategy="target_fpr"``.
    polarity : {"auto", "higher", "lower"}, default="auto"
        Whether high scores mean the positive class. ``"auto"`` picks ``"higher"`` when the
        training ROC-AUC of the column is at least 0.5 and ``"lower"`` otherwise.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        The two class labels; ``classes_[1]`` is the positive class.
    threshold_ : float
        Learned threshold, in the units of the score column.
    polarity_ : {"higher", "lower"}
        Learned (or given) polarity.
    feature_index_ : int
        Index of the score column the threshold applies to.
    criterion_ : float
        Value of the strategy's criterion at the threshold on the training data (J, balanced
        accuracy, accuracy, or the TPR reached under ``target_fpr``).
    n_features_in_ : int
        Number of columns seen in ``fit``.

    See Also
    --------
    sklearn.model_selection.FixedThresholdClassifier, sklearn.model_selection.TunedThresholdClassifierCV :
        Threshold tuning on top of another classifier's probabilities.

    Notes
    -----
    ``predict_proba`` is :math:`\\mathrm{expit}(\\sigma (s - t) / \\mathrm{std}(s))`, a monotone map of
    ``decision_function`` that agrees with ``predict``; it is not calibrated. Wrap the classifier
    in :class:`sklearn.calibration.CalibratedClassifierCV` for calibrated probabilities.

    Examples
    --------
    >>> import numpy as np
    >>> from art_fisher.detection._estimators import ThresholdClassifier
    >>> scores = np.array([[0.1], [0.2], [0.3], [0.9], [1.1], [1.4]])
    >>> clf = ThresholdClassifier().fit(scores, [0, 0, 0, 1, 1, 1])
    >>> clf.threshold_, clf.polarity_
    (0.6, 'higher')
    >>> clf.predict([[0.5], [0.7]])
    array([0, 1])
    """

    def __init__(self, strategy: str = "youden", target_fpr: float | None = None, polarity: str = "auto") -> None:
        self.strategy = strategy
        self.target_fpr = target_fpr
        self.polarity = polarity

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def _check_params(self) -> str:
        """Check the parameters; the polarity to use."""
        polarity = self.polarity
        if self.strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}; got {self.strategy!r}.")
        if polarity not in _POLARITIES:
            raise ValueError(f"polarity must be one of {_POLARITIES}; got {polarity!r}.")
        if self.strategy == "target_fpr":
            check_probability(self.target_fpr, "target_fpr", closed=True)
        elif self.target_fpr is not None:
            raise ValueError(
                f"target_fpr is only used with strategy='target_fpr'; got target_fpr={self.target_fpr!r} "
                f"with strategy={self.strategy!r}."
            )
        return polarity

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> ThresholdClassifier:
        """Learn the threshold.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Scores; usually one column.
        y : array-like of shape (n_samples,)
            Two class labels; the larger one (``classes_[1]``) is the positive class.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights: the rates (TPR, FPR, accuracy), the ROC-AUC behind
            ``polarity="auto"`` and the scale of ``predict_proba`` are weighted; a weight of 2 counts a
            sample twice, a weight of 0 removes it.

        Returns
        -------
        self : ThresholdClassifier
            The fitted classifier.

        Raises
        ------
        ValueError
            If a parameter is invalid, ``X`` is not finite, ``y`` is not binary, or only one class
            is present.
        """
        polarity = self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        y_type = type_of_target(y, input_name="y")
        if y_type != "binary":
            raise ValueError(f"Only binary classification is supported. The type of the target is {y_type}.")
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError(f"ThresholdClassifier needs samples of two classes in y; got one class: {self.classes_}.")
        weights = _check_sample_weight(sample_weight, X)
        keep = weights > 0
        X_kept, positive, weights = X[keep], y[keep] == self.classes_[1], weights[keep]
        if positive.all() or not positive.any():
            raise ValueError("ThresholdClassifier needs a positive weight on samples of both classes in y.")
        best: tuple[float, int, float, int] | None = None  # (criterion, -column, threshold, sign)
        for j in range(X.shape[1]):
            column = X_kept[:, j]
            if polarity == "auto":
                sign = 1 if _rank_auc(column, positive, weights) >= 0.5 else -1
            else:
                sign = 1 if polarity == "higher" else -1
            threshold, criterion = _threshold_search(sign * column, positive, weights, self.strategy, self.target_fpr)
            candidate = (criterion, -j, sign * threshold, sign)
            if best is None or candidate[:2] > best[:2]:
                best = candidate
        assert best is not None  # validate_data requires at least one feature
        criterion, neg_j, threshold, sign = best
        self.feature_index_ = -neg_j
        self.threshold_ = threshold
        self.polarity_ = "higher" if sign == 1 else "lower"
        self.criterion_ = criterion
        column = X_kept[:, self.feature_index_]
        mean = np.average(column, weights=weights)
        scale = float(np.sqrt(np.average((column - mean) ** 2, weights=weights)))
        self._proba_scale = scale if scale > 0 else 1.0
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Signed distance to the threshold, positive for ``classes_[1]``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples,)
            :math:`\\sigma (s - t)` in the units of the score.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        sign = 1.0 if self.polarity_ == "higher" else -1.0
        return sign * (X[:, self.feature_index_] - self.threshold_)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples,)
            ``classes_[1]`` where ``decision_function(X) > 0``, else ``classes_[0]``.
        """
        check_is_fitted(self)
        return self.classes_[(self.decision_function(X) > 0).astype(int)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Monotone (uncalibrated) class scores in [0, 1] that agree with :meth:`predict`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples, 2)
            Columns in the order of ``classes_``.
        """
        p = expit(self.decision_function(X) / self._proba_scale)
        return np.column_stack([1.0 - p, p])


class FisherFeatures(TransformerMixin, BaseEstimator):
    """Transform inputs of an ART ``PyTorchClassifier`` into their Fisher metric features.

    Column :math:`j` of the output is one metric of the classifier's predictive distribution at the
    input (e.g. :math:`\\operatorname{tr} F(x)`), computed exactly as
    :class:`~art_fisher.detection.FisherInformationDetector` does (same preprocessing, eval mode,
    metric options; see there). A sensitivity map gives four columns (``l1``, ``l2``, ``max``,
    ``top_mass``). The transformer is stateless: ``fit`` only checks the settings.

    Parameters
    ----------
    classifier : art.estimators.classification.PyTorchClassifier
        The trained classifier; never modified. ``clone`` shares it rather than copying it (it is a
        fixed feature extractor), so ``GridSearchCV`` does not copy the model.
    metrics : sequence of str, default=("trace", "quadratic_form")
        Metric names (see :class:`~art_fisher.detection.FisherInformationDetector`).
    output, direction, blockwise, normalize, classes, params, method, fd_step, tau
        Metric options, as in :class:`~art_fisher.detection.FisherInformationDetector`.
    chunk_size : int, default=128
        Samples per metric computation (bounds memory; the values do not depend on it).

    Attributes
    ----------
    feature_names_ : list of str
        Names of the output columns (set by ``fit``; also :meth:`get_feature_names_out`).

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline                                     # doctest: +SKIP
    >>> from sklearn.preprocessing import StandardScaler                               # doctest: +SKIP
    >>> from sklearn.linear_model import LogisticRegression                            # doctest: +SKIP
    >>> pipe = make_pipeline(FisherFeatures(classifier), StandardScaler(), LogisticRegression())  # doctest: +SKIP
    >>> pipe.fit(x, is_adversarial).predict(x_new)                                     # doctest: +SKIP
    """

    def __init__(
        self,
        classifier: Any,
        metrics: Sequence[str] = _features.DEFAULT_OPTIONS.metrics,
        *,
        output: str = _features.DEFAULT_OPTIONS.output,
        direction: str = _features.DEFAULT_OPTIONS.direction,
        blockwise: bool | None = _features.DEFAULT_OPTIONS.blockwise,
        normalize: bool = _features.DEFAULT_OPTIONS.normalize,
        classes: str = _features.DEFAULT_OPTIONS.classes,
        params: Sequence[str] | None = _features.DEFAULT_OPTIONS.params,
        method: str = _features.DEFAULT_OPTIONS.method,
        fd_step: float = _features.DEFAULT_OPTIONS.fd_step,
        tau: float | None = _features.DEFAULT_OPTIONS.tau,
        chunk_size: int = 128,
    ) -> None:
        self.classifier = classifier
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
        self.chunk_size = chunk_size

    def __sklearn_clone__(self) -> FisherFeatures:
        # Share the (read-only) ART classifier instead of deep-copying its model; the other
        # parameters are plain values.
        params = self.get_params(deep=False)
        return type(self)(**params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags

    def _settings(self) -> tuple[_features.MetricOptions, int]:
        """The checked metric options and chunk size."""
        return _features.options_of(self), _features.chunk_size_of(self)

    def fit(self, X: Any, y: Any = None) -> FisherFeatures:
        """Check the settings and ``X``; learn nothing.

        Parameters
        ----------
        X : array-like of shape (n_samples, *classifier.input_shape)
        y : ignored

        Returns
        -------
        self : FisherFeatures

        Raises
        ------
        TypeError
            If ``classifier`` is not an ART ``PyTorchClassifier``.
        ValueError
            If a setting is invalid, or ``X`` has the wrong shape or is not finite.
        """
        options, _chunk_size = self._settings()
        _features.check_inputs(self.classifier, X, name="X")
        self.feature_names_ = _features.feature_names(options.metrics, _features.block_names(self.classifier, options))
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Metric features of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, *classifier.input_shape)
            Raw inputs (before the classifier's preprocessing).

        Returns
        -------
        ndarray of shape (n_samples, n_features)
            float64 metric values, columns as :meth:`get_feature_names_out`.
        """
        options, chunk_size = self._settings()
        X = _features.check_inputs(self.classifier, X, name="X")
        values = _features.compute(self.classifier, X, metrics=options.metrics, settings=options, chunk_size=chunk_size)
        return _features.feature_matrix(values, options.metrics)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the output columns, e.g. ``["trace", "quadratic_form"]``.

        Returns
        -------
        ndarray of str
        """
        options, _chunk_size = self._settings()
        blocks = _features.block_names(self.classifier, options)
        return np.asarray(_features.feature_names(options.metrics, blocks), dtype=object)


class LogTransformer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """:math:`\\log \\max(x_j, f_j)` of every non-negative column ``j``, with a floor ``f_j`` learned in ``fit``.

    The floor is half the smallest positive value of the column seen by ``fit`` (the smallest positive
    float64 if the column had none), so an exact zero (e.g. a trace that underflowed for a very confident
    prediction) maps to a finite value just below the training range instead of :math:`-\\infty`. It is
    the same floor :class:`~art_fisher.detection.QuantileOutlierDetector` uses with ``log=True``.

    Attributes
    ----------
    floor_ : ndarray of shape (n_features,)
        The floor of each column.
    n_features_in_ : int
        Columns seen by ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> LogTransformer().fit_transform(np.array([[1.0, 0.0], [np.e, 4.0]])).round(3).tolist()
    [[0.0, 0.693], [1.0, 1.386]]
    """

    def fit(self, X: Any, y: Any = None) -> LogTransformer:
        """Learn the floor of each column from non-negative ``X`` of shape (n_samples, n_features).

        Raises
        ------
        ValueError
            If ``X`` holds negative, NaN or infinite values.
        """
        X = self._checked(X, reset=True)
        positive = np.where(X > 0, X, np.inf).min(axis=0)
        self.floor_ = np.where(np.isfinite(positive), positive / 2, np.finfo(np.float64).tiny)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """:math:`\\log \\max(X, \\text{floor\\_})`, float64, same shape as ``X``."""
        check_is_fitted(self, "floor_")
        X = self._checked(X, reset=False)
        return np.log(np.maximum(X, self.floor_))

    def _checked(self, X: Any, *, reset: bool) -> np.ndarray:
        X = validate_data(self, X, reset=reset, dtype=np.float64)
        if np.any(X < 0):
            raise ValueError(
                f"Negative values in data passed to LogTransformer: it needs non-negative columns; X holds "
                f"{int(np.sum(X < 0))} negative values (smallest {float(X.min()):g})."
            )
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        return tags
