"""Fisher-information metrics and adversarial-example detectors for ART.

The package computes, exactly and in batches with PyTorch autodiff, the Fisher information of a
classifier's predictive distribution at an input (its trace, its quadratic form along the
prediction's own gradient and the per-pixel Fisher information sensitivity), wraps them as
detectors for IBM's Adversarial Robustness Toolbox and as scikit-learn estimators, and evaluates
how well they catch ART's attacks.
"""

from importlib.metadata import PackageNotFoundError, version

from art_fisher._threads import check_threads
from art_fisher.metrics import (
    fisher_block_traces,
    fisher_input_spectrum,
    fisher_max_eigenvalue,
    fisher_quadratic_form,
    fisher_sensitivity,
    fisher_trace,
)

try:
    __version__ = version("art-fisher-lease")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "check_threads",
    "fisher_block_traces",
    "fisher_input_spectrum",
    "fisher_max_eigenvalue",
    "fisher_quadratic_form",
    "fisher_sensitivity",
    "fisher_trace",
]

# Detectors and scikit-learn estimators, imported on first use: ART's import is slow and
# metric-only users should not pay for it.
_LAZY_EXPORTS = {
    "FisherInformationDetector": "art_fisher.detection",
    "StackedDetector": "art_fisher.detection",
    "FisherFeatures": "art_fisher.detection",
    "ThresholdClassifier": "art_fisher.detection",
    # Attacks that know the detector: classifier + detector as one ART model with an attacker's loss.
    "AdaptiveDetectorClassifier": "art_fisher.adversarial",
    "NotDifferentiableError": "art_fisher.detection",
    # The one-step spectral attack (an ART EvasionAttack) along the input Fisher's top eigenvector.
    "OneStepSpectralAttack": "art_fisher.adversarial",
    # The evaluation workflow: ``art_fisher.evaluate(...)`` is ``art-fisher evaluate``.
    "evaluate": "art_fisher.evaluation",
}
__all__ += list(_LAZY_EXPORTS)


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'art_fisher' has no attribute {name!r}")
