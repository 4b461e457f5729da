"""Attacks: classifier and detector as one ART model with an attacker's loss, and the one-step spectral attack.

:class:`AdaptiveDetectorClassifier` is ART's ``DetectorClassifier`` with exact gradients of all C + 1
logits; the detection logit it differentiates lives in :mod:`art_fisher.detection`.
:class:`OneStepSpectralAttack` is an ART ``EvasionAttack`` along the top eigenvector of the Fisher
information of the input (:func:`art_fisher.metrics.fisher_input_spectrum`).
"""

from art_fisher.adversarial._adaptive_classifier import AdaptiveDetectorClassifier
from art_fisher.adversarial._spectral_attack import OneStepSpectralAttack

__all__ = ["AdaptiveDetectorClassifier", "OneStepSpectralAttack"]
