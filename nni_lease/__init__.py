"""Learning by Self-Explanation (LeaSE) as a Microsoft NNI neural-architecture-search strategy.

An explainer whose architecture is searched explains its predictions by adversarial perturbations;
a listener with a fixed architecture learns from those explanations, and the architecture is chosen
to make both learn well.

Public names (imported lazily, so that ``import nni_lease`` stays light):

- :class:`LeaSE` (:mod:`nni_lease.oneshot`): the one-shot strategy, a drop-in for NNI's ``DARTS``;
- :class:`LeaseConfig` (:mod:`nni_lease.core`): every LeaSE setting, in one object;
- :class:`LeaseStep` (:mod:`nni_lease.core`): the LeaSE step shared by the strategy and the trial;
- :func:`pgd_explain` (:mod:`nni_lease.core`): explanations ``δ`` and the listener's input;
- :func:`search_oneshot`, :func:`retrain_architecture` (:mod:`nni_lease.oneshot`): the one-shot workflow;
- :func:`default_listener` (:mod:`nni_lease.core`): the default listener CNN;
- :class:`LeaseCellSpace`: a small cell space for digits / MNIST / CIFAR-10;
- :class:`DartsSpace`: NNI's hub DARTS cell space, also for grey images;
- :class:`DigitsDataset`, :class:`MnistDataset`, :class:`Cifar10Dataset`: trace-safe data sets;
- :func:`retrain` (:mod:`nni_lease.oneshot`): train an exported architecture from scratch;
- :class:`LeaseMultiTrial` (:mod:`nni_lease.multitrial`): the multi-trial strategy for NNI experiments;
- :func:`lease_evaluator`, :func:`evaluate_lease` (:mod:`nni_lease.multitrial`): the explainer/listener trial;
- :func:`run_multitrial` (:mod:`nni_lease.runtime`): start a multi-trial experiment with the web UI.
"""

import sys
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec


def _missing(name: str) -> bool:
    try:
        return find_spec(name) is None
    except (ImportError, ValueError):  # a parent package or a sys.modules entry that is None
        return True


def _requirements_problem() -> str | None:
    """One line saying why the NNI parts cannot run here, or ``None`` when NNI and Lightning are importable."""
    missing = [name for name in ("nni", "pytorch_lightning") if _missing(name)]
    if not missing:
        return None
    if sys.version_info >= (3, 12):
        here = ".".join(map(str, sys.version_info[:3]))
        return (
            f"nni_lease needs Microsoft NNI 3.0, which this project supports on Python 3.11 only (this is Python "
            f'{here}; art_fisher works here): on Python 3.11, pip install "art-fisher-lease[lease]"'
        )
    return (
        f"nni_lease needs Microsoft NNI 3.0 and its pinned companions ({', '.join(missing)} not installed): "
        'pip install "art-fisher-lease[lease]" (from a clone: pip install -e ".[lease]")'
    )


def _require_nni() -> None:
    """Raise ``ImportError`` with a one-line message naming the ``lease`` extra when NNI cannot be imported.

    ``import nni_lease`` itself always works (so that ``nni-lease`` can print that line instead of a
    traceback); the names that need NNI call this first.

    Raises
    ------
    ImportError
        NNI 3.0 or pytorch-lightning is not importable (or this Python is newer than NNI 3.0 supports).
    """
    problem = _requirements_problem()
    if problem is not None:
        raise ImportError(problem)


try:
    __version__ = version("art-fisher-lease")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_LAZY = {
    "LeaSE": "nni_lease.oneshot",
    "LeaseLightningModule": "nni_lease.oneshot",
    "LeaseConfig": "nni_lease.core",
    "LeaseStep": "nni_lease.core",
    "search_oneshot": "nni_lease.oneshot",
    "retrain_architecture": "nni_lease.oneshot",
    "SearchConfig": "nni_lease.oneshot",
    "RetrainConfig": "nni_lease.oneshot",
    "pgd_explain": "nni_lease.core",
    "Explanation": "nni_lease.core",
    "default_listener": "nni_lease.core",
    "LeaseCellSpace": "nni_lease._spaces",
    "DartsSpace": "nni_lease._darts_space",
    "DigitsDataset": "nni_lease._data",
    "MnistDataset": "nni_lease._data",
    "Cifar10Dataset": "nni_lease._data",
    "retrain": "nni_lease.oneshot",
    "LeaseMultiTrial": "nni_lease.multitrial",
    "lease_evaluator": "nni_lease.multitrial",
    "evaluate_lease": "nni_lease.multitrial",
    "run_multitrial": "nni_lease.runtime",
}

__all__ = ["__version__"]
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        if _LAZY[name] != "nni_lease.core":
            _require_nni()
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nni_lease' has no attribute {name!r}")
