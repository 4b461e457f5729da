"""The stacked detector in the evaluation, and its ablation.

``stacked`` (fitted on clean and adversarial examples) and ``stacked_clean`` (clean inputs only) are
:class:`~art_fisher.detection.StackedDetector` on every part: the per-tensor Fisher traces, the
sensitivity statistics, the confidence, the Mahalanobis scores (the strongest field baseline on
the same attack) and the input Fisher's log λ₁ and log trace. The ablation entries ``stacked_without_<part>``
and ``stacked_clean_without_<part>`` leave one part out of the supervised and the clean-calibrated
detector; they are registered but not in
the default set (the benchmark ``bench_detection.py`` runs them). Fisher
values come from the run's :class:`~art_fisher.evaluation.detectors._fisher.FisherFeatureCache`, shared with
the Fisher detectors. Without the sensitivity part the detector has input gradients (adaptive attacks
run on ``stacked_without_sensitivity``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from art_fisher.detection._detector import FisherInformationDetector
from art_fisher.detection._stacked import PARTS, StackedDetector, StackedFeatures
from art_fisher.evaluation.detectors import _fisher as fisher_runs
from art_fisher.evaluation.detectors._base import DetectorRun, DetectorSpec, RunContext, Scored
from art_fisher.evaluation.detectors._input_fisher import cached_spectrum


class StackedRun(DetectorRun):
    """A :class:`~art_fisher.detection.StackedDetector` on ``parts``, Fisher values from the run's cache."""

    def __init__(self, ctx: RunContext, parts: tuple[str, ...] = PARTS) -> None:
        cache = ctx.shared.setdefault(fisher_runs.__name__, fisher_runs.FisherFeatureCache())
        classifier = ctx.classifier

        shared = ctx.shared.setdefault(__name__, {})

        class CachedFeatures(StackedFeatures):
            def _fisher_values(self, x: np.ndarray, metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
                carrier = FisherInformationDetector(classifier, metrics=metrics, chunk_size=self.chunk_size)
                return cache.values(carrier, x, self.chunk_size)[0]

            def _input_fisher_values(self, x: np.ndarray) -> np.ndarray:
                return cached_spectrum(ctx, x)[0]

            def _class_gaussians(self, clean: np.ndarray) -> dict[str, Any]:
                # every stacked run of this context fits them on the same reference images: once per run
                if self.x_reference is None:
                    return super()._class_gaussians(clean)
                if "gaussians" not in shared:
                    shared["gaussians"] = super()._class_gaussians(clean)
                return shared["gaussians"]

        class CachedStacked(StackedDetector):
            def _new_features(self) -> StackedFeatures:
                return CachedFeatures(
                    self.classifier, parts=self.parts, x_reference=self.x_reference, chunk_size=self.chunk_size
                )

        self.detector = CachedStacked(
            classifier,
            parts=parts,
            target_fpr=ctx.target_fpr,
            x_reference=ctx.gaussian_images,
            chunk_size=ctx.batch_size,
        )

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.detector.fit(x, y)

    def detect(self, x: np.ndarray) -> Scored:
        report, flagged = self.detector.detect(x)
        return Scored(score=report["decision_scores"], is_adversarial=np.asarray(flagged, bool))

    def detection_logit(self) -> Any:
        # the score minus the detector's own threshold: an increasing affine map of the protocol's score
        logit = self.detector.as_art_classifier()
        threshold = self.detector.threshold_
        base = logit.logit_function
        logit.logit_function = lambda x: base(x) + threshold
        return logit


def stacked_specs() -> dict[str, DetectorSpec]:
    """Registry entries: ``stacked``, ``stacked_clean`` and their leave-one-out ablations (not in the default set).

    ``stacked_without_<part>`` is the supervised detector without one of :data:`PARTS`,
    ``stacked_clean_without_<part>`` the clean-calibrated one.
    """
    no_grad = "no input gradient through the sensitivity map's statistics"
    specs = {
        "stacked": DetectorSpec(
            "Stacked: Fisher traces + sensitivity + confidence + Mahalanobis + input Fisher",
            StackedRun,
            no_gradient=no_grad,
        ),
        "stacked_clean": DetectorSpec("Stacked, clean-calibrated", StackedRun, supervised=False, no_gradient=no_grad),
    }
    for part in PARTS:
        kept = tuple(p for p in PARTS if p != part)
        for variant, supervised in (("stacked", True), ("stacked_clean", False)):
            specs[f"{variant}_without_{part}"] = DetectorSpec(
                f"Stacked{'' if supervised else ', clean-calibrated,'} without {part}",
                functools.partial(StackedRun, parts=kept),
                supervised=supervised,
                no_gradient=None if "sensitivity" not in kept else no_grad,
                in_default=False,
            )
    return specs
