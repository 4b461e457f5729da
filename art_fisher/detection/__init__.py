"""Adversarial-example detectors for ART: features, a scikit-learn estimator, a threshold.

Every detector is a :class:`Detector` (an ART ``EvasionDetector``): features of each input, a scikit-learn
estimator on them, a decision threshold, with one ``fit`` / ``detect`` / ``calibrate`` / ``save`` / ``load`` /
``as_art_classifier`` for all. :class:`FisherInformationDetector` computes the Fisher metrics of each input as
features (also as a scikit-learn transformer, :class:`FisherFeatures`) and fits an estimator on them
(:class:`ThresholdClassifier`, :class:`QuantileOutlierDetector` for clean-only calibration, any scikit-learn
pipeline, with :class:`LogTransformer`); :class:`StackedDetector` stacks Fisher traces, confidence,
layer-density scores and the input Fisher's spectrum. A :class:`FeatureCache` passed as ``feature_source``
lets several detectors share the per-input values they compute. The detection logit
(:class:`DetectionLogitClassifier`) is the decision as a differentiable one-output ART classifier;
:class:`NotDifferentiableError` says when a detector has no input gradient.
"""

from art_fisher.detection._base import Detector
from art_fisher.detection._calibration import QuantileOutlierDetector
from art_fisher.detection._detector import FisherInformationDetector
from art_fisher.detection._estimators import FisherFeatures, LogTransformer, ThresholdClassifier
from art_fisher.detection._feature_source import FeatureCache, FeatureSource
from art_fisher.detection._logit import DetectionLogitClassifier, NotDifferentiableError
from art_fisher.detection._stacked import StackedDetector

__all__ = [
    "DetectionLogitClassifier",
    "Detector",
    "FeatureCache",
    "FeatureSource",
    "FisherFeatures",
    "FisherInformationDetector",
    "LogTransformer",
    "NotDifferentiableError",
    "QuantileOutlierDetector",
    "StackedDetector",
    "ThresholdClassifier",
]
