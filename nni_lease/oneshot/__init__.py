"""One-shot LeaSE: the strategy (a drop-in for NNI's ``DARTS``), the search / retrain workflow and
training an exported architecture from scratch.

- :mod:`~nni_lease.oneshot.strategy`: :class:`LeaSE` and its Lightning module;
- :mod:`~nni_lease.oneshot.workflow`: :func:`search_oneshot`, :func:`retrain_architecture`;
- :mod:`~nni_lease.oneshot.retrain`: :func:`retrain`.
"""
