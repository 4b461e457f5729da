"""Adversarial-example detectors for ART: features, a scikit-learn estimator, a threshold.

:class:`FisherInformationDetector` (an ART ``EvasionDetector``) computes the Fisher metrics of each input
as features (:class:`FisherFeatures`) and fits an estimator on them (:class:`ThresholdClassifier`,
:class:`QuantileOutlierDetector` for clean-only calibration, any scikit-learn pipeline, with
:class:`LogTransformer`); :class:`StackedDetector` adds layer-density scores. The detection logit
(:class:`DetectionLogitClassifier`) is the decision as a differentiable one-output ART classifier;
:class:`NotDifferentiableError` says when a detector has no input gradient.
"""

from art_fisher.detection._calibration import QuantileOutlierDetector
from art_fisher.detection._detector import FisherInformationDetector
from art_fisher.detection._estimators import FisherFeatures, LogTransformer, ThresholdClassifier
from art_fisher.detection._logit import DetectionLogitClassifier, NotDifferentiableError
from art_fisher.detection._stacked import StackedDetector

__all__ = [
    "DetectionLogitClassifier",
    "FisherFeatures",
    "FisherInformationDetector",
    "LogTransformer",
    "NotDifferentiableError",
    "QuantileOutlierDetector",
    "StackedDetector",
    "ThresholdClassifier",
]
