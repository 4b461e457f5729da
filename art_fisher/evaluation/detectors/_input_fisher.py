"""The input-Fisher detectors of the evaluation: features from the spectrum of ``G(x) = Jₓᵀ S Jₓ``.

The features are those of ``art_fisher.detection._input_fisher`` (``log λ₁`` and ``log tr G`` of the Fisher
information of the prediction with respect to the input, Zhao et al. 2019):

- ``fisher_input``: the largest eigenvalue and the trace, a standardised logistic
  regression fitted on clean (0) and adversarial (1) examples, its threshold flagging ``target_fpr`` of
  clean inputs (``fit_logistic``);
- ``fisher_input_clean``: the same columns, clean inputs only: each column standardised on clean
  inputs, large eigenvalues suspicious (the paper's observation), combined by their maximum and
  thresholded at ``target_fpr`` (:class:`~art_fisher.detection.QuantileOutlierDetector`);
- ``fisher_input_top`` / ``fisher_input_top_clean``: the largest eigenvalue alone (the paper's score),
  the ablation of the trace; registered but not in the default set.

The spectrum of each input is computed once per run and shared by every entry (and by the stacked
detector's ``input_fisher`` part) through the run's feature cache (:attr:`RunContext.feature_cache`). All
four have input gradients (the eigenvalues are differentiable where they are simple), so adaptive attacks run
on them.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from art_fisher.detection._calibration import QuantileOutlierDetector
from art_fisher.detection._decision import fit_logistic
from art_fisher.detection._features import _eval_mode
from art_fisher.detection._input_fisher import (
    feature_count,
    input_fisher_features,
    spectrum_features,
    spectrum_rank,
)
from art_fisher.detection._logit import DetectionLogitClassifier, estimator_logit
from art_fisher.evaluation.detectors._base import DetectorRun, DetectorSpec, RunContext, Scored, decided


class InputFisherRun(DetectorRun):
    """Logistic regression (labels) or the clean quantile rule (no labels) on the input-Fisher log-eigenvalues.

    Parameters
    ----------
    ctx : RunContext
    features : {"spectrum", "top"}
        Every non-zero eigenvalue, or the largest alone.
    """

    def __init__(self, ctx: RunContext, features: str = "spectrum") -> None:
        self.ctx, self.features = ctx, features
        self.n_columns = feature_count(ctx.classifier, features)

    def _features(self, x: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The features of ``x`` from the run's feature cache; their cost; the seconds spent computing them here."""
        cache = self.ctx.feature_cache
        spent, cost = cache.seconds_spent, cache.seconds_cost
        values = input_fisher_features(
            self.ctx.classifier, x, features=self.features, chunk_size=self.ctx.batch_size, source=cache
        )
        return values, cache.seconds_cost - cost, cache.seconds_spent - spent

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        f, _, _ = self._features(x)
        if y is None:
            self.estimator = QuantileOutlierDetector(target_fpr=self.ctx.target_fpr, polarity="higher").fit(f)
            self.threshold = None
        else:
            self.estimator, self.threshold = fit_logistic(f, np.asarray(y), self.ctx.target_fpr)

    def detect(self, x: np.ndarray) -> Scored:
        start = time.perf_counter()
        f, cost, spent = self._features(x)
        scored = decided(self.estimator, f, self.threshold)
        scored.seconds = time.perf_counter() - start - spent + cost
        return scored

    def detection_logit(self) -> Any:
        clf = self.ctx.classifier
        parameter = next(clf.model.parameters())
        to_logit = estimator_logit(self.estimator, dtype=parameter.dtype, device=parameter.device,
                                   threshold=self.threshold)  # fmt: skip
        n_columns, rank = self.n_columns, spectrum_rank(clf)

        def logit(x: Any) -> Any:
            if clf.preprocessing_operations:
                x, _ = clf._apply_preprocessing(x, y=None, fit=False, no_grad=False)
            with _eval_mode(clf.model):
                values = spectrum_features(clf.model, x.contiguous(), rank, create_graph=True)
                return to_logit(values[:, :n_columns])

        return DetectionLogitClassifier(
            logit, input_shape=tuple(clf.input_shape), clip_values=clf.clip_values, dtype=parameter.dtype,
            device=parameter.device, name=f"fisher_input_{self.features}",
        )  # fmt: skip


def input_fisher_specs() -> dict[str, DetectorSpec]:
    """The registry entries: ``fisher_input`` (+ ``_clean``) by default, the top-eigenvalue ablation not."""
    specs: dict[str, DetectorSpec] = {}
    for name, features, label, default in (
        ("fisher_input", "spectrum", "Input Fisher eigenvalues (Zhao et al. 2019)", True),
        ("fisher_input_top", "top", "Input Fisher, largest eigenvalue", False),
    ):
        build = functools.partial(InputFisherRun, features=features)
        specs[name] = DetectorSpec(label, build, no_gradient=None, in_default=default)
        specs[f"{name}_clean"] = DetectorSpec(
            f"{label}, clean-calibrated", build, supervised=False, no_gradient=None, in_default=default
        )
    return specs
