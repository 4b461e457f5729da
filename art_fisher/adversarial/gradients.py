r"""A fitted Fisher detector's detection logit as a differentiable torch function of the raw input.

An attacker who knows the detector (Carlini & Wagner 2017; Tramèr et al. 2020) needs the input gradient
of its decision. For :class:`~art_fisher.detection.detector.FisherInformationDetector` that decision is an
estimator applied to Fisher metrics, each a function of the input through first derivatives in the
parameters, so its input gradient holds mixed second derivatives :math:`\partial_x \partial_\theta`.
They come from autodiff: the metrics are computed with ``create_graph=True`` (:mod:`art_fisher.metrics`)
and the fitted estimator is rewritten as torch operations with its fitted numbers.

Differentiable choices (:func:`check_differentiable` names the culprit otherwise):

- metrics ``"trace"``, ``"quadratic_form"`` (any direction, blockwise or not, either ``classes``),
  ``"max_eigenvalue"`` and ``"block_traces"`` with ``method="exact"``; not ``"sensitivity"`` (its map statistics ``max``
  and ``top_mass`` are sorts, and the map has no ``create_graph``), not ``method="finite_difference"``;
- estimators (fitted, binary):

  * :class:`~art_fisher.detection.estimators.ThresholdClassifier`: logit :math:`\sigma(s_j - t) / \mathrm{std}`,
    the log-odds of its ``predict_proba``; linear in the chosen column;
  * a linear classifier (``LogisticRegression``, ``LinearSVC``, ``SGDClassifier``, ``RidgeClassifier``:
    scikit-learn's ``LinearClassifierMixin``), alone or after ``LogTransformer`` / ``StandardScaler``
    steps in a ``Pipeline`` (the default with labels): logit = its ``decision_function``;
  * :class:`~art_fisher.detection.calibration.QuantileOutlierDetector` (the clean-only default): logit =
    :math:`\max_j z_j(x) - t` (or the mean). Piecewise differentiable: the maximum passes the gradient
    of its largest column, and a log-feature below its clean floor is constant. The gradient is exact
    wherever the largest column is unique and no feature sits at its floor (almost everywhere); at a tie
    it is the gradient of one of the tied columns (a subgradient choice, as for ReLU).

  Any other estimator (trees, kernels, ``IsolationForest``, a custom one) raises
  :class:`NotDifferentiableError` when gradients are asked.

The logit is 0 at the detector's threshold and positive exactly where it flags the input.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["NotDifferentiableError", "check_differentiable", "detection_logit_function", "estimator_logit"]


class NotDifferentiableError(ValueError):
    """The detector's decision has no input gradient here (its estimator, metric or method)."""


def _linear_steps(estimator: Any) -> list[Any] | None:
    """The steps of ``estimator`` if it is a binary linear classifier (after log / StandardScaler steps)."""
    from sklearn.linear_model._base import LinearClassifierMixin
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from art_fisher.detection.transforms import LogTransformer

    steps = [step for _, step in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]
    steps = [s for s in steps if s not in (None, "passthrough")]
    if not steps or not all(isinstance(s, (LogTransformer, StandardScaler)) for s in steps[:-1]):
        return None
    last = steps[-1]
    coef = getattr(last, "coef_", None)
    if not isinstance(last, LinearClassifierMixin) or coef is None or np.shape(coef)[:1] != (1,):
        return None
    return steps


def _log_floor(f: torch.Tensor, *, floor: torch.Tensor) -> torch.Tensor:
    """:class:`~art_fisher.detection.transforms.LogTransformer` in torch: ``log(max(f, floor))``."""
    return torch.log(torch.maximum(f, floor))


def _standardise(f: torch.Tensor, *, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    """A fitted ``StandardScaler`` in torch (``None``: that step is off)."""
    return (f if mean is None else f - mean) / (1.0 if std is None else std)


def _describe(estimator: Any) -> str:
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        return f"Pipeline({', '.join(type(s).__name__ for _, s in estimator.steps)})"
    return type(estimator).__qualname__


def check_differentiable(detector: Any) -> None:
    """Raise :class:`NotDifferentiableError` unless ``detector``'s fitted decision has an input gradient.

    Checks the metrics, the method and the fitted estimator (see the module docstring); does no work.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If the detector is not fitted.
    NotDifferentiableError
        Naming the metric, method or estimator that has no gradient.
    """
    from art_fisher.detection import features as _features
    from art_fisher.detection.calibration import QuantileOutlierDetector
    from art_fisher.detection.estimators import ThresholdClassifier

    detector._check_fitted()
    options = detector._options
    maps = [m for m in options.metrics if _features.METRICS[m].is_map]
    if maps:
        raise NotDifferentiableError(
            f"metrics {maps} have no input gradient here (a map reduced by sorts); gradients need metrics from "
            f"{[m for m in _features.METRICS if not _features.METRICS[m].is_map]}; got metrics={options.metrics}."
        )
    if options.method != "exact":
        raise NotDifferentiableError(f"gradients need method='exact'; got method={options.method!r}.")
    estimator = detector.estimator_
    if isinstance(estimator, (ThresholdClassifier, QuantileOutlierDetector)) or _linear_steps(estimator):
        return
    raise NotDifferentiableError(
        f"estimator {_describe(estimator)} has no input gradient: gradients need a ThresholdClassifier, a binary "
        "linear classifier (e.g. LogisticRegression, optionally after StandardScaler in a Pipeline: the "
        "default with labels) or a QuantileOutlierDetector (the default without labels)."
    )


def estimator_logit(
    estimator: Any, *, dtype: torch.dtype, device: torch.device, threshold: float | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fitted estimator as a torch map from features (N, F) to detection logits (N,).

    ``threshold``: a decision-score threshold (the units of
    :func:`~art_fisher.detection.decision.decide`'s scores) at which the logit is 0; None: the
    estimator's own (0 for these estimators).

    Raises
    ------
    NotDifferentiableError
        For an estimator outside the differentiable ones (module docstring).
    """
    from art_fisher.detection.calibration import QuantileOutlierDetector
    from art_fisher.detection.estimators import ThresholdClassifier

    def t(value: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype, device=device)

    shift = 0.0 if threshold is None else float(threshold)
    if isinstance(estimator, ThresholdClassifier):
        j, cut, proba_scale = estimator.feature_index_, estimator.threshold_, estimator._proba_scale
        sign = 1.0 if estimator.polarity_ == "higher" else -1.0
        return lambda f: (sign * (f[:, j] - cut) - shift) / proba_scale
    if isinstance(estimator, QuantileOutlierDetector):
        signs, two_sided, used = (np.asarray(a) for a in estimator._signs(estimator.n_features_in_))
        center, scale, floor = t(estimator.center_), t(estimator.scale_), t(estimator.floor_)
        sign_t, used_idx = t(signs), torch.as_tensor(np.flatnonzero(used), device=device)
        two_sided_t = torch.as_tensor(two_sided, device=device)

        def quantile(f: torch.Tensor) -> torch.Tensor:
            g = torch.log(torch.maximum(f, floor)) if estimator.log else f
            z = (g - center) / scale * sign_t
            z = torch.where(two_sided_t, z.abs(), z)[:, used_idx]
            combined = z.max(dim=1).values if estimator.combine == "max" else z.mean(dim=1)
            return combined - estimator.threshold_ - shift

        return quantile
    steps = _linear_steps(estimator)
    if steps is None:
        raise NotDifferentiableError(
            f"estimator {_describe(estimator)} has no input gradient (see check_differentiable)."
        )
    from art_fisher.detection.transforms import LogTransformer

    maps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    for step in steps[:-1]:
        if isinstance(step, LogTransformer):
            maps.append(functools.partial(_log_floor, floor=t(step.floor_)))
            continue
        mean = t(step.mean_) if step.with_mean and step.mean_ is not None else None
        std = t(step.scale_) if step.with_std and step.scale_ is not None else None
        maps.append(functools.partial(_standardise, mean=mean, std=std))
    coef, intercept = t(steps[-1].coef_[0]), float(np.ravel(steps[-1].intercept_)[0])

    def linear(f: torch.Tensor) -> torch.Tensor:
        for step_map in maps:
            f = step_map(f)
        return f @ coef + (intercept - shift)

    return linear


def detection_logit_function(detector: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(x) -> logits (N,)``: the fitted detector's detection logit of raw inputs ``x``, differentiable in ``x``.

    ``x`` is a tensor of shape (N, *input_shape) in the classifier's model dtype and device, before the
    classifier's preprocessing (which must be one that ART runs in PyTorch, as its standardisation is).
    The model runs in eval mode; its parameters, gradients and modes come back as they were.

    Raises
    ------
    NotDifferentiableError
        See :func:`check_differentiable`; also for preprocessing that ART does not run in PyTorch.
    """
    from art_fisher import metrics as metrics_module
    from art_fisher.detection import features as _features

    check_differentiable(detector)
    classifier, options = detector.classifier, detector._options
    if classifier.preprocessing_operations and not classifier.all_framework_preprocessing:
        raise NotDifferentiableError(
            f"the classifier's preprocessing {[type(op).__name__ for op in classifier.preprocessing_operations]} is "
            "not run in PyTorch by ART, so the detector's input gradient cannot pass through it."
        )
    model = classifier.model
    parameter = next(model.parameters())
    to_logit = estimator_logit(
        detector.estimator_, dtype=parameter.dtype, device=parameter.device, threshold=detector.threshold_
    )
    functions = [
        (getattr(metrics_module, _features.METRICS[m].function), _features.METRICS[m], options.kwargs_for(m))
        for m in options.metrics
    ]

    def logit(x: torch.Tensor) -> torch.Tensor:
        xp = x
        if classifier.preprocessing_operations:
            xp, _ = classifier._apply_preprocessing(x, y=None, fit=False, no_grad=False)
        xp = xp.contiguous()
        with _features._eval_mode(model):
            columns = [_features.metric_columns(fn(model, xp, create_graph=True, **kwargs), spec)
                       for fn, spec, kwargs in functions]  # fmt: skip
        return to_logit(torch.cat(columns, dim=1))

    return logit
