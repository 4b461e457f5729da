"""Attacks that know the detector: classifier and detector as one ART model with an attacker's loss.

:class:`AdaptiveDetectorClassifier` is ART's ``DetectorClassifier`` with exact gradients of all C + 1
logits; the detection logit it differentiates lives in :mod:`art_fisher.detection`.
"""

from art_fisher.adversarial._adaptive_classifier import AdaptiveDetectorClassifier

__all__ = ["AdaptiveDetectorClassifier"]
