"""Learning by Self-Explanation (LeaSE) as a Microsoft NNI neural-architecture-search strategy.

An explainer whose architecture is searched explains its predictions by adversarial perturbations;
a listener with a fixed architecture learns from those explanations, and the architecture is chosen
to make both learn well.

Public names (imported lazily, so that ``import nni_lease`` stays light):

- :class:`LeaSE` (:mod:`nni_lease.oneshot.strategy`): the one-shot strategy, a drop-in for NNI's ``DARTS``;
- :class:`LeaseSettings` (:mod:`nni_lease.core.settings`): every LeaSE option, in one object;
- :class:`LeaseStep` (:mod:`nni_lease.core.step`): the LeaSE step shared by the strategy and the trial;
- :func:`pgd_explain` (:mod:`nni_lease.core.explain`): explanations ``δ`` and the listener's input;
- :func:`search_oneshot`, :func:`retrain_architecture` (:mod:`nni_lease.oneshot.workflow`): the one-shot workflow;
- :func:`default_listener` (:mod:`nni_lease.core.listener`): the default listener CNN;
- :class:`LeaseCellSpace` (:mod:`nni_lease.spaces`): a small cell space for digits / MNIST / CIFAR-10;
- :class:`DartsSpace` (:mod:`nni_lease.darts_space`): NNI's hub DARTS cell space, also for grey images;
- :class:`DigitsDataset`, :class:`MnistDataset`, :class:`Cifar10Dataset` (:mod:`nni_lease.data`): trace-safe data sets;
- :func:`retrain` (:mod:`nni_lease.oneshot.retrain`): train an exported architecture from scratch;
- :class:`LeaseMultiTrial` (:mod:`nni_lease.multitrial.strategy`): the multi-trial strategy for NNI experiments;
- :func:`lease_evaluator`, :func:`evaluate_lease` (:mod:`nni_lease.multitrial.trial`): the explainer/listener trial;
- :func:`run_multitrial` (:mod:`nni_lease.runtime.experiment`): start a multi-trial experiment with the web UI.
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
    "LeaSE": "nni_lease.oneshot.strategy",
    "LeaseLightningModule": "nni_lease.oneshot.strategy",
    "LeaseSettings": "nni_lease.core.settings",
    "LeaseStep": "nni_lease.core.step",
    "search_oneshot": "nni_lease.oneshot.workflow",
    "retrain_architecture": "nni_lease.oneshot.workflow",
    "SearchConfig": "nni_lease.oneshot.workflow",
    "RetrainConfig": "nni_lease.oneshot.workflow",
    "pgd_explain": "nni_lease.core.explain",
    "Explanation": "nni_lease.core.explain",
    "default_listener": "nni_lease.core.listener",
    "LeaseCellSpace": "nni_lease.spaces",
    "DartsSpace": "nni_lease.darts_space",
    "DigitsDataset": "nni_lease.data",
    "MnistDataset": "nni_lease.data",
    "Cifar10Dataset": "nni_lease.data",
    "retrain": "nni_lease.oneshot.retrain",
    "LeaseMultiTrial": "nni_lease.multitrial.strategy",
    "lease_evaluator": "nni_lease.multitrial.trial",
    "evaluate_lease": "nni_lease.multitrial.trial",
    "run_multitrial": "nni_lease.runtime.experiment",
}

__all__ = ["__version__"]
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        if not _LAZY[name].startswith("nni_lease.core."):
            _require_nni()
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nni_lease' has no attribute {name!r}")
