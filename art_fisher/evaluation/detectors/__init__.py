"""The detectors an evaluation compares: the registry and one adapter per detector family.

Every entry of :data:`DETECTORS` is a :class:`DetectorSpec` whose :class:`DetectorRun` fits one detector
on the detector-train split and scores any images: the Fisher detectors (supervised and clean-calibrated),
the stacked detector and its ablation, ART's detectors, the classifier's confidence, and the layer-density
baselines (Mahalanobis, LID, energy).
"""

from art_fisher.evaluation.detectors._base import DetectorRun, DetectorSpec, RunContext, Scored
from art_fisher.evaluation.detectors._registry import DEFAULT_DETECTORS, DETECTORS

__all__ = ["DEFAULT_DETECTORS", "DETECTORS", "DetectorRun", "DetectorSpec", "RunContext", "Scored"]
