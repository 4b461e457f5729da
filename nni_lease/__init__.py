"""Learning by Self-Explanation (LeaSE) as a Microsoft NNI neural-architecture-search strategy.

An explainer whose architecture is searched explains its predictions by adversarial perturbations;
a listener with a fixed architecture learns from those explanations, and the architecture is chosen
to make both learn well.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("art-fisher-lease")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
