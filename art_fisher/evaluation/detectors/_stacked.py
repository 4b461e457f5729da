"""The stacked detector in the evaluation, and its ablation.

``stacked`` (fitted on clean and adversarial examples) and ``stacked_clean`` (clean inputs only) are
:class:`~art_fisher.detection.StackedDetector` on every part: the per-tensor Fisher traces, the
sensitivity statistics, the confidence, the Mahalanobis scores (the strongest field baseline on
the same attack) and the input Fisher's log λ₁ and log trace. The ablation entries ``stacked_without_<part>``
and ``stacked_clean_without_<part>`` leave one part out of the supervised and the clean-calibrated
detector; they are registered but not in
the default set (the benchmark ``bench_detection.py`` runs them). Fisher
values, input-Fisher spectra and class Gaussians come from the run's feature cache, shared with the Fisher
and input-Fisher detectors. Without the sensitivity part the detector has input gradients (adaptive attacks
run on ``stacked_without_sensitivity``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from art_fisher.detection import StackedDetector
from art_fisher.detection._stacked import PARTS
from art_fisher.evaluation.detectors._base import DetectorRun, DetectorSpec, RunContext, Scored


class StackedRun(DetectorRun):
    """A :class:`~art_fisher.detection.StackedDetector` on ``parts``, its values from the run's feature cache.

    The Fisher values, the input-Fisher spectrum and the class Gaussians (fitted on the context's
    :attr:`~RunContext.gaussian_images`, passed to ``fit`` as ``x_reference``) are shared with the other
    detectors of the run through :attr:`RunContext.feature_cache`.
    """

    def __init__(self, ctx: RunContext, parts: tuple[str, ...] = PARTS) -> None:
        self.x_reference = ctx.gaussian_images
        self.detector = StackedDetector(
            ctx.classifier,
            parts=parts,
            target_fpr=ctx.target_fpr,
            chunk_size=ctx.batch_size,
            feature_source=ctx.feature_cache,
        )

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.detector.fit(x, y, x_reference=self.x_reference)

    def detect(self, x: np.ndarray) -> Scored:
        report, flagged = self.detector.detect(x)
        return Scored(score=report["decision_scores"], is_adversarial=np.asarray(flagged, bool))

    def detection_logit(self) -> Any:
        # the score minus the detector's own threshold: an increasing affine map of the protocol's score
        logit = self.detector.as_art_classifier()
        threshold = self.detector.threshold_ or 0.0  # None: the outlier detector's own decision, at 0
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
