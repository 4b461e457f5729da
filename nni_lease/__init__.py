"""Learning by Self-Explanation (LeaSE) as a Microsoft NNI neural-architecture-search strategy.

An explainer whose architecture is searched explains its predictions by adversarial perturbations;
a listener with a fixed architecture learns from those explanations, and the architecture is chosen
to make both learn well.

Public names (imported lazily, so that ``import nni_lease`` stays light):

- :class:`LeaSE` (:mod:`nni_lease.strategy`): the one-shot strategy, a drop-in for NNI's ``DARTS``;
- :class:`LeaseSettings` (:mod:`nni_lease.settings`): every LeaSE option, in one object;
- :class:`LeaseStep` (:mod:`nni_lease.step`): the LeaSE step shared by the strategy and the trial;
- :func:`pgd_explain` (:mod:`nni_lease.explain`): explanations ``δ`` and the listener's input;
- :func:`search_oneshot`, :func:`retrain_architecture` (:mod:`nni_lease.oneshot`): the one-shot workflow;
- :func:`default_listener` (:mod:`nni_lease.listener`): the default listener CNN;
- :class:`LeaseCellSpace` (:mod:`nni_lease.spaces`): a small cell space for digits / CIFAR-10;
- :class:`DigitsDataset`, :class:`Cifar10Dataset` (:mod:`nni_lease.data`): trace-safe data sets;
- :func:`retrain` (:mod:`nni_lease.retrain`): train an exported architecture from scratch;
- :class:`LeaseMultiTrial` (:mod:`nni_lease.multitrial`): the multi-trial strategy for NNI experiments;
- :func:`lease_evaluator`, :func:`evaluate_lease` (:mod:`nni_lease.trial`): the explainer/listener trial;
- :func:`run_multitrial` (:mod:`nni_lease.experiment`): start a multi-trial experiment with the web UI.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("art-fisher-lease")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_LAZY = {
    "LeaSE": "nni_lease.strategy",
    "LeaseLightningModule": "nni_lease.strategy",
    "LeaseSettings": "nni_lease.settings",
    "LeaseStep": "nni_lease.step",
    "search_oneshot": "nni_lease.oneshot",
    "retrain_architecture": "nni_lease.oneshot",
    "SearchConfig": "nni_lease.oneshot",
    "RetrainConfig": "nni_lease.oneshot",
    "pgd_explain": "nni_lease.explain",
    "Explanation": "nni_lease.explain",
    "default_listener": "nni_lease.listener",
    "LeaseCellSpace": "nni_lease.spaces",
    "DigitsDataset": "nni_lease.data",
    "Cifar10Dataset": "nni_lease.data",
    "retrain": "nni_lease.retrain",
    "LeaseMultiTrial": "nni_lease.multitrial",
    "lease_evaluator": "nni_lease.trial",
    "evaluate_lease": "nni_lease.trial",
    "run_multitrial": "nni_lease.experiment",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nni_lease' has no attribute {name!r}")
