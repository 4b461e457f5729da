"""The Fisher-information detector and its parts.

- :mod:`~art_fisher.detection.detector`: :class:`FisherInformationDetector`, an ART ``EvasionDetector``;
- :mod:`~art_fisher.detection.features`: the Fisher metrics as a feature matrix, and their options;
- :mod:`~art_fisher.detection.estimators`: :class:`FisherFeatures` and :class:`ThresholdClassifier`,
  scikit-learn estimators;
- :mod:`~art_fisher.detection.decision`: the estimators a detector fits on those features by default;
- :mod:`~art_fisher.detection.calibration`: :class:`QuantileOutlierDetector`, clean-only calibration;
- :mod:`~art_fisher.detection.transforms`: :class:`LogTransformer`;
- :mod:`~art_fisher.detection.persistence`: detector files (``skops``).
"""

from art_fisher.detection.calibration import QuantileOutlierDetector
from art_fisher.detection.detector import FisherInformationDetector
from art_fisher.detection.estimators import FisherFeatures, ThresholdClassifier
from art_fisher.detection.transforms import LogTransformer

__all__ = [
    "FisherFeatures",
    "FisherInformationDetector",
    "LogTransformer",
    "QuantileOutlierDetector",
    "ThresholdClassifier",
]
