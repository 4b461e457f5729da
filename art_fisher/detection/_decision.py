"""The estimator behind a Fisher detector: which one, how it is fitted, how its output becomes a decision.

A :class:`~art_fisher.detection.FisherInformationDetector` hands its feature matrix to a scikit-learn
estimator of one of two kinds (:func:`estimator_kind`):

- a **classifier** fitted on clean (0) / adversarial (1) labels; its ``decision_function`` (or the
  probability of class 1) is the decision score, its ``predict`` the decision;
- an **outlier detector** fitted on clean inputs only (scikit-learn's ``OutlierMixin`` convention:
  ``predict`` is -1 for a flagged input, ``decision_function`` negative); the decision score is
  ``-decision_function``.

A classifier fitted on balanced clean / adversarial examples puts its own threshold (probability ½)
where the two kinds are told apart best, which flags far more clean inputs than a deployed detector
may. :func:`supervised_threshold` moves the threshold to flag a chosen share of *clean* inputs instead:
the :func:`~art_fisher.detection._calibration.clean_threshold` of the clean examples' out-of-fold
decision scores (each clean example scored by an estimator fitted on the other folds, so that the
estimator's fit to an example does not lower its score).

Keyword arguments for ``fit`` (``sample_weight`` above all) are checked here before any metric is computed.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from art_fisher.detection import _features
from art_fisher.detection._calibration import QuantileOutlierDetector, clean_threshold, needed_samples
from art_fisher.detection._estimators import LogTransformer, ThresholdClassifier

#: The range of a positive ``sample_weight`` (:func:`check_fit_kwargs`): beyond it the estimators' weighted sums
#: (a scaler's weighted variance, a regression's loss) overflow or lose every digit.
MIN_SAMPLE_WEIGHT, MAX_SAMPLE_WEIGHT = 1e-12, 1e12


def default_estimator(n_features: int) -> Any:
    """The estimator a Fisher detector fits on labelled data when none is given.

    A :class:`~art_fisher.detection.ThresholdClassifier` (Youden's J) for one feature column,
    :func:`logistic_pipeline` on the logs of the columns for several: Fisher metrics are non-negative and
    span orders of magnitude, and on their logs the linear model ranks inputs more robustly (on the digits
    evaluation over 10 seeds, a logistic regression on the raw per-tensor traces scored lower on unseen
    attacks than on their logs; ``tests/benchmarks/bench_fisher_features.py``). A threshold on one column
    is the same on its log.
    """
    if n_features == 1:
        return ThresholdClassifier()
    return logistic_pipeline(log=True)


def logistic_pipeline(*, log: bool) -> Pipeline:
    """``[LogTransformer()], StandardScaler(), LogisticRegression()`` in a ``Pipeline`` that takes ``sample_weight``.

    ``sample_weight`` reaches the scaler and the regression through scikit-learn's metadata routing (requested
    on both steps). ``log``: start with a :class:`~art_fisher.detection.LogTransformer` (for non-negative
    features spanning orders of magnitude).
    """
    with sklearn.config_context(enable_metadata_routing=True):
        steps = [
            ("scale", StandardScaler().set_fit_request(sample_weight=True)),
            ("logistic", LogisticRegression(max_iter=1000).set_fit_request(sample_weight=True)),
        ]
        return Pipeline([("log", LogTransformer()), *steps] if log else steps)


def default_clean_estimator(
    metrics: Sequence[str], target_fpr: float, blocks: Sequence[str] = ()
) -> QuantileOutlierDetector:
    """The estimator ``fit(x)`` without labels uses: clean quantile calibration of the log-metrics.

    Every Fisher magnitude counts as suspicious when high (see
    :func:`art_fisher.detection._features.feature_polarities`); the columns are standardised on the clean inputs and
    combined by their maximum (:class:`~art_fisher.detection.QuantileOutlierDetector`). ``blocks``: the
    parameter tensors of a per-block metric (:func:`art_fisher.detection._features.block_names`).
    """
    return QuantileOutlierDetector(
        target_fpr=target_fpr, polarity=_features.feature_polarities(metrics, blocks), combine="max", log=True
    )


def estimator_kind(estimator: Any, name: str = "estimator") -> str:
    """``"classifier"`` or ``"outlier_detector"``: how a detector uses ``estimator``.

    A classifier needs ``fit``, ``predict`` and ``decision_function`` or ``predict_proba`` (its
    decision score); an outlier detector (scikit-learn's ``OutlierMixin`` type, e.g. ``IsolationForest``)
    needs ``fit``, ``predict`` (-1 = flagged) and ``decision_function``.

    Raises
    ------
    TypeError
        For a regressor, a transformer or anything else that cannot score inputs as adversarial.
    """
    from sklearn.utils import get_tags

    try:
        estimator_type = get_tags(estimator).estimator_type
    except (AttributeError, TypeError):  # duck-typed objects without scikit-learn tags
        estimator_type = None
    has = {m: callable(getattr(estimator, m, None)) for m in ("fit", "predict", "decision_function", "predict_proba")}
    if estimator_type == "outlier_detector" and has["fit"] and has["predict"] and has["decision_function"]:
        return "outlier_detector"
    if (
        estimator_type in (None, "classifier")
        and has["fit"]
        and has["predict"]
        and (has["decision_function"] or has["predict_proba"])
    ):
        return "classifier"
    raise TypeError(
        f"{name} must be None, a scikit-learn classifier with fit, predict and predict_proba or "
        "decision_function (fitted on clean 0 / adversarial 1 labels), or an outlier detector with "
        f"decision_function (fitted on clean inputs only); got {type(estimator).__qualname__}"
        + (f", a {estimator_type}" if estimator_type not in (None, "classifier") else "")
        + "."
    )


def clone_for_fit(estimator: Any, *, labelled: bool) -> tuple[Any, str]:
    """A clone of a detector's given ``estimator`` for a fit, and its kind; ValueError / TypeError before any work.

    Checks that the estimator's kind suits the fit: labels for a classifier, none for an outlier detector.
    """
    from sklearn.base import clone

    kind = estimator_kind(estimator)
    if kind == "classifier" and not labelled:
        raise ValueError(
            f"fit(x) without labels calibrates on clean inputs only, but estimator "
            f"{type(estimator).__qualname__} is a classifier that needs clean (0) / adversarial (1) "
            "labels: pass y, or use estimator=None (clean quantile calibration at target_fpr) or an "
            "outlier detector."
        )
    if kind == "outlier_detector" and labelled:
        raise ValueError(
            f"estimator {type(estimator).__qualname__} is an outlier detector, fitted on clean inputs "
            "only: call fit(x_clean) without y."
        )
    return clone(estimator), kind


def check_fit_kwargs(estimator: Any, kwargs: dict[str, Any], n: int) -> dict[str, Any]:
    """Check the keyword arguments meant for ``estimator.fit`` before any metric is computed."""
    out = dict(kwargs)
    if out.get("sample_weight", 0) is None:
        del out["sample_weight"]
    if "sample_weight" in out:
        weights = np.asarray(out["sample_weight"])
        if weights.shape != (n,) or weights.dtype.kind not in "biuf":
            raise ValueError(f"sample_weight must be numbers of shape ({n},); got {weights.dtype} {weights.shape}.")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("sample_weight must be finite and non-negative.")
        weights = weights.astype(np.float64)
        positive = weights[weights > 0]
        if len(positive) and not (positive.min() >= MIN_SAMPLE_WEIGHT and positive.max() <= MAX_SAMPLE_WEIGHT):
            raise ValueError(
                f"sample_weight must lie in [{MIN_SAMPLE_WEIGHT:g}, {MAX_SAMPLE_WEIGHT:g}] where positive (weights are "
                f"relative: the estimators' sums of weighted terms overflow or vanish beyond); got values from "
                f"{positive.min():.3g} to {positive.max():.3g}. Divide them by their mean."
            )
        out["sample_weight"] = weights
    accepts_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(estimator.fit).parameters.values()
    )
    for key in out:
        if key == "sample_weight" and not _takes_sample_weight(estimator):
            raise ValueError(
                f"sample_weight cannot reach estimator {type(estimator).__qualname__}: its fit does not take "
                "it (for a Pipeline, enable scikit-learn's metadata routing and request it on the steps: "
                "sklearn.set_config(enable_metadata_routing=True), step.set_fit_request(sample_weight=True))."
            )
        if key != "sample_weight" and not accepts_any and key not in inspect.signature(estimator.fit).parameters:
            raise ValueError(f"{type(estimator).__qualname__}.fit does not take the keyword argument {key!r}.")
    return out


def decide(
    estimator: Any, features: np.ndarray, threshold: float | None = None
) -> tuple[np.ndarray, float, np.ndarray]:
    """Decision scores (higher = adversarial), their threshold and the flags of a fitted estimator.

    ``threshold`` None: the estimator's own decision (its ``predict``; the threshold returned is 0.0,
    or 0.5 for a classifier scored by its probability). A number: flag the decision scores above it.
    """
    if estimator_kind(estimator, "estimator_") == "outlier_detector":
        decision = -np.asarray(estimator.decision_function(features), dtype=np.float64).reshape(-1)
        if threshold is not None:
            return decision, float(threshold), decision > threshold
        return decision, 0.0, np.asarray(estimator.predict(features)) == -1
    if callable(getattr(estimator, "decision_function", None)):
        decision, own = np.asarray(estimator.decision_function(features), dtype=np.float64), 0.0
    else:
        decision, own = np.asarray(estimator.predict_proba(features))[:, 1].astype(np.float64), 0.5
    decision = decision.reshape(-1)
    if threshold is not None:
        return decision, float(threshold), decision > threshold
    return decision, own, np.asarray(estimator.predict(features)) == estimator.classes_[1]


def supervised_threshold(
    estimator: Any,
    features: np.ndarray,
    labels: np.ndarray,
    target_fpr: float,
    fit_kwargs: dict[str, Any] | None = None,
    *,
    n_splits: int = 5,
    random_state: int = 0,
) -> tuple[float, float]:
    """The decision threshold that flags ``target_fpr`` of clean inputs, from the clean out-of-fold scores.

    ``estimator`` (unfitted; cloned per fold, never changed) is fitted on ``n_splits - 1`` stratified
    folds of (``features``, ``labels``) and scores the clean examples of the remaining fold, as in
    scikit-learn's ``cross_val_predict``; the threshold is
    :func:`~art_fisher.detection._calibration.clean_threshold` of these clean scores, weighted by
    ``fit_kwargs["sample_weight"]`` when given. Sample-aligned ``fit_kwargs`` are split with the folds.
    With fewer than two examples in a class the folds cannot be stratified: the clean scores are then
    in-sample (a warning says so).

    Parameters
    ----------
    estimator : sklearn classifier
        The detector's estimator before fitting.
    features : ndarray of shape (N, F)
    labels : ndarray of shape (N,)
        0 clean / 1 adversarial.
    target_fpr : float in (0, 1)
    fit_kwargs : dict, optional
        Keyword arguments of ``estimator.fit``, as :func:`check_fit_kwargs` returns them.
    n_splits : int, default=5
        Folds (fewer when a class has fewer examples).
    random_state : int, default=0
        Seed of the fold shuffle.

    Returns
    -------
    threshold : float
        Flag decision scores above it (in the units of :func:`decide`'s scores).
    clean_fpr : float
        (Weighted) share of the clean out-of-fold scores above ``threshold`` (about ``target_fpr``; less
        with ties).

    Raises
    ------
    ValueError
        If ``sample_weight`` gives the clean examples no weight.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    fit_kwargs = dict(fit_kwargs or {})
    n = len(labels)
    folds = min(n_splits, int(np.bincount(labels, minlength=2).min()))
    clean = labels == 0
    if folds < 2:
        warnings.warn(
            "supervised_threshold: a class has fewer than two examples, so the clean scores that set the "
            f"threshold at target_fpr={target_fpr} are in-sample; its false-positive rate on new inputs may be higher.",
            UserWarning,
            stacklevel=3,
        )
        fitted = _fit_part(clone(estimator), features, labels, fit_kwargs, np.arange(n))
        scores = decide(fitted, features[clean])[0]
    else:
        scores = np.empty(n)
        split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
        for train, test in split.split(features, labels):
            fitted = _fit_part(clone(estimator), features, labels, fit_kwargs, train)
            scores[test] = decide(fitted, features[test])[0]
        scores = scores[clean]
    weights = fit_kwargs.get("sample_weight")
    weights = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)[clean]
    if not weights.max(initial=0.0) > 0:
        raise ValueError("sample_weight gives the clean (0) examples no weight: no clean threshold can be set.")
    weights = weights / weights.max()  # the threshold and its FPR depend on the weights' ratios only
    _warn_if_unresolved(scores[weights > 0], target_fpr)
    threshold = clean_threshold(scores, target_fpr, sample_weight=weights)
    return threshold, float(np.sum(weights * (scores > threshold)) / weights.sum())


def _warn_if_unresolved(clean_scores: np.ndarray, target_fpr: float) -> None:
    """Warn when the clean scores take too few distinct values to put a threshold at ``target_fpr``.

    With fewer than :math:`1 / \alpha` distinct clean scores (a tiny clean set, or one image repeated),
    the threshold is the largest of them: no clean fit example lies above it (``clean_fpr`` 0), while
    new clean inputs may lie above it at any rate.
    """
    distinct = len(np.unique(clean_scores))
    if distinct * target_fpr < 1:
        warnings.warn(
            f"supervised_threshold: the clean examples give {distinct} distinct out-of-fold score(s) "
            f"({len(clean_scores)} examples), too few to set a threshold at target_fpr={target_fpr:.3g} "
            f"(at least {needed_samples(target_fpr)} distinct clean examples are needed); the threshold is the "
            "largest clean score and the false-positive rate on new clean inputs is not controlled.",
            UserWarning,
            stacklevel=4,
        )


def fit_logistic(features: np.ndarray, labels: np.ndarray, target_fpr: float) -> tuple[Pipeline, float]:
    """``StandardScaler`` + ``LogisticRegression`` fitted on 0 clean / 1 adversarial ``labels`` (N,), and its threshold.

    The threshold flags ``target_fpr`` of clean inputs (:func:`supervised_threshold`). Used by the stacked
    detector and by the evaluation's supervised baselines.
    """

    def model() -> Pipeline:
        return Pipeline([("scale", StandardScaler()), ("logistic", LogisticRegression(max_iter=1000))])

    labels = np.asarray(labels).astype(np.int64)
    threshold, _ = supervised_threshold(model(), features, labels, target_fpr)
    return model().fit(features, labels), threshold


def _fit_part(
    estimator: Any, features: np.ndarray, labels: np.ndarray, fit_kwargs: dict[str, Any], rows: np.ndarray
) -> Any:
    """``estimator`` fitted on ``rows``, with the sample-aligned keyword arguments cut to them."""
    n = len(labels)
    kwargs = {
        key: value[rows] if isinstance(value, np.ndarray) and value.shape[:1] == (n,) else value
        for key, value in fit_kwargs.items()
    }
    with sklearn.config_context(enable_metadata_routing=routes_metadata(estimator, kwargs)):
        estimator.fit(features[rows], labels[rows], **kwargs)
    return estimator


def _takes_sample_weight(estimator: Any) -> bool:
    """Whether ``estimator.fit`` consumes ``sample_weight``: directly, or routed by a meta-estimator."""
    from sklearn.utils.metadata_routing import get_routing_for_object
    from sklearn.utils.validation import has_fit_parameter

    if has_fit_parameter(estimator, "sample_weight"):
        return True
    if not callable(getattr(estimator, "get_metadata_routing", None)):
        return False
    try:
        with sklearn.config_context(enable_metadata_routing=True):
            return bool(get_routing_for_object(estimator).consumes("fit", ["sample_weight"]))
    except (AttributeError, TypeError, ValueError):
        return False


def routes_metadata(estimator: Any, fit_kwargs: dict[str, Any]) -> bool:
    """Enable metadata routing for this fit when a meta-estimator must route ``sample_weight``."""
    from sklearn.utils.validation import has_fit_parameter

    if sklearn.get_config()["enable_metadata_routing"]:
        return True
    return fit_kwargs.get("sample_weight") is not None and not has_fit_parameter(estimator, "sample_weight")


def detection_labels(y: Any, n: int) -> np.ndarray:
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
