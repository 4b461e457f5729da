"""Fisher-information metrics and adversarial-example detectors for ART.

The package computes, exactly and in batches with PyTorch autodiff, the Fisher information of a
classifier's predictive distribution at an input (its trace, its quadratic form along the
prediction's own gradient and the per-pixel Fisher information sensitivity), wraps them as
detectors for IBM's Adversarial Robustness Toolbox and as scikit-learn estimators, and evaluates
how well they catch ART's attacks.
"""

from importlib.metadata import PackageNotFoundError, version

from art_fisher.metrics import (
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
    "fisher_max_eigenvalue",
    "fisher_quadratic_form",
    "fisher_sensitivity",
    "fisher_trace",
]
