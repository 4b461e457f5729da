"""One-shot LeaSE: the strategy, the search / retrain workflow, and retraining an exported architecture.

The strategy is a drop-in for NNI's ``DARTS``; an exported architecture is trained from scratch.

- :mod:`~nni_lease.oneshot.strategy`: :class:`LeaSE` and its Lightning module;
- :mod:`~nni_lease.oneshot.workflow`: :func:`search_oneshot`, :func:`retrain_architecture`;
- :mod:`~nni_lease.oneshot.retrain`: :func:`retrain`.
"""

from nni_lease import _require_nni

_require_nni()  # one line naming the lease extra, rather than "No module named 'nni'"
