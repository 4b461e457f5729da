"""Multi-trial LeaSE: the strategy that proposes architectures and the explainer/listener trial.

- :mod:`~nni_lease.multitrial.strategy`: :class:`LeaseMultiTrial`;
- :mod:`~nni_lease.multitrial.trial`: :func:`lease_evaluator`, :func:`evaluate_lease`.
"""

from nni_lease import _require_nni

_require_nni()  # one line naming the lease extra, rather than "No module named 'nni'"
