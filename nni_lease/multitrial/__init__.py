"""Multi-trial LeaSE: the strategy and the explainer/listener trial.

The strategy that proposes architectures (:class:`LeaseMultiTrial`) and the
explainer/listener trial (:func:`lease_evaluator`, :func:`evaluate_lease`).
"""

from nni_lease import _require_nni

_require_nni()  # one line naming the lease extra, rather than "No module named 'nni'"

from nni_lease.multitrial._strategy import LeaseMultiTrial
from nni_lease.multitrial._trial import evaluate_lease, lease_evaluator

__all__ = ["LeaseMultiTrial", "evaluate_lease", "lease_evaluator"]
