"""Attacks that know the detector: exact input gradients and ART models built on them.

- :mod:`~art_fisher.adversarial.gradients`: which detectors are differentiable, and the torch
  rewrite of their estimators (:class:`NotDifferentiableError` otherwise);
- :mod:`~art_fisher.adversarial.art_classifier`: the detection logit as a one-output ART classifier;
- :mod:`~art_fisher.adversarial.adaptive_classifier`: :class:`AdaptiveDetectorClassifier`, classifier and
  detector as one ART model with an attacker's loss;
- :mod:`~art_fisher.adversarial.spectral_attack`: :class:`OneStepSpectralAttack`, the one-step spectral
  attack along the top eigenvector of the input Fisher matrix.
"""

from art_fisher.adversarial.adaptive_classifier import AdaptiveDetectorClassifier
from art_fisher.adversarial.gradients import NotDifferentiableError
from art_fisher.adversarial.spectral_attack import OneStepSpectralAttack

__all__ = ["AdaptiveDetectorClassifier", "NotDifferentiableError", "OneStepSpectralAttack"]
