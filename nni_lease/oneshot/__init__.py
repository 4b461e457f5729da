"""One-shot LeaSE: the strategy, the search / retrain workflow, and retraining an exported architecture.

The strategy (:class:`LeaSE`) is a drop-in for NNI's ``DARTS``; :func:`search_oneshot` and
:func:`retrain_architecture` run the workflow; :func:`retrain` trains an exported architecture from scratch.
"""

from nni_lease import _require_nni

_require_nni()  # one line naming the lease extra, rather than "No module named 'nni'"

from nni_lease.oneshot._config import RetrainConfig, SearchConfig, SearchResult
from nni_lease.oneshot._lightning import LeaseLightningModule, TrainingDivergedError
from nni_lease.oneshot._retrain import retrain
from nni_lease.oneshot._strategy import LeaSE
from nni_lease.oneshot._workflow import retrain_architecture, search_oneshot

__all__ = [
    "LeaSE",
    "LeaseLightningModule",
    "RetrainConfig",
    "SearchConfig",
    "SearchResult",
    "TrainingDivergedError",
    "retrain",
    "retrain_architecture",
    "search_oneshot",
]
